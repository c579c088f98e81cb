"""The attention contract beyond equality: padding, argument errors, skipped hidden blocks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reftrain.attention import _xla, blockwise_attention, dense_attention
from tests.reftrain.test_attention_properties import Problem, ring_over


def _qkv(batch=1, length=16, q_heads=4, kv_heads=2, head_dim=8, dtype=jnp.float32):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((batch, length, q_heads, head_dim))
    k = rng.standard_normal((batch, length, kv_heads, head_dim))
    v = rng.standard_normal((batch, length, kv_heads, head_dim))
    return (jnp.asarray(x, dtype) for x in (q, k, v))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_padding_outputs_zero_and_gradients_stay_finite(dtype):
    q, k, v = _qkv(length=16, dtype=dtype)
    segment_ids = jnp.array([[0, 0, 1, 1, 1, 0, 2, 2, 2, 2, 0, 3, 0, 0, 0, 0]], jnp.int32)
    padding = np.asarray(segment_ids[0] == 0)
    attentions = {
        "dense": lambda q, k, v: dense_attention(q, k, v, segment_ids=segment_ids),
        "blockwise": lambda q, k, v: blockwise_attention(q, k, v, segment_ids=segment_ids, q_chunk=4, kv_chunk=2),
    }
    for name, attention in attentions.items():
        out = np.asarray(attention(q, k, v), np.float32)
        assert np.all(out[0, padding] == 0), name
        assert np.all(np.abs(out[0, ~padding]).sum(axis=(-1, -2)) > 0), name
        grads = jax.grad(lambda q, k, v: attention(q, k, v).astype(jnp.float32).sum(), argnums=(0, 1, 2))(q, k, v)
        for grad in grads:
            grad = np.asarray(grad, np.float32)
            assert np.isfinite(grad).all(), name
            assert np.all(grad[0, padding] == 0), name  # nothing attends to padding


def test_a_document_never_sees_another():
    q, k, v = _qkv(length=8)
    segment_ids = jnp.array([[1, 1, 1, 1, 2, 2, 2, 2]], jnp.int32)
    out = blockwise_attention(q, k, v, segment_ids=segment_ids, causal=False, q_chunk=2, kv_chunk=2)
    first = blockwise_attention(q[:, :4], k[:, :4], v[:, :4], causal=False, q_chunk=2, kv_chunk=2)
    second = blockwise_attention(q[:, 4:], k[:, 4:], v[:, 4:], causal=False, q_chunk=2, kv_chunk=2)
    np.testing.assert_allclose(out, jnp.concatenate([first, second], axis=1), atol=1e-6)


def test_gqa_group_uses_its_own_kv_head():
    # Query heads 0-1 share kv head 0 and heads 2-3 share kv head 1: changing kv head 1 must
    # change only the outputs of query heads 2 and 3.
    q, k, v = _qkv(length=8, q_heads=4, kv_heads=2)
    out = blockwise_attention(q, k, v, q_chunk=4, kv_chunk=4)
    changed = blockwise_attention(q, k, v.at[:, :, 1].add(1.0), q_chunk=4, kv_chunk=4)
    np.testing.assert_array_equal(out[:, :, :2], changed[:, :, :2])
    assert not np.allclose(out[:, :, 2:], changed[:, :, 2:])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(q_chunk=3, kv_chunk=4), "q_chunk=3 does not divide the local sequence length 16"),
        (dict(q_chunk=4, kv_chunk=5), "kv_chunk=5 does not divide the local sequence length 16"),
        (dict(q_chunk=0, kv_chunk=4), "q_chunk=0"),
    ],
)
def test_bad_chunk_names_the_numbers(kwargs, message):
    q, k, v = _qkv(length=16)
    with pytest.raises(ValueError, match=message):
        blockwise_attention(q, k, v, **kwargs)


def test_bad_head_ratio_names_the_numbers():
    q, k, v = _qkv(q_heads=6, kv_heads=4)
    for attention in (dense_attention, lambda q, k, v: blockwise_attention(q, k, v, q_chunk=4, kv_chunk=4)):
        with pytest.raises(ValueError, match="q heads 6 are not a multiple of kv heads 4"):
            attention(q, k, v)


def test_ring_chunk_must_divide_the_local_shard():
    # 32 tokens over 4 devices: local shards of 8, which a q_chunk of 16 does not divide.
    problem = Problem(1, 32, 2, 1, 8, q_chunk=16, kv_chunk=8, causal=True, segment_ids=None)
    q, k, v = _qkv(length=32, q_heads=2, kv_heads=1)
    with pytest.raises(ValueError, match="q_chunk=16 does not divide the local sequence length 8"):
        ring_over(4, problem)(q, k, v, None)


def _count_computed_blocks(monkeypatch, run) -> int:
    """Returns how many block forwards actually ran (not merely traced) during `run()`."""
    calls = []
    original = _xla.block_forward

    def counting(q, *args):
        jax.debug.callback(lambda: calls.append(1))
        return original(q, *args)

    monkeypatch.setattr(_xla, "block_forward", counting)
    jax.block_until_ready(run())
    return len(calls)


def test_blockwise_skips_blocks_the_causal_mask_hides(monkeypatch):
    q, k, v = _qkv(length=32)
    chunks = 32 // 4
    run = lambda causal: blockwise_attention(q, k, v, causal=causal, q_chunk=4, kv_chunk=4)
    assert _count_computed_blocks(monkeypatch, lambda: run(True)) == chunks * (chunks + 1) // 2
    assert _count_computed_blocks(monkeypatch, lambda: run(False)) == chunks * chunks


def test_ring_skips_blocks_the_causal_mask_hides(monkeypatch):
    # 4 devices x 2 chunks each = 8 chunks of the global sequence: 36 visible block pairs.
    q, k, v = _qkv(length=32)
    problem = Problem(1, 32, 4, 2, 8, q_chunk=4, kv_chunk=4, causal=True, segment_ids=None)
    assert _count_computed_blocks(monkeypatch, lambda: ring_over(4, problem)(q, k, v, None)) == 36
