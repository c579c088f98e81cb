"""Flax modules of the Mistral decoder: RMSNorm, GQA attention with RoPE, gated MLP, a layer.

Shapes: B batch, T length, D hidden, Hq/Hkv heads, Dh head_dim, F intermediate size.
Parameters are stored in `param_dtype` and used in `compute_dtype`.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import Mesh

from reftrain.attention import AttentionSpec, dense_attention
from reftrain.attention import attend as attend_shards
from reftrain.config import ATTENTION_IMPLS, ModelConfig
from reftrain.execution import fit_chunk
from reftrain.remat import remat_policy
from reftrain.rope import apply_rope
from reftrain.sharding import activation_spec, heads_spec


def _dtypes(config: ModelConfig) -> dict[str, Any]:
    return {"dtype": jnp.dtype(config.compute_dtype), "param_dtype": jnp.dtype(config.param_dtype)}


class RMSNorm(nn.Module):
    """x / rms(x) * scale, with the statistics in float32 (as Hugging Face Mistral)."""

    eps: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return x32.astype(self.dtype) * scale.astype(self.dtype)


#: Attention implementations registered from outside reftrain, by name: (function called inside
#: the shard_map as f(q, k, v, segment_ids, *, q_chunk, kv_chunk, axis_name), whether it takes
#: the full-length segment ids instead of the local shard).
EXTRA_ATTENTION: dict[str, tuple[Callable, bool]] = {}


def register_attention(name: str, local: Callable, *, full_segment_ids: bool = False) -> None:
    """Makes `config.attention_impl=name` run `local` under the model's shard_map (sp > 1)."""
    EXTRA_ATTENTION[name] = (local, full_segment_ids)


def attend(config: ModelConfig, mesh: Mesh | None, q, k, v, segment_ids) -> jax.Array:
    """Causal GQA attention `[B, T, Hq, Dh]` of RoPE'd q, k, v, chosen by mesh and config.

    Without a mesh: dense (the reference) unless `attention_impl="blockwise"`. With a mesh:
    a shard_map over (batch, sequence, heads); ring attention over `sp` when it is larger
    than 1, blockwise attention otherwise (or dense if `attention_impl="dense"`).
    """
    impl = config.attention_impl
    if impl not in ATTENTION_IMPLS and impl not in EXTRA_ATTENTION:
        known = ", ".join([*ATTENTION_IMPLS, *EXTRA_ATTENTION])
        raise ValueError(f"unknown attention_impl {impl!r}; known: {known}")
    if impl in EXTRA_ATTENTION and mesh is None:
        raise ValueError(f"attention_impl {impl!r} needs a mesh")
    platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
    if mesh is None:
        if impl == "blockwise":
            return attend_shards(q, k, v, AttentionSpec.of(config.execution, q.shape[1], platform=platform), segment_ids)
        return dense_attention(q, k, v, segment_ids=segment_ids)

    sp = mesh.shape["sp"]
    local_len = q.shape[1] // sp
    if q.shape[1] % sp:
        raise ValueError(f"sequence length {q.shape[1]} is not divisible by sp={sp}")
    spec = AttentionSpec.of(config.execution, local_len, axis_name="sp" if sp > 1 else None, platform=platform)

    heads = heads_spec()
    segment_spec = jax.sharding.PartitionSpec(heads[0], heads[1])
    if impl in EXTRA_ATTENTION:
        extra, full_segment_ids = EXTRA_ATTENTION[impl]
        segment_spec = jax.sharding.PartitionSpec(heads[0]) if full_segment_ids else segment_spec

    def local(q, k, v, segment_ids):
        if impl in EXTRA_ATTENTION:
            return extra(q, k, v, segment_ids, q_chunk=spec.q_chunk, kv_chunk=spec.kv_chunk, axis_name="sp")
        if impl == "dense" and sp == 1:
            return dense_attention(q, k, v, segment_ids=segment_ids)
        return attend_shards(q, k, v, spec, segment_ids)  # blockwise on one shard, the ring over sp

    if segment_ids is None:  # one document per row: no document mask (cuDNN's fastest path)
        return jax.shard_map(lambda q, k, v: local(q, k, v, None), mesh=mesh, in_specs=(heads,) * 3, out_specs=heads)(q, k, v)
    return jax.shard_map(local, mesh=mesh, in_specs=(heads, heads, heads, segment_spec), out_specs=heads)(
        q, k, v, segment_ids
    )


class Attention(nn.Module):
    """Grouped-query self-attention with half-split RoPE; q/k/v kernels `[D, H, Dh]`."""

    config: ModelConfig
    mesh: Mesh | None

    @nn.compact
    def __call__(self, x, cos, sin, segment_ids):
        c = self.config
        init = nn.initializers.normal(c.initializer_range)

        def proj(name, heads):
            return nn.DenseGeneral((heads, c.head_dim), use_bias=False, kernel_init=init, name=name, **_dtypes(c))(x)

        # Residual names for the remat policies (reftrain.remat).
        q = checkpoint_name(apply_rope(proj("q", c.num_q_heads), cos, sin), "query")
        k = checkpoint_name(apply_rope(proj("k", c.num_kv_heads), cos, sin), "key")
        v = checkpoint_name(proj("v", c.num_kv_heads), "value")
        out = attend(c, self.mesh, q, k, v, segment_ids)
        return nn.DenseGeneral(c.hidden_size, axis=(-2, -1), use_bias=False, kernel_init=init, name="o", **_dtypes(c))(
            out.astype(x.dtype)
        )


class MLP(nn.Module):
    """SiLU-gated MLP: down(silu(gate(x)) * up(x)); kernels `[D, F]`, `[D, F]`, `[F, D]`.

    With `config.mlp_chunk`, each device runs the MLP over its tokens in chunks of at most that
    many, each rematerialised as the remat policy says: under "full" the three
    `[local tokens, F]` intermediates (10.5 GiB per device for Mistral-7B at 1M tokens on 8
    devices) then exist one chunk at a time.
    """

    config: ModelConfig
    mesh: Mesh | None = None

    @nn.compact
    def __call__(self, x):
        c = self.config
        init = nn.initializers.normal(c.initializer_range)
        dtype, param_dtype = jnp.dtype(c.compute_dtype), jnp.dtype(c.param_dtype)

        def kernel(name, shape):
            return self.param(name, lambda rng: {"kernel": init(rng, shape, param_dtype)})["kernel"].astype(dtype)

        gate, up = kernel("gate", (c.hidden_size, c.intermediate_size)), kernel("up", (c.hidden_size, c.intermediate_size))
        down = kernel("down", (c.intermediate_size, c.hidden_size))

        def mlp(x):
            x = x.astype(dtype)
            return (nn.silu(checkpoint_name(x @ gate, "mlp_gate")) * checkpoint_name(x @ up, "mlp_up")) @ down

        batch, length, hidden = x.shape
        sp = 1 if self.mesh is None else self.mesh.shape["sp"]
        local = length // sp
        chunk = fit_chunk(c.mlp_chunk, local) if c.mlp_chunk else local
        if chunk == local:
            return mlp(x)
        # [B, T, D] -> [n, B, sp, chunk, D]: chunk j of every device's shard, so the loop runs
        # over an unsharded axis and each step stays local to its device.
        chunks = jnp.moveaxis(x.reshape(batch, sp, local // chunk, chunk, hidden), 2, 0)
        if self.mesh is not None:
            spec = jax.sharding.PartitionSpec(None, activation_spec()[0], "sp", None, None)
            chunks = jax.lax.with_sharding_constraint(chunks, jax.sharding.NamedSharding(self.mesh, spec))
        # Each chunk keeps what the layer's remat policy keeps ("full": nothing, so one chunk's
        # [chunk, F] intermediates exist at a time; "none": everything, as without chunks).
        policy = remat_policy(c.remat_policy)
        out = jax.lax.map(mlp if c.remat_policy == "none" else jax.checkpoint(mlp, policy=policy), chunks)
        return jnp.moveaxis(out, 0, 2).reshape(batch, length, hidden)


class DecoderLayer(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(x)). Scan-compatible."""

    config: ModelConfig
    mesh: Mesh | None

    @nn.compact
    def __call__(self, x, cos, sin, segment_ids):
        c = self.config
        norm = {"eps": c.rms_norm_eps, **_dtypes(c)}
        x = checkpoint_name(x, "layer_input")
        x = x + Attention(c, self.mesh, name="attn")(RMSNorm(name="attn_norm", **norm)(x), cos, sin, segment_ids)
        x = x + MLP(c, self.mesh, name="mlp")(RMSNorm(name="mlp_norm", **norm)(x))
        x = constrain(x, self.mesh)
        return x, None


def constrain(x: jax.Array, mesh: Mesh | None) -> jax.Array:
    """Pins hidden states `[B, T, D]` to batch over (dp, fsdp) and sequence over sp."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, activation_spec()))
