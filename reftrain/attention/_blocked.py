"""A shard with itself under documents, as square blocks: bounds cuDNN's packed-mode memory.

cuDNN's packed-sequence backward keeps a float32 dQ accumulator for every document slot, each
padded to the full query length (`hloscope/cudnn_workspace.py`): for Mistral-7B's heads, 2 GiB
per slot on a 64K-token shard, 32 GiB with 16 slots. Cut into blocks of `block` tokens, the
shard is (block i, block i) causal pairs plus (block i, earlier block j) pairs, where only the
document running from j into i is visible (the kernel's earlier-shard case); the workspace then
scales with the block, not the shard. Only the blocks that document spans are visited: from
the block holding its start up to i.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from reftrain.attention._block import merge_blocks
from reftrain.attention._chunked import _add_slice as _add, _slice
from reftrain.attention._kernels import Kernel, divisor_at_most, run_starts


def _first_blocks(ids: jax.Array, block: int) -> jax.Array:
    """For each block: the block where the document of its first token starts (over the batch)."""
    positions = jnp.arange(ids.shape[1], dtype=jnp.int32)
    document_start = lax.cummax(jnp.where(run_starts(ids), positions, 0), axis=1)
    return jnp.min(document_start[:, ::block], axis=0) // block


def blocked(kernel: Kernel, block: int) -> Kernel:
    """`kernel`, with a causal shard-with-itself call under documents done block by block
    (longer than `block` tokens only; every other call passes through)."""

    def split(q, causal, segments):
        if not causal or segments is None or q.shape[1] <= block:
            return None
        size = divisor_at_most(block, q.shape[1])
        return size, q.shape[1] // size, _first_blocks(segments[0], size)

    def forward(q, k, v, causal, scale, segments=None):
        plan = split(q, causal, segments)
        if plan is None:
            return kernel.forward(q, k, v, causal, scale, segments)
        size, count, first = plan
        ids = segments[0]

        def row(i, carry):
            out, lse = carry
            start = i * size
            q_i, ids_i = _slice(q, start, size), _slice(ids, start, size)
            own = kernel.forward(q_i, _slice(k, start, size), _slice(v, start, size), True, scale, (ids_i, ids_i))

            def earlier(j, acc):
                at = j * size
                part = kernel.forward(q_i, _slice(k, at, size), _slice(v, at, size), False, scale,
                                      (ids_i, _slice(ids, at, size)))
                return merge_blocks(*acc, part[0].astype(jnp.float32), part[1])

            acc = lax.fori_loop(first[i], i, earlier, (own[0].astype(jnp.float32), own[1]))
            return (lax.dynamic_update_slice_in_dim(out, acc[0], start, axis=1),
                    lax.dynamic_update_slice_in_dim(lse, acc[1], start, axis=1))

        # *_like keep q's varying manual axes under shard_map (the loop carry must match them).
        init = (jnp.zeros_like(q, jnp.float32), jnp.full_like(q[..., 0], -jnp.inf, jnp.float32))
        out, lse = lax.fori_loop(0, count, row, init)
        return out.astype(q.dtype), lse

    def backward(q, k, v, out, lse, d_out, causal, scale, segments=None):
        plan = split(q, causal, segments)
        if plan is None:
            return kernel.backward(q, k, v, out, lse, d_out, causal, scale, segments)
        size, count, first = plan
        ids = segments[0]

        def row(i, grads):
            start = i * size
            q_i, ids_i = _slice(q, start, size), _slice(ids, start, size)
            o_i, l_i, g_i = _slice(out, start, size), _slice(lse, start, size), _slice(d_out, start, size)
            own = kernel.backward(q_i, _slice(k, start, size), _slice(v, start, size), o_i, l_i, g_i, True, scale,
                                  (ids_i, ids_i))
            grads = tuple(_add(acc, g, start) for acc, g in zip(grads, own))

            def earlier(j, grads):
                dq, dk, dv = grads
                at = j * size
                dq_i, dk_j, dv_j = kernel.backward(q_i, _slice(k, at, size), _slice(v, at, size), o_i, l_i, g_i,
                                                   False, scale, (ids_i, _slice(ids, at, size)))
                return _add(dq, dq_i, start), _add(dk, dk_j, at), _add(dv, dv_j, at)

            return lax.fori_loop(first[i], i, earlier, grads)

        zeros = tuple(jnp.zeros_like(x, jnp.float32) for x in (q, k, v))
        dq, dk, dv = lax.fori_loop(0, count, row, zeros)
        return dq, dk, dv

    return Kernel(kernel.name, forward, backward)
