"""Packing invariants on tiny corpora whose token ids are all distinct (an exact oracle)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from reftrain.data import DomainSpec, PackingSpec, DataSpec, make_batches
from tests.reftrain.data.conftest import unique_corpora

doc_lengths = st.lists(st.lists(st.integers(1, 40), min_size=1, max_size=8), min_size=1, max_size=4)


def _spec(n_domains: int, weights=None, mode="document", split="long", shuffle=True) -> DataSpec:
    weights = weights or [1.0] * n_domains
    return DataSpec(tuple(DomainSpec(f"d{i}", w, ("unused",)) for i, w in enumerate(weights)),
                    packing=PackingSpec(mode, split, shuffle))


def _stream(corpora, spec, *, batch_size, seq_len, n_batches):
    it = make_batches(spec, batch_size=batch_size, seq_len=seq_len, corpora=corpora)
    return [next(it) for _ in range(n_batches)], it


def _doc_of_token(corpora):
    """Returns {token id: (domain, doc, position)}."""
    where = {}
    for d, c in enumerate(corpora):
        for i in range(c.n_docs):
            for p, t in enumerate(c.doc(i)):
                where[int(t)] = (d, i, p)
    return where


@given(lengths=doc_lengths, seq_len=st.integers(1, 48), batch_size=st.integers(1, 3),
       split=st.sampled_from(["long", "any"]), mode=st.sampled_from(["document", "concat"]))
def test_every_token_once_in_order_with_consistent_layout(lengths, seq_len, batch_size, split, mode):
    corpora = unique_corpora(lengths)
    total = sum(c.n_tokens for c in corpora)
    n_batches = total // (seq_len * batch_size) + 2
    batches, _ = _stream(corpora, _spec(len(corpora), mode=mode, split=split, shuffle=False),
                         batch_size=batch_size, seq_len=seq_len, n_batches=n_batches)
    where = _doc_of_token(corpora)
    seen = {}  # (domain, doc) -> positions in stream order, first epoch only
    for batch in batches:
        for key in ("tokens", "targets", "segment_ids", "positions"):
            assert batch[key].dtype == np.int32 and batch[key].shape == (batch_size, seq_len)
        assert batch["loss_mask"].dtype == np.float32
        for row in range(batch_size):
            tok, tgt, seg, pos, mask = (batch[k][row] for k in
                                        ("tokens", "targets", "segment_ids", "positions", "loss_mask"))
            pad = seg == 0
            # Padding: only at the end of a row, token/target 0, no loss.
            n_real = int((~pad).sum())
            assert not pad[:n_real].any()
            assert (tok[pad] == 0).all() and (mask[pad] == 0).all() and (pos[pad] == 0).all()
            if split == "any":
                assert n_real == seq_len  # "any" never pads an endless stream
            segs = seg[:n_real]
            if mode == "document":
                # Segments numbered 1, 2, ... in order; positions restart at 0 in each.
                starts = np.flatnonzero(np.diff(np.concatenate([[0], segs])) != 0)
                assert list(segs[starts]) == list(range(1, len(starts) + 1))
                for s in range(1, len(starts) + 1):
                    assert (pos[:n_real][segs == s] == np.arange((segs == s).sum())).all()
            else:
                assert (segs == 1).all() and (pos[:n_real] == np.arange(n_real)).all()
            for t in range(n_real):
                d, i, p = where[int(tok[t])]
                doc = corpora[d].doc(i)
                if p + 1 < len(doc):  # target: the next token of the same document
                    assert tgt[t] == doc[p + 1] and mask[t] == 1
                else:
                    assert mask[t] == 0
                seen.setdefault((d, i), []).append(p)
    # Exactly once and in order: each document's positions read 0, 1, 2, ... (repeats only by
    # starting a new epoch at 0, after a complete pass).
    for (d, i), positions in seen.items():
        n = corpora[d].doc_lengths()[i]
        expected = (list(range(n)) * (len(positions) // n + 1))[: len(positions)]
        assert positions == expected, (d, i)
    for d, c in enumerate(corpora):
        for i in range(c.n_docs):
            if (d, i) not in seen:
                # a document may be unreached only if its domain is not yet through one epoch
                assert sum(len(v) for (dd, _), v in seen.items() if dd == d) < c.n_tokens


@given(weights=st.lists(st.integers(1, 20), min_size=2, max_size=4),
       seq_len=st.integers(4, 64), seed=st.integers(0, 2**16))
def test_mixture_shares_converge_to_weights(weights, seq_len, seed):
    rng = np.random.default_rng(seed)
    lengths = [list(rng.integers(1, 3 * seq_len, size=int(rng.integers(1, 6)))) for _ in weights]
    corpora = unique_corpora(lengths)
    spec = _spec(len(weights), weights=[float(w) for w in weights])
    batches, it = _stream(corpora, spec, batch_size=4, seq_len=seq_len, n_batches=60)
    owner = np.zeros(max(int(c.tokens.max()) for c in corpora) + 1, np.int64)
    for d, c in enumerate(corpora):
        owner[c.tokens] = d
    counts = np.zeros(len(weights))
    for b in batches:
        real = b["tokens"][b["segment_ids"] > 0]
        counts += np.bincount(owner[real], minlength=len(weights))
    assert (counts == it.packer.placed).all()
    shares, target = counts / counts.sum(), np.asarray(weights) / sum(weights)
    bound = (len(weights) - 1) * seq_len / counts.sum()  # the documented tolerance
    assert np.abs(shares - target).max() <= bound + 1e-12


def test_document_longer_than_rows_is_split_and_short_ones_packed():
    corpora = unique_corpora([[25, 3, 4]])
    batches, it = _stream(corpora, _spec(1, shuffle=False), batch_size=1, seq_len=10, n_batches=4)
    segs = [list(b["segment_ids"][0]) for b in batches]
    assert segs[0] == [1] * 10 and segs[1] == [1] * 10          # the long document, split
    assert segs[2] == [1] * 5 + [2] * 3 + [0] * 2               # its rest, then the 3-token doc
    assert batches[0]["targets"][0][-1] == batches[1]["tokens"][0][0]  # target across the split
    assert batches[0]["loss_mask"][0][-1] == 1
