"""hloscope: per-device memory of a JAX program before it runs, and which HLO instruction is to blame.

The public API (docs/api.md): `profile`, `check`, `largest`, `Profile`, `Largest`,
`BudgetExceeded`, `ProgramFailed`, and `hloscope.testing.assert_fits` for pytest. Importing hloscope loads neither jax nor reftrain
(programs are built and compiled in a worker process), and loads the API itself on first use,
so that `hloscope --help` starts at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "BudgetExceeded": "hloscope.api",
    "Profile": "hloscope.api",
    "ProgramFailed": "hloscope.api",
    "check": "hloscope.api",
    "largest": "hloscope.api",
    "Largest": "hloscope.api",
    "profile": "hloscope.api",
    "MissingGpuAotError": "hloscope.targets",
    "UnknownTargetError": "hloscope.targets",
    "parse_size": "hloscope.units",
    "toolchain_versions": "hloscope.versions",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from hloscope.api import BudgetExceeded, Largest, Profile, ProgramFailed, check, largest, profile
    from hloscope.targets import MissingGpuAotError, UnknownTargetError
    from hloscope.units import parse_size
    from hloscope.versions import toolchain_versions


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hloscope' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
