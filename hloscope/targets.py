"""The machines hloscope compiles for: the host CPU, and GPUs compiled for without one (deviceless).

A GPU target is a GpuTargetConfigProto text shipped in `hloscope/target_configs/`; with the
`gpu-aot` extra installed, XLA:GPU compiles for it on a CPU-only host (docs/targets.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Literal

# The extra that brings the CUDA plugin and ptxas; named in every "missing" message.
GPU_AOT_INSTALL = 'pip install -e ".[gpu-aot]"'

#: Fraction of device memory kept free for what compile-time analysis cannot see: the CUDA
#: context and cuBLAS/cuDNN workspaces outside XLA's buffers, NCCL's communication buffers and
#: allocator fragmentation (docs/search.md). A plan carries its margin, and reftrain preallocates
#: 1 - margin of the card from it (reftrain.memory.DEFAULT_MARGIN, for its default plan, is this
#: number: a test holds them equal).
DEFAULT_MARGIN = 0.10

#: Bytes XLA's pool holds at run time beyond a program's memory_analysis on an NVIDIA GPU. cuBLAS
#: and cuDNN workspaces are buffers of the HLO itself (in xla_total), and the CUDA context lives
#: outside the pool (the margin's share): on an H100 with jax 0.11.2 the first run's
#: peak_bytes_in_use exceeded XLA's total by at most 3,675 bytes over four programs, two flag
#: sets (analyses/results/plan_runs.md). Rounded up to 1 MiB and added to what `fits`, `check`
#: and the search judge, for every cuda target.
GPU_RUNTIME_OVERHEAD = 2**20


class UnknownTargetError(ValueError):
    """A target name that is not in TARGETS."""


class MissingGpuAotError(RuntimeError):
    """The deviceless-GPU toolchain (the `gpu-aot` extra) is missing or does not match jaxlib."""


@dataclass(frozen=True)
class Target:
    """One machine to compile for.

    Attributes:
        name: key in TARGETS, e.g. "h100-80gb".
        platform: "cpu" (the host's own XLA:CPU) or "cuda" (deviceless XLA:GPU).
        device_kind: what `jax.Device.device_kind` reports for this target's devices.
        memory_bytes: device memory per device; None for cpu (host memory is not a budget).
        config_text: GpuTargetConfigProto text for a cuda target; None for cpu.
        runtime_overhead_bytes: what the runtime holds in the pool beyond the program's buffers.
    """

    name: str
    platform: Literal["cpu", "cuda"]
    device_kind: str
    memory_bytes: int | None
    config_text: str | None
    runtime_overhead_bytes: int = GPU_RUNTIME_OVERHEAD


def _config(file_name: str) -> str:
    """Reads a shipped GpuTargetConfigProto text (package data in hloscope/target_configs)."""
    return resources.files("hloscope").joinpath("target_configs", file_name).read_text()


def _gpu(name: str, device_kind: str, memory_bytes: int) -> Target:
    """A deviceless XLA:GPU target, its GpuTargetConfigProto shipped as target_configs/<name>.txtpb."""
    return Target(name=name, platform="cuda", device_kind=device_kind, memory_bytes=memory_bytes,
                  config_text=_config(name.replace("-", "_") + ".txtpb"))


TARGETS: dict[str, Target] = {
    "cpu": Target(name="cpu", platform="cpu", device_kind="cpu", memory_bytes=None, config_text=None,
                  runtime_overhead_bytes=0),
    **{name: _gpu(name, kind, memory) for name, kind, memory in (
        ("a100-80gb", "NVIDIA A100-SXM4-80GB", 85_100_068_864),
        ("h100-80gb", "NVIDIA H100 80GB HBM3", 84_929_347_584),
        ("h200-141gb", "NVIDIA H200", 150_754_820_096),
        ("b200-180gb", "NVIDIA B200", 191_514_411_008),
    )},
}


def get_target(name: str) -> Target:
    """Returns the target called `name`; raises UnknownTargetError listing the known names."""
    try:
        return TARGETS[name]
    except KeyError:
        known = ", ".join(sorted(TARGETS))
        raise UnknownTargetError(f"unknown target {name!r}; known targets: {known}") from None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def cuda_nvcc_dir() -> Path:
    """The `nvidia/cuda_nvcc` folder of the pip package (bin/ptxas, nvvm/libdevice).

    Raises MissingGpuAotError when the package is not installed.
    """
    try:
        dist = metadata.distribution("nvidia-cuda-nvcc-cu12")
    except metadata.PackageNotFoundError:
        raise MissingGpuAotError(
            f"nvidia-cuda-nvcc-cu12 (ptxas) is not installed; install it with: {GPU_AOT_INSTALL}"
        ) from None
    # locate_file resolves against the install root without importing anything.
    return Path(str(dist.locate_file("nvidia/cuda_nvcc")))


def check_gpu_aot() -> None:
    """Raises MissingGpuAotError unless deviceless XLA:GPU compilation can work here.

    It needs jax-cuda12-plugin and jax-cuda12-pjrt at exactly jaxlib's version (the plugin's C
    API is tied to jaxlib's) and ptxas from nvidia-cuda-nvcc-cu12 (without it XLA fails with
    "No PTX compilation provider"). Nothing is imported: the plugin is a 480 MB library.
    """
    jaxlib = _version("jaxlib")
    problems = []
    for dist in ("jax-cuda12-plugin", "jax-cuda12-pjrt"):
        version = _version(dist)
        if version is None:
            problems.append(f"{dist} is not installed")
        elif version != jaxlib:
            problems.append(f"{dist} {version} does not match jaxlib {jaxlib}")
    try:
        ptxas = cuda_nvcc_dir() / "bin" / "ptxas"
        if not os.access(ptxas, os.X_OK):
            problems.append(f"ptxas is missing at {ptxas}")
    except MissingGpuAotError:
        problems.append("nvidia-cuda-nvcc-cu12 (ptxas) is not installed")
    if problems:
        raise MissingGpuAotError(
            f"deviceless GPU compilation unavailable ({'; '.join(problems)}); install with: {GPU_AOT_INSTALL}"
        )
