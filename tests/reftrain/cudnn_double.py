"""A CPU stand-in for cuDNN's two fused-attention primitives, packed-sequence mode included.

It follows the conventions our cuDNN kernel relies on (probed on GPUs: analyses/
gpu_probe_cudnn_stats.py and the GPU tests): statistics `[B, Hq, T]`, or in packed mode
`[B * slots, Hq, T]` with the used slots of all rows numbered in order and each document's
tokens at their position in it; slots with seqlen -1 are unused. Wherever cuDNN leaves memory
unwritten (tokens in no slot, statistics past a document), this double writes NaN, so a test
fails if our kernel reads it. Plain dense math: for short sequences only.
"""

from __future__ import annotations

import jax.numpy as jnp

from reftrain.attention._cudnn import Primitives


def _slots(sequences, length: int, side: int):
    """Per token `[B, T]` of the q (side 0) or kv (side 1) tensor: its slot (-1: none) and its
    position in that slot's sequence."""
    seqlen, offsets = sequences[side], sequences[2 + side][:, :-1]
    pos = jnp.arange(length)
    inside = (pos >= offsets[..., None]) & (pos < (offsets + seqlen)[..., None]) & (seqlen[..., None] > 0)
    slot = jnp.where(inside.any(1), jnp.argmax(inside, axis=1), -1)
    return slot, pos - jnp.take_along_axis(offsets, jnp.maximum(slot, 0), axis=1)


def _mask(q, k, causal, sequences):
    b, tq, tk = q.shape[0], q.shape[1], k.shape[1]
    if sequences is None:
        mask = jnp.ones((b, tq, tk), bool)
        return mask & (jnp.arange(tq)[:, None] >= jnp.arange(tk)[None]) if causal else mask
    (sq, rq), (sk, rk) = _slots(sequences, tq, 0), _slots(sequences, tk, 1)
    mask = (sq[:, :, None] == sk[:, None, :]) & (sq[:, :, None] >= 0)
    return mask & (rq[:, :, None] >= rk[:, None, :]) if causal else mask


def _stats_index(sequences, length):
    slot, position = _slots(sequences, length, 0)
    used = jnp.sum(sequences[0] > 0, axis=1)
    row = jnp.where(slot >= 0, (jnp.cumsum(used) - used)[:, None] + slot, 10**9)
    return row, position


def _scores(q, k, scale):
    b, t, h, d = q.shape
    grouped = q.reshape(b, t, k.shape[2], h // k.shape[2], d).astype(jnp.float32)
    return jnp.einsum("bqhgd,bkhd->bqhgk", grouped, k.astype(jnp.float32)) * scale  # [B, Tq, Hkv, G, Tk]


def forward(q, k, v, causal, scale, sequences):
    b, t, h, d = q.shape
    mask = _mask(q, k, causal, sequences)[:, :, None, None, :]
    s = jnp.where(mask, _scores(q, k, scale), -jnp.inf)
    lse = jnp.log(jnp.sum(jnp.exp(s - s.max(-1, keepdims=True)), -1)) + s.max(-1)
    out = jnp.einsum("bqhgk,bkhd->bqhgd", jnp.exp(s - lse[..., None]), v.astype(jnp.float32)).reshape(q.shape)
    lse = lse.reshape(b, t, h)
    seen = jnp.isfinite(lse)
    out = jnp.where(seen[..., None], out, jnp.nan).astype(q.dtype)
    if sequences is None:
        return out, jnp.swapaxes(lse, 1, 2)
    row, position = _stats_index(sequences, t)
    stats = jnp.full((b * sequences[0].shape[1], h, t), jnp.nan).at[row, :, position].set(lse, mode="drop")
    return out, stats


def backward(q, k, v, stats, out, d_out, causal, scale, sequences):
    b, t, h, d = q.shape
    if sequences is None:
        lse = jnp.swapaxes(stats, 1, 2)
    else:
        row, position = _stats_index(sequences, t)
        lse = stats.at[row, :, position].get(mode="fill", fill_value=jnp.nan)
    mask = _mask(q, k, causal, sequences)[:, :, None, None, :]
    groups = h // k.shape[2]
    lse = lse.reshape(b, t, k.shape[2], groups)
    p = jnp.where(mask, jnp.exp(_scores(q, k, scale) - lse[..., None]), 0.0)
    g = d_out.astype(jnp.float32).reshape(b, t, k.shape[2], groups, d)
    delta = jnp.sum(g * out.astype(jnp.float32).reshape(g.shape), -1)
    dv = jnp.einsum("bqhgk,bqhgd->bkhd", p, g)
    ds = p * (jnp.einsum("bqhgd,bkhd->bqhgk", g, v.astype(jnp.float32)) - delta[..., None]) * scale
    dq = jnp.einsum("bqhgk,bkhd->bqhgd", ds, k.astype(jnp.float32)).reshape(q.shape)
    dk = jnp.einsum("bqhgk,bqhgd->bkhd", ds, q.astype(jnp.float32).reshape(g.shape))
    q_seen, k_seen = mask.any(-1)[:, :, 0, 0], mask.any(1)[:, 0, 0, :]  # unwritten rows: NaN
    nan = lambda x, seen: jnp.where(seen[:, :, None, None], x, jnp.nan)
    return nan(dq, q_seen).astype(q.dtype), nan(dk, k_seen).astype(k.dtype), nan(dv, k_seen).astype(v.dtype)


PRIMITIVES = Primitives(forward, backward)
