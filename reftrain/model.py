"""Mistral decoder (Flax) and the functional surface tools and tests call.

    params = init_params(config, rng)                    # or abstract_params(config)
    logits = forward(config, params, tokens, positions=..., segment_ids=...)
    loss, aux = loss_fn(config, params, batch)           # chunked, masked cross-entropy

Every function takes an optional `mesh` (axes dp, fsdp, tp, sp): without one attention is
dense; with one it runs in a shard_map, as ring attention when sp > 1. Parameter tree:
`embed/embedding [V, D]`, `layers/{attn_norm,mlp_norm}/scale [L, D]`,
`layers/attn/{q,k,v}/kernel [L, D, H, Dh]`, `layers/attn/o/kernel [L, Hq, Dh, D]`,
`layers/mlp/{gate,up}/kernel [L, D, F]`, `layers/mlp/down/kernel [L, F, D]`,
`final_norm/scale [D]`, `lm_head/kernel [D, V]` (absent when embeddings are tied).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from reftrain.config import ModelConfig
from reftrain.layers import DecoderLayer, RMSNorm, constrain
from reftrain.loss import cross_entropy_sums
from reftrain.remat import remat_policy
from reftrain.rope import rope_tables
from reftrain.sharding import (
    ParamReport, batch_spec, check_divisible, param_report, param_shardings, zigzag_permutation,
)


class Mistral(nn.Module):
    """Embedding, scanned decoder layers, final norm. Returns final hidden states `[B, T, D]`."""

    config: ModelConfig
    mesh: Mesh | None = None

    @nn.compact
    def __call__(self, tokens, positions, segment_ids):
        c = self.config
        dtype, param_dtype = jnp.dtype(c.compute_dtype), jnp.dtype(c.param_dtype)
        init = nn.initializers.normal(c.initializer_range)
        embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=dtype, param_dtype=param_dtype, embedding_init=init, name="embed")
        x = constrain(jnp.take(_gathered(embed.embedding.astype(dtype), self.mesh), tokens, axis=0), self.mesh)
        cos, sin = rope_tables(positions, c)
        layer = DecoderLayer
        if c.remat_policy != "none":
            layer = nn.remat(layer, policy=remat_policy(c.remat_policy), prevent_cse=False)
        stack = nn.scan(
            layer,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
            length=c.num_layers,
        )
        x, _ = stack(c, self.mesh, name="layers")(x, cos, sin, segment_ids)
        x = RMSNorm(c.rms_norm_eps, dtype, param_dtype, name="final_norm")(x)
        if not c.tie_embeddings:
            self.param("lm_head", lambda rng: {"kernel": init(rng, (c.hidden_size, c.vocab_size), param_dtype)})
        return x


def _gathered(table: jax.Array, mesh: Mesh | None) -> jax.Array:
    """The embedding table replicated (one bf16 all-gather, as FSDP does for every weight).

    Looking tokens up in the sharded table would give hidden states sharded over D, which XLA
    can only reshard to (batch, sequence) by materialising them whole on every device.
    """
    if mesh is None:
        return table
    return jax.lax.with_sharding_constraint(table, NamedSharding(mesh, P()))


def _inputs(tokens, positions, segment_ids):
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, len], got shape {tokens.shape}")
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    if segment_ids is not None:  # None: one document per row, no document mask
        segment_ids = jnp.asarray(segment_ids, jnp.int32)
    return tokens, jnp.asarray(positions, jnp.int32), segment_ids


def param_initializer(config: ModelConfig):
    """Returns `rng -> params`: the random initialisation, to be traced under jit."""
    tokens = jnp.zeros((1, 8), jnp.int32)
    # Parameters do not depend on the attention implementation; init traces without a mesh.
    shape_only = config.replace(attention_impl="auto")
    return lambda rng: Mistral(shape_only).init(rng, *_inputs(tokens, None, None))["params"]


def init_params(config: ModelConfig, rng: jax.Array, *, mesh: Mesh | None = None) -> dict[str, Any]:
    """Returns freshly initialised parameters; with a mesh, created already sharded."""
    init = param_initializer(config)
    if mesh is None:
        return jax.jit(init)(rng)
    shardings = param_shardings(jax.eval_shape(init, rng), mesh)
    return jax.jit(init, out_shardings=shardings)(rng)


def abstract_params(config: ModelConfig) -> dict[str, Any]:
    """Returns the parameter tree as ShapeDtypeStructs, allocating nothing."""
    return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def parameter_report(config: ModelConfig, mesh: Mesh) -> ParamReport:
    """Returns parameter count and bytes (total, per device) of `config` sharded over `mesh`."""
    return param_report(abstract_params(config), mesh)


def lm_head_kernel(config: ModelConfig, params) -> jax.Array:
    """Returns the `[D, V]` output projection (the embedding transposed when tied)."""
    if config.tie_embeddings:
        return params["embed"]["embedding"].T
    return params["lm_head"]["kernel"]


def sequence_order(config: ModelConfig, mesh: Mesh | None, seq_len: int) -> np.ndarray | None:
    """The token order the model runs in: None for the natural one, or the zigzag permutation
    (`reftrain.sharding.zigzag_permutation`) when `config.sequence_layout` asks for it and the
    sequence is split over sp > 1 devices."""
    if config.sequence_layout != "zigzag" or mesh is None or mesh.shape["sp"] == 1:
        return None
    return zigzag_permutation(seq_len, mesh.shape["sp"])


def _reordered(order: np.ndarray | None, *arrays):
    """Puts `[B, T, ...]` arrays (or None) into the model's token order (a no-op for the natural one)."""
    return arrays if order is None else tuple(None if x is None else jnp.take(x, order, axis=1) for x in arrays)


def hidden_states(config, params, tokens, *, positions=None, segment_ids=None, mesh=None) -> jax.Array:
    """Returns final-normed hidden states `[B, T, D]` in the compute dtype, in the model's
    token order (`sequence_order`: zigzag when configured, so that loss_fn reorders targets).

    tokens, positions, segment_ids: int32 `[B, T]`; positions default to 0..T-1 and restart
    per packed document; segment_ids default to one document (0 marks padding). Positions
    (for RoPE) and the causal mask always use each token's true place in the sequence.
    """
    tokens, positions, segment_ids = _inputs(tokens, positions, segment_ids)
    tokens, positions, segment_ids = _reordered(sequence_order(config, mesh, tokens.shape[1]), tokens, positions, segment_ids)
    if mesh is not None:
        check_divisible(tokens.shape, mesh)
        tokens, positions, segment_ids = (
            None if x is None else jax.lax.with_sharding_constraint(x, NamedSharding(mesh, batch_spec()))
            for x in (tokens, positions, segment_ids)
        )
    return Mistral(config, mesh).apply({"params": params}, tokens, positions, segment_ids)


def forward(config, params, tokens, *, positions=None, segment_ids=None, mesh=None) -> jax.Array:
    """Returns float32 logits `[B, T, V]` (whole: for evaluation and tests, not long training)."""
    hidden = hidden_states(config, params, tokens, positions=positions, segment_ids=segment_ids, mesh=mesh)
    order = sequence_order(config, mesh, hidden.shape[1])
    if order is not None:
        (hidden,) = _reordered(np.argsort(order), hidden)
    kernel = lm_head_kernel(config, params).astype(hidden.dtype)
    return jnp.einsum("btd,dv->btv", hidden, kernel, preferred_element_type=jnp.float32)


def loss_fn(config, params, batch: dict, *, mesh=None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns (mean next-token nll over masked tokens, {"nll_sum", "tokens"}).

    batch: int32 `tokens`, `targets` (the next token of the same document), `positions`,
    `segment_ids` and a `loss_mask` (1 where the prediction counts), all `[B, T]`.
    """
    hidden = hidden_states(
        config, params, batch["tokens"], positions=batch.get("positions"), segment_ids=batch.get("segment_ids"), mesh=mesh
    )
    kernel = lm_head_kernel(config, params).astype(hidden.dtype)
    # Targets are each token's next token in the natural order, computed before any reordering.
    targets, loss_mask = _reordered(
        sequence_order(config, mesh, hidden.shape[1]), jnp.asarray(batch["targets"], jnp.int32), jnp.asarray(batch["loss_mask"])
    )
    nll_sum, count = cross_entropy_sums(hidden, kernel, targets, loss_mask, chunk=config.loss_chunk, mesh=mesh)
    return nll_sum / jnp.maximum(count, 1.0), {"nll_sum": nll_sum, "tokens": count}
