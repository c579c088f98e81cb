"""The chunked cross-entropy equals the plain one, with and without a mesh (vocabulary over tp)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reftrain.loss import cross_entropy_sums
from reftrain.sharding import make_mesh

VOCAB, HIDDEN = 64, 16


def plain_sums(hidden, kernel, targets, mask):
    logits = jnp.einsum("btd,dv->btv", hidden.astype(jnp.float32), kernel.astype(jnp.float32))
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * mask), jnp.sum(mask)


def inputs(seed: int, batch: int, length: int, keep: float):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.standard_normal((batch, length, HIDDEN)) * 2, jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((HIDDEN, VOCAB)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, VOCAB, (batch, length)), jnp.int32)
    mask = jnp.asarray(rng.random((batch, length)) < keep, jnp.float32)
    return hidden, kernel, targets, mask


@given(
    seed=st.integers(0, 2**31 - 1),
    length_chunks=st.sampled_from([(8, 1), (8, 2), (16, 4), (16, 16), (24, 8)]),
    keep=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_chunked_equals_plain(seed, length_chunks, keep):
    length, chunk = length_chunks
    hidden, kernel, targets, mask = inputs(seed, 2, length, keep)
    total, count = cross_entropy_sums(hidden, kernel, targets, mask, chunk=chunk)
    want_total, want_count = plain_sums(hidden, kernel, targets, mask)
    assert float(count) == float(want_count)
    np.testing.assert_allclose(float(total), float(want_total), rtol=1e-5, atol=1e-5)
    grads = jax.grad(lambda h, k: cross_entropy_sums(h, k, targets, mask, chunk=chunk)[0], argnums=(0, 1))(hidden, kernel)
    want = jax.grad(lambda h, k: plain_sums(h, k, targets, mask)[0], argnums=(0, 1))(hidden, kernel)
    for got, expected in zip(grads, want):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("axes", [{"sp": 4, "tp": 2}, {"fsdp": 2, "sp": 2, "tp": 2}, {"dp": 2, "sp": 4}])
def test_sharded_equals_plain(axes):
    mesh = make_mesh(**axes)
    hidden, kernel, targets, mask = inputs(7, 2, 32, 0.5)

    @jax.jit
    def sharded(hidden, kernel):
        return cross_entropy_sums(hidden, kernel, targets, mask, chunk=4, mesh=mesh)[0]

    np.testing.assert_allclose(float(sharded(hidden, kernel)), float(plain_sums(hidden, kernel, targets, mask)[0]), rtol=1e-5)
    grads = jax.jit(jax.grad(sharded, argnums=(0, 1)))(hidden, kernel)
    want = jax.grad(lambda h, k: plain_sums(h, k, targets, mask)[0], argnums=(0, 1))(hidden, kernel)
    for got, expected in zip(grads, want):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-4, atol=1e-5)


def test_chunk_is_the_largest_divisor_of_the_length():
    hidden, kernel, targets, mask = inputs(0, 1, 12, 1.0)
    total, _ = cross_entropy_sums(hidden, kernel, targets, mask, chunk=8)  # runs with 6
    np.testing.assert_allclose(float(total), float(plain_sums(hidden, kernel, targets, mask)[0]), rtol=1e-5)
    jaxpr = str(jax.make_jaxpr(lambda h: cross_entropy_sums(h, kernel, targets, mask, chunk=8))(hidden))
    assert "f32[6,64]" in jaxpr and "f32[12,64]" not in jaxpr, "logits must exist one 6-token chunk at a time"


def test_chunk_counts_tokens_of_the_whole_batch():
    """A chunk is `chunk` tokens across rows, not `chunk` positions of every row: 64 rows with a
    2,048-token chunk once made [64, 2048, 32000] float32 logits (16.8 GB) in the small preset."""
    hidden, kernel, targets, mask = inputs(3, 4, 8, 0.7)
    total, count = cross_entropy_sums(hidden, kernel, targets, mask, chunk=8)
    want_total, want_count = plain_sums(hidden, kernel, targets, mask)
    assert float(count) == float(want_count)
    np.testing.assert_allclose(float(total), float(want_total), rtol=1e-5)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda h: cross_entropy_sums(h, kernel, targets, mask, chunk=8)[0]))(hidden))
    assert "f32[8,64]" in jaxpr
    assert "f32[4,8,64]" not in jaxpr and "f32[32,64]" not in jaxpr, "logits of the whole batch at once"
