"""`attention`: gradient of a scalar loss through reftrain's ring attention over the `sp` axis."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hloscope.programs.attention_shape import AttentionShape
from reftrain.attention import resolve_kernel, ring_attention


def sequence_sharded_inputs(mesh: Mesh, shape: AttentionShape, kv_heads: int) -> list[jax.ShapeDtypeStruct]:
    """Returns abstract q `[B, S, Hq, D]`, k, v `[B, S, kv_heads, D]` sharded over `sp` on S."""
    sharding = NamedSharding(mesh, P(None, "sp"))
    dtype = jnp.dtype(shape.dtype)
    q = jax.ShapeDtypeStruct((shape.batch, shape.seq, shape.q_heads, shape.head_dim), dtype, sharding=sharding)
    kv = jax.ShapeDtypeStruct((shape.batch, shape.seq, kv_heads, shape.head_dim), dtype, sharding=sharding)
    return [q, kv, kv]


def qkv_gradient(local, mesh: Mesh, segment_spec: P):
    """Returns grad wrt (q, k, v) of sum(shard_map(local)(q, k, v, segment_ids)), in float32."""
    spec = P(None, "sp")

    def loss(q, k, v, segment_ids):
        out = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, segment_spec), out_specs=spec)(
            q, k, v, segment_ids
        )
        return jnp.sum(out.astype(jnp.float32))

    return jax.grad(loss, argnums=(0, 1, 2))


def sequence_shape(mesh: Mesh, options: dict) -> AttentionShape:
    """Returns the attention options for `mesh`, checked (ValueError names what does not fit)."""
    if "sp" not in mesh.axis_names:
        raise ValueError(f"the attention programs need a mesh axis named 'sp', got {dict(mesh.shape)}")
    shape = AttentionShape(**options).resolved()
    shape.validate(mesh.shape["sp"])
    return shape


def build(mesh: Mesh, **options):
    """Returns (grad of sum(attention) wrt q, k, v; abstract q, k, v, segment_ids)."""
    shape = sequence_shape(mesh, options)
    spec = P(None, "sp")

    # The kernel reftrain would pick on these devices (cuDNN for a GPU target, compiled or not).
    kernel = resolve_kernel(shape.kernel, mesh.devices.flat[0].platform)

    def local(q, k, v, segment_ids):
        return ring_attention(
            q, k, v, segment_ids=segment_ids, q_chunk=shape.q_chunk, kv_chunk=shape.kv_chunk, axis_name="sp",
            kernel=kernel, document_block=shape.document_block,
        )

    segment_ids = jax.ShapeDtypeStruct((shape.batch, shape.seq), jnp.int32, sharding=NamedSharding(mesh, spec))
    arguments = [*sequence_sharded_inputs(mesh, shape, shape.kv_heads), segment_ids]
    return qkv_gradient(local, mesh, spec), arguments

