"""analyses/bench_train.py --anchor: the plain-JAX step runs with each of its policies in the same
invocation, and every row is given against the fastest that fit (not the anchor's worst)."""

from __future__ import annotations

import importlib.util
import json

from reftrain.memory import USER_VARIABLES
from tests.analyses.conftest import REPO


def _bench_train(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "analyses"))   # its helpers, as when run as a script
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "analyses" / "bench_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_anchor_runs_full_dots_and_none_and_the_yardstick_is_the_fastest_that_fit(tmp_path, monkeypatch):
    bench = _bench_train(monkeypatch)
    anchor_tokens_per_s = {"full": 20_000.0, "dots": 26_000.0, "none": None}   # none: out of memory
    calls = []

    def fake_run_isolated(argv, case, *, timeout, env=None):
        calls.append((case, env))
        if case.get("anchor"):
            tokens = anchor_tokens_per_s[env["REMAT"]]
            if tokens is None:
                return {**case, "error": "RESOURCE_EXHAUSTED: Out of memory"}
            return {**case, "step_s": case["length"] / tokens, "tokens_per_s": tokens, "mfu_989": 0.4,
                    "peak_bytes": 60 * 2**30}
        return {**case, "step_s": 1.0, "tokens_per_s": 30_000.0, "mfu": 0.5, "attention_flops_share": 0.3,
                "adamw_update_s": 0.01, "peak_bytes": 50 * 2**30}

    monkeypatch.setattr(bench, "run_isolated", fake_run_isolated)
    # grant_memory writes the pool's share into os.environ; monkeypatch puts it back as it was.
    for name in USER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert bench.main(["--lengths", "32768", "--remat", "save_dots_attention", "--documents", "0",
                       "--anchor", "anchor_train.py", "--out-dir", str(tmp_path)]) == 0

    ran = [env["REMAT"] for case, env in calls if case.get("anchor")]
    assert ran == ["full", "dots", "none"]
    # Each anchor process is given the preallocated pool reftrain runs under.
    assert all(env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "true" for case, env in calls if case.get("anchor"))
    rows = json.loads((tmp_path / "bench_train.json").read_text())["rows"]
    assert bench.anchor_yardsticks(rows) == {32768: 26_000.0}
    table = (tmp_path / "bench_train.md").read_text()
    ours = next(line for line in table.splitlines() if line.startswith("| reftrain"))
    assert f"{30_000 / 26_000:.3f}x" in ours
    assert "failed: RESOURCE_EXHAUSTED" in next(line for line in table.splitlines() if "| none |" in line)
