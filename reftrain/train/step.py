"""One jitted, sharded optimizer step with gradient accumulation and a non-finite guard."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from reftrain import model
from reftrain.config import ModelConfig
from reftrain.sharding import batch_spec
from reftrain.train.state import TrainState, state_shardings

BATCH_KEYS = ("tokens", "targets", "positions", "segment_ids", "loss_mask")


def batch_shardings(mesh: Mesh) -> dict[str, NamedSharding]:
    """Shardings of a batch whose leaves are `[accum, batch, len]`."""
    spec = P(None, *batch_spec())
    return {key: NamedSharding(mesh, spec) for key in BATCH_KEYS}


def make_train_step(
    config: ModelConfig, optimizer: optax.GradientTransformation, schedule: optax.Schedule, mesh: Mesh
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """Returns `step(state, batch) -> (state, metrics)`, jitted with explicit shardings.

    batch leaves are `[accum, batch, len]`; micro-batches run under a scan and their gradients
    of the summed nll are added, so the update is that of the mean over every masked token of
    the whole batch. The state is donated. If the loss or the gradient norm is not finite, the
    state is returned unchanged and `metrics["finite"]` is False.
    """

    def nll_sum(params, micro):
        _, aux = model.loss_fn(config, params, micro, mesh=mesh)
        return aux["nll_sum"], aux["tokens"]

    def step(state: TrainState, batch: dict[str, jax.Array]):
        params = state["params"]
        zeros = jax.tree.map(jnp.zeros_like, params)

        def micro_step(carry, micro):
            grads, total, count = carry
            (nll, tokens), g = jax.value_and_grad(nll_sum, has_aux=True)(params, micro)
            return (jax.tree.map(jnp.add, grads, g), total + nll, count + tokens), None

        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
        (grads, total, count), _ = jax.lax.scan(micro_step, init, batch)
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        loss = total / denom
        grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(grads)))
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        new = {"step": state["step"] + 1, "params": optax.apply_updates(params, updates), "opt_state": opt_state}
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
        metrics: dict[str, Any] = {
            "loss": loss,
            "grad_norm": grad_norm,
            "learning_rate": schedule(state["step"]),
            "tokens": count,
            "finite": finite,
        }
        return new, metrics

    shardings = state_shardings(config, optimizer, mesh)
    replicated = NamedSharding(mesh, P())
    return jax.jit(
        step,
        in_shardings=(shardings, batch_shardings(mesh)),
        out_shardings=(shardings, replicated),
        donate_argnums=(0,),
    )
