"""Remat policies (reftrain.remat): each keeps the residuals it names and no others, every
policy gives the same gradients, and keeping attention's output stops the backward from
running the cuDNN forward again (deviceless XLA:GPU compile)."""

from __future__ import annotations

import contextlib
import io
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from reftrain.config import REMAT_POLICIES, get_config
from reftrain.layers import DecoderLayer
from reftrain.remat import POLICIES, remat_policy
from reftrain.rope import rope_tables

T = 256
KEPT = {
    "full": set(),
    "save_attention": {"attention_out", "attention_lse"},
    "save_qkv_attention": {"attention_out", "attention_lse", "query", "key", "value"},
    "save_dots": set(),  # matmul outputs, kept by kind rather than by name
    "save_dots_attention": {"attention_out", "attention_lse"},
}


def test_config_names_every_policy():
    assert tuple(POLICIES) == REMAT_POLICIES
    with pytest.raises(ValueError, match="remat_policy must be one of"):
        remat_policy("save_everything")


def _saved_names(policy: str, config) -> tuple[set[str], int]:
    layer = DecoderLayer(config, None)
    x = jax.random.normal(jax.random.key(0), (1, T, config.hidden_size), jnp.bfloat16)
    positions, ids = jnp.arange(T)[None], jnp.ones((1, T), jnp.int32)
    cos, sin = rope_tables(positions, config)
    params = layer.init(jax.random.key(1), x, cos, sin, ids)["params"]

    def loss(params, x):
        return jnp.sum(layer.apply({"params": params}, x, cos, sin, ids)[0].astype(jnp.float32))

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        print_saved_residuals(jax.checkpoint(loss, policy=remat_policy(policy)), params, x)
    lines = printed.getvalue().splitlines()
    dots = sum("output of dot_general" in line for line in lines)
    return set(re.findall(r"named '(\w+)'", printed.getvalue())), dots


@pytest.mark.parametrize("policy", sorted(KEPT))
def test_each_policy_keeps_the_residuals_it_names(policy):
    config = get_config("tiny").replace(attention_impl="blockwise", mlp_chunk=0)
    names, dots = _saved_names(policy, config)
    assert names == KEPT[policy]
    # q, k, v, o and the MLP's gate and up: six matmul outputs kept by the dots policies only.
    assert dots == (6 if policy.startswith("save_dots") else 0)


def test_every_policy_gives_the_same_gradients():
    """Of a layer over four documents, with the MLP in chunks (whose remat follows the policy)."""
    config = get_config("tiny").replace(attention_impl="blockwise", mlp_chunk=64)
    layer = DecoderLayer(config, None)
    x = jax.random.normal(jax.random.key(0), (1, T, config.hidden_size), jnp.bfloat16)
    positions, ids = jnp.tile(jnp.arange(T // 4), 4)[None], jnp.repeat(jnp.arange(1, 5), T // 4)[None]
    cos, sin = rope_tables(positions, config)
    params = layer.init(jax.random.key(1), x, cos, sin, ids)["params"]

    def loss(params, x):
        out = layer.apply({"params": params}, x, cos, sin, ids)[0].astype(jnp.float32)
        return jnp.sum(out * jnp.cos(out))

    want = jax.tree.leaves(jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x))
    # One policy of each kind (the others combine these); offload needs host memory (GPU test below).
    for policy in ("full", "save_attention", "save_dots_attention"):
        got = jax.jit(jax.grad(jax.checkpoint(loss, policy=remat_policy(policy)), argnums=(0, 1)))(params, x)
        for g, w in zip(jax.tree.leaves(got), want):
            np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), rtol=1e-5, atol=1e-6,
                                       err_msg=policy)


@pytest.mark.usefixtures("gpu_aot")
def test_keeping_attention_output_skips_the_cudnn_forward_in_the_backward():
    """Deviceless H100 compile of the 2-layer train step at 4K: full remat runs cuDNN's forward
    twice per layer (once more in the backward), save_attention once; offload moves the layer
    inputs to host memory."""
    from hloscope.cudnn_workspace import BACKWARD, FORWARD
    from hloscope.profiling import profile_program
    calls = {}
    for policy in ("full", "save_attention", "offload_layer_inputs"):
        profile = profile_program("train-step", dict(seq=4096, remat=policy, layers=2),
                                  target="h100-80gb", devices=1)
        kinds = [c["call"] for c in profile["cudnn_workspace"]]
        calls[policy] = (kinds.count(FORWARD), kinds.count(BACKWARD), profile["memory_analysis"])
    assert calls["full"][:2] == (2 * calls["save_attention"][0], calls["save_attention"][1])
    host = calls["offload_layer_inputs"][2]["host_temp_size_in_bytes"]
    assert host >= 2 * 4096 * 4096 * 2  # two layers' bf16 inputs [4096, 4096]
    assert calls["full"][2]["host_temp_size_in_bytes"] == 0
