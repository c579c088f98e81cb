"""NIAH evaluation: needle placement (property test), scoring, greedy decoding, the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reftrain.config import YarnConfig, get_config
from reftrain.data import load_tokenizer
from reftrain.eval import (
    NEEDLE,
    NIAHError,
    build_cells,
    build_sample,
    buffer_length,
    greedy_decode,
    is_correct,
    load_haystack,
    parse_number,
    run_niah,
    score_cell,
    split_sentences,
)
from reftrain.eval.__main__ import main
from reftrain.model import forward, init_params
from reftrain.sharding import make_mesh, param_shardings

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(hidden_size=64, num_layers=1, num_q_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=128,
             q_chunk=64, kv_chunk=64)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def books(tokenizer):  # the held-out haystack, the default
    return load_haystack(tokenizer)


@pytest.fixture(scope="module")
def small():
    config = get_config("tiny", **SMALL)
    return config, init_params(config, jax.random.key(0))


# ---------------------------------------------------------------- the prompt builder


@given(length=st.integers(48, 700), depth=st.floats(0, 100), city=st.sampled_from(["Oslo", "Mexico City", "Kigali"]),
       number=st.integers(1_000_000, 9_999_999))
def test_needle_sits_at_the_sentence_boundary_nearest_the_depth(tokenizer, books, length, depth, city, number):
    s = build_sample(tokenizer, books, length=length, depth=depth, city=city, number=str(number))
    assert s.tokens.shape == (length,) and s.tokens[0] == tokenizer.bos_id
    needle = tokenizer.encode(NEEDLE.format(city=city, number=number))
    start, stop = s.needle_span
    np.testing.assert_array_equal(s.tokens[start:stop], needle)
    # The needle starts at a boundary, and no boundary lies closer to the requested depth.
    target = depth / 100 * s.haystack_len
    assert s.needle_offset in s.boundaries
    assert abs(s.needle_offset - target) <= np.min(np.abs(s.boundaries - target)) + 1e-9
    # Within one sentence: the offset is one of the two boundaries bracketing the target.
    below = s.boundaries[s.boundaries <= target].max()
    above = s.boundaries[s.boundaries >= target].min()
    assert s.needle_offset in (below, above)
    # Right after a sentence end (or at the very start of the context).
    before = tokenizer.decode(s.tokens[1:start])
    assert s.needle_offset == 0 or re.search(r"[.!?]$", before), before[-40:]
    # The haystack ends at a sentence end, so depth 100 puts the needle right before the question.
    assert s.boundaries[-1] == s.haystack_len
    assert tokenizer.decode(s.tokens).count(str(number)) == 1


def test_depth_extremes_and_middle(tokenizer, books):
    first = build_sample(tokenizer, books, length=400, depth=0, city="Oslo", number="1234567")
    last = build_sample(tokenizer, books, length=400, depth=100, city="Oslo", number="1234567")
    middle = build_sample(tokenizer, books, length=400, depth=50, city="Oslo", number="1234567")
    assert first.needle_span[0] == 1 and first.placed_depth == 0
    assert last.placed_depth == 100
    assert tokenizer.decode(last.tokens).endswith(
        "1234567. What is the special magic Oslo number? Answer: The special magic Oslo number is:")
    assert 35 < middle.placed_depth < 65


def test_short_text_is_repeated_and_split_into_sentences(tokenizer):
    text = "The cat sat on the mat.  A dog\nran away! Did it?"
    assert split_sentences(text) == ["The cat sat on the mat.", "A dog ran away!", "Did it?"]
    hay = load_haystack(tokenizer, text, "tiny text")
    tokens, boundaries = hay.window(300)
    assert tokens.shape == (300,) and boundaries[0] == 0 and boundaries[-1] == 300
    for b in boundaries[1:]:
        assert re.search(r"[.!?]$", tokenizer.decode(tokens[:b]))


def test_numbers_in_the_haystack_are_never_drawn(tokenizer):
    hay = load_haystack(tokenizer, "Call 55512345678 now. Nothing else.", "numbers")
    assert hay.contains_number("5551234") and hay.contains_number("2345678") and not hay.contains_number("7654321")


def test_bad_grid_raises_one_line_errors(tokenizer, books):
    with pytest.raises(NIAHError, match=r"depth 101 is outside \[0, 100\]"):
        build_cells(tokenizer, lengths=[256], depths=[101], trials=1, haystack=books)
    with pytest.raises(NIAHError, match="length 20 is too short .*needs at least"):
        build_cells(tokenizer, lengths=[20], depths=[0], trials=1, haystack=books)
    with pytest.raises(NIAHError, match="no text"):
        load_haystack(tokenizer, "  \n ", "empty")


def test_cells_are_seeded_per_cell(tokenizer, books):
    a = build_cells(tokenizer, lengths=[128, 256], depths=[0, 50], trials=3, seed=7, haystack=books)
    b = build_cells(tokenizer, lengths=[256], depths=[50], trials=3, seed=7, haystack=books)
    assert [s.number for s in a[3].samples] == [s.number for s in b[0].samples]
    assert len({s.city for s in a[0].samples}) == 3
    np.testing.assert_array_equal(a[0].prompts().shape, (3, 128))


# ---------------------------------------------------------------- scoring


@pytest.mark.parametrize("prediction, correct", [
    (" 1234567.\n\n", True), ("1234567", True), (" The number is 1234567", True),
    (" 12345678", False), (" 1234 567", False), (" 7654321", False), ("\n\n\n", False), ("", False),
])
def test_exact_match_of_the_number(prediction, correct):
    assert is_correct(prediction, "1234567") is correct


def test_parse_number():
    assert parse_number(" 0042x") == "0042" and parse_number("none") is None


def test_a_model_that_copies_the_needle_scores_one(tokenizer, books, small, monkeypatch):
    """run_niah end to end with a fake decoder that reads the number back out of each prompt."""

    def copying_decoder(config, params, prompts, *, max_new_tokens, mesh=None):
        rows = []
        for prompt in prompts:
            number = re.search(r"\d{7}", tokenizer.decode(prompt)).group()
            ids = tokenizer.encode(f" {number}.")[:max_new_tokens]
            rows.append(np.pad(ids, (0, max_new_tokens - len(ids))))
        return np.stack(rows)

    monkeypatch.setattr("reftrain.eval.niah.greedy_decode", copying_decoder)
    config, params = small
    result = run_niah(config, params, tokenizer, lengths=[128, 256], depths=[0, 50, 100], trials=2,
                      haystack_text=books)
    assert result["accuracy"] == [[1.0, 1.0]] * 3 and result["mean_accuracy"] == 1.0
    cell = result["cells"][0]
    assert cell["trials"][0]["predicted_number"] == cell["trials"][0]["number"]
    cells = build_cells(tokenizer, lengths=[128], depths=[0], trials=2, haystack=books)
    assert score_cell(cells[0], [" 0000000", " nothing"])["accuracy"] == 0.0


# ---------------------------------------------------------------- greedy decoding


def test_buffer_length_rounds_up_for_the_mesh():
    assert buffer_length(256, 10) == 320 and buffer_length(256, 10, sp=4) == 512 and buffer_length(54, 10) == 64


def test_padded_greedy_decode_matches_growing_forwards():
    """The padded buffer with padding masked must decode exactly as unpadded, growing forwards."""
    config = get_config("tiny", **SMALL, compute_dtype="float32")
    params = init_params(config, jax.random.key(1))
    prompts = np.asarray(jax.random.randint(jax.random.key(2), (2, 21), 3, config.vocab_size), np.int32)
    expected = prompts
    for _ in range(4):
        logits = jax.jit(forward, static_argnums=0)(config, params, jnp.asarray(expected))
        expected = np.concatenate([expected, np.asarray(jnp.argmax(logits[:, -1], -1))[:, None]], axis=1)
    got = greedy_decode(config, params, prompts, max_new_tokens=4)
    np.testing.assert_array_equal(got, expected[:, 21:])
    mesh = make_mesh(sp=2)  # ring attention over 2 devices, buffer split in halves
    ring = greedy_decode(config, jax.device_put(params, param_shardings(params, mesh)), prompts, max_new_tokens=4,
                         mesh=mesh)
    np.testing.assert_array_equal(ring, expected[:, 21:])


@given(length=st.integers(1, 150), batch=st.integers(1, 3), new=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_the_key_value_cache_decodes_what_full_forwards_do(length, batch, new, seed):
    """One prefill (the prompt padded to 64 tokens, padding masked) and a cache of RoPE'd keys and
    values: the same tokens as a full forward per token, for any prompt length, with GQA."""
    config = get_config("tiny", **SMALL, compute_dtype="float32")
    params = init_params(config, jax.random.key(seed % 7))
    prompts = np.asarray(jax.random.randint(jax.random.key(seed), (batch, length), 3, config.vocab_size), np.int32)
    cached = greedy_decode(config, params, prompts, max_new_tokens=new)
    np.testing.assert_array_equal(cached, greedy_decode(config, params, prompts, max_new_tokens=new, cache=False))


def test_the_cache_carries_yarn_and_long_theta():
    config = get_config("tiny", **SMALL, compute_dtype="float32", rope_theta=75e6, yarn=YarnConfig(factor=4.0, original_length=64))
    params = init_params(config, jax.random.key(3))
    prompts = np.asarray(jax.random.randint(jax.random.key(4), (2, 200), 3, config.vocab_size), np.int32)
    np.testing.assert_array_equal(greedy_decode(config, params, prompts, max_new_tokens=4),
                                  greedy_decode(config, params, prompts, max_new_tokens=4, cache=False))


def test_run_niah_on_a_random_model(tokenizer, books, small):
    config, params = small
    result = run_niah(config, params, tokenizer, lengths=[128], depths=[0, 100], trials=2, haystack_text=books,
                      max_new_tokens=3)
    assert np.shape(result["accuracy"]) == (2, 1)
    assert all(0 <= a <= 1 for row in result["accuracy"] for a in row)
    assert all(isinstance(t["prediction"], str) for c in result["cells"] for t in c["trials"])
    json.dumps(result)


# ---------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def phase_dir(tmp_path_factory, small):
    """A reftrain phase directory (config.json + an orbax checkpoint) of the small random model."""
    from reftrain.phases import get_phase
    from reftrain.train.checkpoint import Checkpoints
    from reftrain.train.optim import make_optimizer
    from reftrain.train.state import init_state

    config, params = small
    phase = get_phase("tiny", 1)
    optimizer, _ = make_optimizer(phase, phase.steps())
    path = tmp_path_factory.mktemp("run") / "phase1"
    state = init_state(config, optimizer, make_mesh(), jax.random.key(0), params=params)
    checkpoints = Checkpoints(path / "checkpoints", async_save=False)
    checkpoints.save(3, state, {})
    checkpoints.close()
    (path / "config.json").write_text(json.dumps({"model": config.to_dict(), "phase": phase.to_dict()}))
    return path


def test_cli_writes_json_html_and_prints_the_table(phase_dir, tmp_path, capsys):
    out = tmp_path / "niah"
    code = main(["niah", "--checkpoint", str(phase_dir), "--lengths", "128,192", "--depths", "0,100",
                 "--trials", "2", "--max-new-tokens", "4", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "rope_dtype=float32" in captured.out and "128" in captured.out and "100%" in captured.out
    payload = json.loads((out / "niah.json").read_text())
    assert payload["schema"] == "reftrain.eval.niah/1" and payload["checkpoint_kind"] == "phase"
    (run,) = payload["runs"]
    assert run["lengths"] == [128, 192] and run["depths"] == [0.0, 100.0] and np.shape(run["accuracy"]) == (2, 2)
    assert len(run["cells"]) == 4 and all(len(c["trials"]) == 2 for c in run["cells"])
    assert "plotly" in (out / "niah.html").read_text()[:5000].lower()
    assert sorted(p.name for p in out.iterdir()) == ["niah.html", "niah.json"]


def test_cli_compares_rope_dtypes_on_an_hf_checkpoint(small, tmp_path, capsys):
    from reftrain.hf import save_checkpoint

    config, params = small
    hf_dir = save_checkpoint(config, params, tmp_path / "hf", dtype="float32")
    out = tmp_path / "cmp"
    code = main(["niah", "--checkpoint", str(hf_dir), "--lengths", "128", "--depths", "50", "--trials", "1",
                 "--max-new-tokens", "2", "--compare-rope-dtypes", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "rope_dtype=float32" in captured.out and "rope_dtype=bfloat16" in captured.out
    payload = json.loads((out / "niah.json").read_text())
    assert [r["rope_dtype"] for r in payload["runs"]] == ["float32", "bfloat16"]
    assert payload["checkpoint_kind"] == "hf"
    html = (out / "niah.html").read_text()
    assert "rope_dtype=float32" in html and "rope_dtype=bfloat16" in html


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "{missing}", "--lengths", "128"], "does not exist"),
    (["--checkpoint", "{phase}", "--lengths", "128", "--depths", "0,150"], r"depth 150 is outside \[0, 100\]"),
    (["--checkpoint", "{phase}", "--lengths", "16"], "length 16 is too short"),
    (["--checkpoint", "{phase}", "--lengths", "12x"], "expected comma-separated integers"),
    (["--checkpoint", "{phase}", "--lengths", "128", "--rope-dtype", "bfloat16", "--compare-rope-dtypes"],
     "not allowed with"),
    (["--checkpoint", "{phase}", "--lengths", "128", "--sp", "16"], "needs 16 devices"),
    (["--checkpoint", "{empty}", "--lengths", "128"], "neither a reftrain phase directory"),
    (["--checkpoint", "{phase}", "--lengths", "128", "--haystack", "{missing}"], "cannot read a UTF-8 text file"),
    (["--checkpoint", "{phase}", "--lengths", "128", "--trials", "0"], "--trials must be >= 1"),
])
def test_cli_user_errors_exit_2_with_one_line(phase_dir, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "nope", "phase": phase_dir, "empty": tmp_path / "empty"}
    argv = ["niah", *(a.format(**paths) for a in args), "--out", str(tmp_path / "out")]
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(message, lines[0]), err
    assert not (tmp_path / "out").exists()


def test_module_entry_point_reports_a_missing_checkpoint(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "reftrain.eval", "niah", "--checkpoint", str(tmp_path / "nope"),
                           "--lengths", "128"], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    # Some jax plugins print absl start-up chatter on import, which is not ours to silence.
    lines = [line for line in proc.stderr.strip().splitlines()
             if not line.startswith(("WARNING: All log messages", "I0000", "W0000", "E0000"))]
    assert lines == [f"error: checkpoint {tmp_path / 'nope'} does not exist"]


def test_without_plotly_the_json_is_still_written(tmp_path, monkeypatch):
    """A GPU host with only jax's stack (no plotly): niah.json is written, the heatmap is not."""
    import sys

    from reftrain.eval._report import write_outputs

    monkeypatch.setitem(sys.modules, "plotly", None)  # `from plotly import ...` raises ImportError
    result = {"rope_dtype": "float32", "lengths": [256], "depths": [0.0], "accuracy": [[1.0]], "trials": 1}
    json_path, html_path = write_outputs(tmp_path, {"runs": [result]}, [result])
    assert html_path is None and not (tmp_path / "niah.html").exists()
    assert json.loads(json_path.read_text())["runs"][0]["accuracy"] == [[1.0]]


@pytest.mark.parametrize("kind", ["multikey", "multivalue", "multiquery"])
def test_ruler_variants_hold_every_needle_once_and_ask_the_kinds_question(tokenizer, books, kind):
    from reftrain.eval._ruler import NEEDLES

    cells = build_cells(tokenizer, lengths=[700], depths=[0, 60], trials=3, haystack=books, kind=kind)
    for cell in cells:
        for sample in cell.samples:
            text = tokenizer.decode(sample.tokens)
            assert len(sample.tokens) == 700 and sample.kind == kind
            numbers = re.findall(r"number is: (\d{7})\.", text)
            assert len(numbers) == NEEDLES[kind] == len(set(numbers))
            assert all(text.count(n) == 1 for n in numbers)
            assert set(sample.answers) <= set(numbers) and sample.number == sample.answers[0]
            assert text.endswith({"multikey": "number is:", "multivalue": "numbers are:", "multiquery": " are:"}[kind])
            if kind == "multikey":  # the asked city's needle is the one at the depth
                assert text.endswith(f"The special magic {sample.city} number is:")
                assert tokenizer.decode(sample.tokens[slice(*sample.needle_span)]).count(sample.number) == 1


@pytest.mark.parametrize("kind, prediction, expected", [
    ("multikey", " 1234567.", 1.0), ("multikey", " 7654321, 1234567", 0.0),
    ("multivalue", " 1111111, 2222222 and 3333333.", 0.75), ("multiquery", " none", 0.0),
])
def test_ruler_scoring(kind, prediction, expected):
    from reftrain.eval._ruler import score

    answers = ("1234567",) if kind == "multikey" else ("1111111", "2222222", "3333333", "4444444")
    assert score(kind, prediction, answers) == expected


def test_an_unknown_kind_is_one_line(tokenizer, books):
    with pytest.raises(NIAHError, match="unknown needle kind 'haystack'"):
        build_cells(tokenizer, lengths=[512], depths=[0], trials=1, haystack=books, kind="haystack")


def test_the_default_haystack_is_held_out_of_every_training_stream(tokenizer):
    from reftrain.data import DEFAULT_SPEC
    from reftrain.data._iterator import resolve_source

    held_out = load_haystack(tokenizer)
    assert held_out.label == "held-out:docutils-docs"
    training = "\n".join(text for d in DEFAULT_SPEC.domains for s in d.sources
                         for _, text in resolve_source(s, DEFAULT_SPEC, d.text_field).documents())
    training = " ".join(training.split())
    rng = np.random.default_rng(0)
    long = [s for s in held_out.sentences if len(s) > 80]
    picked = [long[int(i)] for i in rng.choice(len(long), 200, replace=False)]
    assert sum(s in training for s in picked) <= 2, [s for s in picked if s in training][:3]
