"""Build and lower a program in the compile worker: the one door every program goes through.

`lower(devices, program, options, mesh)` resolves the program (a built-in name or a
`module:function` builder), lays the target's devices out as the mesh, calls
`build(mesh, **options)` and lowers what it returns. Runs in the worker process only.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from hloscope.programs import BUILTIN_PROGRAMS, builder_spec, import_object

# A user's program without a mesh gets one axis over all devices, named as data parallelism is.
DEFAULT_AXIS = "data"


class ProgramError(Exception):
    """The program could not be built: its builder is missing, raised, or returned the wrong thing."""


def mesh_axes(program: str, devices: int, options: dict[str, Any], mesh: dict[str, int] | None) -> dict[str, int]:
    """Returns the mesh's {axis: size}: the caller's, else the built-in program's default, else 1-D."""
    if mesh is None:
        builtin = BUILTIN_PROGRAMS.get(program)
        mesh = import_object(builtin.mesh)(devices, **options) if builtin else {DEFAULT_AXIS: devices}
    if not mesh or any(not isinstance(size, int) or size < 1 for size in mesh.values()):
        raise ValueError(f"mesh {mesh}: expected axis names with positive integer sizes")
    if math.prod(mesh.values()) != devices:
        raise ValueError(f"mesh {mesh} has {math.prod(mesh.values())} devices, not --devices {devices}")
    return dict(mesh)


def lower(devices: Sequence[jax.Device], program: str, options: dict[str, Any] | None = None,
          mesh: dict[str, int] | None = None) -> jax.stages.Lowered:
    """Returns the program lowered for `devices`; an already jitted function keeps its shardings
    and donation. Raises ProgramError (with the builder's own exception as cause) when the
    program cannot be built, ValueError for a mesh that does not fit the devices."""
    return lower_described(devices, program, options, mesh)[0]


def lower_described(devices: Sequence[jax.Device], program: str, options: dict[str, Any] | None = None,
                    mesh: dict[str, int] | None = None) -> tuple[jax.stages.Lowered, dict[str, Any] | None]:
    """`lower`, and what the builder says it built: the optional third element of its return,
    a JSON-able dict (reftrain's programs give the execution in effect), else None."""
    options = dict(options or {})
    spec = builder_spec(program)
    axes = mesh_axes(program, len(devices), options, mesh)
    device_mesh = Mesh(np.asarray(devices).reshape(tuple(axes.values())), tuple(axes))
    try:
        build = import_object(spec)
    except Exception as error:  # ImportError, FileNotFoundError, AttributeError, or the module's own error
        raise ProgramError(f"cannot import {spec}: {type(error).__name__}: {error}") from error
    if not callable(build):
        raise ProgramError(f"{spec} is a {type(build).__name__}, not a builder function")
    try:
        built = build(device_mesh, **options)
    except Exception as error:
        raise ProgramError(f"{spec} raised {type(error).__name__}: {error}") from error
    if not (isinstance(built, (tuple, list)) and len(built) in (2, 3) and callable(built[0])):
        raise ProgramError(f"{spec} must return (function, arguments), got {type(built).__name__}")
    function, arguments, described = (*built, None)[:3]
    if described is not None and not isinstance(described, dict):
        raise ProgramError(f"{spec} returned a description of type {type(described).__name__}, expected a dict")
    if not isinstance(arguments, (tuple, list)):
        raise ProgramError(f"{spec} returned arguments as {type(arguments).__name__}, expected a list or tuple")
    jitted = function if hasattr(function, "lower") else jax.jit(function)
    # Inside the mesh's context, so that bare PartitionSpecs in the user's program resolve to it.
    try:
        with jax.set_mesh(device_mesh):
            return jitted.lower(*arguments), described
    except Exception as error:  # tracing runs the user's function: its errors are the program's
        raise ProgramError(f"tracing {spec} raised {type(error).__name__}: {error}") from error
