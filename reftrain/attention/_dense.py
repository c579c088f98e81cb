"""Reference attention: the full [q_len, kv_len] score matrix, plain and obviously right."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reftrain.attention._spec import attention_mask, check_shapes


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
    batch, length, q_heads, head_dim = q.shape
    kv_heads = k.shape[2]
    ids = jnp.ones((batch, length), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    positions = jnp.arange(length, dtype=jnp.int32)
    mask = attention_mask(ids, ids, positions, positions, causal)[:, None, None]

    # Group query heads by the kv head they share instead of repeating k and v.
    q_grouped = q.reshape(batch, length, kv_heads, q_heads // kv_heads, head_dim)
    scores = jnp.einsum("bqhgd,bkhd->bhgqk", q_grouped, k, preferred_element_type=jnp.float32)
    scores = jnp.where(mask, scores * head_dim**-0.5, jnp.finfo(jnp.float32).min)
    weights = jnp.where(mask.any(axis=-1, keepdims=True), jax.nn.softmax(scores, axis=-1), 0.0)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", weights, v.astype(jnp.float32))
    return out.reshape(batch, length, q_heads, head_dim).astype(q.dtype)
