"""Start-up time of the commands a user runs first: `hloscope --help` and `hloscope profile --hlo`
on a 1,000-instruction HLO file (the target: under 1 s each on 2 cores), and what each loads.

    python analyses/bench_startup.py [--repeats 5]

Each command runs as a fresh process (`python -m hloscope ...`), as a user's shell runs it;
the table gives the median and the slowest wall time of the repeats, the median CPU time (which
other work on the machine inflates far less than wall time; the load average says how busy it
was), and whether jax, reftrain, flax or optax was imported. Writes analyses/results/bench_startup.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "analyses" / "results"
HEAVY = ("jax", "jaxlib", "reftrain", "flax", "optax")


def hlo_module(instructions: int) -> str:
    """A straight-line HLO module of `instructions` elementwise instructions over f32[1024,1024]."""
    lines = ["HloModule bench, entry_computation_layout={(f32[1024,1024]{1,0})->f32[1024,1024]{1,0}}", "",
             "ENTRY %main (p0: f32[1024,1024]) -> f32[1024,1024] {", "  %v0 = f32[1024,1024]{1,0} parameter(0)"]
    for i in range(1, instructions):
        op = ("exponential", "tanh", "negate", "add")[i % 4]
        operands = f"f32[1024,1024]{{1,0}} %v{i - 1}" + (f", f32[1024,1024]{{1,0}} %v{max(i - 2, 0)}" if op == "add" else "")
        root = "ROOT " if i == instructions - 1 else ""
        lines.append(f"  {root}%v{i} = f32[1024,1024]{{1,0}} {op}({operands})")
    return "\n".join(lines + ["}", ""])


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(args: list[str], repeats: int) -> dict:
    probe = ("import runpy, sys, atexit\n"
             f"atexit.register(lambda: print('LOADED', sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}), file=sys.stderr))\n"
             f"sys.argv = ['hloscope', *{args!r}]\n"
             "runpy.run_module('hloscope', run_name='__main__')")
    seconds, cpu_seconds, loaded = [], [], None
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), _children_cpu()
        result = subprocess.run([sys.executable, "-m", "hloscope", *args], capture_output=True, text=True)
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(_children_cpu() - cpu_start)
        if result.returncode != 0:
            raise SystemExit(f"hloscope {' '.join(args)} failed: {result.stderr.strip()}")
    probed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    loaded = [line for line in probed.stderr.splitlines() if line.startswith("LOADED")]
    return {"command": "hloscope " + " ".join(args), "median_s": statistics.median(seconds), "max_s": max(seconds),
            "median_cpu_s": statistics.median(cpu_seconds), "load_average_1min": os.getloadavg()[0],
            "repeats": repeats, "heavy_modules_loaded": eval(loaded[-1][len("LOADED "):]) if loaded else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "small.hlo"
        small.write_text(hlo_module(1000))
        rows = [timed(["--help"], args.repeats), timed(["profile", "--hlo", str(small)], args.repeats)]
    rows[1]["command"] = "hloscope profile --hlo small.hlo (1,000 instructions)"
    header = ("| command | median wall | slowest wall | median CPU | load average | jax/reftrain/flax/optax loaded |\n"
              "| --- | --- | --- | --- | --- | --- |")
    table = "\n".join([header] + [f"| `{r['command']}` | {r['median_s']:.2f} s | {r['max_s']:.2f} s | "
                                  f"{r['median_cpu_s']:.2f} s | {r['load_average_1min']:.1f} | "
                                  f"{', '.join(r['heavy_modules_loaded']) or 'none'} |" for r in rows])
    machine = f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores"
    print(table)
    print(f"({machine}; target: under 1 s each)")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "bench_startup.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    (args.out_dir / "bench_startup.md").write_text(
        f"# Start-up time\n\n`python analyses/bench_startup.py` on {machine}:\n\n{table}\n")


if __name__ == "__main__":
    main()
