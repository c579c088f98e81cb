"""The train state (step, params, optimizer state), its shardings and its creation on a mesh."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from reftrain import model
from reftrain.config import ModelConfig
from reftrain.sharding import param_shardings

TrainState = dict[str, Any]  # {"step": int32 [], "params": tree, "opt_state": tree}


def state_shardings(config: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """Returns NamedShardings for every leaf of the train state.

    Optimizer moments are sharded exactly like the parameters they track; counters and other
    scalars are replicated.
    """
    abstract = model.abstract_params(config)
    params = param_shardings(abstract, mesh)
    replicated = NamedSharding(mesh, P())
    opt_state = optax.tree_map_params(
        optimizer,
        lambda _, sharding: sharding,
        jax.eval_shape(optimizer.init, abstract),
        params,
        transform_non_params=lambda _: replicated,
    )
    return {"step": replicated, "params": params, "opt_state": opt_state}


def abstract_state(config: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """The train state as ShapeDtypeStructs carrying their shardings (for restore and AOT)."""
    shapes = jax.eval_shape(lambda: new_state_from(model.abstract_params(config), optimizer))
    return jax.tree.map(
        lambda shape, sharding: jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=sharding),
        shapes,
        state_shardings(config, optimizer, mesh),
    )


def new_state_from(params, optimizer: optax.GradientTransformation) -> TrainState:
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(params)}


def init_state(config: ModelConfig, optimizer, mesh: Mesh, rng: jax.Array, params=None) -> TrainState:
    """Creates the train state directly in its shardings (random params unless `params`)."""
    shardings = state_shardings(config, optimizer, mesh)

    def create(rng, params):
        if params is None:
            params = model.param_initializer(config)(rng)
        params = jax.tree.map(lambda x: x.astype(jnp.dtype(config.param_dtype)), params)
        return new_state_from(params, optimizer)

    if params is not None:
        params = jax.device_put(params, shardings["params"])
    return jax.jit(create, out_shardings=shardings)(rng, params)
