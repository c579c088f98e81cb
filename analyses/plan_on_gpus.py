"""Issue 19, items 6 and 7: train with a plan on every local device and compare what it predicted.

    python analyses/plan_on_gpus.py PLAN.json [--phase 1] [--steps 4] [--name plan_vs_measured]

Runs `python -m reftrain.run --preset <plan's model> --plan PLAN --phase N` on the real data
stream, at the plan's length (`--set stages=<seq_len>x<steps>`, one sequence a step, no gradient
accumulation), on all local devices (one GPU or eight, the same command; on a CPU host, the
virtual CPU devices of `--cpu-devices`). Then it reads the run's metrics.jsonl and writes
<out-dir>/<name>.json and .md: the measured peak (`peak_bytes_in_use`, the largest of any
device) against the plan's `xla_total`, and each step's seconds (the first, which compiles, is
left out) against hloscope's speed model for that step's documents and padding (read again
from the same data stream: the phase, its stage, the seed), and their total. Exit 1 when the peak
is more than 5% off or the total more than 10% off. `--rescore NAME.json` recomputes the
predictions of a saved result with the current model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import parse_args, write_json  # noqa: E402  (this folder is first on sys.path)

from hloscope.programs.train_step_speed import predicted_seconds  # noqa: E402
from hloscope.targets import get_target  # noqa: E402
from reftrain.config import get_config  # noqa: E402
from reftrain.data import DEFAULT_SPEC  # noqa: E402
from reftrain.files import atomic_write_bytes  # noqa: E402
from reftrain.flops import documents_attended_length, row_documents  # noqa: E402
from reftrain.plan import apply_plan, load_plan, plan_from_dict  # noqa: E402
from reftrain.platform_choice import cpu_unless_a_gpu_is_here  # noqa: E402

PEAK_WITHIN, STEP_WITHIN = 0.05, 0.10


def _configure(parser) -> None:
    parser.add_argument("plan", type=Path, nargs="?")
    parser.add_argument("--rescore", type=Path, help="recompute the predictions of a saved <name>.json (nothing is run)")
    parser.add_argument("--phase", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4, help="steps to train (the first compiles and is not timed)")
    parser.add_argument("--name", default="plan_vs_measured")
    parser.add_argument("--cpu-devices", type=int, default=8, help="virtual devices on a CPU host")
    parser.add_argument("--run-dir", type=Path, help="run directory (default: a temporary one)")


def train(plan_path: Path, phase: int, steps: int, run_dir: Path, cpu_devices: int) -> list[dict]:
    plan = load_plan(plan_path)
    command = [sys.executable, "-m", "reftrain.run", "--preset", plan.model, "--plan", str(plan_path),
               "--phase", str(phase), "--set", f"stages={plan.seq_len}x{steps}x1", "--grad-accum", "1",
               "--max-steps", str(steps), "--no-checkpoints", "--run-dir", str(run_dir),
               "--cpu-devices", str(cpu_devices), "--no-progress"]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=Path(__file__).resolve().parent.parent)
    lines = (run_dir / f"phase{phase}" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def step_documents(model: str, phase: int, seq_len: int, steps: int) -> list[dict]:
    """Each step's row as `train` fed it (the phase at `seq_len`, one row a step, seed 0): its
    document lengths in order and the padding after them."""
    import jax
    import numpy as np

    from reftrain.phases import get_phase
    from reftrain.setup import apply_settings
    from reftrain.sharding import make_mesh
    from reftrain.train.data_feed import PhaseFeed

    fed, _ = apply_settings(get_phase(model, phase), get_config(model), [("stages", f"{seq_len}x{steps}x1")])
    feed = PhaseFeed(dataclasses.replace(fed, grad_accum=1), DEFAULT_SPEC, make_mesh(devices=jax.devices()[:1]),
                     grad_accum=1, seed=0)
    rows = []
    for step in range(steps):
        documents, padding = row_documents(np.asarray(feed.batch(step)["segment_ids"]).reshape(-1))
        rows.append({"documents": documents, "padding": padding})
    return rows


def _target_of(plan, devices: dict):
    """The plan's target where it is the device that ran (the speed model prices GPUs only)."""
    target = get_target(plan.target["name"]) if plan.target.get("name") else None
    if target is None or target.platform == "cpu" or not devices["kind"].startswith(target.device_kind):
        return None
    return target


def compare(plan_path: Path, records: list[dict], devices: dict, phase: int) -> dict:
    """Measured against predicted: the peak, and each timed step (all but the first, which
    compiles) against the speed model for that step's documents."""
    plan = load_plan(plan_path)
    timed = records[1:] or records
    rows_fed = step_documents(plan.model, phase, plan.seq_len, len(records))
    for r in records:  # the stream read again is the one that trained: its attended lengths agree
        fed = documents_attended_length(rows_fed[r["step"]]["documents"], r["seq_len"])
        if r.get("attention_length") is not None and not math.isclose(fed, r["attention_length"], rel_tol=1e-9):
            raise RuntimeError(f"step {r['step']}: the data stream read again attends {fed:.1f} tokens, the run "
                               f"logged {r['attention_length']:.1f}: not the stream it trained on")
    rows = [{"step": r["step"], "seq_len": r["seq_len"], "seconds": r["seconds"], "peak_bytes": r.get("peak_bytes"),
             "loss": r["loss"], **rows_fed[r["step"]]}
            for r in timed]
    peak = max((r["peak_bytes"] for r in records if r.get("peak_bytes")), default=None)
    predicted_peak = plan.predicted.get("xla_total")
    result = {
        "plan": plan.to_dict(), "phase": phase, "devices": devices, "steps": rows, "peak_bytes": peak, "predicted_peak_bytes": predicted_peak,
        "peak_error": peak / predicted_peak - 1 if peak and predicted_peak else None,
        "finite_losses": all(math.isfinite(r["loss"]) for r in records),
    }
    return score(result, plan)


def score(result: dict, plan) -> dict:
    """Fills in the speed model's prediction of each step and of their total (again after the
    model changes: --rescore)."""
    config = apply_plan(plan, get_config(plan.model), plan.devices)
    target = _target_of(plan, result["devices"])
    if "documents" not in result["steps"][0]:  # saved before the rows were recorded: read them again
        fed = step_documents(plan.model, result.get("phase", 1), plan.seq_len, max(r["step"] for r in result["steps"]) + 1)
        for r in result["steps"]:
            r.pop("documents_equivalent", None)  # what was recorded instead: the attended length's equal documents
            r.update(fed[r["step"]])
    for r in result["steps"]:
        documents, padding = r["documents"], r["padding"]
        r["predicted_seconds"] = (predicted_seconds(config, r["seq_len"], plan.mesh, target, documents=documents,
                                                    padding=padding) if target else None)
        r["step_error"] = r["predicted_seconds"] / r["seconds"] - 1 if target else None
    measured = sum(r["seconds"] for r in result["steps"])
    predicted = sum(r["predicted_seconds"] for r in result["steps"]) if target else None
    result.update(seconds=measured, predicted_seconds=predicted,
                  step_error=predicted / measured - 1 if predicted else None)
    result["within"] = (result["peak_error"] is None or abs(result["peak_error"]) <= PEAK_WITHIN) and (
        result["step_error"] is None or abs(result["step_error"]) <= STEP_WITHIN)
    return result


def _markdown(result: dict) -> str:
    plan, gib = result["plan"], lambda b: f"{b / 2**30:.2f} GiB" if b else "n/a (no memory statistics)"
    pct = lambda e: f"{e:+.1%}" if e is not None else "-"
    seconds = lambda s: f"{s:.3f}" if s is not None else "-"
    lines = [
        f"Plan: {plan['model']} ({plan['layers'] or 'all'} layers), {plan['seq_len']:,} tokens, mesh {plan['mesh']}, "
        f"execution {plan['execution']}; "
        f"target {plan['target'].get('name')}. Ran on {result['devices']['count']} x {result['devices']['kind']} "
        f"(jax {result['devices']['jax']}).", "",
        "| figure | predicted | measured | error |", "| --- | ---: | ---: | ---: |",
        f"| peak bytes per device | {gib(result['predicted_peak_bytes'])} | {gib(result['peak_bytes'])} | {pct(result['peak_error'])} |",
        f"| seconds of the {len(result['steps'])} timed steps | {seconds(result['predicted_seconds'])} | "
        f"{seconds(result['seconds'])} | {pct(result['step_error'])} |", "",
        "| step | documents | longest | padding | seconds | predicted | error | loss |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {r['step']} | {len(r['documents'])} | {max(r['documents'], default=0):,} | {r['padding']:,} | "
              f"{r['seconds']:.3f} | {seconds(r['predicted_seconds'])} | {pct(r['step_error'])} | {r['loss']:.3f} |"
              for r in result["steps"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, _configure, argv)
    if args.rescore:
        cpu_unless_a_gpu_is_here()  # the data stream is read again on this host's CPU if need be
        result = json.loads(args.rescore.read_text())
        plan = plan_from_dict(result["plan"])
        result = score({**result, "plan": plan.to_dict()}, plan)  # a plan of an older schema, as read today
        write_json(args.rescore, result)
        atomic_write_bytes(args.rescore.with_suffix(".md"), _markdown(result).encode())
        print(_markdown(result))
        return 0
    if args.plan is None:
        print("error: give a plan file (or --rescore a saved result)", file=sys.stderr)
        return 2
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.cpu_devices}".strip()
    with tempfile.TemporaryDirectory() as scratch:
        records = train(args.plan, args.phase, args.steps, args.run_dir or Path(scratch) / "run", args.cpu_devices)
    import jax  # after the run: this process holds no device memory while it trains

    devices = {"count": jax.device_count(), "kind": jax.devices()[0].device_kind, "jax": jax.__version__}
    result = compare(args.plan, records, devices, args.phase)
    write_json(args.out_dir / f"{args.name}.json", result)
    atomic_write_bytes(args.out_dir / f"{args.name}.md", _markdown(result).encode())
    print(_markdown(result))
    return 0 if result["within"] and result["finite_losses"] else 1


if __name__ == "__main__":
    sys.exit(main())
