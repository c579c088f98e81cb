"""Loops of Q chunks x KV chunks over one local Q shard and one KV shard.

Both directions fold blocks into running accumulators in place, so memory is the shard plus
one block, whatever the number of chunks. KV blocks that the causal mask hides entirely are
never visited: the KV loop stops after the last visible chunk. Shapes: B batch, L local
length, Hq/Hkv heads, D head_dim.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from reftrain.attention._block import BlockMask, block_backward, block_forward, merge_blocks


class Chunking(NamedTuple):
    """Static description of how a shard pair is cut into blocks."""

    causal: bool
    q_chunk: int
    kv_chunk: int
    scale: float


def _slice(x: jax.Array, start: jax.Array, size: int) -> jax.Array:
    """Returns `x[:, start:start+size]` for batched arrays, `x[start:start+size]` for 1-D ones."""
    return lax.dynamic_slice_in_dim(x, start, size, axis=0 if x.ndim == 1 else 1)


def _add_slice(acc: jax.Array, update: jax.Array, start: jax.Array) -> jax.Array:
    """Returns acc with `update` added to `acc[:, start:start+len(update)]`."""
    current = lax.dynamic_slice_in_dim(acc, start, update.shape[1], axis=1)
    return lax.dynamic_update_slice_in_dim(acc, current + update, start, axis=1)


def _visible_chunks(q_positions: jax.Array, kv_positions: jax.Array, chunking: Chunking) -> jax.Array | int:
    """Returns how many leading KV chunks the causal mask may let this Q chunk see.

    KV positions ascend within a shard (contiguous layout), so the visible chunks are a prefix
    and the loop stops after them. A dynamic trip count rather than `lax.cond` around each
    block: inside a differentiated scan (the scanned decoder layers), JAX linearised a cond in
    this custom-VJP forward and saved every block's scores, f32[7, 32, 16, 1, 8, 4, 2048, 4096]
    (3.8 TB) per device for Mistral-7B at 512K (`hloscope profile --program train-step`).
    """
    chunks = kv_positions.shape[0] // chunking.kv_chunk
    if not chunking.causal:
        return chunks
    chunk_starts = kv_positions[:: chunking.kv_chunk]
    return jnp.sum(chunk_starts <= q_positions.max()).astype(jnp.int32)


def shard_forward(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_segment_ids: jax.Array,
    kv_segment_ids: jax.Array,
    q_positions: jax.Array,
    kv_positions: jax.Array,
    out: jax.Array,
    lse: jax.Array,
    chunking: Chunking,
) -> tuple[jax.Array, jax.Array]:
    """Returns running (out f32 `[B, L, Hq, D]`, lse f32 `[B, L, Hq]`) with one KV shard folded in.

    q `[B, L, Hq, D]`; k, v `[B, Lk, Hkv, D]`; segment ids `[B, L]`/`[B, Lk]`; positions
    `[L]`/`[Lk]` are global token indices.
    """
    q_chunk, kv_chunk = chunking.q_chunk, chunking.kv_chunk

    def q_step(i, carry):
        out, lse = carry
        q_start = i * q_chunk
        q_c = _slice(q, q_start, q_chunk)
        q_seg, q_pos = _slice(q_segment_ids, q_start, q_chunk), _slice(q_positions, q_start, q_chunk)

        def kv_step(j, acc):
            kv_start = j * kv_chunk
            mask = BlockMask(
                q_seg, _slice(kv_segment_ids, kv_start, kv_chunk),
                q_pos, _slice(kv_positions, kv_start, kv_chunk), chunking.causal,
            )

            def attend(acc):
                block = block_forward(
                    q_c, _slice(k, kv_start, kv_chunk), _slice(v, kv_start, kv_chunk), mask, chunking.scale
                )
                return merge_blocks(*acc, *block)

            return attend(acc)

        acc = (_slice(out, q_start, q_chunk), _slice(lse, q_start, q_chunk))
        out_c, lse_c = lax.fori_loop(0, _visible_chunks(q_pos, kv_positions, chunking), kv_step, acc)
        out = lax.dynamic_update_slice_in_dim(out, out_c, q_start, axis=1)
        lse = lax.dynamic_update_slice_in_dim(lse, lse_c, q_start, axis=1)
        return out, lse

    return lax.fori_loop(0, q.shape[1] // q_chunk, q_step, (out, lse))


class Grads(NamedTuple):
    """Float32 gradient accumulators: dq of the local Q shard, dk/dv of the KV shard in hand."""

    dq: jax.Array
    dk: jax.Array
    dv: jax.Array


def shard_backward(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_segment_ids: jax.Array,
    kv_segment_ids: jax.Array,
    q_positions: jax.Array,
    kv_positions: jax.Array,
    d_out: jax.Array,
    lse: jax.Array,
    delta: jax.Array,
    grads: Grads,
    chunking: Chunking,
) -> Grads:
    """Returns `grads` with this (Q shard, KV shard) pair's contribution added.

    d_out `[B, L, Hq, D]`, lse and delta f32 `[B, L, Hq]` are the final forward statistics.
    """
    q_chunk, kv_chunk = chunking.q_chunk, chunking.kv_chunk

    def q_step(i, grads):
        q_start = i * q_chunk
        q_c, d_out_c = _slice(q, q_start, q_chunk), _slice(d_out, q_start, q_chunk)
        lse_c, delta_c = _slice(lse, q_start, q_chunk), _slice(delta, q_start, q_chunk)
        q_seg, q_pos = _slice(q_segment_ids, q_start, q_chunk), _slice(q_positions, q_start, q_chunk)

        def kv_step(j, acc):
            dq_c, dk, dv = acc
            kv_start = j * kv_chunk
            mask = BlockMask(
                q_seg, _slice(kv_segment_ids, kv_start, kv_chunk),
                q_pos, _slice(kv_positions, kv_start, kv_chunk), chunking.causal,
            )

            def attend(acc):
                dq_c, dk, dv = acc
                dq_b, dk_b, dv_b = block_backward(
                    q_c, _slice(k, kv_start, kv_chunk), _slice(v, kv_start, kv_chunk),
                    d_out_c, lse_c, delta_c, mask, chunking.scale,
                )
                return dq_c + dq_b, _add_slice(dk, dk_b, kv_start), _add_slice(dv, dv_b, kv_start)

            return attend((dq_c, dk, dv))

        acc = (_slice(grads.dq, q_start, q_chunk), grads.dk, grads.dv)
        dq_c, dk, dv = lax.fori_loop(0, _visible_chunks(q_pos, kv_positions, chunking), kv_step, acc)
        dq = lax.dynamic_update_slice_in_dim(grads.dq, dq_c, q_start, axis=1)
        return Grads(dq, dk, dv)

    return lax.fori_loop(0, q.shape[1] // q_chunk, q_step, grads)
