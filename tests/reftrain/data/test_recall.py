"""The base stage's recall documents: exact layout, every answer readable from its own context,
nothing of the eval's needle, a curriculum, and a stateless, resumable, host-sharded stream."""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reftrain.data import DEFAULT_SPEC, DataError, RecallBatchIterator, load_corpora, recall_document
from reftrain.data._recall import MAX_DOCUMENTS, Filler, document_lengths
from reftrain.eval._needle import CITIES


@pytest.fixture(scope="module")
def corpora(tokenizer):
    return load_corpora(DEFAULT_SPEC, tokenizer)


@pytest.fixture(scope="module")
def filler(tokenizer, corpora):
    return Filler(corpora, tokenizer)


def _runs(loss_mask):
    """[start, stop) token ranges of each run of answer tokens (token t + 1 when loss_mask[t])."""
    answer = np.concatenate([[0.0], loss_mask[:-1]]) > 0
    edges = np.flatnonzero(np.diff(np.concatenate([[0], answer.astype(np.int8), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def _answers(tokenizer, tokens, loss_mask):
    """(text before the answer, the answer's text) for each run of loss-bearing targets."""
    return [(tokenizer.decode(tokens[:a]), tokenizer.decode(tokens[a:b])) for a, b in _runs(loss_mask)]


def _occurs_before(tokens, a, b) -> bool:
    run = list(tokens[a:b])
    return any(list(tokens[i : i + len(run)]) == run for i in range(a - len(run) + 1))


@settings(max_examples=25, deadline=None)
@given(length=st.integers(64, 1500), seed=st.integers(0, 10**6), difficulty=st.floats(0, 1))
def test_every_answer_is_in_the_documents_own_context(tokenizer, filler, length, seed, difficulty):
    tokens, loss_mask = recall_document(tokenizer, filler, length, np.random.default_rng(seed), difficulty)
    assert tokens.shape == loss_mask.shape == (length,) and tokens.dtype == np.int32
    assert tokens[0] == tokenizer.bos_id and tokens[-1] == tokenizer.eos_id and loss_mask[-1] == 0
    text = tokenizer.decode(tokens)
    assert "special magic" not in text  # the eval's needle is never trained on
    answers = _answers(tokenizer, tokens, loss_mask)
    assert answers, "a document without any answer"
    for (context, answer), (a, b) in zip(answers, _runs(loss_mask)):
        if re.search(r"Answer: [^\n]*(is:?|->|=|reads|are:|has the \w+)$", context):  # every value asked is a fact's
            before = context.rsplit("Answer:", 1)[0]
            for value in answer.removesuffix(".").split(", "):
                assert re.search(rf"(is:?|->|=|reads|the \w+) {re.escape(value)}\.?", before), (value, text)
        else:  # the second copy of a span: its tokens stood in the document before
            assert _occurs_before(tokens, a, b), (answer, text)


def test_keys_are_never_the_evals_cities(tokenizer, filler):
    for seed in range(40):
        text = tokenizer.decode(recall_document(tokenizer, filler, 512, np.random.default_rng(seed), 1.0)[0])
        facts = re.findall(r"(?:of|for|under|Note:) ([A-Z][a-z]+|the \w+ \w+|\w+-\d+)", text)
        assert not set(facts) & set(CITIES)


@settings(max_examples=40, deadline=None)
@given(seq_len=st.integers(64, 40_000), seed=st.integers(0, 10**6), difficulty=st.floats(0, 1))
def test_document_lengths_fill_the_row_within_the_slot_count(seq_len, seed, difficulty):
    lengths = document_lengths(seq_len, np.random.default_rng(seed), difficulty)
    assert sum(lengths) == seq_len and len(lengths) <= MAX_DOCUMENTS
    assert min(lengths) >= min(seq_len, max(64, -(-seq_len // MAX_DOCUMENTS)))


def test_the_curriculum_starts_short_and_reaches_the_whole_row(tokenizer, corpora):
    stream = RecallBatchIterator(tokenizer, corpora, batch_size=4, seq_len=2048, seed=1, warmup_rows=1000)
    first = [stream.row(i)["segment_ids"].max() for i in range(8)]
    last = [stream.row(i)["segment_ids"].max() for i in range(1000, 1040)]
    assert min(first) >= 12 and 1 in last and np.mean(last) < np.mean(first)


def test_rows_are_packed_documents(tokenizer, corpora):
    row = RecallBatchIterator(tokenizer, corpora, batch_size=2, seq_len=1024, seed=3).row(5)
    segments = row["segment_ids"]
    assert segments[0] == 1 and np.all(np.diff(segments) >= 0) and np.all(segments > 0)
    for k in range(1, segments.max() + 1):
        where = np.flatnonzero(segments == k)
        assert np.array_equal(row["positions"][where], np.arange(len(where)))
        assert np.array_equal(row["targets"][where[:-1]], row["tokens"][where[1:]])
        assert row["loss_mask"][where[-1]] == 0 and row["tokens"][where[0]] == tokenizer.bos_id


def test_the_stream_is_stateless_resumable_and_sharded_by_host(tokenizer, corpora):
    one = RecallBatchIterator(tokenizer, corpora, batch_size=4, seq_len=256, seed=7, warmup_rows=10)
    batches = [next(one) for _ in range(3)]
    resumed = RecallBatchIterator(tokenizer, corpora, batch_size=4, seq_len=256, seed=7, warmup_rows=10)
    resumed.set_state(RecallBatchIterator(tokenizer, corpora, batch_size=4, seq_len=256, seed=7, warmup_rows=10).get_state()
                      | {"step": 2})
    again = next(resumed)
    assert all(np.array_equal(again[k], batches[2][k]) for k in batches[2])
    halves = [next(RecallBatchIterator(tokenizer, corpora, batch_size=4, seq_len=256, seed=7, warmup_rows=10,
                                       host_index=h, host_count=2)) for h in (0, 1)]
    assert np.array_equal(np.concatenate([h["tokens"] for h in halves]), batches[0]["tokens"])
    with pytest.raises(DataError, match="seed"):
        resumed.set_state(one.get_state() | {"seed": 8})


def test_too_short_a_document_is_refused(tokenizer, filler):
    with pytest.raises(DataError, match="at least 64"):
        recall_document(tokenizer, filler, 32, np.random.default_rng(0), 0.0)


def test_a_multi_value_answer_lists_the_values_in_the_order_the_facts_stand(tokenizer, filler):
    checked = 0
    for seed in range(400):
        tokens, loss_mask = recall_document(tokenizer, filler, 1024, np.random.default_rng(seed), 1.0)
        for context, answer in _answers(tokenizer, tokens, loss_mask):
            if "What are all the" in context.rsplit("Answer:", 2)[-2]:
                body = context[: context.rindex("What are all the")]
                places = [body.index(value) for value in answer.removesuffix(".").split(", ")]
                assert places == sorted(places), (answer, body)
                checked += 1
    assert checked >= 5
