"""blockwise == dense and ring == dense, for outputs and gradients, on random problems."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st
from jax.sharding import Mesh, PartitionSpec as P

from reftrain.attention import blockwise_attention, dense_attention, ring_attention
from tests.reftrain.strategies import Problem, problems

# Largest error allowed, relative to the reference's largest magnitude (at least 1). bfloat16
# inputs keep 8 significant bits and the blocks round probabilities to bfloat16 before the
# value matmul, as fused kernels do; float32 differs only by summation order.
TOLERANCE = {jnp.float32: 2e-5, jnp.bfloat16: 4e-2}


def _inputs(problem: Problem, dtype, seed: int):
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    b, n = problem.batch, problem.length
    q = jax.random.normal(keys[0], (b, n, problem.q_heads, problem.head_dim)).astype(dtype)
    k = jax.random.normal(keys[1], (b, n, problem.kv_heads, problem.head_dim)).astype(dtype)
    v = jax.random.normal(keys[2], (b, n, problem.kv_heads, problem.head_dim)).astype(dtype)
    cotangent = jax.random.normal(keys[3], q.shape).astype(dtype)
    segment_ids = None if problem.segment_ids is None else jnp.asarray(problem.segment_ids)
    return q, k, v, cotangent, segment_ids


def _value_and_grads(attention, q, k, v, cotangent):
    """Returns (out, (dq, dk, dv)) of `sum(attention(q, k, v) * cotangent)`."""
    def loss(q, k, v):
        out = attention(q, k, v)
        return jnp.sum(out.astype(jnp.float32) * cotangent.astype(jnp.float32)), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


def _assert_close(actual, expected, dtype, what):
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    assert np.isfinite(actual).all(), f"{what}: non-finite values"
    error = np.abs(actual - expected).max() / max(1.0, np.abs(expected).max())
    assert error <= TOLERANCE[dtype], f"{what}: relative error {error:.2e} > {TOLERANCE[dtype]:.0e}"


def _check_against_dense(problem: Problem, dtype, seed: int, attention) -> None:
    q, k, v, cotangent, segment_ids = _inputs(problem, dtype, seed)
    # The reference sees the same (possibly bfloat16-rounded) inputs, computed in float32.
    upcast = [x.astype(jnp.float32) for x in (q, k, v, cotangent)]
    reference = lambda q, k, v: dense_attention(q, k, v, segment_ids=segment_ids, causal=problem.causal)
    expected_out, expected_grads = _value_and_grads(reference, *upcast)
    out, grads = _value_and_grads(lambda q, k, v: attention(q, k, v, segment_ids), q, k, v, cotangent)
    assert out.dtype == dtype and out.shape == q.shape
    _assert_close(out, expected_out, dtype, "output")
    for name, grad, expected in zip(("dq", "dk", "dv"), grads, expected_grads):
        assert grad.dtype == dtype
        _assert_close(grad, expected, dtype, name)


dtypes = st.sampled_from([jnp.float32, jnp.bfloat16])
seeds = st.integers(0, 2**16)


@given(problems(max_local=64), dtypes, seeds)
def test_blockwise_matches_dense(problem: Problem, dtype, seed: int):
    def blockwise(q, k, v, segment_ids):
        return blockwise_attention(
            q, k, v, segment_ids=segment_ids, causal=problem.causal,
            q_chunk=problem.q_chunk, kv_chunk=problem.kv_chunk,
        )

    _check_against_dense(problem, dtype, seed, blockwise)


def ring_over(devices: int, problem: Problem):
    """Returns f(q, k, v, segment_ids) running ring attention over a `devices`-long `sp` axis."""
    mesh = Mesh(np.array(jax.devices()[:devices]), ("sp",))
    spec = P(None, "sp")

    def local(q, k, v, segment_ids):
        return ring_attention(
            q, k, v, segment_ids=segment_ids, causal=problem.causal,
            q_chunk=problem.q_chunk, kv_chunk=problem.kv_chunk, axis_name="sp",
        )

    def ring(q, k, v, segment_ids):
        if segment_ids is None:
            return jax.shard_map(
                lambda q, k, v: local(q, k, v, None), mesh=mesh, in_specs=(spec,) * 3, out_specs=spec
            )(q, k, v)
        return jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 4, out_specs=spec)(q, k, v, segment_ids)

    return ring


@pytest.mark.parametrize("devices", [2, 4, 8])
@given(data=st.data(), dtype=dtypes, seed=seeds)
def test_ring_matches_dense(devices: int, data, dtype, seed: int):
    problem = data.draw(problems(shards=devices, max_local=16))
    _check_against_dense(problem, dtype, seed, ring_over(devices, problem))
