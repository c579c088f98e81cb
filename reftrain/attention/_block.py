"""Attention of one Q block to one KV block: the unit a fused GPU kernel replaces.

Every chunked implementation (blockwise on one device, ring over many) is a loop over these
two functions plus `merge_blocks`; nothing else touches scores. Shapes use
B batch, Tq/Tk block lengths, Hq/Hkv heads, G = Hq // Hkv, D head_dim.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from reftrain.attention._masks import attention_mask


class BlockMask(NamedTuple):
    """What decides visibility between a Q block and a KV block."""

    q_segment_ids: jax.Array  # int32 [B, Tq]
    kv_segment_ids: jax.Array  # int32 [B, Tk]
    q_positions: jax.Array  # int32 [Tq], global token index
    kv_positions: jax.Array  # int32 [Tk]
    causal: bool

    def dense(self) -> jax.Array:
        """Returns bool `[B, 1, 1, Tq, Tk]`, broadcastable over (Hkv, G)."""
        mask = attention_mask(
            self.q_segment_ids, self.kv_segment_ids, self.q_positions, self.kv_positions, self.causal
        )
        return mask[:, None, None]

    def may_be_visible(self) -> jax.Array:
        """Returns a bool scalar, False only when the causal mask hides the whole block."""
        if not self.causal:
            return jnp.array(True)
        return self.q_positions.max() >= self.kv_positions.min()


def _grouped(x: jax.Array, kv_heads: int) -> jax.Array:
    """[B, T, Hq, D] -> [B, T, Hkv, G, D]: query heads grouped by the kv head they share."""
    b, t, h, d = x.shape
    return x.reshape(b, t, kv_heads, h // kv_heads, d)


def _scores(q: jax.Array, k: jax.Array, scale: float) -> jax.Array:
    """Returns float32 scores `[B, Hkv, G, Tq, Tk]`."""
    s = jnp.einsum("bqhgd,bkhd->bhgqk", _grouped(q, k.shape[2]), k, preferred_element_type=jnp.float32)
    return s * scale


def _lse_grouped(lse: jax.Array, kv_heads: int) -> jax.Array:
    """[B, Tq, Hq] -> [B, Hkv, G, Tq, 1], to broadcast against scores."""
    b, t, h = lse.shape
    return lse.reshape(b, t, kv_heads, h // kv_heads).transpose(0, 2, 3, 1)[..., None]


def block_forward(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: BlockMask, scale: float
) -> tuple[jax.Array, jax.Array]:
    """Returns (out float32 `[B, Tq, Hq, D]`, lse float32 `[B, Tq, Hq]`) of one block pair.

    `out` is normalised within the block and `lse` is the log-sum-exp of its visible scores,
    -inf (and out 0) for rows that see no key of this block; `merge_blocks` combines blocks.
    """
    b, tq, hq, d = q.shape
    visible = mask.dense()
    s = jnp.where(visible, _scores(q, k, scale), -jnp.inf)
    row_max = s.max(axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    p = jnp.exp(s - row_max)  # exactly 0 where masked
    row_sum = p.sum(axis=-1, keepdims=True)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    inv_sum = jnp.where(row_sum > 0, 1.0 / jnp.where(row_sum > 0, row_sum, 1.0), 0.0)
    out = out * inv_sum[..., 0].transpose(0, 3, 1, 2)[..., None]
    lse = jnp.where(row_sum > 0, row_max + jnp.log(jnp.where(row_sum > 0, row_sum, 1.0)), -jnp.inf)
    lse = lse[..., 0].transpose(0, 3, 1, 2).reshape(b, tq, hq)
    return out.reshape(b, tq, hq, d), lse


def merge_blocks(
    out_a: jax.Array, lse_a: jax.Array, out_b: jax.Array, lse_b: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Returns (out, lse) of the union of two disjoint key sets, from each one's (out, lse).

    out `[B, T, Hq, D]` float32, lse `[B, T, Hq]` float32; rows empty in both stay (0, -inf).
    """
    top = jnp.maximum(lse_a, lse_b)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    w_a, w_b = jnp.exp(lse_a - top), jnp.exp(lse_b - top)
    total = w_a + w_b
    safe_total = jnp.where(total > 0, total, 1.0)
    out = (out_a * w_a[..., None] + out_b * w_b[..., None]) / safe_total[..., None]
    lse = jnp.where(total > 0, top + jnp.log(safe_total), -jnp.inf)
    return out, lse


def block_backward(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    d_out: jax.Array,
    lse: jax.Array,
    delta: jax.Array,
    mask: BlockMask,
    scale: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns float32 (dq `[B, Tq, Hq, D]`, dk, dv `[B, Tk, Hkv, D]`) of one block pair.

    Args:
      d_out: cotangent of the final (all keys) output `[B, Tq, Hq, D]`.
      lse: final log-sum-exp over all keys `[B, Tq, Hq]`, so probabilities need no rescaling.
      delta: `sum(d_out * out, -1)` float32 `[B, Tq, Hq]`, the softmax Jacobian's row term.
    """
    kv_heads = k.shape[2]
    visible = mask.dense()
    lse_g = _lse_grouped(lse, kv_heads)
    lse_g = jnp.where(jnp.isfinite(lse_g), lse_g, 0.0)
    p = jnp.where(visible, jnp.exp(_scores(q, k, scale) - lse_g), 0.0)
    d_out_g = _grouped(d_out, kv_heads)
    dv = jnp.einsum("bhgqk,bqhgd->bkhd", p.astype(d_out.dtype), d_out_g, preferred_element_type=jnp.float32)
    dp = jnp.einsum("bqhgd,bkhd->bhgqk", d_out_g, v, preferred_element_type=jnp.float32)
    ds = p * (dp - _lse_grouped(delta, kv_heads)) * scale
    dq = jnp.einsum("bhgqk,bkhd->bqhgd", ds.astype(k.dtype), k, preferred_element_type=jnp.float32)
    dk = jnp.einsum("bhgqk,bqhgd->bkhd", ds.astype(q.dtype), _grouped(q, kv_heads), preferred_element_type=jnp.float32)
    return dq.reshape(q.shape), dk, dv
