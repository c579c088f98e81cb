"""Reference attention: the full [q_len, kv_len] score matrix, plain and obviously right."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reftrain.attention._masks import attention_mask, check_shapes, default_segment_ids


def dense_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    segment_ids: jax.Array | None = None,
    causal: bool = True,
) -> jax.Array:
    """Returns the attention output `[batch, len, q_heads, head_dim]` in q's dtype.

    Args:
      q: `[batch, len, q_heads, head_dim]`.
      k, v: `[batch, len, kv_heads, head_dim]`, `q_heads % kv_heads == 0` (GQA).
      segment_ids: int32 `[batch, len]`, documents from 1, 0 for padding; None is one document.
      causal: mask keys after each query.

    Scores and softmax are float32. Rows that attend to nothing (padding) output 0.
    """
    check_shapes(q, k, v, segment_ids)
    segment_ids = default_segment_ids(q, segment_ids)
    batch, length, q_heads, head_dim = q.shape
    kv_heads = k.shape[2]
    groups = q_heads // kv_heads
    positions = jnp.arange(length, dtype=jnp.int32)
    mask = attention_mask(segment_ids, segment_ids, positions, positions, causal)

    # Group query heads by the kv head they share instead of repeating k and v.
    q_grouped = q.reshape(batch, length, kv_heads, groups, head_dim)
    scores = jnp.einsum("bqhgd,bkhd->bhgqk", q_grouped, k, preferred_element_type=jnp.float32)
    scores = scores * (head_dim**-0.5)
    mask = mask[:, None, None]
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1)
    weights = jnp.where(mask.any(axis=-1, keepdims=True), weights, 0.0)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", weights, v.astype(jnp.float32))
    return out.reshape(batch, length, q_heads, head_dim).astype(q.dtype)
