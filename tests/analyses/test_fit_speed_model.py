"""analyses/fit_speed_model.py: the committed speed model is what the committed H200 steps give,
and its held-out table is recomputed from them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hloscope.programs.train_step_speed import FIT_PATH, SpeedFit, StepWork, load_fit
from tests.analyses.conftest import REPO


def test_the_committed_fit_is_reproduced_from_the_committed_steps(tmp_path):
    done = subprocess.run([sys.executable, "analyses/fit_speed_model.py", "--out-dir", str(tmp_path)], capture_output=True,
                          text=True, timeout=300, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "speed_model.json").read_text())
    committed = json.loads(FIT_PATH.read_text())
    for name in ("matmul_efficiency", "attention_efficiency", "seconds_per_call", "seconds_per_padded_element",
                 "fixed_seconds"):
        assert result["fit"][name] == pytest.approx(committed[name], rel=1e-9)
    held = [row for row in result["rows"] if row["set"] == "held out"]
    fitted = [row for row in result["rows"] if row["set"] == "fit"]
    assert len(held) >= 13 and len(fitted) == 13
    # Every row's error is its prediction against its measurement, and the summary counts them.
    assert all(row["error"] == pytest.approx(row["predicted_s"] / row["step_s"] - 1) for row in result["rows"])
    within = sum(abs(row["error"]) <= 0.10 for row in held)
    assert result["summary"].startswith(f"held out: {within} of {len(held)} within 10%") and within >= 6
    # Held out with many documents (64 to 512 a row, blocks and whole shards): the call and padding terms.
    assert sum(row["documents_in_row"] >= 64 for row in held) >= 4


def test_a_step_costs_what_its_terms_add_up_to():
    fit = SpeedFit(matmul_efficiency=0.5, attention_efficiency=0.25, seconds_per_call=0.001, fixed_seconds=0.1,
                   seconds_per_padded_element=1e-12)
    work = StepWork(matmul_flops=1e15, attention_flops=1e15, attention_calls=100, peak_flops=1e15, xla_blocks=0,
                    padded_elements=3e11)
    assert work.seconds(fit) == pytest.approx(2.0 + 4.0 + 0.1 + 0.3 + 0.1)
    assert 0 < load_fit().matmul_efficiency < 1 and 0 < load_fit().attention_efficiency < 1
