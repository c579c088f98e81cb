"""Iterator state: exact resume, host sharding of the global batch, sequence-length mix."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reftrain.data import DataError, DataSpec, DomainSpec, PackingSpec, SeqStage, make_batches
from tests.reftrain.data.conftest import unique_corpora


def _spec(n_domains: int, mode: str = "document", **kw) -> DataSpec:
    return DataSpec(tuple(DomainSpec(f"d{i}", float(i + 1), ("unused",)) for i in range(n_domains)),
                    packing=PackingSpec(mode, "long" if mode == "document" else "any"), **kw)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@given(lengths=st.lists(st.lists(st.integers(1, 60), min_size=1, max_size=6), min_size=1, max_size=3),
       warmup=st.integers(0, 12), n=st.integers(1, 8), seed=st.integers(0, 1000),
       mode=st.sampled_from(["document", "concat"]))
def test_restoring_state_reproduces_next_batches(lengths, warmup, n, seed, mode):
    corpora = unique_corpora(lengths)
    spec = _spec(len(corpora), mode)
    it = make_batches(spec, batch_size=2, seq_len=16, seed=seed, corpora=corpora)
    for _ in range(warmup):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # survives a JSON round trip
    expected = [next(it) for _ in range(n)]
    fresh = make_batches(spec, batch_size=2, seq_len=16, seed=seed, corpora=corpora)
    fresh.set_state(state)
    assert all(_equal(e, next(fresh)) for e in expected)
    assert len(json.dumps(state)) < 400 + 40 * len(corpora)  # small


@given(host_count=st.sampled_from([1, 2, 4]), seed=st.integers(0, 100))
def test_hosts_read_rows_of_the_same_global_batch(host_count, seed):
    corpora = unique_corpora([[30, 7, 12, 50], [5, 9, 40]])
    spec = _spec(2)
    whole = make_batches(spec, batch_size=4, seq_len=24, seed=seed, corpora=corpora)
    hosts = [make_batches(spec, batch_size=4, seq_len=24, seed=seed, corpora=corpora,
                          host_index=h, host_count=host_count) for h in range(host_count)]
    for _ in range(5):
        global_batch = next(whole)
        parts = [next(h) for h in hosts]
        for key, value in global_batch.items():
            assert np.array_equal(np.concatenate([p[key] for p in parts]), value)
    # The state does not depend on the host: host 1's state restores host 0's stream.
    if host_count > 1:
        state = hosts[1].get_state()
        assert state == hosts[0].get_state()


def test_seq_mix_schedule_and_end_of_run():
    corpora = unique_corpora([[100, 37], [64]])
    spec = _spec(2, seq_mix=(SeqStage(8, 6), SeqStage(32, 2), SeqStage(16, 1)), seed=3)
    it = make_batches(spec, batch_size=2, corpora=corpora)
    lengths = [b["tokens"].shape[1] for b in it]
    assert sorted(lengths) == [8, 8, 8, 16, 32]  # 3 + 1 + ceil(1 / 2) batches, interleaved
    seq = make_batches(DataSpec(spec.domains, seq_mix=spec.seq_mix, seq_mix_order="sequential"),
                       batch_size=2, corpora=corpora)
    assert [b["tokens"].shape[1] for b in seq] == [8, 8, 8, 32, 16]


def test_state_of_another_spec_or_shape_is_refused():
    corpora = unique_corpora([[10, 20]])
    it = make_batches(_spec(1), batch_size=2, seq_len=8, corpora=corpora)
    next(it)
    other = make_batches(_spec(1), batch_size=2, seq_len=16, corpora=corpora)
    with pytest.raises(DataError, match="seq_len"):
        other.set_state(it.get_state())
    with pytest.raises(DataError, match="host_count"):
        make_batches(_spec(1), batch_size=3, seq_len=8, corpora=corpora, host_count=2)
    with pytest.raises(DataError, match="seq_len"):
        make_batches(_spec(1), batch_size=2, corpora=corpora)
