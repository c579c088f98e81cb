"""compile_in_worker: real compiles for the host CPU and deviceless GPUs, and every way a worker
can fail coming back as a status instead of taking the caller down.

The builders below are imported by the worker process as `tests.hloscope.test_compile:<name>`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hloscope import compile as hcompile
from hloscope.compile import CompileRequest, CompileResult, collect_dumps, compile_in_worker, worker_env
from hloscope.targets import MissingGpuAotError, UnknownTargetError, check_gpu_aot, get_target

BATCH, WIDTH, STEPS, DEVICES = 256, 128, 3, 8
F32 = 4


def looped_matmul(devices: list, batch: int, width: int, steps: int) -> jax.stages.Lowered:
    """y <- tanh(y @ w) `steps` times; y [batch, width] sharded by rows, w [width, width] replicated."""
    mesh = Mesh(np.array(devices), ("x",))
    rows = NamedSharding(mesh, P("x", None))
    x = jax.ShapeDtypeStruct((batch, width), jnp.float32, sharding=rows)
    w = jax.ShapeDtypeStruct((width, width), jnp.float32, sharding=NamedSharding(mesh, P()))

    @partial(jax.jit, out_shardings=rows)
    def looped(x: jax.Array, w: jax.Array) -> jax.Array:
        return jax.lax.fori_loop(0, steps, lambda _, y: jnp.tanh(y @ w), x)

    return looped.lower(x, w)


def raising(devices: list, message: str) -> None:
    raise ValueError(message)


def out_of_memory(devices: list) -> None:
    raise MemoryError("pretend the host ran out")


def not_lowered(devices: list) -> int:
    return len(devices)


def aborting(devices: list) -> None:
    os.abort()


def sleeping(devices: list, seconds: float) -> None:
    time.sleep(seconds)


def _request(builder: str, target: str = "cpu", **kwargs) -> CompileRequest:
    timeout_s = kwargs.pop("timeout_s", 120)
    return CompileRequest(builder=f"{__name__}:{builder}", kwargs=kwargs, target=target, devices=DEVICES,
                          timeout_s=timeout_s)


def _matmul(target: str) -> CompileResult:
    return compile_in_worker(_request("looped_matmul", target, batch=BATCH, width=WIDTH, steps=STEPS))


def _assert_matmul_memory(result: CompileResult) -> None:
    assert result.ok, (result.status, result.error, result.log)
    memory = result.memory
    assert memory is not None
    # Per device: x's rows are split 8 ways, w is whole on every device, y is split like x.
    rows = BATCH // DEVICES
    assert memory["argument_size_in_bytes"] == rows * WIDTH * F32 + WIDTH * WIDTH * F32
    assert memory["output_size_in_bytes"] == rows * WIDTH * F32
    assert memory["temp_size_in_bytes"] > 0
    assert memory["xla_total"] == (memory["argument_size_in_bytes"] + memory["output_size_in_bytes"]
                                   + memory["temp_size_in_bytes"] - memory["alias_size_in_bytes"])
    assert "BufferAssignment" in result.dumps["buffer_assignment"]
    assert "looped" in result.dumps["after_optimizations"]
    assert result.versions["jax"] == jax.__version__
    assert result.compile_s > 0 and result.wall_s >= result.compile_s


@pytest.fixture(scope="module")
def cpu_result() -> CompileResult:
    return _matmul("cpu")


def test_cpu_compile_reports_memory_and_dumps(cpu_result: CompileResult) -> None:
    _assert_matmul_memory(cpu_result)
    assert " dot(" in cpu_result.hlo_text and " while(" in cpu_result.hlo_text
    assert cpu_result.hlo_text.startswith("HloModule jit_looped")
    assert "stablehlo.dot_general" in cpu_result.stablehlo_text and "loc(" in cpu_result.stablehlo_text
    assert "memory_usage_report" in cpu_result.dumps
    assert cpu_result.cost is not None and cpu_result.cost["flops"] > 0


@pytest.mark.parametrize("target", ["a100-80gb", "h100-80gb"])
def test_deviceless_gpu_compile(target: str) -> None:
    try:
        check_gpu_aot()
    except MissingGpuAotError as missing:
        pytest.skip(str(missing))
    result = _matmul(target)
    _assert_matmul_memory(result)
    # Triton GEMMs are off for GPU targets, so the dot is a cuBLAS call, as on a real GPU.
    assert "__cublas$lt$matmul" in result.hlo_text
    assert "__triton_gemm" not in result.hlo_text
    assert " while(" in result.hlo_text


def test_builder_exception_is_an_error() -> None:
    result = compile_in_worker(_request("raising", message="no such layer: wq_17"))
    assert (result.ok, result.status) == (False, "error")
    assert result.error == "ValueError: no such layer: wq_17"
    assert "Traceback" in result.log
    assert result.memory is None and result.hlo_text is None and result.stablehlo_text is None


def test_builder_must_return_lowered() -> None:
    result = compile_in_worker(_request("not_lowered"))
    assert result.status == "error" and "not jax.stages.Lowered" in result.error


def test_memory_error_is_oom() -> None:
    result = compile_in_worker(_request("out_of_memory"))
    assert result.status == "oom" and "MemoryError" in result.error


def test_abort_is_a_crash() -> None:
    result = compile_in_worker(_request("aborting"))
    assert (result.ok, result.status) == (False, "crashed")
    assert "SIGABRT" in result.error


def test_timeout_kills_the_worker() -> None:
    start = time.perf_counter()
    result = compile_in_worker(_request("sleeping", seconds=120, timeout_s=3))
    assert result.status == "timeout" and "timeout_s=3" in result.error
    assert time.perf_counter() - start < 30


def test_unknown_target_raises_before_spawning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "Popen", None)  # any spawn would fail loudly
    with pytest.raises(UnknownTargetError, match="a100-80gb, b200-180gb, cpu, h100-80gb, h200-141gb"):
        compile_in_worker(_request("looped_matmul", target="b300"))


def test_missing_gpu_aot_raises_before_spawning(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise MissingGpuAotError('install with: pip install -e ".[gpu-aot]"')

    monkeypatch.setattr(hcompile, "check_gpu_aot", missing)
    monkeypatch.setattr(subprocess, "Popen", None)
    with pytest.raises(MissingGpuAotError, match="gpu-aot"):
        compile_in_worker(_request("looped_matmul", target="h100-80gb"))


def test_worker_env_keeps_user_flags_and_sets_device_count() -> None:
    base = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_cpu_enable_fast_math=false", "HOME": "/h"}
    env = worker_env(get_target("cpu"), 4, base)
    assert env["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=4"
    assert env["JAX_PLATFORMS"] == "cpu" and env["HOME"] == "/h"
    assert base["XLA_FLAGS"].startswith("--xla_force_host_platform_device_count=8")  # not mutated


def test_worker_env_for_gpu_lets_user_flags_win() -> None:
    try:
        check_gpu_aot()
    except MissingGpuAotError as missing:
        pytest.skip(str(missing))
    env = worker_env(get_target("h100-80gb"), 8, {"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=true"})
    flags = env["XLA_FLAGS"].split()
    assert flags[0] == "--xla_gpu_enable_triton_gemm=false" and flags[-1] == "--xla_gpu_enable_triton_gemm=true"
    data_dir = next(f for f in flags if f.startswith("--xla_gpu_cuda_data_dir="))
    assert (Path(data_dir.split("=", 1)[1]) / "bin" / "ptxas").is_file()
    assert env["JAX_PLATFORMS"] == "cpu"


def test_collect_dumps_picks_the_named_module(tmp_path: Path) -> None:
    suffix = "sm_9.0a_gpu_after_optimizations"
    for module_id, name, text in [(1, "jit_main", "main"), (3, "jit_helper", "helper" * 100), (5, "jit_main", "new")]:
        (tmp_path / f"module_{module_id:04d}.{name}.{suffix}.txt").write_text(text)
        (tmp_path / f"module_{module_id:04d}.{name}.{suffix}-buffer-assignment.txt").write_text(f"BA {text}")
        (tmp_path / f"module_{module_id:04d}.{name}.after_spmd_partitioner.txt").write_text("not this")
    assert collect_dumps(tmp_path, "jit_main") == {"after_optimizations": "new", "buffer_assignment": "BA new"}
    # Without the name, the largest optimized module wins.
    assert collect_dumps(tmp_path, None)["after_optimizations"] == "helper" * 100
    assert collect_dumps(tmp_path / "absent", "jit_main") == {}


def test_signal_names_in_crash_summary() -> None:
    status, error = hcompile._without_result(-signal.SIGSEGV, "F0000 00:00 foo.cc:1] Check failed: x\n")
    assert status == "crashed" and "SIGSEGV" in error and "Check failed: x" in error
    assert hcompile._without_result(-signal.SIGKILL, "")[0] == "oom"
    assert hcompile._without_result(-signal.SIGABRT, "terminate called after throwing std::bad_alloc")[0] == "oom"
