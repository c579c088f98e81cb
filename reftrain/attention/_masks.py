"""Attention masks and argument checks shared by every attention implementation."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attention_mask(
    q_segment_ids: jax.Array,
    kv_segment_ids: jax.Array,
    q_positions: jax.Array,
    kv_positions: jax.Array,
    causal: bool,
) -> jax.Array:
    """Returns bool `[batch, q_len, kv_len]`: True where a query may attend to a key.

    Args:
      q_segment_ids: int32 `[batch, q_len]`, documents from 1, 0 for padding.
      kv_segment_ids: int32 `[batch, kv_len]`.
      q_positions: int32 `[q_len]`, global token index of each query (causal order).
      kv_positions: int32 `[kv_len]`, global token index of each key.
      causal: whether a query sees only keys at the same or an earlier global index.

    Padding (segment 0) attends to nothing and nothing attends to it.
    """
    same_doc = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    mask = same_doc & (q_segment_ids[:, :, None] != 0)
    if causal:
        mask = mask & (q_positions[:, None] >= kv_positions[None, :])[None]
    return mask


def check_shapes(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None) -> None:
    """Raises ValueError naming the numbers when q, k, v, segment_ids disagree."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"q, k, v must be [batch, len, heads, head_dim]; got ranks {q.ndim}, {k.ndim}, {v.ndim}"
        )
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {k.shape} vs {v.shape}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {q.shape} and k {k.shape} differ in batch or head_dim")
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"q length {q.shape[1]} != kv length {k.shape[1]} (self-attention only)")
    q_heads, kv_heads = q.shape[2], k.shape[2]
    if q_heads % kv_heads != 0:
        raise ValueError(f"q heads {q_heads} are not a multiple of kv heads {kv_heads} (GQA)")
    if segment_ids is not None and segment_ids.shape != q.shape[:2]:
        raise ValueError(f"segment_ids shape {segment_ids.shape} != [batch, len] {q.shape[:2]}")


def check_chunks(length: int, q_chunk: int, kv_chunk: int) -> None:
    """Raises ValueError unless both chunk sizes are positive divisors of `length`."""
    for name, chunk in (("q_chunk", q_chunk), ("kv_chunk", kv_chunk)):
        if chunk <= 0 or length % chunk != 0:
            raise ValueError(f"{name}={chunk} does not divide the local sequence length {length}")


def default_segment_ids(q: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
    """Returns `segment_ids`, or one document covering every token when None."""
    if segment_ids is None:
        # ones_like keeps q's varying-manual-axes type inside shard_map.
        return jnp.ones_like(q[..., 0, 0], jnp.int32)
    return segment_ids.astype(jnp.int32)
