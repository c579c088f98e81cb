"""The versions that decide XLA's buffer assignment, recorded beside every memory figure."""

from __future__ import annotations

from importlib import metadata

# Distributions whose version changes what XLA compiles (and so the bytes it reports).
_TOOLCHAIN = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt", "nvidia-cuda-nvcc-cu12")


def toolchain_versions() -> dict[str, str | None]:
    """Returns {distribution: installed version or None} for the compile toolchain."""
    versions: dict[str, str | None] = {}
    for name in _TOOLCHAIN:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
