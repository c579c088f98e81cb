"""The ring attention's backward holds the local shard plus a block, never per-step residuals."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from reftrain.attention import ring_attention

DEVICES, BATCH, Q_HEADS, KV_HEADS, HEAD_DIM = 8, 1, 8, 2, 32
Q_CHUNK, KV_CHUNK = 64, 128
# The float32 accumulators (out or dq) are one local q shard each; everything else is smaller.
LARGEST_BUFFER_IN_Q_SHARDS = 1.0

_ITEMSIZE = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2,
             "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_ARRAY = re.compile(r"\b(" + "|".join(_ITEMSIZE) + r")\[([0-9,]*)\]")


def _largest_array_bytes(hlo_text: str) -> tuple[int, str]:
    """Returns (bytes, text) of the largest array shape written anywhere in HLO text."""
    best = (0, "")
    for match in _ARRAY.finditer(hlo_text):
        dims = [int(d) for d in match.group(2).split(",") if d]
        best = max(best, (int(np.prod(dims, dtype=np.int64)) * _ITEMSIZE[match.group(1)], match.group(0)))
    return best


def _compile_ring_gradient(local_len: int):
    mesh = Mesh(np.array(jax.devices()[:DEVICES]), ("sp",))
    spec = P(None, "sp")

    def loss(q, k, v, segment_ids):
        out = jax.shard_map(
            lambda q, k, v, s: ring_attention(
                q, k, v, segment_ids=s, q_chunk=Q_CHUNK, kv_chunk=KV_CHUNK, axis_name="sp"
            ),
            mesh=mesh, in_specs=(spec,) * 4, out_specs=spec,
        )(q, k, v, segment_ids)
        return out.astype(jnp.float32).sum()

    length = local_len * DEVICES
    sharded = NamedSharding(mesh, spec)
    args = [
        jax.ShapeDtypeStruct((BATCH, length, Q_HEADS, HEAD_DIM), jnp.bfloat16, sharding=sharded),
        jax.ShapeDtypeStruct((BATCH, length, KV_HEADS, HEAD_DIM), jnp.bfloat16, sharding=sharded),
        jax.ShapeDtypeStruct((BATCH, length, KV_HEADS, HEAD_DIM), jnp.bfloat16, sharding=sharded),
        jax.ShapeDtypeStruct((BATCH, length), jnp.int32, sharding=sharded),
    ]
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args).compile()


def test_backward_memory_grows_linearly_with_no_stacked_residuals():
    local_len = 1024
    small, large = _compile_ring_gradient(local_len), _compile_ring_gradient(2 * local_len)
    ratio = large.memory_analysis().temp_size_in_bytes / small.memory_analysis().temp_size_in_bytes
    assert ratio <= 2.2, f"temp bytes grew {ratio:.2f}x for 2x the local length"

    for compiled, length in ((small, local_len), (large, 2 * local_len)):
        q_shard_f32 = BATCH * length * Q_HEADS * HEAD_DIM * 4
        largest, shape = _largest_array_bytes(compiled.as_text())
        assert largest <= LARGEST_BUFFER_IN_Q_SHARDS * q_shard_f32, (
            f"largest buffer {shape} is {largest / q_shard_f32:.2f} local q shards in float32"
        )
