"""hloscope: per-device memory of a JAX program before it runs, and which HLO instruction is to blame.

The public API (docs/api.md): `profile`, `check`, `Profile`, `BudgetExceeded`, `ProgramFailed`,
and `hloscope.testing.assert_fits` for pytest. Importing hloscope loads neither jax nor reftrain:
programs are built and compiled in a worker process.
"""

from hloscope.api import BudgetExceeded, Profile, ProgramFailed, check, profile
from hloscope.targets import MissingGpuAotError, UnknownTargetError
from hloscope.units import parse_size
from hloscope.versions import toolchain_versions

__all__ = [
    "BudgetExceeded",
    "MissingGpuAotError",
    "Profile",
    "ProgramFailed",
    "UnknownTargetError",
    "check",
    "parse_size",
    "profile",
    "toolchain_versions",
]
