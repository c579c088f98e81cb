"""analyses/recipe_in_miniature.py on this CPU: phases trained call after call within a budget,
each finished phase evaluated, and the table with the targets written (the real run is the
`small` preset on a GPU; here a narrowed `tiny` for seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.analyses.conftest import REPO

NARROW = ["hidden_size=64", "intermediate_size=128", "num_q_heads=4", "num_kv_heads=2", "head_dim=16", "stages=256x2x1"]


def _call(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "analyses/recipe_in_miniature.py", "--run-dir", str(tmp_path / "run"), "--out-dir",
               str(tmp_path / "out"), "--preset", "tiny", "--phases", "1", "2", "--base-length", "256",
               "--multiples", "1", "2", "--depths", "50", "--trials", "1", *(f"--set={s}" for s in NARROW), *extra]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)


def test_a_budget_too_small_does_nothing_and_the_next_call_finishes_and_reports(tmp_path):
    done = _call(tmp_path, "--seconds", "60")  # less than a start and an evaluation: nothing is begun
    assert done.returncode == 0 and "this call: nothing left to do" in done.stdout, done.stderr[-2000:]
    assert not (tmp_path / "run" / "phase1").exists() and not (tmp_path / "out").exists()
    done = _call(tmp_path, "--seconds", "900")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "trained phase 1, evaluated phase 1, trained phase 2, evaluated phase 2" in done.stdout
    result = json.loads((tmp_path / "out" / "recipe_in_miniature.json").read_text())
    assert [(r["phase"], r["rope_dtype"]) for r in result["rows"]] == [
        (1, "float32"), (1, "bfloat16"), (2, "float32"), (2, "bfloat16")]
    assert all(r["lengths"] == [256, 512] and all(0 <= a <= 1 for a in r["accuracy"]) for r in result["rows"])
    assert len(result["calls"]) == 2 and result["seconds"] == sum(c["seconds"] for c in result["calls"]) > 0
    assert result["training"]["1"]["steps"] == 2 and result["training"]["2"]["probe"] == []
    # This run has no phase 0 or 3 and no 8x length: those targets are unmeasured, not invented.
    assert [t["measured"] for t in result["targets"]] == [None, None, None]
    assert "| after phase | RoPE | 256 | 512 |" in (tmp_path / "out" / "recipe_in_miniature.md").read_text()
    again = _call(tmp_path, "--seconds", "900")  # everything done: a call only reports
    assert again.returncode == 0 and "this call: nothing left to do" in again.stdout


def test_bad_arguments_are_one_line_and_exit_2(tmp_path):
    done = _call(tmp_path, "--phases", "5")
    # jaxlib's own start-up logging (absl: "I0000 ...", "WARNING: All log messages ...") is not ours.
    ours = [line for line in done.stderr.splitlines() if not line.startswith(("I0000", "WARNING: All log messages"))]
    assert done.returncode == 2 and len(ours) == 1 and "has phases [0, 1, 2, 3, 4]" in ours[0]
    assert not (tmp_path / "run").exists()
    done = _call(tmp_path, "--require-base", "0.9", "--multiples", "2", "4")
    ours = [line for line in done.stderr.splitlines() if not line.startswith(("I0000", "WARNING: All log messages"))]
    assert done.returncode == 2 and len(ours) == 1 and "--multiples must include 1" in ours[0]
