"""The compile worker: `python -m hloscope._worker REQUEST_JSON RESULT_JSON`.

hloscope.compile starts one of these per compile, with the environment the target needs
already set (JAX_PLATFORMS, XLA_FLAGS), so that a segfault, abort, timeout or out-of-memory
kill inside XLA ends only this process. The request is a JSON file; the result is written as
JSON to RESULT_JSON (never to stdout, where jax and XLA print). Only `status` and `error` are
written when something fails; the caller reads everything else it can find in the work folder.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from hloscope._files import write_json

# CompiledMemoryStats fields copied into CompileResult.memory, when jaxlib has them.
_MEMORY_FIELDS = (
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "temp_size_in_bytes",
    "alias_size_in_bytes",
    "generated_code_size_in_bytes",
    "peak_memory_in_bytes",
    "host_argument_size_in_bytes",
    "host_output_size_in_bytes",
    "host_temp_size_in_bytes",
    "host_alias_size_in_bytes",
    "host_generated_code_size_in_bytes",
)

# Written into the work folder right after lowering, so a compile that then crashes or times
# out still leaves the program it was compiling for the caller to report.
STABLEHLO_FILE = "stablehlo.mlir"


def _devices(target_name: str, count: int) -> list[Any]:
    """The `count` jax devices of the target: host CPU devices, or compile-only GPU devices."""
    import jax

    from hloscope.targets import get_target

    target = get_target(target_name)
    if target.platform == "cpu":
        devices = jax.devices("cpu")
        if len(devices) < count:
            raise RuntimeError(
                f"asked for {count} cpu devices but jax has {len(devices)}; "
                "XLA_FLAGS must carry --xla_force_host_platform_device_count"
            )
        return devices[:count]

    from jax.experimental import topologies

    # "slices x hosts per slice x devices per host". Real nodes hold 8 GPUs, so larger
    # counts that divide evenly are laid out as 8-GPU hosts, as they would run.
    hosts, per_host = (count // 8, 8) if count > 8 and count % 8 == 0 else (1, count)
    topology = topologies.get_topology_desc(
        platform="cuda", target_config=target.config_text, topology=f"1x{hosts}x{per_host}"
    )
    devices = list(topology.devices)
    if len(devices) != count:
        raise RuntimeError(f"topology 1x{hosts}x{per_host} gave {len(devices)} devices, not {count}")
    # The device kind comes from the config's device_description_str: a mismatch means XLA
    # did not take our config and would compile for some other GPU.
    if devices[0].device_kind != target.device_kind:
        raise RuntimeError(
            f"compile-only devices report {devices[0].device_kind!r}, expected {target.device_kind!r}"
        )
    return devices


def _memory(stats: Any) -> dict[str, int] | None:
    if stats is None:
        return None
    memory = {name: int(getattr(stats, name)) for name in _MEMORY_FIELDS if hasattr(stats, name)}
    memory["xla_total"] = (
        memory["argument_size_in_bytes"]
        + memory["output_size_in_bytes"]
        + memory["temp_size_in_bytes"]
        - memory["alias_size_in_bytes"]
    )
    return memory


def _cost(compiled: Any) -> dict[str, float] | None:
    """compiled.cost_analysis() as {name: float}; None where the backend has none (GPU AOT)."""
    try:
        cost = compiled.cost_analysis()
    except NotImplementedError:
        return None
    # Older jax returned a one-element list of dicts; 0.10.2 returns the dict itself.
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost:
        return None
    return {str(k): float(v) for k, v in cost.items() if isinstance(v, (int, float))}


def _module_name(compiled: Any, stablehlo: str) -> str | None:
    """The HLO module's name, which is what XLA's dump files are named after."""
    try:
        return compiled.runtime_executable().hlo_modules()[0].name
    except Exception:  # only a hint for picking dump files; the text fallback below does
        pass
    for line in stablehlo.splitlines():
        if line.startswith("module @"):
            return line.split()[1].lstrip("@")
    return None


def run(request: dict[str, Any], work_dir: Path) -> dict[str, Any]:
    """Builds, lowers and compiles the request's program; returns the result fields."""
    # The caller's import path, so the builder's module imports here as it does there.
    sys.path[:0] = [p for p in request["sys_path"] if p not in sys.path]
    import jax

    from hloscope import cudnn_workspace
    from hloscope.programs import import_object

    devices = _devices(request["target"], int(request["devices"]))
    builder = import_object(request["builder"])
    lowered = builder(devices=devices, **request["kwargs"])
    lowered, built = lowered if isinstance(lowered, tuple) else (lowered, None)  # lower_described's
    if not isinstance(lowered, jax.stages.Lowered):
        raise TypeError(f"builder {request['builder']} returned {type(lowered).__name__}, not jax.stages.Lowered")
    # A compile-only GPU cannot ask cuDNN for its attention workspace: write in the modelled one.
    workspaces = cudnn_workspace.inject(lowered) if devices[0].platform != "cpu" else []
    stablehlo = lowered.as_text(debug_info=True)
    (work_dir / STABLEHLO_FILE).write_text(stablehlo)

    # Dump options go to this compile only (not XLA_FLAGS), so the small jit modules that a
    # builder runs eagerly (jnp.zeros, ...) are not dumped beside the program.
    options = {"xla_dump_to": request["dump_dir"], "xla_dump_hlo_as_text": True} if request["dump"] else None
    start = time.perf_counter()
    compiled = lowered.compile(compiler_options=options)
    compile_s = time.perf_counter() - start
    return {
        "status": "ok",
        "compile_s": compile_s,
        "hlo_text": compiled.as_text(),
        "memory": _memory(compiled.memory_analysis()),
        "cost": _cost(compiled),
        "module_name": _module_name(compiled, stablehlo),
        "cudnn_workspace": workspaces,
        "built": built,
    }


def _failure(exc: BaseException) -> dict[str, Any]:
    """status/error for an exception: out-of-memory when it says so, else a Python error."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    first = lines[0] if lines else ""
    # A ProgramError already names the builder and the exception it raised.
    summary = (first if type(exc).__name__ == "ProgramError" else f"{type(exc).__name__}: {first}").rstrip(": ")[:1000]
    # A builder's MemoryError comes wrapped in the ProgramError that names the builder.
    oom = isinstance(exc, MemoryError) or isinstance(exc.__cause__, MemoryError) or "RESOURCE_EXHAUSTED" in str(exc)
    return {"status": "oom" if oom else "error", "error": summary}


def main(argv: list[str]) -> None:
    """Runs one request; always ends the process with os._exit (see below)."""
    request_path, result_path = Path(argv[0]), Path(argv[1])
    request = json.loads(request_path.read_text())
    try:
        payload = run(request, request_path.parent)
    except BaseException as exc:  # noqa: BLE001 - every failure, SystemExit too, is reported
        traceback.print_exc()
        payload = _failure(exc)
    # Written whole, then renamed: the caller never sees half a result, even if we die mid-write.
    write_json(result_path, payload, indent=None)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: the result is safe on disk, and plugin/XLA destructors at exit
    # are a known source of late crashes that would otherwise turn a success into 'crashed'.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
