"""The fused-kernel ring (contiguous and zigzag) equals dense attention; cuDNN equals our XLA
kernel on a GPU (skipped elsewhere: run on the device machine with JAX_PLATFORMS=cuda)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st
from jax.sharding import Mesh, PartitionSpec as P

from reftrain.attention import blockwise_attention, dense_attention, ring_attention
from reftrain.attention._fused import FusedSpec, fused_ring_attention
from reftrain.attention._kernels import get_kernel, resolve_kernel
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


@given(
    devices=st.sampled_from([1, 2, 4, 8]),
    layout=st.sampled_from(["contiguous", "zigzag"]),
    heads=st.sampled_from([(4, 4), (4, 2), (4, 1)]),
    chunks_per_device=st.sampled_from([2, 4]),
    seed=st.integers(0, 2**16),
)
def test_fused_ring_equals_dense(devices, layout, heads, chunks_per_device, seed):
    """The driver's step logic (which shard pairs are visible, causal or full, merged in which
    half) against dense attention, with our XLA kernel standing in for cuDNN."""
    length = devices * chunks_per_device * 4
    q, k, v, g = _qkv(seed, length, *heads, 8)
    spec = FusedSpec("xla", layout, 4, 4, 8 ** -0.5, "sp")
    local = lambda q, k, v: fused_ring_attention(spec, q, k, v)
    got = _value_and_grads(_sharded(local, devices, layout, length), q, k, v, g)
    want = _value_and_grads(dense_attention, q, k, v, g)
    assert _max_error(got, want) < 2e-5


@given(
    devices=st.sampled_from([1, 2, 4, 8]),
    layout=st.sampled_from(["contiguous", "zigzag"]),
    lengths=st.lists(st.lists(st.integers(1, 40), min_size=1, max_size=6), min_size=2, max_size=2),
    batch=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_fused_ring_with_documents_equals_dense(devices, layout, lengths, batch, seed):
    """Segment ids travel with their KV shard and each pair gets its own and the shard's ids:
    documents spanning shards (and both halves of a zigzag shard) against dense attention."""
    length = devices * 16
    q, k, v, g = _qkv(seed, length, 4, 2, 8, batch=batch)
    ids = _documents(lengths, length, batch)
    spec = FusedSpec("xla", layout, 4, 4, 8 ** -0.5, "sp")
    local = lambda q, k, v, s: fused_ring_attention(spec, q, k, v, s)
    got = _value_and_grads(_sharded(local, devices, layout, length, ids), q, k, v, g)
    want = _value_and_grads(lambda q, k, v: dense_attention(q, k, v, segment_ids=ids), q, k, v, g)
    assert _max_error(got, want) < 2e-5


@given(lengths=st.lists(st.lists(st.integers(1, 12), min_size=1, max_size=8), min_size=3, max_size=3),
       max_documents=st.integers(1, 6))
def test_packed_stats_index_is_a_bijection_onto_documents(lengths, max_documents):
    """Every token gets its own (statistics row, position) slot: rows number the documents of
    all batch rows in order, positions count from each document's start."""
    from reftrain.attention._kernels import packed_documents, packed_stats_index

    ids = _documents(lengths, 24, 3)
    row, position = (np.asarray(x) for x in packed_stats_index(ids, max_documents))
    seqlen, _, _ = packed_documents(ids, max_documents)
    sizes = np.asarray(seqlen)[np.asarray(seqlen) >= 0]  # documents of all rows, in order
    assert len({(r, p) for r, p in zip(row.ravel(), position.ravel())}) == row.size
    assert np.all(position >= 0) and np.all(position < sizes[row])
    assert np.all(np.diff(row, axis=1) >= 0) and np.all(np.diff(row.ravel()) >= 0)


@given(lengths=st.lists(st.integers(1, 10), min_size=1, max_size=6), cut=st.integers(1, 23))
def test_shared_document_of_an_earlier_shard(lengths, cut):
    """The queries after `cut` and the keys before it share exactly the run that crosses it."""
    from reftrain.attention._kernels import shared_document

    ids = _documents([lengths], 24, 1)
    lead, trail = (int(x[0]) for x in shared_document(ids[:, cut:], ids[:, :cut]))
    crossing = int(ids[0, cut - 1]) == int(ids[0, cut])
    same = np.asarray(ids[0]) == int(ids[0, cut - 1])
    assert lead == (int(same[cut:].sum()) if crossing else 0)
    assert trail == (int(same[:cut].sum()) if crossing else 0)


@pytest.mark.parametrize("devices", [2, 8])
def test_zigzag_chunked_ring_with_documents_equals_dense(devices):
    """The XLA ring in zigzag order uses true global positions for the causal mask."""
    length = devices * 16
    q, k, v, g = _qkv(3, length, 4, 2, 8)
    segment_ids = jnp.asarray(np.repeat([1, 2, 3, 0], length // 4)[None])
    perm = zigzag_permutation(length, devices)
    mesh = Mesh(np.array(jax.devices()[:devices]), ("sp",))

    def local(q, k, v, s):
        return ring_attention(q, k, v, segment_ids=s, q_chunk=4, kv_chunk=8, axis_name="sp", kernel="xla", layout="zigzag")

    ring = jax.shard_map(local, mesh=mesh, in_specs=(P(None, "sp"),) * 4, out_specs=P(None, "sp"))
    attention = lambda q, k, v: ring(q[:, perm], k[:, perm], v[:, perm], segment_ids[:, perm])[:, np.argsort(perm)]
    got = _value_and_grads(attention, q, k, v, g)
    want = _value_and_grads(lambda q, k, v: dense_attention(q, k, v, segment_ids=segment_ids), q, k, v, g)
    assert _max_error(got, want) < 2e-5


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


@on_gpu
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("heads", [(8, 8), (8, 2)])
def test_cudnn_kernel_matches_xla_kernel(causal, heads):
    """out, lse and the backward given the final statistics: cuDNN vs our XLA loops."""
    q, k, v, g = _qkv(0, 1024, *heads, 128, jnp.bfloat16)
    scale = 128 ** -0.5
    cudnn, xla = get_kernel("cudnn", 128, 128), get_kernel("xla", 128, 128)
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
def test_cudnn_fused_attention_equals_dense(layout):
    """blockwise_attention(kernel="cudnn") and the zigzag driver on one GPU against dense."""
    q, k, v, g = _qkv(1, 2048, 8, 2, 128, jnp.bfloat16)
    if layout == "contiguous":
        attention = lambda q, k, v: blockwise_attention(q, k, v, q_chunk=512, kv_chunk=512, kernel="cudnn")
    else:
        spec = FusedSpec("cudnn", "zigzag", 512, 512, 128 ** -0.5, None)
        perm = zigzag_permutation(2048, 1)
        attention = lambda q, k, v: fused_ring_attention(spec, q[:, perm], k[:, perm], v[:, perm])[:, np.argsort(perm)]
    got = _value_and_grads(attention, q, k, v, g)
    want = _value_and_grads(dense_attention, *(x.astype(jnp.float32) for x in (q, k, v)), g)
    scale = max(1.0, max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(want)))
    assert _max_error(got, want) < 4e-2 * scale


@given(lengths=st.lists(st.integers(1, 6), min_size=1, max_size=6), max_documents=st.integers(1, 8))
def test_packed_documents_match_runs(lengths, max_documents):
    """cuDNN's seqlen/offsets are the runs of equal ids, -1 past the last, overflow flagged."""
    from reftrain.attention._kernels import packed_documents

    ids = np.repeat(np.arange(len(lengths)) % 2 + 1, lengths)[None]  # adjacent runs differ
    seqlen, offsets, overflow = packed_documents(jnp.asarray(ids), max_documents)
    used = min(len(lengths), max_documents)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    want_lengths = list(lengths[: used - 1]) + [int(sum(lengths[used - 1:]))]
    assert seqlen[0, :used].tolist() == want_lengths
    assert offsets[0, :used].tolist() == starts[:used].tolist()
    assert np.all(np.asarray(seqlen[0, used:]) == -1) and np.all(np.asarray(offsets[0, used:]) == -1)
    assert bool(overflow[0]) == (len(lengths) > max_documents)


@on_gpu
@pytest.mark.parametrize("document_block", [0, 512])
@pytest.mark.parametrize("heads", [(8, 8), (8, 2)])
def test_cudnn_documents_equal_dense(heads, document_block):
    """blockwise_attention(kernel="cudnn") with segment ids (cuDNN packed mode, in one call or
    in blocks) against dense, on every token that is not padding (its own document there)."""
    q, k, v, g = _qkv(2, 2048, *heads, 128, jnp.bfloat16)
    ids = jnp.asarray(np.repeat([1, 2, 3, 4, 0], [300, 700, 512, 400, 136])[None], jnp.int32)
    real = (ids != 0)[..., None, None]
    g = jnp.where(real, g, 0)
    attention = lambda q, k, v: jnp.where(real, blockwise_attention(
        q, k, v, segment_ids=ids, q_chunk=512, kv_chunk=512, kernel="cudnn", document_block=document_block), 0)
    got = _value_and_grads(attention, q, k, v, g)
    want = _value_and_grads(lambda q, k, v: dense_attention(q, k, v, segment_ids=ids),
                            *(x.astype(jnp.float32) for x in (q, k, v)), g)
    scale = max(1.0, max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(want)))
    assert _max_error(got, want) < 4e-2 * scale


def _finite_or_zero(x):
    return jnp.where(jnp.isfinite(x), x, 0)


@on_gpu
@pytest.mark.parametrize("causal", [True, False])
def test_cudnn_documents_match_xla_kernel(causal):
    """The kernel contract with documents, cuDNN vs our XLA loops: a shard with itself (causal,
    rows with different document counts, so packed statistics of several rows are numbered in
    order) and an earlier shard (rows that share a document with it, and one that does not)."""
    q, k, v, g = _qkv(4, 1024, 8, 2, 128, jnp.bfloat16, batch=3)
    scale = 128 ** -0.5
    runs = [[300, 200, 100, 424], [1024], [128, 512, 384]]
    ids = jnp.asarray(np.stack([np.repeat(np.arange(1, len(r) + 1), r) for r in runs]), jnp.int32)
    if causal:
        segments = (ids, ids)
    else:  # keys: a shard whose last run continues into the queries' first run, or not (row 2)
        kv_ids = jnp.asarray([[0] * 600 + [1] * 424, [7] * 500 + [1] * 524, [5] * 1000 + [9] * 24], jnp.int32)
        segments = (ids, kv_ids)
    cudnn, xla = get_kernel("cudnn", 128, 128, 4), get_kernel("xla", 128, 128)
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


@on_gpu
def test_cudnn_zigzag_with_documents_equals_dense():
    """The zigzag driver on one GPU runs both kinds of pair with documents (its second half
    against its first is an earlier shard): against dense, one document crossing the halves."""
    q, k, v, g = _qkv(5, 2048, 8, 2, 128, jnp.bfloat16)
    ids = jnp.asarray(np.repeat([1, 2, 3], [700, 900, 448])[None], jnp.int32)
    spec = FusedSpec("cudnn", "zigzag", 512, 512, 128 ** -0.5, None, 4)
    perm = zigzag_permutation(2048, 1)
    attention = lambda q, k, v: fused_ring_attention(spec, q[:, perm], k[:, perm], v[:, perm], ids[:, perm])[:, np.argsort(perm)]
    got = _value_and_grads(attention, q, k, v, g)
    want = _value_and_grads(lambda q, k, v: dense_attention(q, k, v, segment_ids=ids),
                            *(x.astype(jnp.float32) for x in (q, k, v)), g)
    scale = max(1.0, max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(want)))
    assert _max_error(got, want) < 4e-2 * scale


@given(lengths=st.lists(st.lists(st.integers(1, 20), min_size=1, max_size=8), min_size=2, max_size=2),
       block=st.sampled_from([4, 8, 16]), batch=st.sampled_from([1, 2]), seed=st.integers(0, 2**16))
def test_blocked_documents_equal_the_whole_shard(lengths, block, batch, seed):
    """A shard with itself under documents, block by block (how cuDNN runs it), equals the one
    call: out, lse and the backward, documents spanning several blocks included."""
    from reftrain.attention._blocked import blocked

    q, k, v, g = _qkv(seed, 32, 4, 2, 8, batch=batch)
    ids = _documents(lengths, 32, batch)
    whole, cut = get_kernel("xla", 4, 4), blocked(get_kernel("xla", 4, 4), block)
    out, lse = whole.forward(q, k, v, True, 8 ** -0.5, (ids, ids))
    got = cut.forward(q, k, v, True, 8 ** -0.5, (ids, ids))
    assert _max_error(got, (out, lse)) < 2e-5
    want = whole.backward(q, k, v, out, lse, g, True, 8 ** -0.5, (ids, ids))
    assert _max_error(cut.backward(q, k, v, out, lse, g, True, 8 ** -0.5, (ids, ids)), want) < 2e-5
