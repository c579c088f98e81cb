"""Lower and compile a JAX program for a target in a worker process, and read XLA's memory facts.

Every compile runs in `python -m hloscope._worker` with the environment its target needs, so
that whatever goes wrong inside XLA (a segfault, an abort, an endless compile, the kernel's
out-of-memory killer) ends only the worker and comes back as a CompileResult status.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hloscope import _worker
from hloscope.targets import Target, check_gpu_aot, cuda_nvcc_dir, get_target
from hloscope.versions import toolchain_versions

# A deviceless compile cannot autotune, so XLA:GPU keeps its default Triton GEMM fusions, while
# a compile on a real GPU autotunes and picks cuBLAS for most dots. With Triton GEMMs off the
# deviceless compile takes cuBLAS too, and an H100 program's temp bytes matched the real GPU's
# to within 512 bytes. docs/targets.md has this and the one known gap (Hopper cuBLAS-Lt workspace).
GPU_XLA_FLAGS = ("--xla_gpu_enable_triton_gemm=false",)

_DEVICE_COUNT_FLAG = re.compile(r"--xla_force_host_platform_device_count=\S*")
_LOG_TAIL_CHARS = 20_000

# Dump files of one module (module_NNNN.<name>.<suffix>) and the CompileResult.dumps keys they
# fill. The platform prefix differs (cpu_after_optimizations, sm_9.0a_gpu_after_optimizations).
_DUMP_KINDS = {
    "buffer_assignment": re.compile(r"after_optimizations-buffer-assignment\.txt$"),
    "memory_usage_report": re.compile(r"after_optimizations-memory-usage-report\.txt$"),
    "after_optimizations": re.compile(r"[._]after_optimizations\.txt$"),
}
_DUMP_MODULE = re.compile(r"^module_(\d+)\.(.+)$")


@dataclass
class CompileRequest:
    """One program to compile.

    Attributes:
        builder: "module:function"; the worker imports it and calls
            function(devices=<list of `devices` jax devices of the target>, **kwargs), which must
            return a jax.stages.Lowered.
        kwargs: JSON-serialisable keyword arguments for the builder.
        target: a name in hloscope.targets.TARGETS.
        devices: how many devices of the target the builder gets.
        dump: collect XLA's buffer-assignment, memory-usage-report and optimized-HLO dumps.
        timeout_s: wall-clock limit for the whole worker (start-up, lowering and compile).
    """

    builder: str
    kwargs: dict[str, Any]
    target: str
    devices: int
    dump: bool = True
    timeout_s: float = 600


@dataclass
class CompileResult:
    """What came back from one worker.

    status is 'ok', 'error' (a Python exception in the worker), 'crashed' (killed by a signal
    or gone without a result), 'oom' (MemoryError, RESOURCE_EXHAUSTED, std::bad_alloc, or
    SIGKILL, which on Linux is the out-of-memory killer's) or 'timeout'. `error` is a one-line
    summary; `log` is the tail of the worker's stderr and stdout. memory holds
    CompiledMemoryStats' byte counts plus 'xla_total' = argument + output + temp - alias.
    stablehlo_text is kept whenever lowering finished, even if the compile then failed.
    """

    ok: bool
    status: str
    error: str | None
    log: str
    hlo_text: str | None
    stablehlo_text: str | None
    memory: dict[str, int] | None
    dumps: dict[str, str]
    cost: dict[str, float] | None
    versions: dict[str, str | None]
    target: str
    devices: int
    wall_s: float
    compile_s: float
    # cuDNN attention calls whose workspace hloscope modelled (deviceless GPU compiles only).
    cudnn_workspace: list[dict[str, Any]] = field(default_factory=list)
    # What the builder says it built (the third element of its return), e.g. the execution in effect.
    built: dict[str, Any] | None = None


def worker_env(target: Target, devices: int, base: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment: `base` plus what the target needs.

    The user's XLA_FLAGS are kept. For cpu the device count flag is replaced by ours; for cuda
    our flags go first, so that a flag the user set explicitly wins (XLA takes the last one).
    """
    env = dict(base)
    user_flags = env.get("XLA_FLAGS", "")
    # Both platforms compile on this host: cuda targets come from get_topology_desc, which
    # needs the plugin registered but not initialised as a backend (there is no GPU).
    env["JAX_PLATFORMS"] = "cpu"
    if target.platform == "cpu":
        flags = [_DEVICE_COUNT_FLAG.sub("", user_flags), f"--xla_force_host_platform_device_count={devices}"]
    else:
        # XLA would also find the pip ptxas by itself (it looks next to the plugin), but only
        # after /usr/local/cuda and /opt/cuda: naming the folder pins the ptxas we depend on.
        flags = [*GPU_XLA_FLAGS, f"--xla_gpu_cuda_data_dir={cuda_nvcc_dir()}", user_flags]
    # Joined, not re-split: a user's quoted flag value may hold spaces.
    env["XLA_FLAGS"] = " ".join(part.strip() for part in flags if part.strip())
    # The worker imports this very hloscope, whatever the caller's working directory.
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    return env


def _read(path: Path) -> str | None:
    return path.read_text(errors="replace") if path.is_file() else None


def collect_dumps(dump_dir: Path, module_name: str | None) -> dict[str, str]:
    """Reads the buffer-assignment, memory-usage-report and optimized-HLO dumps of one module.

    The module is the newest one named `module_name` (what XLA named the compiled program);
    without a name, or if no file carries it, the one with the largest optimized HLO.
    """
    if not dump_dir.is_dir():
        return {}
    modules: dict[int, dict[str, Path]] = {}
    names: dict[int, str] = {}
    for path in dump_dir.iterdir():
        match = _DUMP_MODULE.match(path.name)
        if not match:
            continue
        module_id, rest = int(match.group(1)), match.group(2)
        for kind, pattern in _DUMP_KINDS.items():
            if pattern.search(rest) and kind not in modules.get(module_id, {}):
                modules.setdefault(module_id, {})[kind] = path
                names[module_id] = rest
                break
    if not modules:
        return {}
    # Module ids grow with each compile, and the program is compiled last: the newest wins.
    named = [i for i in modules if module_name and names[i].startswith(module_name + ".")]

    def hlo_size(module_id: int) -> int:
        path = modules[module_id].get("after_optimizations")
        return path.stat().st_size if path else -1

    chosen = max(named) if named else max(modules, key=hlo_size)
    return {kind: text for kind, path in modules[chosen].items() if (text := _read(path)) is not None}


def _log_tail(log_path: Path) -> str:
    text = _read(log_path) or ""
    return text[-_LOG_TAIL_CHARS:]


def _fatal_line(log: str) -> str | None:
    """The last line where XLA or Python said why it died (absl FATAL, CHECK, Fatal Python error)."""
    fatal = re.compile(r"^F\d{4} |Check failed|Fatal Python error|terminate called")
    lines = [line.strip() for line in log.splitlines() if fatal.search(line)]
    return lines[-1][:500] if lines else None


def _without_result(returncode: int, log: str) -> tuple[str, str]:
    """(status, error) for a worker that ended without writing its result."""
    fatal = _fatal_line(log)
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        if -returncode == signal.SIGKILL:
            return "oom", "worker was killed with SIGKILL (most likely by the kernel's out-of-memory killer)"
        if "bad_alloc" in log or "Out of memory" in log:
            return "oom", f"worker ran out of memory and died with {name}" + (f": {fatal}" if fatal else "")
        return "crashed", f"worker crashed with {name}" + (f": {fatal}" if fatal else "")
    return "crashed", f"worker exited with code {returncode} without a result" + (f": {fatal}" if fatal else "")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # The worker leads its own process group (start_new_session), which also holds any ptxas
    # it started: end them all, by that group's id.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def compile_in_worker(request: CompileRequest) -> CompileResult:
    """Compiles `request` in a fresh worker process and returns what it found.

    Raises UnknownTargetError for an unknown target and MissingGpuAotError when a GPU target is
    asked for without the gpu-aot extra, both before any process starts. Every failure after
    that comes back as a CompileResult with ok False.
    """
    target = get_target(request.target)
    if target.platform == "cuda":
        check_gpu_aot()
    if request.devices < 1:
        raise ValueError(f"devices must be at least 1, got {request.devices}")
    versions = toolchain_versions()
    with tempfile.TemporaryDirectory(prefix="hloscope-compile-") as tmp:
        work = Path(tmp)
        request_path, result_path, log_path = work / "request.json", work / "result.json", work / "worker.log"
        request_path.write_text(json.dumps({
            "builder": request.builder,
            "kwargs": request.kwargs,
            "target": request.target,
            "devices": request.devices,
            "dump": request.dump,
            "dump_dir": str(work / "dump"),
            "sys_path": [p for p in sys.path if p],
        }))
        env = worker_env(target, request.devices, os.environ)
        command = [sys.executable, "-m", "hloscope._worker", str(request_path), str(result_path)]
        start = time.perf_counter()
        timed_out = False
        # Output goes to a file, not a pipe: XLA can print megabytes, and nobody reads a pipe
        # while we wait.
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
            try:
                proc.wait(timeout=request.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                if proc.returncode is None:
                    _kill_group(proc)
        wall_s = time.perf_counter() - start
        log = _log_tail(log_path)
        try:
            payload = json.loads(result_path.read_text()) if result_path.is_file() else None
        except json.JSONDecodeError:
            payload = None
        if timed_out:
            status, error = "timeout", f"worker ran past timeout_s={request.timeout_s:g} and was killed"
        elif payload is not None:
            status, error = payload["status"], payload.get("error")
        else:
            status, error = _without_result(proc.returncode, log)
        payload = payload or {}
        return CompileResult(
            ok=status == "ok",
            status=status,
            error=error,
            log=log,
            hlo_text=payload.get("hlo_text"),
            stablehlo_text=_read(work / _worker.STABLEHLO_FILE),
            memory=payload.get("memory"),
            dumps=collect_dumps(work / "dump", payload.get("module_name")) if request.dump else {},
            cost=payload.get("cost"),
            versions=versions,
            target=request.target,
            devices=request.devices,
            wall_s=wall_s,
            compile_s=float(payload.get("compile_s", 0.0)),
            cudnn_workspace=payload.get("cudnn_workspace", []),
            built=payload.get("built"),
        )
