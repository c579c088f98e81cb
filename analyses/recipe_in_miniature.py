"""Issue 20: the MegaBeam recipe in miniature on one GPU, needle retrieval before and after the
context is extended, and bfloat16 RoPE against float32.

    python analyses/recipe_in_miniature.py --run-dir DIR [--seconds 540]    # on the GPU, call after call
    python analyses/recipe_in_miniature.py --run-dir DIR --report           # the table and heatmap, anywhere

The `small` preset (57M parameters) trains through its base stage (phase 0: 2K tokens, theta
10,400, corpora with dense recall documents, docs/training.md) and the paper's four phases scaled down (`reftrain.phases`,
docs/training.md). Each call continues where the last stopped: it trains the first unfinished
phase with `python -m reftrain.run --max-seconds` (the checkpoints are in DIR, so a call of at
most 10 minutes may end inside a phase and the next resumes it), and after each phase that
finishes runs `python -m reftrain.eval niah` at 1x, 4x, 8x and 16x the base length with float32
and bfloat16 RoPE into DIR/niah/phaseN/niah.json. Every call adds its seconds to
DIR/recipe.json. When every phase is evaluated (or with --report) it writes
<out-dir>/recipe_in_miniature.json and .md (accuracy by stage, length and RoPE dtype, mean over
depths, and the issue's targets checked) and, where plotly is installed, the heatmap.
Exit 0 when a call did its work (or there was none left); 1 when a training or evaluation
process failed (its own output says why; the next call retries from the last checkpoint); 2 on
bad arguments.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from _common import parse_args, print_table, save_figure, write_json  # noqa: E402  (this folder is first)

from reftrain.files import atomic_write_bytes  # noqa: E402
from reftrain.phases import PHASES  # noqa: E402
from reftrain.train.start import latest_step, total_steps  # noqa: E402

NAME = "recipe_in_miniature"
REPO = Path(__file__).resolve().parent.parent
EVALUATION_SECONDS = 90  # kept back from a call's budget for the NIAH grid of a phase that finishes
START_SECONDS = 45  # a reftrain.run process's start, data and compile before its first step
# The targets: (what, phase, multiple of the base length, at least, at most), float32 RoPE.
TARGETS = (("NIAH at the base length after the base stage", 0, 1, 0.9, None),
           ("NIAH at 8x the base length before the extension", 0, 8, None, 0.1),
           ("NIAH at 8x the base length after the extension (phase 3)", 3, 8, 0.8, None))


def _configure(parser) -> None:
    parser.add_argument("--run-dir", type=Path, required=True, help="checkpoints, NIAH results and recipe.json")
    parser.add_argument("--seconds", type=float, default=540, help="this call's budget (the device allows 600)")
    parser.add_argument("--report", action="store_true", help="only write the table and heatmap from --run-dir")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--phases", type=int, nargs="+", help="default: every phase of the preset, in order")
    parser.add_argument("--base-length", type=int, default=2048)
    parser.add_argument("--multiples", type=int, nargs="+", default=[1, 4, 8, 16], help="NIAH lengths / base")
    parser.add_argument("--depths", default="0,25,50,75,100")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--set", action="append", default=[], help="passed to every reftrain.run (tests shrink stages)")
    parser.add_argument("--require-base", type=float, default=0.0,
                        help="stop (exit 1) when NIAH at the base length after phase 0 is below this (float32)")


def _finished(run_dir: Path, phase: int) -> bool:
    phase_dir = run_dir / f"phase{phase}"
    total, step = total_steps(phase_dir), latest_step(phase_dir / "checkpoints")
    return total is not None and step is not None and step >= total


def _run(command: list[str]) -> None:
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def one_call(args) -> list[str]:
    """Trains and evaluates what this call's budget allows; returns what it did."""
    began, done = time.perf_counter(), []
    left = lambda: args.seconds - (time.perf_counter() - began)
    lengths = ",".join(str(args.base_length * m) for m in args.multiples)
    try:
        for phase in args.phases:
            niah = args.run_dir / "niah" / f"phase{phase}" / "niah.json"
            if not _finished(args.run_dir, phase):
                seconds = left() - EVALUATION_SECONDS - START_SECONDS
                if seconds < 30:
                    break
                _run([sys.executable, "-m", "reftrain.run", "--preset", args.preset, "--phase", str(phase), "--run-dir",
                      str(args.run_dir), "--max-seconds", f"{seconds:.0f}", "--save-every", "200", "--no-progress",
                      *(f"--set={s}" for s in args.set)])
                done.append(f"trained phase {phase}")
                if not _finished(args.run_dir, phase):
                    break  # the budget ran out inside the phase: the next call resumes it
            if not niah.exists():
                if left() < EVALUATION_SECONDS / 2:
                    break
                _run([sys.executable, "-m", "reftrain.eval", "niah", "--checkpoint", str(args.run_dir / f"phase{phase}"),
                      "--lengths", lengths, "--depths", args.depths, "--trials", str(args.trials), "--compare-rope-dtypes",
                      "--out", str(niah.parent)])
                done.append(f"evaluated phase {phase}")
            if phase == 0 and args.require_base and _base_accuracy(niah, args.base_length) < args.require_base:
                raise BaseStageFailed(f"NIAH at {args.base_length} after phase 0 is "
                                      f"{_base_accuracy(niah, args.base_length):.2f} < --require-base "
                                      f"{args.require_base}: not extending a model that cannot retrieve")
    finally:  # a failed process's seconds count too
        _add_call(args.run_dir, time.perf_counter() - began, done)
    return done


class BaseStageFailed(RuntimeError):
    """Phase 0 ended without learning to retrieve (--require-base)."""


def _base_accuracy(niah: Path, length: int) -> float:
    run = next(r for r in json.loads(niah.read_text())["runs"] if r["rope_dtype"] == "float32")
    column = run["lengths"].index(length)
    return sum(row[column] for row in run["accuracy"]) / len(run["accuracy"])


def _training(run_dir: Path, phase: int) -> dict:
    """Steps, tokens, seconds of steps and the probe's series of one phase (from metrics.jsonl)."""
    phase_dir = run_dir / f"phase{phase}"
    path = phase_dir / "metrics.jsonl"
    if not path.exists():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    config = json.loads((phase_dir / "config.json").read_text()) if (phase_dir / "config.json").exists() else {}
    stopped = config.get("stopped_early")
    return {"steps": len(records), "planned_steps": stopped["planned_steps"] if stopped else total_steps(phase_dir),
            "tokens": round(sum(r["tokens_per_s"] * r["seconds"] for r in records)),
            "step_seconds": round(sum(r["seconds"] for r in records), 1),
            "stopped_early": stopped,
            "probe": [[r["step"] + 1, r["probe_niah"]] for r in records if "probe_niah" in r]}


def _add_call(run_dir: Path, seconds: float, done: list[str]) -> None:
    path = run_dir / "recipe.json"
    state = json.loads(path.read_text()) if path.exists() else {"calls": []}
    state["calls"].append({"seconds": round(seconds, 1), "done": done})
    write_json(path, state, indent=1)


def collect(args) -> dict:
    """Accuracy by (phase, RoPE dtype, length), mean over depths, from DIR/niah, and the targets."""
    rows = []
    for phase in args.phases:
        path = args.run_dir / "niah" / f"phase{phase}" / "niah.json"
        if not path.exists():
            continue
        for run in json.loads(path.read_text())["runs"]:
            means = [sum(row[i] for row in run["accuracy"]) / len(run["accuracy"]) for i in range(len(run["lengths"]))]
            rows.append({"phase": phase, "rope_dtype": run["rope_dtype"], "lengths": run["lengths"], "accuracy": means})
    calls = json.loads((args.run_dir / "recipe.json").read_text())["calls"] if (args.run_dir / "recipe.json").exists() else []
    targets = []
    for what, phase, multiple, low, high in TARGETS:
        row = next((r for r in rows if r["phase"] == phase and r["rope_dtype"] == "float32"), None)
        length = args.base_length * multiple
        value = row["accuracy"][row["lengths"].index(length)] if row and length in row["lengths"] else None
        met = None if value is None else (low is None or value >= low) and (high is None or value <= high)
        targets.append({"target": what, "measured": value, "at_least": low, "at_most": high, "met": met})
    training = {phase: _training(args.run_dir, phase) for phase in args.phases}
    return {"preset": args.preset, "base_length": args.base_length, "rows": rows, "targets": targets,
            "training": {str(p): t for p, t in training.items() if t},
            "calls": calls, "seconds": sum(c["seconds"] for c in calls)}


def _markdown(result: dict) -> str:
    lengths = sorted({n for r in result["rows"] for n in r["lengths"]})
    lines = [f"`{result['preset']}` preset, base length {result['base_length']:,}; NIAH accuracy (mean over depths) "
             f"after each phase; {len(result['calls'])} calls, {result['seconds']:,.0f} s in all.", "",
             "| after phase | RoPE | " + " | ".join(f"{n:,}" for n in lengths) + " |",
             "| ---: | --- | " + " | ".join("---:" for _ in lengths) + " |"]
    for r in result["rows"]:
        cells = dict(zip(r["lengths"], r["accuracy"]))
        lines.append(f"| {r['phase']} | {r['rope_dtype']} | " + " | ".join(
            f"{cells[n]:.2f}" if n in cells else "-" for n in lengths) + " |")
    lines += ["", "| target | measured | met |", "| --- | ---: | --- |"]
    for t in result["targets"]:
        bound = f">= {t['at_least']}" if t["at_least"] is not None else f"<= {t['at_most']}"
        measured = "-" if t["measured"] is None else f"{t['measured']:.2f}"
        lines.append(f"| {t['target']} ({bound}) | {measured} | {'-' if t['met'] is None else t['met']} |")
    if result.get("training"):
        lines += ["", "| phase | steps run / planned | tokens | seconds of steps | NIAH probe while training (step: accuracy) |",
                  "| ---: | ---: | ---: | ---: | --- |"]
        for phase, t in result["training"].items():
            probe = ", ".join(f"{step}: {value:.2f}" for step, value in t["probe"]) or "-"
            lines.append(f"| {phase} | {t['steps']:,} / {t['planned_steps'] or 0:,} | {t['tokens'] / 1e6:.1f}M | "
                         f"{t['step_seconds']:,.0f} | {probe} |")
    return "\n".join(lines) + "\n"


def _figure(result: dict):
    from plotly import graph_objects as go
    from plotly.subplots import make_subplots

    dtypes = sorted({r["rope_dtype"] for r in result["rows"]}, key=lambda d: d != "float32")
    figure = make_subplots(rows=1, cols=len(dtypes), shared_yaxes=True, subplot_titles=[f"{d} RoPE" for d in dtypes])
    for i, dtype in enumerate(dtypes, start=1):
        rows = [r for r in result["rows"] if r["rope_dtype"] == dtype]
        figure.add_trace(go.Heatmap(z=[r["accuracy"] for r in rows], x=[f"{n:,}" for n in rows[0]["lengths"]],
                                    y=[f"after phase {r['phase']}" for r in rows], zmin=0, zmax=1, colorscale="RdYlGn",
                                    showscale=i == len(dtypes), texttemplate="%{z:.2f}"), row=1, col=i)
        figure.update_xaxes(title_text="context length (tokens)", type="category", row=1, col=i)
    figure.update_yaxes(type="category", autorange="reversed")
    figure.update_layout(title="The recipe in miniature: NIAH accuracy by stage and length")
    return figure


def report(args) -> dict:
    result = collect(args)
    write_json(args.out_dir / f"{NAME}.json", result)
    atomic_write_bytes(args.out_dir / f"{NAME}.md", _markdown(result).encode())
    try:
        if result["rows"]:
            save_figure(_figure(result), args.out_dir, NAME)
    except ImportError:
        print("no heatmap: plotly is not installed (run --report where it is)", file=sys.stderr)
    lengths = sorted({n for r in result["rows"] for n in r["lengths"]})
    print_table("NIAH accuracy by stage (mean over depths)", ["after phase", "RoPE", *(f"{n:,}" for n in lengths)],
                [[str(r["phase"]), r["rope_dtype"], *(f"{dict(zip(r['lengths'], r['accuracy'])).get(n, float('nan')):.2f}"
                                                       for n in lengths)] for r in result["rows"]])
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, _configure, argv)
    known = [phase.number for phase in PHASES.get(args.preset, ())]
    args.phases = args.phases or known
    if args.require_base and 1 not in args.multiples:
        print("recipe_in_miniature: --require-base reads NIAH at the base length: --multiples must include 1",
              file=sys.stderr)
        return 2
    if not known or set(args.phases) - set(known) or args.seconds <= 0 or args.trials < 1 or args.base_length < 1:
        print(f"recipe_in_miniature: bad arguments (preset {args.preset!r} has phases {known}; --seconds, --trials "
              f"and --base-length must be positive)", file=sys.stderr)
        return 2
    if not args.report:
        args.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            print(f"this call: {', '.join(one_call(args)) or 'nothing left to do'}", flush=True)
        except subprocess.CalledProcessError as error:  # its own output, above, says why
            print(f"recipe_in_miniature: {' '.join(error.cmd[1:4])} ... exited {error.returncode}", file=sys.stderr)
            return 1
        except BaseStageFailed as error:
            print(f"recipe_in_miniature: {error}", file=sys.stderr)
            return 1
    if args.report or all((args.run_dir / "niah" / f"phase{p}" / "niah.json").exists() for p in args.phases):
        report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
