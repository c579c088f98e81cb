"""A plan that fits, runs: `reftrain.run --plan` on one GPU, in a clean environment, for plans
`hloscope search` wrote on a CPU host, against what the plan predicted.

    # on the CPU host (deviceless):
    hloscope search --target h100-80gb --devices 1 --model mistral-7b --layers 8 --max-seq \\
        --max-seq-out analyses/results/plan_runs/plan_fit.json
    # on the GPU:
    python analyses/plan_runs.py analyses/results/plan_runs/plan_fit.json analyses/results/plan_runs/plan_over.json \\
        --layers 8 --out-dir OUT

Each plan runs `python -m reftrain.run --preset mistral-7b --plan PLAN --phase 1 --set num_layers=N
--max-steps 4` in its own process with no XLA_* variable set, so what XLA is given is what
reftrain decides from the plan. The table gives per plan: the prediction, the step's real
compile (XLA's xla_total, logged by the run), the measured peak (`peak_bytes_in_use`, the whole
run: initialisation, steps and checkpoint), what XLA was given, and how the run ended (for a
plan over the card: its one-line error). Writes <out-dir>/plan_runs.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(plan: Path, layers: int, steps: int, timeout: float) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as run_dir:
        command = [sys.executable, "-m", "reftrain.run", "--preset", "mistral-7b", "--plan", str(plan), "--phase", "1",
                   "--set", f"num_layers={layers}", "--max-steps", str(steps), "--run-dir", run_dir, "--no-progress"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {"plan": str(plan), "error": f"timed out after {timeout:.0f} s"}
        phase_dir = Path(run_dir) / "phase1"
        config = json.loads((phase_dir / "config.json").read_text()) if (phase_dir / "config.json").exists() else {}
        metrics = [json.loads(line) for line in (phase_dir / "metrics.jsonl").read_text().splitlines()] \
            if (phase_dir / "metrics.jsonl").exists() else []
        left_behind = phase_dir.exists() and not metrics
    saved = json.loads(plan.read_text())
    stderr = [line for line in done.stderr.splitlines() if line.strip()]
    return {
        "plan": str(plan.relative_to(ROOT) if plan.is_relative_to(ROOT) else plan),
        "command": " ".join(command[1:]).replace(run_dir, "RUN_DIR"),
        "seq_len": saved["seq_len"], "remat": saved["execution"].get("remat_policy"),
        "predicted_xla_total": saved["predicted"].get("xla_total"), "plan_memory_bytes": saved["target"].get("memory_bytes"),
        "returncode": done.returncode, "stderr": stderr[-12:], "error": next((l for l in stderr if l.startswith("error:")), None),
        "memory": config.get("memory"), "steps": len(metrics), "left_a_phase_directory": left_behind,
        "real_compile_xla_total": max((m.get("xla_total") or 0 for m in metrics), default=None),
        "peak_bytes_in_use": max((m.get("peak_bytes") or 0 for m in metrics), default=None),
        "tokens_per_s": [round(m["tokens_per_s"]) for m in metrics],
    }


def _table(rows: list[dict]) -> str:
    gib = lambda n: f"{n / 2**30:.2f} GiB" if n else "-"
    lines = ["| plan | tokens | remat | predicted | real compile | measured peak | peak / predicted - 1 | XLA given | ended |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in rows:
        memory = r.get("memory") or {}
        given = (f"{memory['fraction']:.0%}, {gib(memory.get('bytes_limit'))}" if memory.get("fraction") else "-")
        ratio = (f"{r['peak_bytes_in_use'] / r['predicted_xla_total'] - 1:+.2%}"
                 if r.get("peak_bytes_in_use") and r.get("predicted_xla_total") else "-")
        ended = f"{r['steps']} steps, rc 0" if r.get("returncode") == 0 else f"rc {r.get('returncode')}: `{r.get('error')}`"
        lines.append(f"| {r['plan']} | {r.get('seq_len', 0):,} | {r.get('remat')} | {gib(r.get('predicted_xla_total'))} | "
                     f"{gib(r.get('real_compile_xla_total'))} | {gib(r.get('peak_bytes_in_use'))} | {ratio} | {given} | {ended} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("plans", nargs="+", type=Path)
    parser.add_argument("--layers", type=int, required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=420)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "analyses" / "results")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from reftrain.files import atomic_write_bytes, write_json

    rows = []
    for plan in args.plans:
        rows.append(_run(plan.resolve(), args.layers, args.steps, args.timeout))
        print(json.dumps(rows[-1]), flush=True)
    table = _table(rows)
    print(table)
    write_json(args.out_dir / "plan_runs.json", {"rows": rows}, indent=1)
    atomic_write_bytes(args.out_dir / "plan_runs.md", table.encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
