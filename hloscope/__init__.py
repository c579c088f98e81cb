"""hloscope: per-device memory of a JAX program before it runs, and which HLO instruction is to blame."""

from hloscope.versions import toolchain_versions

__all__ = ["toolchain_versions"]
