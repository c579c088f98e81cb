"""The `xla` kernel: loops of Q chunks x KV chunks over one shard pair, any backend, any mask.

Both directions fold blocks into accumulators in place, so memory is the shard plus one block
whatever the number of chunks. Under the causal mask the KV loop stops after the last chunk a
Q chunk can see (a dynamic trip count, not `lax.cond`: see `_spec.when`). The block functions
are the FlashAttention-2 math: the forward returns the block-normalised output and its float32
log-sum-exp, the backward recomputes probabilities from the final lse.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from jax import lax

from reftrain.attention._spec import (AttentionSpec, Kernel, add_piece, attention_mask, empty_backward, empty_forward,
                                     merge, piece)
from reftrain.execution import fit_chunk


def _grouped(x: jax.Array, kv_heads: int) -> jax.Array:
    """[B, T, Hq, D] -> [B, T, Hkv, G, D]: query heads grouped by the kv head they share."""
    b, t, h, d = x.shape
    return x.reshape(b, t, kv_heads, h // kv_heads, d)


def _scores(q: jax.Array, k: jax.Array, scale: float) -> jax.Array:
    """Returns float32 scores `[B, Hkv, G, Tq, Tk]`."""
    return jnp.einsum("bqhgd,bkhd->bhgqk", _grouped(q, k.shape[2]), k, preferred_element_type=jnp.float32) * scale


def _rows(x: jax.Array, kv_heads: int) -> jax.Array:
    """Per-query statistics [B, Tq, Hq] -> [B, Hkv, G, Tq, 1], to broadcast against scores."""
    b, t, h = x.shape
    return x.reshape(b, t, kv_heads, h // kv_heads).transpose(0, 2, 3, 1)[..., None]


def block_forward(q, k, v, visible, scale):
    """(out f32 `[B, Tq, Hq, D]`, lse f32 `[B, Tq, Hq]`) of one block pair; `visible` bool
    `[B, 1, 1, Tq, Tk]`. Rows that see no key of the block get (0, -inf)."""
    b, tq, hq, d = q.shape
    s = jnp.where(visible, _scores(q, k, scale), -jnp.inf)
    row_max = s.max(axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    p = jnp.exp(s - row_max)  # exactly 0 where masked
    row_sum = p.sum(axis=-1, keepdims=True)
    safe = jnp.where(row_sum > 0, row_sum, 1.0)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    out = out * jnp.where(row_sum > 0, 1.0 / safe, 0.0)[..., 0].transpose(0, 3, 1, 2)[..., None]
    lse = jnp.where(row_sum > 0, row_max + jnp.log(safe), -jnp.inf)
    return out.reshape(b, tq, hq, d), lse[..., 0].transpose(0, 3, 1, 2).reshape(b, tq, hq)


def block_backward(q, k, v, d_out, lse, delta, visible, scale):
    """Float32 (dq `[B, Tq, Hq, D]`, dk, dv `[B, Tk, Hkv, D]`) of one block pair, from the final
    lse and delta = `sum(d_out * out, -1)` (the softmax Jacobian's row term), both `[B, Tq, Hq]`."""
    kv_heads = k.shape[2]
    lse_g = _rows(lse, kv_heads)
    p = jnp.where(visible, jnp.exp(_scores(q, k, scale) - jnp.where(jnp.isfinite(lse_g), lse_g, 0.0)), 0.0)
    d_out_g = _grouped(d_out, kv_heads)
    dv = jnp.einsum("bhgqk,bqhgd->bkhd", p.astype(d_out.dtype), d_out_g, preferred_element_type=jnp.float32)
    dp = jnp.einsum("bqhgd,bkhd->bhgqk", d_out_g, v, preferred_element_type=jnp.float32)
    ds = p * (dp - _rows(delta, kv_heads)) * scale
    dq = jnp.einsum("bhgqk,bkhd->bqhgd", ds.astype(k.dtype), k, preferred_element_type=jnp.float32)
    dk = jnp.einsum("bhgqk,bqhgd->bkhd", ds.astype(q.dtype), _grouped(q, kv_heads), preferred_element_type=jnp.float32)
    return dq.reshape(q.shape), dk, dv


def xla_kernel(spec: AttentionSpec) -> Kernel:
    """Our chunked loops as a `Kernel`; chunks are the spec's, cut down to divide each call."""

    def plan(q, k, causal, segments):
        qc, kc = fit_chunk(spec.q_chunk, q.shape[1]), fit_chunk(spec.kv_chunk, k.shape[1])
        if segments is None:  # ones_like keeps q's varying manual axes under shard_map
            segments = jnp.ones_like(q[..., 0, 0], jnp.int32), jnp.ones_like(k[..., 0, 0], jnp.int32)
        arange = lambda start, n: start + jnp.arange(n, dtype=jnp.int32)

        def visible(i, j):
            ids = piece(segments[0], i * qc, qc), piece(segments[1], j * kc, kc)
            return attention_mask(*ids, arange(i * qc, qc), arange(j * kc, kc), causal)[:, None, None]

        # Causal is the square mask: Q chunk i sees the KV chunks that start at or before its end.
        chunks = (lambda i: ((i + 1) * qc - 1) // kc + 1) if causal else (lambda i: k.shape[1] // kc)
        return qc, kc, visible, chunks

    def forward(q, k, v, causal, scale, segments=None, acc=None, at=0):
        qc, kc, visible, chunks = plan(q, k, causal, segments)

        def q_step(i, acc):
            q_i, rows = piece(q, i * qc, qc), at + i * qc

            def kv_step(j, acc_i):
                return merge(*acc_i, *block_forward(q_i, piece(k, j * kc, kc), piece(v, j * kc, kc), visible(i, j), scale))

            acc_i = lax.fori_loop(0, chunks(i), kv_step, tuple(piece(x, rows, qc) for x in acc))
            return tuple(lax.dynamic_update_slice_in_dim(x, y, rows, axis=1) for x, y in zip(acc, acc_i))

        return lax.fori_loop(0, q.shape[1] // qc, q_step, empty_forward(q) if acc is None else acc)

    def backward(q, k, v, out, lse, d_out, causal, scale, segments=None, acc=None, q_at=0, kv_at=0):
        qc, kc, visible, chunks = plan(q, k, causal, segments)
        delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)

        def q_step(i, grads):
            q_i, g_i, l_i, d_i = (piece(x, i * qc, qc) for x in (q, d_out, lse, delta))
            rows = q_at + i * qc

            def kv_step(j, acc):
                dq, dk, dv = acc
                dq_b, dk_b, dv_b = block_backward(q_i, piece(k, j * kc, kc), piece(v, j * kc, kc), g_i, l_i, d_i,
                                                  visible(i, j), scale)
                keys = kv_at + j * kc
                return dq + dq_b, add_piece(dk, dk_b, keys), add_piece(dv, dv_b, keys)

            dq_i, dk, dv = lax.fori_loop(0, chunks(i), kv_step, (piece(grads[0], rows, qc), *grads[1:]))
            return lax.dynamic_update_slice_in_dim(grads[0], dq_i, rows, axis=1), dk, dv

        return lax.fori_loop(0, q.shape[1] // qc, q_step, empty_backward(q, k, v) if acc is None else acc)

    return Kernel("xla", forward, backward)
