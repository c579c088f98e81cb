"""analyses/plan_on_gpus.py: a plan from `hloscope search` trained on all local devices (here the 8
virtual CPU devices), with its measured-vs-predicted table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from reftrain.plan import plan_from_dict
from tests.analyses.conftest import REPO


def test_a_searched_plan_trains_on_every_device_and_is_compared(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "HLOSCOPE_CACHE": str(tmp_path / "cache"),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    plan = tmp_path / "plan.json"
    search = [sys.executable, "-m", "hloscope", "search", "--model", "tiny", "--seq", "1024", "--devices", "8",
              "--target", "cpu", "--memory", "2GB", "--q-chunks", "128", "--kv-chunks", "128", "--remat", "full",
              "--layouts", "zigzag", "--jobs", "1", "--out", str(plan)]
    done = subprocess.run(search, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    done = subprocess.run([sys.executable, "analyses/plan_on_gpus.py", str(plan), "--steps", "2", "--out-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "plan_vs_measured.json").read_text())
    assert result["devices"]["count"] == 8 and result["plan"]["execution"]["sequence_layout"] == "zigzag"
    assert [r["step"] for r in result["steps"]] == [1] and result["finite_losses"]
    assert result["steps"][0]["seconds"] > 0 and result["seconds"] == result["steps"][0]["seconds"]
    # The step's row as the data stream fed it, which the speed model is given (on a GPU host).
    step = result["steps"][0]
    assert step["documents"] and sum(step["documents"]) + step["padding"] == 1024 and result["phase"] == 1
    # CPU: no memory statistics, and the speed model prices GPUs only; both are said, not invented.
    assert result["peak_bytes"] is None and result["peak_error"] is None
    assert result["predicted_seconds"] is None and result["step_error"] is None
    assert "n/a (no memory statistics)" in (tmp_path / "plan_vs_measured.md").read_text()


def test_rescore_recomputes_the_speed_model_of_a_saved_gpu_result(tmp_path):
    saved = json.loads((REPO / "analyses" / "results" / "plan_vs_measured_h200.json").read_text())
    saved["plan"] = plan_from_dict(saved["plan"]).to_dict()  # measured with a plan of the first schema
    for step in saved["steps"]:
        step["predicted_seconds"] = step["step_error"] = None
    path = tmp_path / "plan_vs_measured_h200.json"
    path.write_text(json.dumps(saved))
    done = subprocess.run([sys.executable, "analyses/plan_on_gpus.py", "--rescore", str(path)], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-2000:]
    again = json.loads(path.read_text())
    assert all(step["predicted_seconds"] > 0 for step in again["steps"])
    assert again["predicted_seconds"] == sum(step["predicted_seconds"] for step in again["steps"])
    assert again["peak_error"] == saved["peak_error"] and abs(again["peak_error"]) < 0.05


def test_a_stream_that_is_not_the_one_trained_on_is_refused(tmp_path, monkeypatch):
    """compare() reads each step's row again from the data stream; where its attended length is
    not what the run logged, the rows (and so the predictions) would be another run's: refused."""
    monkeypatch.syspath_prepend(str(REPO / "analyses"))
    import plan_on_gpus

    from reftrain.config import get_config
    from reftrain.plan import default_plan, write_plan

    path = tmp_path / "plan.json"
    write_plan(default_plan(get_config("tiny"), 1024, 1), path)
    fed = plan_on_gpus.step_documents("tiny", 1, 1024, 2)
    record = lambda step, attended: {"step": step, "seq_len": 1024, "seconds": 1.0, "loss": 1.0, "attention_length": attended}
    truth = [plan_on_gpus.documents_attended_length(row["documents"], 1024) for row in fed]
    devices = {"count": 1, "kind": "cpu", "jax": "-"}
    assert plan_on_gpus.compare(path, [record(0, truth[0]), record(1, truth[1])], devices, 1)["steps"][0]["documents"]
    with pytest.raises(RuntimeError, match="not the stream it trained on"):
        plan_on_gpus.compare(path, [record(0, truth[0]), record(1, truth[1] + 1.0)], devices, 1)
