"""The built-in corpora (real text, >= 2M tokens), the tokenizer, and the CLI."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from reftrain.data import DEFAULT_SPEC, load_corpora, make_batches
from reftrain.data.__main__ import main


def test_mistral_tokenizer_ids_and_digit_splitting(tokenizer):
    assert (tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id) == (32000, 1, 2, 0)
    assert [tokenizer.piece(i) for i in tokenizer.encode("x 2024")] == ["▁x", "▁", "2", "0", "2", "4"]
    assert tokenizer.decode(tokenizer.encode("def f(a=1):\n    return a")) == "def f(a=1):\n    return a"


@pytest.fixture(scope="module")
def default_corpora(tokenizer):
    return load_corpora(DEFAULT_SPEC, tokenizer)  # tokenized once per machine, then cached


def test_builtin_corpora_hold_at_least_two_million_real_tokens(default_corpora, tokenizer):
    counts = {c.name: c.n_tokens for c in default_corpora}
    assert set(counts) == {"code", "papers", "web", "books"}
    assert sum(counts.values()) >= 2_000_000, counts
    assert all(n >= 100_000 for n in counts.values()), counts
    code = default_corpora[0]
    db = code.doc(code.titles.index("django/db"))
    assert len(db) > 150_000  # organically long: a whole package
    assert "class QuerySet(" in tokenizer.decode(db)
    papers, web = default_corpora[1], default_corpora[2]
    assert "``QuerySet`` API reference" in tokenizer.decode(papers.doc(papers.titles.index("docs/ref/models/querysets.txt")))
    assert all(t.endswith(".html") for t in web.titles) and {t.split(":")[0] for t in web.titles} == {"docutils", "pelican"}
    assert tokenizer.decode(web.doc(0)[:40]).lstrip().lower().startswith("<!doctype html")
    books = default_corpora[3]
    assert "Hamlet" in tokenizer.decode(books.doc(books.titles.index("shkspr/hamlet_gut.txt"))[:50])


def test_tiny_preset_batches_are_fast(default_corpora):
    it = make_batches(DEFAULT_SPEC, batch_size=4, seq_len=8192, corpora=default_corpora)
    next(it)
    start = time.perf_counter()
    for _ in range(5):
        batch = next(it)
    assert batch["tokens"].shape == (4, 8192)
    assert (time.perf_counter() - start) / 5 < 0.5  # generous: ~3 ms measured on 2 cores


def test_inspect_prints_shares_lengths_and_marked_row(capsys, default_corpora):
    assert main(["inspect", "--seq-len", "2048", "--batch-size", "4", "--batches", "8", "--chars", "80"]) == 0
    out = capsys.readouterr().out
    for needle in ("code", "papers", "web", "books", "Realised shares", "⟦seg 1 ·", "p50"):
        assert needle in out, needle


def test_cli_user_errors_exit_2_with_one_line(tmp_path):
    bad = tmp_path / "spec.toml"
    bad.write_text('[[domains]]\nname = "a"\nweight = -1\nsources = ["x"]\n')
    proc = subprocess.run([sys.executable, "-m", "reftrain.data", "inspect", "--spec", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "weight must be a number > 0" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "reftrain.data", "inspect", "--help"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "[[domains]]" in proc.stdout and "text_field" in proc.stdout


@pytest.mark.parametrize("argv", [[], ["inspect", "--seq-len", "abc"], ["fetch", "--bogus"], ["nope"]])
def test_command_line_mistakes_get_one_line_and_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "usage:" not in err


def test_qa_cli_prints_samples(capsys):
    assert main(["qa", "--seq-len", "1024", "--samples", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count('"depth"') == 2 and np.all([w in out for w in ("evidence:", "ending:")])
