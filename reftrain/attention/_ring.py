"""Blockwise and ring attention with a custom VJP.

Ring attention keeps each device's Q shard in place and rotates K, V and their segment ids
around the mesh axis with `ppermute`, so no device ever holds full-length segment ids. The
backward pass rotates dK and dV along with K and V and brings them home after a full turn.
Residuals are the local shards and the float32 log-sum-exp: nothing is stacked per ring step
or per chunk (autodiff through the loops would stack one residual per iteration; see
docs/attention.md). Blockwise attention is the same computation on a ring of one device.
"""

from __future__ import annotations

from functools import partial
from typing import Hashable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from reftrain.attention._chunked import Chunking, Grads, shard_backward, shard_forward
from reftrain.attention._fused import LAYOUTS, FusedSpec, fused_ring_attention
from reftrain.attention._kernels import resolve_kernel
from reftrain.attention._masks import check_chunks, check_shapes, default_segment_ids


class _Ring(NamedTuple):
    """Static configuration: how blocks are cut and which mesh axis (None: no ring)."""

    chunking: Chunking
    axis_name: Hashable | None
    layout: str = "contiguous"

    def size(self) -> int:
        return 1 if self.axis_name is None else lax.axis_size(self.axis_name)

    def index(self) -> jax.Array:
        return jnp.int32(0) if self.axis_name is None else lax.axis_index(self.axis_name)

    def rotate(self, tree):
        """Sends every array of `tree` to the next device of the ring (i -> i + 1)."""
        if self.axis_name is None:
            return tree
        n = self.size()
        perm = [(i, (i + 1) % n) for i in range(n)]
        return jax.tree.map(lambda x: lax.ppermute(x, self.axis_name, perm), tree)

    def positions(self, shard: jax.Array, length: int) -> jax.Array:
        """Returns the global token indices `[length]` of device `shard`'s tokens.

        Contiguous: `[shard*length, (shard+1)*length)`. Zigzag: the sequence is cut in 2N
        chunks of length/2 and device i holds chunks i and 2N-1-i (both ascending, so the
        visible KV chunks stay a prefix for `_visible_chunks`).
        """
        if self.layout == "contiguous":
            return shard * length + jnp.arange(length, dtype=jnp.int32)
        half = length // 2
        chunk_ids = jnp.stack([shard, 2 * self.size() - 1 - shard])
        return (chunk_ids[:, None] * half + jnp.arange(half, dtype=jnp.int32)).reshape(length)

    def source(self, step) -> jax.Array:
        """Returns which device's KV shard this device holds at ring step `step`."""
        return (self.index() - step) % self.size()


def _forward(ring: _Ring, q, k, v, segment_ids):
    """Returns (out in q's dtype `[B, L, Hq, D]`, lse f32 `[B, L, Hq]`) for the local Q shard."""
    length = q.shape[1]
    q_positions = ring.positions(ring.index(), length)

    def fold(step, kv, out, lse):
        k, v, kv_segment_ids = kv
        kv_positions = ring.positions(ring.source(step), length)
        return shard_forward(
            q, k, v, segment_ids, kv_segment_ids, q_positions, kv_positions, out, lse, ring.chunking
        )

    def ring_step(step, carry):
        kv, out, lse = carry
        next_kv = ring.rotate(kv)  # issued before the compute so the transfer can overlap it
        return (next_kv, *fold(step, kv, out, lse))

    # *_like keeps q's varying-manual-axes type, which the loop carries must match.
    out = jnp.zeros_like(q, jnp.float32)
    lse = jnp.full_like(q[..., 0], -jnp.inf, jnp.float32)
    n = ring.size()
    kv, out, lse = lax.fori_loop(0, n - 1, ring_step, ((k, v, segment_ids), out, lse))
    out, lse = fold(n - 1, kv, out, lse)
    return out.astype(q.dtype), lse


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(ring: _Ring, q, k, v, segment_ids):
    return _forward(ring, q, k, v, segment_ids)[0]


def _attention_fwd(ring: _Ring, q, k, v, segment_ids):
    out, lse = _forward(ring, q, k, v, segment_ids)
    return out, (q, k, v, segment_ids, out, lse)


def _attention_bwd(ring: _Ring, residuals, d_out):
    q, k, v, segment_ids, out, lse = residuals
    length = q.shape[1]
    q_positions = ring.positions(ring.index(), length)
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)

    def fold(step, kv, grads):
        k, v, kv_segment_ids = kv
        kv_positions = ring.positions(ring.source(step), length)
        return shard_backward(
            q, k, v, segment_ids, kv_segment_ids, q_positions, kv_positions,
            d_out, lse, delta, grads, ring.chunking,
        )

    def ring_step(step, carry):
        kv, grads = carry
        grads = fold(step, kv, grads)
        # dK and dV travel with the shard they belong to.
        next_kv, (dk, dv) = ring.rotate((kv, (grads.dk, grads.dv)))
        return next_kv, Grads(grads.dq, dk, dv)

    zeros = lambda x: jnp.zeros_like(x, jnp.float32)
    n = ring.size()
    kv, grads = lax.fori_loop(0, n - 1, ring_step, ((k, v, segment_ids), Grads(zeros(q), zeros(k), zeros(v))))
    grads = fold(n - 1, kv, grads)
    dk, dv = ring.rotate((grads.dk, grads.dv))  # the last turn brings them home
    return grads.dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_attention.defvjp(_attention_fwd, _attention_bwd)


def _dispatch(q, k, v, segment_ids, causal, q_chunk, kv_chunk, axis_name, kernel, layout, max_documents,
              document_block) -> jax.Array:
    """Runs the fused-kernel ring when the kernel is cuDNN and the mask causal, our chunked XLA
    loops otherwise."""
    check_shapes(q, k, v, segment_ids)
    check_chunks(q.shape[1], q_chunk, kv_chunk)
    if layout not in LAYOUTS:
        raise ValueError(f"sequence layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    if layout == "zigzag" and q.shape[1] % 2:
        raise ValueError(f"zigzag layout needs an even local length, got {q.shape[1]}")
    kernel = resolve_kernel(kernel)
    scale = q.shape[3] ** -0.5
    if kernel == "cudnn" and causal:
        spec = FusedSpec(kernel, layout, int(q_chunk), int(kv_chunk), scale, axis_name, int(max_documents),
                         int(document_block))
        return fused_ring_attention(spec, q, k, v, None if segment_ids is None else segment_ids.astype(jnp.int32))
    chunking = Chunking(bool(causal), int(q_chunk), int(kv_chunk), scale)
    return _attention(_Ring(chunking, axis_name, layout), q, k, v, default_segment_ids(q, segment_ids))


def blockwise_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    segment_ids: jax.Array | None = None,
    causal: bool = True,
    q_chunk: int,
    kv_chunk: int,
    kernel: str = "auto",
    max_documents: int = 16,
    document_block: int = 0,
) -> jax.Array:
    """Returns attention `[batch, len, q_heads, head_dim]` computed in Q x KV chunks.

    Same arguments and result as `dense_attention`; never builds a `[len, len]` matrix.
    Softmax statistics are float32. Raises ValueError if a chunk size does not divide `len`.
    `kernel`: "xla" (our chunked loops), "cudnn" (one fused cuDNN call; GPU only, used when
    segment_ids is None and causal), or "auto" (cuDNN on a GPU backend, else xla).
    `max_documents`: with cuDNN and segment_ids, the most documents a row may hold (cuDNN's
    packed mode is compiled for it; its memory grows with it; a row with more is NaN).
    `document_block`: with cuDNN and segment_ids, run a shard with itself in blocks of this many
    tokens (0: in one call): packed-mode memory then follows the block (docs/gpu.md).
    """
    return _dispatch(q, k, v, segment_ids, causal, q_chunk, kv_chunk, None, kernel, "contiguous", max_documents,
                     document_block)


def ring_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    segment_ids: jax.Array | None = None,
    causal: bool = True,
    q_chunk: int,
    kv_chunk: int,
    axis_name: Hashable,
    kernel: str = "auto",
    layout: str = "contiguous",
    max_documents: int = 16,
    document_block: int = 0,
) -> jax.Array:
    """Returns this device's shard of attention `[batch, local_len, q_heads, head_dim]`.

    Call inside `shard_map` with the sequence sharded contiguously over `axis_name`: q, k, v
    and segment_ids are local shards (device i holds tokens `[i*local_len, (i+1)*local_len)`).
    K, V and their segment ids rotate around the ring; the result equals `dense_attention` on
    the gathered sequence. With `layout="zigzag"` device i holds the sequence's chunks i and
    2N-1-i (of length local_len/2), which balances the causal work (`reftrain.sharding
    .zigzag_order` permutes a sequence into that order). `kernel`, `max_documents` and
    `document_block` as in blockwise_attention.
    """
    return _dispatch(q, k, v, segment_ids, causal, q_chunk, kv_chunk, axis_name, kernel, layout, max_documents,
                     document_block)
