"""The ring in both layouts equals dense attention with either kernel: ours (xla) and cuDNN's
bookkeeping (packed documents, groups of them, blocks) around a CPU double of cuDNN's two
primitives (tests/reftrain/cudnn_double.py); on a GPU, real cuDNN against dense (skipped
elsewhere: run on the device machine with JAX_PLATFORMS=cuda)."""

from __future__ import annotations

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st
from jax.sharding import Mesh, PartitionSpec as P

from reftrain.attention import (AttentionSpec, _ring, blockwise_attention, dense_attention, resolve_kernel,
                                ring_attention, shard_kernel)
from reftrain.attention._cudnn import blocked, cudnn_kernel, document_groups, packed_group, shared_document
from reftrain.sharding import zigzag_permutation

on_gpu = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs an NVIDIA GPU (cuDNN)")


def _qkv(seed, length, q_heads, kv_heads, dim, dtype=jnp.float32, batch=1):
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (batch, length, q_heads, dim)).astype(dtype)
    k = jax.random.normal(keys[1], (batch, length, kv_heads, dim)).astype(dtype)
    v = jax.random.normal(keys[2], (batch, length, kv_heads, dim)).astype(dtype)
    return q, k, v, jax.random.normal(keys[3], q.shape).astype(dtype)


def _value_and_grads(attention, q, k, v, g):
    def loss(q, k, v):
        out = attention(q, k, v)
        return jnp.sum(out.astype(jnp.float32) * g.astype(jnp.float32)), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


def _max_error(got, want):
    return max(float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
               for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))


def _sharded(local, devices, layout, length, segment_ids=None):
    """Runs `local` over a ring of `devices`, feeding it the sequence (and the segment ids, if
    any, as a fourth argument) in `layout` order."""
    mesh = Mesh(np.array(jax.devices()[:devices]), ("sp",))
    perm = zigzag_permutation(length, devices) if layout == "zigzag" else np.arange(length)
    inverse = np.argsort(perm)
    extra = () if segment_ids is None else (segment_ids[:, perm],)
    ring = jax.shard_map(local, mesh=mesh, in_specs=(P(None, "sp"),) * (3 + len(extra)), out_specs=P(None, "sp"))
    return lambda q, k, v: ring(q[:, perm], k[:, perm], v[:, perm], *extra)[:, inverse]


def _documents(draw_lengths, length, batch):
    """Segment ids `[batch, length]`: each row cut into runs of the drawn lengths (the last run
    takes the rest), numbered 1, 2, ... so that every document is one run."""
    rows = []
    for lengths in draw_lengths[:batch]:
        bounds = np.minimum(np.cumsum(lengths), length)
        rows.append(1 + np.searchsorted(bounds, np.arange(length), side="right"))
    return jnp.asarray(np.stack(rows), jnp.int32)


def cudnn_double():
    """Within it, kernel="cudnn" is our cuDNN kernel around the CPU double of cuDNN's primitives."""
    from tests.reftrain.cudnn_double import PRIMITIVES

    return mock.patch.dict(_ring._KERNELS, cudnn=lambda spec: cudnn_kernel(spec, PRIMITIVES))


def _local(kernel, **options):
    """f(q, k, v, ids): ring attention of `kernel` on the local shards (run it with `_sharded`)."""
    def local(q, k, v, ids):
        return ring_attention(q, k, v, segment_ids=ids, q_chunk=4, kv_chunk=4, axis_name="sp", kernel=kernel, **options)
    return local


@given(
    devices=st.sampled_from([1, 2, 4, 8]),
    layout=st.sampled_from(["contiguous", "zigzag"]),
    heads=st.sampled_from([(4, 4), (4, 2), (4, 1)]),
    chunks_per_device=st.sampled_from([2, 4]),
    seed=st.integers(0, 2**16),
    kernel=st.sampled_from(["xla", "cudnn"]),
)
def test_ring_equals_dense(kernel, devices, layout, heads, chunks_per_device, seed):
    """The driver's step logic (which shard pairs are visible, causal or full, merged in which
    half) against dense attention, for both kernels."""
    length = devices * chunks_per_device * 4
    q, k, v, g = _qkv(seed, length, *heads, 8)
    local = _local(kernel, layout=layout)
    with cudnn_double():
        got = _value_and_grads(_sharded(lambda q, k, v: local(q, k, v, None), devices, layout, length), q, k, v, g)
    want = _value_and_grads(dense_attention, q, k, v, g)
    assert _max_error(got, want) < 2e-5


@given(
    devices=st.sampled_from([1, 2, 4, 8]),
    layout=st.sampled_from(["contiguous", "zigzag"]),
    lengths=st.lists(st.lists(st.integers(1, 40), min_size=1, max_size=12), min_size=2, max_size=2),
    batch=st.sampled_from([1, 2]),
    max_documents=st.sampled_from([1, 2, 16]),
    document_block=st.sampled_from([0, 4]),
    seed=st.integers(0, 2**16),
    kernel=st.sampled_from(["xla", "cudnn"]),
)
def test_ring_with_documents_equals_dense(kernel, devices, layout, lengths, batch, max_documents,
                                          document_block, seed):
    """Segment ids travel with their KV shard: documents spanning shards (and both halves of a
    zigzag shard), padding, and (cuDNN) more documents per shard or block than max_documents
    slots, against dense attention: outputs and gradients, never NaN."""
    length = devices * 16
    q, k, v, g = _qkv(seed, length, 4, 2, 8, batch=batch)
    ids = _documents(lengths, length, batch)
    local = _local(kernel, layout=layout, max_documents=max_documents, document_block=document_block)
    with cudnn_double():
        got = _value_and_grads(_sharded(local, devices, layout, length, ids), q, k, v, g)
    want = _value_and_grads(lambda q, k, v: dense_attention(q, k, v, segment_ids=ids), q, k, v, g)
    assert _max_error(got, want) < 2e-5


@given(lengths=st.lists(st.lists(st.integers(1, 12), min_size=1, max_size=8), min_size=3, max_size=3),
       slots=st.integers(1, 6))
def test_packed_groups_cover_every_document_once(lengths, slots):
    """Over the groups, every token of a document gets one (group, statistics row, position):
    slots are the runs in order, rows number the used slots of all batch rows in order,
    positions count from each document's start; padding is in no group."""
    ids = np.array(_documents(lengths, 24, 3))
    ids[1, 5:9] = 0  # a padding run
    groups = int(document_groups(jnp.asarray(ids), slots))
    seen = np.zeros(ids.shape, int)
    for group in range(groups):
        (seqlen, _, offsets, _), member, (row, position) = packed_group(jnp.asarray(ids), slots, group)
        seqlen, offsets, member, row, position = (np.asarray(x) for x in (seqlen, offsets, member, row, position))
        seen += member
        used = seqlen >= 0
        assert np.all(used[:, :-1] >= used[:, 1:]) and np.all(offsets[:, -1] == -1)
        for b in range(3):
            for s in np.flatnonzero(used[b]):
                run = ids[b, offsets[b, s]: offsets[b, s] + seqlen[b, s]]
                assert np.all(run == run[0]) and run[0] != 0 and np.all(member[b, offsets[b, s]: offsets[b, s] + seqlen[b, s]])
        sizes = seqlen[used]  # the used slots of all rows, in order
        assert np.all(position[member] >= 0) and np.all(position[member] < sizes[row[member]])
        assert len(set(zip(row[member], position[member]))) == int(member.sum())
    assert np.array_equal(seen, (ids != 0).astype(int))
    runs = [int(np.sum((r != 0) & (r != np.concatenate([[-1], r[:-1]])))) for r in ids]  # documents are runs
    assert groups == max(1, max(-(-n // slots) for n in runs))


@given(lengths=st.lists(st.integers(1, 10), min_size=1, max_size=6), cut=st.integers(1, 23))
def test_shared_document_of_an_earlier_shard(lengths, cut):
    """The queries after `cut` and the keys before it share exactly the run that crosses it."""
    ids = _documents([lengths], 24, 1)
    lead, trail = (int(x[0]) for x in shared_document(ids[:, cut:], ids[:, :cut]))
    crossing = int(ids[0, cut - 1]) == int(ids[0, cut])
    same = np.asarray(ids[0]) == int(ids[0, cut - 1])
    assert lead == (int(same[cut:].sum()) if crossing else 0)
    assert trail == (int(same[:cut].sum()) if crossing else 0)


@given(sp=st.integers(1, 16), per_chunk=st.integers(1, 8))
def test_zigzag_permutation_is_balanced(sp, per_chunk):
    length = 2 * sp * per_chunk
    perm = zigzag_permutation(length, sp)
    assert sorted(perm.tolist()) == list(range(length))
    shards = perm.reshape(sp, -1)
    # Causal work of a shard: sum over its tokens of (position + 1) keys; zigzag equalises it.
    work = (shards + 1).sum(axis=1)
    assert np.all(work == work[0])
    assert np.all(np.diff(shards, axis=1)[:, : per_chunk - 1] == 1)


def test_zigzag_rejects_indivisible_length():
    with pytest.raises(ValueError, match="divisible by 2 x sp"):
        zigzag_permutation(12, 4)


def test_kernel_choice():
    assert resolve_kernel("auto", "cpu") == "xla"
    assert resolve_kernel("auto", "cuda") == "cudnn"
    assert resolve_kernel("xla", "cuda") == "xla"
    with pytest.raises(ValueError, match="not one of"):
        resolve_kernel("flash")


def _kernel(name, max_documents=16):
    return shard_kernel(AttentionSpec(q_chunk=128, kv_chunk=128, kernel=name, max_documents=max_documents))


@given(lengths=st.lists(st.lists(st.integers(1, 20), min_size=1, max_size=8), min_size=2, max_size=2),
       block=st.sampled_from([4, 8, 16]), batch=st.sampled_from([1, 2]), seed=st.integers(0, 2**16))
def test_blocked_documents_equal_the_whole_shard(lengths, block, batch, seed):
    """A shard with itself under documents, block by block (how cuDNN runs it), equals the one
    call: out, lse and the backward, documents spanning several blocks included."""
    q, k, v, g = _qkv(seed, 32, 4, 2, 8, batch=batch)
    ids = _documents(lengths, 32, batch)
    whole = shard_kernel(AttentionSpec(q_chunk=4, kv_chunk=4, kernel="xla"))
    cut = blocked(whole, block)
    out, lse = whole.forward(q, k, v, True, 8 ** -0.5, (ids, ids))
    got = cut.forward(q, k, v, True, 8 ** -0.5, (ids, ids))
    assert _max_error(got, (out, lse)) < 2e-5
    want = whole.backward(q, k, v, out, lse, g, True, 8 ** -0.5, (ids, ids))
    assert _max_error(cut.backward(q, k, v, out, lse, g, True, 8 ** -0.5, (ids, ids)), want) < 2e-5


def _close_to_dense(attention, q, k, v, g, ids=None):
    """Outputs and gradients of `attention` (bf16) within 4e-2 of float32 dense attention."""
    got = _value_and_grads(attention, q, k, v, g)
    want = _value_and_grads(lambda q, k, v: dense_attention(q, k, v, segment_ids=ids),
                            *(x.astype(jnp.float32) for x in (q, k, v)), g)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(got)), "non-finite values"
    scale = max(1.0, max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(want)))
    assert _max_error(got, want) < 4e-2 * scale


@on_gpu
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("heads", [(8, 8), (8, 2)])
def test_cudnn_kernel_matches_xla_kernel(causal, heads):
    """out, lse and the backward given the final statistics: cuDNN vs our XLA loops."""
    q, k, v, g = _qkv(0, 1024, *heads, 128, jnp.bfloat16)
    scale = 128 ** -0.5
    cudnn, xla = _kernel("cudnn"), _kernel("xla")
    out_c, lse_c = jax.jit(cudnn.forward, static_argnums=(3, 4))(q, k, v, causal, scale)
    out_x, lse_x = jax.jit(xla.forward, static_argnums=(3, 4))(q, k, v, causal, scale)
    assert lse_c.dtype == jnp.float32 and lse_c.shape == lse_x.shape
    assert float(jnp.max(jnp.abs(lse_c - lse_x))) < 2e-2
    assert _max_error(out_c, out_x) < 4e-2
    grads_c = jax.jit(cudnn.backward, static_argnums=(6, 7))(q, k, v, out_x, lse_x, g, causal, scale)
    grads_x = jax.jit(xla.backward, static_argnums=(6, 7))(q, k, v, out_x, lse_x, g, causal, scale)
    for got, want in zip(grads_c, grads_x):
        assert float(jnp.max(jnp.abs(got.astype(jnp.float32) - want))) < 4e-2 * max(1.0, float(jnp.max(jnp.abs(want))))


@on_gpu
@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
def test_cudnn_attention_equals_dense(layout):
    """blockwise_attention(kernel="cudnn") and the zigzag driver on one GPU against dense."""
    q, k, v, g = _qkv(1, 2048, 8, 2, 128, jnp.bfloat16)
    local = lambda q, k, v: ring_attention(q, k, v, q_chunk=512, kv_chunk=512, axis_name="sp", kernel="cudnn",
                                           layout=layout)
    _close_to_dense(_sharded(local, 1, layout, 2048), q, k, v, g)


@on_gpu
@pytest.mark.parametrize("document_block", [0, 512])
@pytest.mark.parametrize("heads", [(8, 8), (8, 2)])
def test_cudnn_documents_equal_dense(heads, document_block):
    """blockwise_attention(kernel="cudnn") with segment ids and padding (cuDNN packed mode, in
    one call or in blocks) against dense: padding outputs 0 like dense."""
    q, k, v, g = _qkv(2, 2048, *heads, 128, jnp.bfloat16)
    ids = jnp.asarray(np.repeat([1, 2, 3, 4, 0], [300, 700, 512, 400, 136])[None], jnp.int32)
    _close_to_dense(lambda q, k, v: blockwise_attention(q, k, v, segment_ids=ids, q_chunk=512, kv_chunk=512,
                                                        kernel="cudnn", document_block=document_block), q, k, v, g, ids)


def _many_documents(counts, length, seed=0):
    """Rows of `counts[i]` documents of random lengths (at least 4 tokens) filling `length`."""
    rng = np.random.default_rng(seed)
    rows = []
    for count in counts:
        cuts = np.sort(rng.choice(np.arange(1, length // 4), count - 1, replace=False)) * 4
        rows.append(1 + np.searchsorted(cuts, np.arange(length), side="right"))
    return jnp.asarray(np.stack(rows), jnp.int32)


@on_gpu
@pytest.mark.parametrize("counts, length, document_block", [
    ((17, 40), 4096, 0), ((17, 40), 4096, 1024), ((500, 3), 8192, 0), ((500, 64), 8192, 2048)])
def test_cudnn_more_documents_than_slots_equal_dense(counts, length, document_block):
    """Rows with more documents than max_documents (16) slots: groups of 16 packed calls, exact
    and finite (a row over the slots used to be NaN on purpose), in one call or in blocks."""
    q, k, v, g = _qkv(6, length, 8, 2, 128, jnp.bfloat16, batch=len(counts))
    ids = _many_documents(counts, length)
    assert [len(np.unique(r)) for r in np.asarray(ids)] == list(counts)
    _close_to_dense(lambda q, k, v: blockwise_attention(q, k, v, segment_ids=ids, q_chunk=512, kv_chunk=512,
                                                        kernel="cudnn", document_block=document_block), q, k, v, g, ids)


@on_gpu
@pytest.mark.parametrize("causal", [True, False])
def test_cudnn_documents_match_xla_kernel(causal):
    """The kernel contract with documents, cuDNN vs our XLA loops: a shard with itself (causal,
    rows with different document counts, more than the 4 slots in row 0, so packed statistics
    of several rows are numbered in order) and an earlier shard (rows that share a document
    with it, and one that does not)."""
    q, k, v, g = _qkv(4, 1024, 8, 2, 128, jnp.bfloat16, batch=3)
    scale = 128 ** -0.5
    runs = [[300, 200, 100, 124, 100, 200], [1024], [128, 512, 384]]
    ids = jnp.asarray(np.stack([np.repeat(np.arange(1, len(r) + 1), r) for r in runs]), jnp.int32)
    if causal:
        segments = (ids, ids)
    else:  # keys: a shard whose last run continues into the queries' first run, or not (row 2)
        kv_ids = jnp.asarray([[0] * 600 + [1] * 424, [7] * 500 + [1] * 524, [5] * 1000 + [9] * 24], jnp.int32)
        segments = (ids, kv_ids)
    cudnn, xla = _kernel("cudnn", 4), _kernel("xla")
    out_c, lse_c = jax.jit(cudnn.forward, static_argnums=(3, 4))(q, k, v, causal, scale, segments)
    out_x, lse_x = jax.jit(xla.forward, static_argnums=(3, 4))(q, k, v, causal, scale, segments)
    assert bool(jnp.all(jnp.isfinite(lse_c) == jnp.isfinite(lse_x))), "the same queries see no key"
    if not causal:
        assert not bool(jnp.any(jnp.isfinite(lse_x[2]))) and bool(jnp.all(jnp.isfinite(lse_x[0, :300])))
        assert bool(jnp.all(jnp.isfinite(lse_x[1]))) and not bool(jnp.any(jnp.isfinite(lse_x[0, 300:])))
    assert float(jnp.max(jnp.abs(_finite_or_zero(lse_c) - _finite_or_zero(lse_x)))) < 2e-2
    assert _max_error(out_c, out_x) < 4e-2
    lse = _finite_or_zero(lse_x)  # any finite statistics: both kernels apply the same formula
    grads_c = jax.jit(cudnn.backward, static_argnums=(6, 7))(q, k, v, out_x, lse, g, causal, scale, segments)
    grads_x = jax.jit(xla.backward, static_argnums=(6, 7))(q, k, v, out_x, lse, g, causal, scale, segments)
    for got, want in zip(grads_c, grads_x):
        assert float(jnp.max(jnp.abs(got.astype(jnp.float32) - want))) < 4e-2 * max(1.0, float(jnp.max(jnp.abs(want))))


def _finite_or_zero(x):
    return jnp.where(jnp.isfinite(x), x, 0)


@on_gpu
def test_cudnn_zigzag_with_documents_equals_dense():
    """The zigzag driver on one GPU runs both kinds of pair with documents (its second half
    against its first is an earlier shard): against dense, one document crossing the halves."""
    q, k, v, g = _qkv(5, 2048, 8, 2, 128, jnp.bfloat16)
    ids = jnp.asarray(np.repeat([1, 2, 3], [700, 900, 448])[None], jnp.int32)
    local = lambda q, k, v, s: ring_attention(q, k, v, segment_ids=s, q_chunk=512, kv_chunk=512, axis_name="sp",
                                              kernel="cudnn", layout="zigzag", max_documents=4)
    _close_to_dense(_sharded(local, 1, "zigzag", 2048, ids), q, k, v, g, ids)
