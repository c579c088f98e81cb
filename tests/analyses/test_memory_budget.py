"""analyses/memory_budget.py: the --quick run (tiny preset, one deviceless train-step compile)
split exactly, against independently computed parameter bytes; the committed full run (three
lengths of Mistral-7B) against the same checks and monotone in length; the pure helpers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "analyses"))

import memory_budget as mb  # noqa: E402

MISTRAL_PARAMS = 7_241_732_096
# Norm scales (2 per layer and the final one) are replicated; every matrix splits 8 ways.
MISTRAL_NORMS = 32 * 2 * 4096 + 4096
MISTRAL_BYTES_PER_DEVICE = ((MISTRAL_PARAMS - MISTRAL_NORMS) // 8 + MISTRAL_NORMS) * 4


def tiny_bytes_per_device() -> int:
    """The tiny preset (2 layers, hidden 256, 8 q / 2 kv heads of 32, MLP 704, vocab 32,000)."""
    layer_matrices = 256 * 8 * 32 * 2 + 256 * 2 * 32 * 2 + 3 * 256 * 704
    matrices = 2 * 32_000 * 256 + 2 * layer_matrices
    norms = 2 * 2 * 256 + 256
    return (matrices // 8 + norms) * 4


def test_paper_table_formula():
    assert mb.paper_int32_table(524_288, 8, 1024, 2048) == 2**35 == mb.PAPER_TABLE_BYTES  # Appendix A, 32 GiB
    assert mb.paper_int32_table(524_288, 8, 2048, 4096) == 2**33
    assert mb.paper_int32_table(262_144, 8, 1024, 2048) == 2**32


@settings(max_examples=50, deadline=None)
@given(log_seq=st.integers(16, 21), log_q=st.integers(8, 11), log_kv=st.integers(8, 12))
def test_paper_table_grows_with_the_cube_of_length(log_seq, log_q, log_kv):
    seq, q, kv = 2**log_seq, 2**log_q, 2**log_kv
    assert mb.paper_int32_table(2 * seq, 8, q, kv) == 8 * mb.paper_int32_table(seq, 8, q, kv)
    assert mb.paper_int32_table(seq, 8, 2 * q, 2 * kv) * 4 == mb.paper_int32_table(seq, 8, q, kv)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(mb.PARTS) - 1), st.integers(0, 1000), st.integers(1, 300)), max_size=30))
def test_paint_counts_each_byte_once(spans):
    claims = [(i, start, start + size, mb.PARTS[i]) for i, start, size in spans]
    parts = dict.fromkeys(mb.PARTS, 0)
    covered = mb._paint(claims, parts)
    union = sum(end - start for start, end in mb._merge([(s, e) for _, s, e, _ in claims]))
    assert covered == union == sum(parts.values())
    # The first part in PARTS order keeps a shared range.
    if claims:
        first = min(i for i, *_ in claims)
        mine = sum(e - s for s, e in mb._merge([(s, e) for i, s, e, _ in claims if i == first]))
        assert parts[mb.PARTS[first]] == mine


def test_mistral_parameters_and_saved_inputs():
    from jax.sharding import AbstractMesh

    from reftrain.config import PRESETS
    from reftrain.model import parameter_report
    from reftrain.sharding import AXES

    report = parameter_report(PRESETS["mistral-7b"], AbstractMesh((1, 1, 1, 8), AXES))
    assert report.count == MISTRAL_PARAMS and report.bytes_per_device == MISTRAL_BYTES_PER_DEVICE
    expected = mb.expected_parts(PRESETS["mistral-7b"], 524_288, 8, report.bytes_per_device, 2048, 2048)
    assert expected["saved layer inputs"][0] == 16 * 2**30  # bf16[32, 1, 65536, 4096]
    assert expected["Adam m, v"][0] == 2 * MISTRAL_BYTES_PER_DEVICE


@settings(max_examples=20, deadline=None)
@given(log_seq=st.integers(17, 21))
def test_expected_activations_grow_with_length(log_seq):
    from reftrain.config import PRESETS

    config = PRESETS["mistral-7b"]
    short = mb.expected_parts(config, 2**log_seq, 8, 1, 2048, 2048)
    long = mb.expected_parts(config, 2**(log_seq + 1), 8, 1, 2048, 2048)
    for part in ("saved layer inputs", "loss", "layer activations (recomputed layer)", "attention working set"):
        assert long[part][0] > short[part][0], part
    assert long["saved layer inputs"][0] == 2 * short["saved layer inputs"][0]
    assert long["Adam m, v"] == short["Adam m, v"]


def _check_rows(rows, param_bytes):
    for row in rows:
        assert sum(row["parts"].values()) == row["xla_total"]  # exactly
        assert all(value >= 0 for value in row["parts"].values())
        assert row["parts"]["parameters (f32 shards)"] == param_bytes
        assert row["parameter_bytes_per_device"] == param_bytes
        assert row["slab_covered"] <= row["slab_bytes"]
    for small, large in zip(rows, rows[1:]):
        assert large["seq"] > small["seq"]
        assert large["parts"]["saved layer inputs"] == small["parts"]["saved layer inputs"] * large["seq"] // small["seq"]
        for part in ("saved layer inputs", "layer activations (recomputed layer)", "loss"):
            assert large["parts"][part] >= small["parts"][part], part
        assert large["xla_total"] > small["xla_total"]
        # State does not depend on the length.
        assert large["parts"]["Adam m, v"] == small["parts"]["Adam m, v"]


def test_quick_run(analysis):
    data, stdout = analysis("memory_budget", timeout=240)
    assert "parts of XLA's per-device total" in stdout and "Paper (section 4.4, Appendix A) vs ours" in stdout
    rows = data["rows"]
    assert [r["seq"] for r in rows] == [32_768] and rows[0]["model"] == "tiny"
    _check_rows(rows, tiny_bytes_per_device())
    # The tiny step's saved layer inputs: 2 layers x L x 256 x bf16.
    assert rows[0]["parts"]["saved layer inputs"] == 2 * (32_768 // 8) * 256 * 2
    # The buffers live at the simulated peak cover XLA's temp slab almost entirely.
    assert all(r["slab_covered"] / r["slab_bytes"] > 0.9 for r in rows)
    claims = {c["name"]: c for c in data["claims"]}
    table = next(c for n, c in claims.items() if n.startswith("Appendix A's int32 table"))
    assert table["paper"] == table["ours"] == 32


def test_committed_results_are_the_full_run():
    path = REPO / "analyses" / "results" / "memory_budget.json"
    if not path.exists():
        pytest.skip("no committed results")
    data = json.loads(path.read_text())
    assert not data["inputs"]["quick"] and [r["seq"] for r in data["rows"]] == [262_144, 524_288, 1_048_576]
    _check_rows(data["rows"], MISTRAL_BYTES_PER_DEVICE)
    assert all(r["parameter_count"] == MISTRAL_PARAMS for r in data["rows"])


@pytest.mark.parametrize("flags", [["--q-chunk", "3"], ["--target", "no-such-gpu"]])
def test_bad_flags_exit_2(flags):
    done = subprocess.run([sys.executable, str(REPO / "analyses" / "memory_budget.py"), "--quick", *flags],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.strip().count("\n") == 0
