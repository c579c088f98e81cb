"""hloscope's deviceless prediction against the GPU: for programs that fit one H100, compare
the prediction made on a CPU host (`h100-80gb` target, no GPU), XLA's memory_analysis from a
real compile on the H100, and the peak memory measured while the program runs.

    python analyses/hloscope_vs_gpu.py predict      # on the CPU host: writes ..._predicted.json
    XLA_PYTHON_CLIENT_PREALLOCATE=false python analyses/hloscope_vs_gpu.py measure   # on the GPU

`measure` compiles each program with the same builder hloscope uses (`hloscope.programs
.lower_program`) on the real device, runs it once on zero-filled inputs in its own process
(so `peak_bytes_in_use` is that program's alone), and writes the table beside the predictions
(<out-dir>/hloscope_vs_gpu.json and .md). XLA flags are hloscope's for GPU targets
(`--xla_gpu_enable_triton_gemm=false`) in both places, so the two compiles see one pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _isolated import run_isolated  # noqa: E402  (this folder is first on sys.path)

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = "h100-80gb"
# (label, program, options): attention at three lengths, the train step of an 8-layer Mistral-7B
# (full width) at three lengths; all on one device, all with segment ids (cuDNN's packed mode
# under the default document settings, 4 slots on 16K blocks). Under the earlier default, one
# call of 16 slots per shard, 128K attention and the 64K step did not fit an H100 from the
# packed-mode workspace (analyses/results/cudnn_workspace_h100.json).
CASES = [
    ("attention 32K", "attention", {"seq": 32768, "q_chunk": 2048, "kv_chunk": 4096}),
    ("attention 64K", "attention", {"seq": 65536, "q_chunk": 2048, "kv_chunk": 4096}),
    ("attention 128K", "attention", {"seq": 131072, "q_chunk": 2048, "kv_chunk": 4096}),
    ("train-step 8L 16K", "train-step", {"model": "mistral-7b", "layers": 8, "seq": 16384, "q_chunk": 2048, "kv_chunk": 4096}),
    ("train-step 8L 32K", "train-step", {"model": "mistral-7b", "layers": 8, "seq": 32768, "q_chunk": 2048, "kv_chunk": 4096}),
    ("train-step 8L 64K", "train-step", {"model": "mistral-7b", "layers": 8, "seq": 65536, "q_chunk": 2048, "kv_chunk": 4096}),
]
TARGETS = {"deviceless_vs_real_compile": 0.03, "prediction_vs_measured_peak": 0.10}


def predict(out_dir: Path) -> int:
    from hloscope.profiling import profile_program
    from hloscope.programs import program_options
    from reftrain.files import atomic_write_bytes

    rows = []
    for label, program, options in CASES:
        profile = profile_program(program, program_options(program, **options), target=TARGET, devices=1)
        rows.append({"label": label, "program": program, "options": options, "figures": profile["figures"],
                     "memory_analysis": profile["memory_analysis"], "versions": profile["versions"]})
        print(label, f"xla_total {profile['figures']['xla_total'] / 2**30:.3f} GiB", flush=True)
    atomic_write_bytes(out_dir / "hloscope_vs_gpu_predicted.json", (json.dumps({"target": TARGET, "rows": rows}, indent=1) + "\n").encode())
    return 0


def _measure_one(index: int) -> dict:
    import jax
    import jax.numpy as jnp

    import numpy as np
    from jax.sharding import Mesh

    from hloscope._lower import mesh_axes
    from hloscope.programs import builder_spec, import_object

    label, program, options = CASES[index]
    # What hloscope._lower.lower does, keeping the abstract arguments to fill.
    devices = jax.devices()[:1]
    axes = mesh_axes(program, len(devices), options, None)
    mesh = Mesh(np.asarray(devices).reshape(tuple(axes.values())), tuple(axes))
    function, abstract = import_object(builder_spec(program))(mesh, **options)
    jitted = function if hasattr(function, "lower") else jax.jit(function)
    compiled = jitted.lower(*abstract).compile()
    stats = compiled.memory_analysis()
    memory = {name: int(getattr(stats, name)) for name in (
        "argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes")}
    memory["xla_total"] = (memory["argument_size_in_bytes"] + memory["output_size_in_bytes"]
                           + memory["temp_size_in_bytes"] - memory["alias_size_in_bytes"])
    before = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use", 0)
    arguments = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype, device=a.sharding), list(abstract))
    jax.block_until_ready(compiled(*arguments))
    peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    return {"label": label, "real_compile": memory, "peak_bytes_in_use": peak, "peak_before_run": before,
            "device": jax.devices()[0].device_kind, "jax": jax.__version__}


def measure(out_dir: Path, predicted_path: Path) -> int:
    from reftrain.files import atomic_write_bytes

    if os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE") != "false":
        print("set XLA_PYTHON_CLIENT_PREALLOCATE=false: peak memory is meaningless with a preallocated pool", file=sys.stderr)
        return 2
    predicted = {r["label"]: r for r in json.loads(predicted_path.read_text())["rows"]}
    env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_enable_triton_gemm=false").strip()}
    rows = []
    for index, (label, program, options) in enumerate(CASES):
        row = run_isolated([__file__, "measure-one", str(index)], {"label": label}, timeout=400, env=env)
        if "error" in row:
            rows.append(row)
            print(row, flush=True)
            continue
        prediction = predicted[label]["figures"]["xla_total"]
        real = row["real_compile"]["xla_total"]
        row.update(predicted_xla_total=prediction,
                   deviceless_vs_real_compile=prediction / real - 1,
                   prediction_vs_measured_peak=prediction / row["peak_bytes_in_use"] - 1,
                   real_compile_vs_measured_peak=real / row["peak_bytes_in_use"] - 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = ["| program | deviceless xla_total | real-compile xla_total | measured peak | deviceless / real - 1 | prediction / peak - 1 |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | failed: {r['error'][:100]} | | | | |")
            continue
        lines.append(f"| {r['label']} | {r['predicted_xla_total'] / 2**30:.3f} GiB | {r['real_compile']['xla_total'] / 2**30:.3f} GiB | "
                     f"{r['peak_bytes_in_use'] / 2**30:.3f} GiB | {r['deviceless_vs_real_compile']:+.2%} | {r['prediction_vs_measured_peak']:+.2%} |")
    predicted_versions = next(iter(predicted.values())).get("versions") or {}
    measured = next((r for r in rows if "error" not in r), {})
    lines += ["", f"Predicted deviceless on the CPU host with {', '.join(f'{k} {v}' for k, v in predicted_versions.items())}; "
              f"real compile and peak measured on one {measured.get('device', '?')} with jax {measured.get('jax', '?')}. "
              "The cuDNN attention workspace model (hloscope/cudnn_workspace.py) was fitted on 40 compiles at "
              "4,096 and 16,384 tokens (analyses/results/cudnn_workspace_h100.json), none of the shapes above."]
    table = "\n".join(lines) + "\n"
    print(table)
    payload = {"target": TARGET, "targets": TARGETS, "rows": rows}
    atomic_write_bytes(out_dir / "hloscope_vs_gpu.json", (json.dumps(payload, indent=1) + "\n").encode())
    atomic_write_bytes(out_dir / "hloscope_vs_gpu.md", table.encode())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["predict", "measure", "measure-one"])
    parser.add_argument("index", nargs="?", type=int)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--predicted", type=Path, default=RESULTS / "hloscope_vs_gpu_predicted.json")
    args = parser.parse_args(argv)
    if args.mode == "predict":
        return predict(args.out_dir)
    if args.mode == "measure-one":
        print(json.dumps(_measure_one(args.index)))
        return 0
    return measure(args.out_dir, args.predicted)


if __name__ == "__main__":
    raise SystemExit(main())
