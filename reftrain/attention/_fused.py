"""Causal ring attention built from whole-shard kernels (cuDNN's fused attention on GPU).

Where `_ring` cuts every shard pair into Q x KV chunks itself, this driver hands each visible
(Q shard, KV shard) pair to a `Kernel` in one call and merges the results with their float32
log-sum-exp, so a fused kernel runs at full size. It supports two sequence layouts:

* contiguous: device r holds tokens [r*L, (r+1)*L). At ring step s it holds device
  (r - s) mod N's KV, visible (in full) only when s <= r: device N-1 works every step,
  device 0 only at step 0, so a causal ring runs at about half its ideal speed.
* zigzag: the sequence is cut into 2N chunks of L/2 and device r holds chunks r and 2N-1-r.
  Every step then costs every device the same: at step s >= 1 with source j, device r attends
  all its queries to j's first chunk when j < r, or its second chunk's queries to all of j's
  keys when j > r; each is (L x L/2) of work (Brandon et al. 2023 "striped"/zig-zag idea).

Visibility that depends on the device index is a loop of 0 or 1 trips, not `lax.cond`
(see `_chunked._visible_chunks` for why). Segment ids (document masks) travel with their KV
shard; each pair hands the kernel its own ids and the shard's (see `_kernels` for the two
cases a kernel covers: a shard with itself, and keys that all precede the queries, which
holds for every pair both layouts visit).
"""

from __future__ import annotations

from functools import partial
from typing import Hashable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from reftrain.attention._block import merge_blocks
from reftrain.attention._blocked import blocked
from reftrain.attention._kernels import get_kernel, when

LAYOUTS = ("contiguous", "zigzag")


class FusedSpec(NamedTuple):
    """Static configuration of a fused ring."""

    kernel: str  # "xla" or "cudnn"
    layout: str  # "contiguous" or "zigzag"
    q_chunk: int  # used by the xla kernel only
    kv_chunk: int
    scale: float
    axis_name: Hashable | None
    max_documents: int = 16  # cuDNN packed mode: documents per sequence (static; memory grows with it)
    document_block: int = 0  # cuDNN with documents: a shard with itself in blocks of this many tokens (0: whole)

    def size(self) -> int:
        return 1 if self.axis_name is None else lax.axis_size(self.axis_name)

    def index(self) -> jax.Array:
        return jnp.int32(0) if self.axis_name is None else lax.axis_index(self.axis_name)

    def rotate(self, tree):
        if self.axis_name is None:
            return tree
        n = self.size()
        return jax.tree.map(lambda x: lax.ppermute(x, self.axis_name, [(i, (i + 1) % n) for i in range(n)]), tree)

    def kernel_fns(self):
        kernel = get_kernel(self.kernel, self.q_chunk, self.kv_chunk, self.max_documents)
        # cuDNN's packed mode pads every document slot to the call's length: in blocks, its
        # memory follows the block, not the shard, for some speed (`_blocked`).
        return blocked(kernel, self.document_block) if self.kernel == "cudnn" and self.document_block else kernel


def _halves(x: jax.Array | None) -> tuple[jax.Array | None, jax.Array | None]:
    if x is None:
        return None, None
    h = x.shape[1] // 2
    return x[:, :h], x[:, h:]


def _merge(acc, block):
    out, lse = block
    return merge_blocks(*acc, out.astype(jnp.float32), lse)


def _split_merge(acc_a, acc_b, block):
    """Merges a block computed for all queries into the two halves' accumulators."""
    (out_a, out_b), (lse_a, lse_b) = _halves(block[0]), _halves(block[1])
    return _merge(acc_a, (out_a, lse_a)), _merge(acc_b, (out_b, lse_b))


def _forward(spec: FusedSpec, q, k, v, ids=None):
    """Returns (out in q's dtype, lse float32 `[B, L, Hq]`). `ids`: segment ids `[B, L]` or None;
    the KV shard's travel with it."""
    kern, scale, n = spec.kernel_fns(), spec.scale, spec.size()
    r = spec.index()
    segments = lambda q_ids, kv_ids: None if ids is None else (q_ids, kv_ids)
    full = lambda q, q_ids, k, v, kv_ids: kern.forward(q, k, v, False, scale, segments(q_ids, kv_ids))
    causal = lambda q, k, v, ids: kern.forward(q, k, v, True, scale, segments(ids, ids))
    f32 = lambda block: (block[0].astype(jnp.float32), block[1])
    incoming = spec.rotate((k, v, ids))  # issued before step 0's compute so the transfer overlaps it

    if spec.layout == "contiguous":
        if n == 1:
            return causal(q, k, v, ids)
        acc = f32(causal(q, k, v, ids))

        def fold(s, kv, acc):
            return when(s <= r, lambda acc: _merge(acc, full(q, ids, *kv)), acc)
    else:
        (q_a, q_b), (k_a, k_b), (v_a, v_b), (i_a, i_b) = _halves(q), _halves(k), _halves(v), _halves(ids)
        acc_a = f32(causal(q_a, k_a, v_a, i_a))
        acc_b = _merge(f32(causal(q_b, k_b, v_b, i_b)), full(q_b, i_b, k_a, v_a, i_a))
        acc = (acc_a, acc_b)
        if n == 1:
            return tuple(jnp.concatenate(parts, axis=1) for parts in zip(*acc))

        def fold(s, kv, acc):
            k, v, kv_ids = kv
            (k_a, _), (v_a, _), (j_a, _) = _halves(k), _halves(v), _halves(kv_ids)
            source = (r - s) % n
            acc = when(source < r, lambda acc: _split_merge(*acc, full(q, ids, k_a, v_a, j_a)), acc)
            return when(source > r, lambda acc: (acc[0], _merge(acc[1], full(q_b, i_b, k, v, kv_ids))), acc)

    def step(s, carry):
        kv, acc = carry
        return spec.rotate(kv), fold(s, kv, acc)

    kv, acc = lax.fori_loop(1, n - 1, step, (incoming, acc))
    acc = fold(n - 1, kv, acc)
    if spec.layout == "zigzag":
        acc = tuple(jnp.concatenate(parts, axis=1) for parts in zip(*acc))
    out, lse = acc
    return out.astype(q.dtype), lse


def _backward(spec: FusedSpec, q, k, v, out, lse, d_out, ids=None):
    kern, scale, n = spec.kernel_fns(), spec.scale, spec.size()
    r = spec.index()
    f32 = lambda *xs: tuple(x.astype(jnp.float32) for x in xs)

    def grads(q, q_ids, k, v, kv_ids, out, lse, d_out, causal):
        segments = None if ids is None else (q_ids, kv_ids)
        return f32(*kern.backward(q, k, v, out, lse, d_out, causal, scale, segments))

    if spec.layout == "contiguous":
        dq, dk, dv = grads(q, ids, k, v, ids, out, lse, d_out, True)
        if n == 1:
            return dq, dk, dv

        def fold(s, kv, acc):
            def visible(acc):
                dq, dk, dv = acc
                dq_b, dk_b, dv_b = grads(q, ids, *kv, out, lse, d_out, False)
                return dq + dq_b, dk + dk_b, dv + dv_b

            return when(s <= r, visible, acc)
    else:
        parts = [_halves(x) for x in (q, k, v, out, lse, d_out, ids)]
        (q_a, q_b), (k_a, k_b), (v_a, v_b), (o_a, o_b), (l_a, l_b), (g_a, g_b), (i_a, i_b) = parts
        dq_a, dk_a, dv_a = grads(q_a, i_a, k_a, v_a, i_a, o_a, l_a, g_a, True)
        dq_b, dk_b, dv_b = grads(q_b, i_b, k_b, v_b, i_b, o_b, l_b, g_b, True)
        dq_ba, dk_ba, dv_ba = grads(q_b, i_b, k_a, v_a, i_a, o_b, l_b, g_b, False)
        cat = lambda a, b: jnp.concatenate([a, b], axis=1)
        dq, dk, dv = cat(dq_a, dq_b + dq_ba), cat(dk_a + dk_ba, dk_b), cat(dv_a + dv_ba, dv_b)
        if n == 1:
            return dq, dk, dv

        def fold(s, kv, acc):
            source = (r - s) % n

            def first_chunk(acc):  # all queries x the source's first chunk
                dq, dk, dv = acc
                (k_a, _), (v_a, _), (j_a, _) = (_halves(x) for x in kv)
                dq_b, dk_a, dv_a = grads(q, ids, k_a, v_a, j_a, out, lse, d_out, False)
                h = k_a.shape[1]
                return dq + dq_b, dk.at[:, :h].add(dk_a), dv.at[:, :h].add(dv_a)

            def second_half_queries(acc):  # the second query chunk x all the source's keys
                dq, dk, dv = acc
                dq_b, dk_b, dv_b = grads(q_b, i_b, *kv, o_b, l_b, g_b, False)
                h = q_b.shape[1]
                return dq.at[:, h:].add(dq_b), dk + dk_b, dv + dv_b

            acc = when(source < r, first_chunk, acc)
            return when(source > r, second_half_queries, acc)

    # dK and dV travel with the shard they belong to and come home after a full turn.
    def step(s, carry):
        kv, (dq, dk, dv) = carry
        dq, dk, dv = fold(s, kv, (dq, dk, dv))
        kv, (dk, dv) = spec.rotate((kv, (dk, dv)))
        return kv, (dq, dk, dv)

    kv, (dk_travel, dv_travel) = spec.rotate(((k, v, ids), (dk, dv)))
    kv, (dq, dk_travel, dv_travel) = lax.fori_loop(1, n - 1, step, (kv, (dq, dk_travel, dv_travel)))
    dq, dk_travel, dv_travel = fold(n - 1, kv, (dq, dk_travel, dv_travel))
    dk, dv = spec.rotate((dk_travel, dv_travel))
    return dq, dk, dv


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def fused_ring_attention(spec: FusedSpec, q, k, v, segment_ids=None):
    """Causal attention of the local shards (see the module docstring for the layouts)."""
    return _forward(spec, q, k, v, segment_ids)[0]


def _fwd(spec, q, k, v, segment_ids=None):
    out, lse = _forward(spec, q, k, v, segment_ids)
    return out, (q, k, v, segment_ids, out, lse)


def _bwd(spec, residuals, d_out):
    q, k, v, segment_ids, out, lse = residuals
    dq, dk, dv = _backward(spec, q, k, v, out, lse, d_out, segment_ids)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


fused_ring_attention.defvjp(_fwd, _bwd)
