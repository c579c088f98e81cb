"""`paper-attention`: the structure of the MegaBeam paper's ring attention, to reproduce Appendix A.

A ring `lax.scan` over devices, inside it a scan over Q chunks, inside that a scan over KV
chunks whose `jax.checkpoint`-ed body (behind the `lax.cond` that skips blocks above the
causal diagonal) slices the full-length, replicated segment ids by global chunk offset. There
is no custom VJP: autodiff saves the checkpointed body's inputs, the closed-over segment ids
included, as residuals; coming out of a `cond`, they are not provably loop-invariant, so each
enclosing scan stacks one copy per iteration. No GQA (the codebase had none). Never train with it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hloscope.programs.attention import qkv_gradient, sequence_shape, sequence_sharded_inputs


def paper_ring_attention(q, k, v, segment_ids, *, q_chunk: int, kv_chunk: int, axis_name: str):
    """Returns the local output `[B, L, H, D]`; q, k, v are local shards, segment_ids `[B, S]` full."""
    batch, length, heads, head_dim = q.shape
    ring_size, device = lax.axis_size(axis_name), lax.axis_index(axis_name)
    q_chunks, kv_chunks = length // q_chunk, length // kv_chunk
    scale = head_dim**-0.5
    # Chunks lead, as scan xs: [chunks, B, chunk, H, D].
    chunked = lambda x, size: x.reshape(batch, length // size, size, *x.shape[2:]).swapaxes(0, 1)
    q_blocks = chunked(q, q_chunk)

    def ring_step(carry, step):
        k, v, numerator, denominator, running_max = carry
        source = (device - step) % ring_size

        def q_step(_, block):
            q_block, q_index, numerator, denominator, running_max = block
            q_offset = device * length + q_index * q_chunk
            q_segments = lax.dynamic_slice_in_dim(segment_ids, q_offset, q_chunk, axis=1)

            @jax.checkpoint
            def kv_step(state, kv_block):
                numerator, denominator, running_max = state
                k_block, v_block, kv_index = kv_block
                kv_offset = source * length + kv_index * kv_chunk
                # The full-length segment ids are sliced here, inside the checkpointed body.
                kv_segments = lax.dynamic_slice_in_dim(segment_ids, kv_offset, kv_chunk, axis=1)
                scores = jnp.einsum("bqhd,bkhd->bhqk", q_block, k_block, preferred_element_type=jnp.float32) * scale
                q_pos = q_offset + jnp.arange(q_chunk)
                kv_pos = kv_offset + jnp.arange(kv_chunk)
                visible = (q_segments[:, :, None] == kv_segments[:, None, :])[:, None]
                visible = visible & (q_pos[:, None] >= kv_pos[None, :])
                scores = jnp.where(visible, scores, -1e30)
                block_max = jnp.maximum(running_max, scores.max(axis=-1))
                correction = jnp.exp(running_max - block_max)
                weights = jnp.exp(scores - block_max[..., None])
                numerator = numerator * correction.transpose(0, 2, 1)[..., None] + jnp.einsum(
                    "bhqk,bkhd->bqhd", weights.astype(v.dtype), v_block, preferred_element_type=jnp.float32
                )
                denominator = denominator * correction + weights.sum(axis=-1)
                return (numerator, denominator, block_max), None

            def skip_hidden(state, kv_block):
                # As the codebase did: a block above the causal diagonal is skipped by lax.cond.
                visible = q_offset + q_chunk - 1 >= source * length + kv_block[2] * kv_chunk
                return lax.cond(visible, kv_step, lambda state, _: (state, None), state, kv_block)

            kv_blocks = (chunked(k, kv_chunk), chunked(v, kv_chunk), jnp.arange(kv_chunks))
            state, _ = lax.scan(skip_hidden, (numerator, denominator, running_max), kv_blocks)
            return None, state

        blocks = (q_blocks, jnp.arange(q_chunks), numerator, denominator, running_max)
        _, (numerator, denominator, running_max) = lax.scan(q_step, None, blocks)
        perm = [(i, (i + 1) % ring_size) for i in range(ring_size)]
        k, v = lax.ppermute(k, axis_name, perm), lax.ppermute(v, axis_name, perm)
        return (k, v, numerator, denominator, running_max), None

    numerator = jnp.zeros_like(q_blocks, jnp.float32)
    denominator = jnp.zeros_like(q_blocks[..., 0], jnp.float32).transpose(0, 1, 3, 2)
    running_max = jnp.full_like(denominator, -1e30)
    carry = (k, v, numerator, denominator, running_max)
    (_, _, numerator, denominator, _), _ = lax.scan(ring_step, carry, jnp.arange(ring_size))
    out = numerator / denominator.transpose(0, 1, 3, 2)[..., None]
    return out.swapaxes(0, 1).reshape(q.shape).astype(q.dtype)


def build(mesh: Mesh, **options):
    """Returns (grad of sum(attention) wrt q, k, v by autodiff; abstract q, k, v, full segment_ids).

    `kv_heads` is ignored: the paper's codebase had no GQA, so k and v have as many heads as q.
    """
    shape = sequence_shape(mesh, options)

    def local(q, k, v, segment_ids):
        return paper_ring_attention(q, k, v, segment_ids, q_chunk=shape.q_chunk, kv_chunk=shape.kv_chunk, axis_name="sp")

    replicated = jax.ShapeDtypeStruct((shape.batch, shape.seq), jnp.int32, sharding=NamedSharding(mesh, P()))
    arguments = [*sequence_sharded_inputs(mesh, shape, shape.q_heads), replicated]
    return qkv_gradient(local, mesh, P()), arguments

