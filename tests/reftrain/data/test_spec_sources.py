"""Data spec files and user sources (text, JSONL, Parquet, folders), and the token cache."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reftrain.data import DEFAULT_SPEC, DataError, load_corpora, load_spec, make_batches, spec_from_dict
from reftrain.data._corpus import tokenized_source
from reftrain.data._sources import path_source

SPEC_TOML = """
seed = 7
[packing]
mode = "concat"
[[seq_mix]]
seq_len = 64
sequences = 4
[[domains]]
name = "notes"
weight = 3
sources = ["corpus/notes"]
[[domains]]
name = "rows"
weight = 1
sources = ["corpus/rows.jsonl", "corpus/table.parquet"]
text_field = "body"
"""


@pytest.fixture
def corpus_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("REFTRAIN_CACHE", str(tmp_path / "cache"))
    notes = tmp_path / "corpus" / "notes"
    notes.mkdir(parents=True)
    (notes / "a.txt").write_text("First note about ring attention.\n" * 20)
    (notes / "b.md").write_text("# Second\nSegment ids number documents from one.\n" * 10)
    (notes / "skip.bin").write_bytes(b"\x00\x01")
    (tmp_path / "corpus" / "rows.jsonl").write_text(
        "\n".join(json.dumps({"body": f"row {i} says hello " * (i + 1)}) for i in range(5)) + "\n")
    pq.write_table(pa.table({"body": ["parquet one", "parquet two " * 30], "id": [1, 2]}),
                   tmp_path / "corpus" / "table.parquet")
    (tmp_path / "spec.toml").write_text(SPEC_TOML)
    return tmp_path


def test_spec_file_with_user_sources_loads_and_streams(corpus_dir, tokenizer):
    spec = load_spec(corpus_dir / "spec.toml")
    assert spec.seed == 7 and spec.packing.mode == "concat" and spec.packing.split == "any"
    assert spec.weights == (0.75, 0.25)
    corpora = load_corpora(spec, tokenizer)
    assert [c.n_docs for c in corpora] == [2, 5 + 2]
    first = corpora[0].doc(0)
    assert first[0] == tokenizer.bos_id and first[-1] == tokenizer.eos_id
    assert tokenizer.decode(first).startswith("First note")
    batches = list(make_batches(spec, batch_size=2, corpora=corpora))
    assert len(batches) == 2 and batches[0]["tokens"].shape == (2, 64)
    # The JSON form of the same spec is the same spec.
    raw = {"seed": 7, "packing": {"mode": "concat"}, "seq_mix": [{"seq_len": 64, "sequences": 4}],
           "domains": [{"name": "notes", "weight": 3, "sources": ["corpus/notes"]},
                       {"name": "rows", "weight": 1, "sources": ["corpus/rows.jsonl", "corpus/table.parquet"],
                        "text_field": "body"}]}
    (corpus_dir / "spec.json").write_text(json.dumps(raw))
    assert load_spec(corpus_dir / "spec.json").fingerprint() == spec.fingerprint()


def test_cache_hit_returns_the_same_tokens(corpus_dir, tokenizer):
    source = path_source("corpus/rows.jsonl", corpus_dir, "body")
    first = tokenized_source(source, tokenizer)
    entries = list((corpus_dir / "cache" / "corpora").iterdir())
    assert len(entries) == 1 and not any(p.name.startswith(".") for p in entries)
    again = tokenized_source(source, tokenizer)
    assert np.array_equal(first.tokens, again.tokens) and first.titles == again.titles
    (corpus_dir / "corpus" / "rows.jsonl").write_text(json.dumps({"body": "changed"}) + "\n")
    changed = tokenized_source(path_source("corpus/rows.jsonl", corpus_dir, "body"), tokenizer)
    assert changed.n_docs == 1  # a changed file is a new key


@pytest.mark.parametrize("raw, message", [
    ({}, "domains"),
    ({"domains": [{"name": "a", "weight": 0, "sources": ["x"]}]}, "weight"),
    ({"domains": [{"name": "a", "weight": 1, "sources": []}]}, "sources"),
    ({"domains": [{"name": "a", "weight": 1, "sources": ["x"]}], "packing": {"mode": "ring"}}, "mode"),
    ({"domains": [{"name": "a", "weight": 1, "sources": ["x"]}], "seq_mix": [{"seq_len": 0, "sequences": 1}]},
     "seq_len"),
    ({"domains": [{"name": "a", "weight": 1, "sources": ["x"]}], "colour": 1}, "unknown"),
])
def test_bad_spec_names_the_field(raw, message):
    with pytest.raises(DataError, match=message):
        spec_from_dict(raw)


def test_bad_sources_are_one_line_errors(corpus_dir, tokenizer):
    (corpus_dir / "bad.jsonl").write_text('{"text": "ok"}\n{"other": 1}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: no string field 'text'"):
        tokenized_source(path_source("bad.jsonl", corpus_dir), tokenizer)
    with pytest.raises(DataError, match="no column 'text'"):
        tokenized_source(path_source("corpus/table.parquet", corpus_dir), tokenizer)
    with pytest.raises(DataError, match="does not exist"):
        path_source("missing/", corpus_dir)
    spec = spec_from_dict({"domains": [{"name": "a", "weight": 1, "sources": ["builtin:nope"]}]})
    with pytest.raises(DataError, match="unknown built-in source"):
        load_corpora(spec, tokenizer)


def test_default_spec_is_the_papers_mix():
    assert [d.name for d in DEFAULT_SPEC.domains] == ["code", "papers", "web", "books"]
    assert DEFAULT_SPEC.weights == pytest.approx((0.70, 0.10, 0.15, 0.05))
    assert [(s.seq_len, s.sequences) for s in DEFAULT_SPEC.seq_mix] == [(81920, 1200), (262144, 300),
                                                                       (524288, 30)]
