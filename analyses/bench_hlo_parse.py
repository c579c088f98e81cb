"""Issue 17, item 6: parse speed and peak memory on a 300K-instruction module (target: 5 s, 1 GB).

    nice -n 10 python analyses/bench_hlo_parse.py [--instructions 300000] [--repeats 3]

Writes a synthetic optimized-HLO text (fusions of four instructions called from a scheduled
entry, each line with the metadata JAX writes, ~50 MB at 300K) and a StableHLO text of as many
ops, then parses each in a fresh process (so ru_maxrss is that run's peak) and traces it.
Prints a table and writes analyses/results/bench_hlo_parse.json. The machine is shared: the
figures are wall-clock seconds under whatever else runs (the JSON keeps the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.join(_HERE, "..")
_META = ('metadata={{op_name="jit(train_step)/jvp(transformer)/layer_{k}/mlp/dot_general" '
         'source_file="/home/user/project/model/transformer.py" source_line={line}}}')


def hlo_text(instructions: int) -> str:
    """Optimized-HLO-like text: fused computations of 4 instructions, each called once."""
    blocks = max(1, instructions // 5)
    out = ["HloModule jit_train_step, is_scheduled=true, entry_computation_layout={(f32[256,1024]{1,0})->f32[256,1024]{1,0}}", ""]
    for k in range(blocks):
        meta = _META.format(k=k % 97, line=100 + k % 900)
        out += [f"%fused_computation.{k} (param_0.{k}: f32[256,1024], param_1.{k}: f32[256,1024]) -> f32[256,1024] {{",
                f"  %param_0.{k} = f32[256,1024]{{1,0}} parameter(0)",
                f"  %param_1.{k} = f32[256,1024]{{1,0}} parameter(1)",
                f"  %add.{k} = f32[256,1024]{{1,0}} add(f32[256,1024]{{1,0}} %param_0.{k}, f32[256,1024]{{1,0}} %param_1.{k}), {meta}",
                f"  ROOT %multiply.{k} = f32[256,1024]{{1,0}} multiply(f32[256,1024]{{1,0}} %add.{k}, f32[256,1024]{{1,0}} %param_1.{k}), {meta}",
                "}", ""]
    out.append("ENTRY %main (p: f32[256,1024]) -> f32[256,1024] {")
    out.append("  %p = f32[256,1024]{1,0} parameter(0)")
    previous = "%p"
    for k in range(blocks):
        meta = _META.format(k=k % 97, line=100 + k % 900)
        root = "ROOT " if k == blocks - 1 else ""
        out.append(f"  {root}%fusion.{k} = f32[256,1024]{{1,0}} fusion(f32[256,1024]{{1,0}} {previous}, "
                   f"f32[256,1024]{{1,0}} %p), kind=kLoop, calls=%fused_computation.{k}, {meta}")
        previous = f"%fusion.{k}"
    out.append("}")
    return "\n".join(out) + "\n"


def mlir_text(ops: int) -> str:
    """StableHLO-like text: one function of elementwise ops with debug locations."""
    out = ["#loc1 = loc(\"/home/user/project/model/transformer.py\":123:8)",
           "module @jit_train_step attributes {mhlo.num_partitions = 1 : i32} {",
           "  func.func public @main(%arg0: tensor<256x1024xf32>) -> (tensor<256x1024xf32>) {"]
    previous = "%arg0"
    for k in range(ops - 1):
        op = ("stablehlo.add", "stablehlo.multiply", "stablehlo.tanh")[k % 3]
        operands = f"{previous}, %arg0" if op != "stablehlo.tanh" else previous
        out.append(f"    %{k} = {op} {operands} : tensor<256x1024xf32> "
                   f"loc(#loc{2 + k % 50})")
        previous = f"%{k}"
    out += [f"    return {previous} : tensor<256x1024xf32>", "  }", "}"]
    out += [f"#loc{2 + k} = loc(\"jit(train_step)/layer_{k}/add\"(#loc1))" for k in range(50)]
    return "\n".join(out) + "\n"


_MEASURE = """
import gc, json, resource, sys, time
from hloscope.hlo import parse_module
from hloscope.trace import trace_module
text = open(sys.argv[1]).read()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter(); c0 = time.process_time()
module = parse_module(text)
t1 = time.perf_counter(); c1 = time.process_time()
peak_parse = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
trace = trace_module(module)
t2 = time.perf_counter(); c2 = time.process_time()
print(json.dumps({"instructions": sum(1 for _ in module.instructions()), "parse_s": t1 - t0,
                  "parse_cpu_s": c1 - c0, "trace_s": t2 - t1, "trace_cpu_s": c2 - c1,
                  "rss_before_mb": base / 1024, "peak_rss_parse_mb": peak_parse / 1024,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "live_peak": trace.live_peak}))
"""


def measure(path: str, repeats: int) -> dict:
    """The run with the least parse CPU time of ``repeats`` fresh processes (as timeit does:
    the others measure the machine's other work more than the parser) and every run's seconds."""
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", _MEASURE, path], capture_output=True, text=True,
                             cwd=_ROOT, env=dict(os.environ, PYTHONPATH=_ROOT), check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["parse_cpu_s"])
    return {**best, "parse_cpu_s_runs": [r["parse_cpu_s"] for r in runs]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instructions", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, make in (("hlo", hlo_text), ("stablehlo", mlir_text)):
            path = os.path.join(tmp, f"bench.{kind}")
            with open(path, "w") as f:
                f.write(make(args.instructions))
            row = {"text": kind, "megabytes": os.path.getsize(path) / 1e6, **measure(path, args.repeats)}
            rows.append(row)
    # The target is judged on CPU seconds: wall time on the shared machine depends on the load.
    lines = ["| text | instructions | MB | parse s CPU, best (wall) | every run's parse s CPU | trace s CPU "
             "| peak RSS MB (parse / all) | target |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ok = r["parse_cpu_s"] <= 5 and r["peak_rss_parse_mb"] <= 1024
        lines.append(f"| {r['text']} | {r['instructions']:,} | {r['megabytes']:.1f} | {r['parse_cpu_s']:.2f} "
                     f"({r['parse_s']:.2f}) | {', '.join(f'{x:.2f}' for x in r['parse_cpu_s_runs'])} | {r['trace_cpu_s']:.2f} | {r['peak_rss_parse_mb']:.0f} / "
                     f"{r['peak_rss_mb']:.0f} | {'met' if ok else 'missed'} (5 s CPU, 1 GB) |")
    print("\n".join(lines))
    load = os.getloadavg()
    os.makedirs(os.path.join(_HERE, "results"), exist_ok=True)
    with open(os.path.join(_HERE, "results", "bench_hlo_parse.json"), "w") as f:
        json.dump({"rows": rows, "loadavg": load, "cpus": os.cpu_count()}, f, indent=1)
    with open(os.path.join(_HERE, "results", "bench_hlo_parse.md"), "w") as f:
        f.write(f"`nice -n 10 python analyses/bench_hlo_parse.py` ({os.cpu_count()} CPUs, load average "
                f"{load[0]:.1f} at the end; each text parsed in {args.repeats} fresh processes, the fastest kept, "
                f"as timeit does: the slower runs measure the shared machine's other work)\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
