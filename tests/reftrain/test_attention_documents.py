"""The built-in data at 524,288 tokens over 8 devices (the headline plan) through the cuDNN
kernel's document handling: shards with more documents than its 16 packed slots, which it used
to turn into NaN, are exact.

cuDNN cannot run here: the kernel's bookkeeping runs around the CPU double of cuDNN's two
primitives (tests/reftrain/cudnn_double.py). The packing is checked on the real 64K shards; the
attention (ring of 8, outputs and gradients against dense) on the same rows with every document
shortened 128-fold, which keeps each shard's documents, their order and those crossing shards.
"""

from __future__ import annotations

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from reftrain.attention import _ring, dense_attention, ring_attention
from reftrain.attention._cudnn import cudnn_kernel, document_groups, packed_group

SEQ, DEVICES, ROWS, BATCHES, SLOTS, SHRINK = 524_288, 8, 8, 4, 16, 128


def _documents(shard: np.ndarray) -> int:
    starts = np.concatenate([[True], shard[1:] != shard[:-1]])
    return int(np.sum(starts & (shard != 0)))


@pytest.fixture(scope="module")
def rows():
    """Segment ids `[rows, SEQ]` of the first batches' rows that hold an overflowing shard."""
    from reftrain.data import DEFAULT_SPEC, make_batches

    batches = make_batches(DEFAULT_SPEC, batch_size=ROWS, seq_len=SEQ)
    ids = np.concatenate([next(batches)["segment_ids"] for _ in range(BATCHES)])
    counts = np.array([[_documents(s) for s in row.reshape(DEVICES, -1)] for row in ids])
    assert (counts > SLOTS).sum() >= 10, "the data no longer overflows: this test checks nothing"
    return ids[(counts > SLOTS).any(axis=1)]


def test_real_shards_pack_every_document_once(rows):
    """On the real 64K shards: groups of 16 slots cover every document token exactly once."""
    shards = rows.reshape(-1, SEQ // DEVICES)
    shards = jnp.asarray(shards[[_documents(s) > SLOTS for s in shards]], jnp.int32)
    groups = int(document_groups(shards, SLOTS))
    assert groups == -(-max(_documents(np.asarray(s)) for s in shards) // SLOTS) >= 2
    seen = jnp.zeros(shards.shape, jnp.int32)
    for group in range(groups):
        (seqlen, _, offsets, _), member, (row, position) = packed_group(shards, SLOTS, group)
        seen = seen + member
        sizes = seqlen[seqlen >= 0]  # the used slots of all shards, in order
        assert bool(jnp.all(jnp.where(member, (position >= 0) & (position < sizes[jnp.where(member, row, 0)]), True)))
    assert bool(jnp.all(seen == (shards != 0)))


def _shrink(shard: np.ndarray, factor: int) -> np.ndarray:
    """The shard with every run of equal ids `factor` times shorter (at least one token), the
    longest absorbing the rounding so that the length is `len(shard) // factor`."""
    starts = np.flatnonzero(np.concatenate([[True], shard[1:] != shard[:-1]]))
    lengths = np.diff(np.append(starts, len(shard)))
    short = np.maximum(1, lengths // factor)
    short[np.argmax(short)] += len(shard) // factor - short.sum()
    return np.repeat(shard[starts], short)


@pytest.mark.parametrize("document_block", [0, 128])
def test_real_rows_through_the_cudnn_ring_equal_dense(rows, document_block):
    from tests.reftrain.cudnn_double import PRIMITIVES

    rows = rows[bool(document_block)::2]  # each mode takes half the rows: CI has 2 cores
    ids = np.stack([np.concatenate([_shrink(s, SHRINK) for s in row.reshape(DEVICES, -1)]) for row in rows])
    counts = [_documents(s) for s in ids.reshape(-1, ids.shape[1] // DEVICES)]
    assert max(counts) > SLOTS  # the shrunk shards overflow as the real ones do
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (1, ids.shape[1], 2, 8))
    k, v = (jax.random.normal(key, (1, ids.shape[1], 1, 8)) for key in keys[1:3])
    g = jax.random.normal(keys[3], q.shape)
    mesh = Mesh(np.array(jax.devices()[:DEVICES]), ("sp",))
    local = lambda q, k, v, s: ring_attention(q, k, v, segment_ids=s, q_chunk=128, kv_chunk=128, axis_name="sp",
                                              kernel="cudnn", document_block=document_block)
    ring = jax.shard_map(local, mesh=mesh, in_specs=(P(None, "sp"),) * 4, out_specs=P(None, "sp"))

    def value_and_grads(attention):
        def run(q, k, v, ids):
            loss = lambda q, k, v: jnp.sum(attention(q, k, v, ids) * g)
            return attention(q, k, v, ids), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
        return jax.jit(run)

    with mock.patch.dict(_ring._KERNELS, cudnn=lambda spec: cudnn_kernel(spec, PRIMITIVES)):
        ours = value_and_grads(ring)
        reference = value_and_grads(lambda q, k, v, ids: dense_attention(q, k, v, segment_ids=ids))
        for row in ids:  # one row at a time: the dense reference's [4096, 4096] scores
            row = jnp.asarray(row[None], jnp.int32)
            for a, b in zip(jax.tree.leaves(ours(q, k, v, row)), jax.tree.leaves(reference(q, k, v, row))):
                assert bool(jnp.all(jnp.isfinite(a)))
                assert float(jnp.max(jnp.abs(a - b))) < 2e-5 * max(1.0, float(jnp.max(jnp.abs(b))))


def test_real_rows_train_through_the_model_without_nan(rows):
    """The model's loss and gradients (8-way ring, cuDNN kernel with its default 4 slots on the
    CPU double) on a shrunk real row with overflowing shards: finite, and equal to the XLA
    kernel's, which masks documents without slots."""
    from reftrain import model
    from reftrain.config import get_config
    from reftrain.sharding import make_mesh
    from tests.reftrain.cudnn_double import PRIMITIVES

    ids = np.concatenate([_shrink(s, SHRINK) for s in rows[0].reshape(DEVICES, -1)])[None]
    assert max(_documents(s) for s in ids.reshape(DEVICES, -1)) > 4  # more documents than slots
    starts = np.concatenate([[True], ids[0, 1:] != ids[0, :-1]])
    positions = np.arange(ids.shape[1]) - np.maximum.accumulate(np.where(starts, np.arange(ids.shape[1]), 0))
    tokens = np.random.default_rng(0).integers(0, 256, ids.shape)
    same_document = np.concatenate([ids[:, 1:] == ids[:, :-1], np.zeros((1, 1), bool)], axis=1)
    batch = {"tokens": jnp.asarray(tokens, jnp.int32), "targets": jnp.asarray(np.roll(tokens, -1, axis=1), jnp.int32),
             "positions": jnp.asarray(positions[None], jnp.int32), "segment_ids": jnp.asarray(ids, jnp.int32),
             "loss_mask": jnp.asarray(same_document & (ids > 0), jnp.float32)}
    config = get_config("tiny", vocab_size=256, hidden_size=32, intermediate_size=64, num_q_heads=2, num_kv_heads=1,
                        head_dim=16, num_layers=2, compute_dtype="float32", q_chunk=128, kv_chunk=128, loss_chunk=128,
                        mlp_chunk=0)
    mesh = make_mesh(sp=DEVICES)
    params = model.init_params(config, jax.random.key(0), mesh=mesh)

    def loss_and_grads(kernel):
        settings = config.replace(attention_kernel=kernel)
        return jax.jit(jax.value_and_grad(lambda p: model.loss_fn(settings, p, batch, mesh=mesh)[0]))(params)

    with mock.patch.dict(_ring._KERNELS, cudnn=lambda spec: cudnn_kernel(spec, PRIMITIVES)):
        loss, grads = loss_and_grads("cudnn")
    want_loss, want_grads = loss_and_grads("xla")
    assert np.isfinite(float(loss)) and all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert abs(float(loss) - float(want_loss)) < 1e-5 * abs(float(want_loss))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        assert float(jnp.max(jnp.abs(a - b))) < 1e-4 * max(1.0, float(jnp.max(jnp.abs(b))))
