"""Programs hloscope can profile: each builds a jitted function and abstract inputs for a mesh."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from reftrain.attention._kernels import KERNELS


@dataclass(frozen=True)
class AttentionShape:
    """A sequence-parallel attention problem; every field is a CLI flag of `hloscope profile`."""

    seq: int = 524_288
    q_chunk: int = 2048
    kv_chunk: int | None = None  # None: twice q_chunk, as in both of the paper's configurations
    batch: int = 1
    q_heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    dtype: str = "bfloat16"
    document_block: int = 0  # cuDNN with documents: blocks of a shard with itself (0: one call)
    kernel: str = "auto"  # reftrain's attention kernel; auto: cuDNN for a GPU target, else xla

    def resolved(self) -> "AttentionShape":
        """Returns a copy with kv_chunk filled in."""
        kv_chunk = 2 * self.q_chunk if self.kv_chunk is None else self.kv_chunk
        return AttentionShape(**{**self.__dict__, "kv_chunk": kv_chunk})

    def validate(self, devices: int) -> None:
        """Raises ValueError naming the numbers when the shape cannot be split as asked."""
        shape = self.resolved()
        if devices <= 0:
            raise ValueError(f"--devices must be positive, got {devices}")
        if shape.seq <= 0 or shape.seq % devices:
            raise ValueError(f"--seq {shape.seq} is not divisible by --devices {devices}")
        local = shape.seq // devices
        for flag, chunk in (("--q-chunk", shape.q_chunk), ("--kv-chunk", shape.kv_chunk)):
            if chunk <= 0 or local % chunk:
                raise ValueError(f"{flag} {chunk} does not divide the local length {local} (= {shape.seq} / {devices})")
        if shape.q_heads % shape.kv_heads:
            raise ValueError(f"--q-heads {shape.q_heads} is not a multiple of --kv-heads {shape.kv_heads}")
        if shape.dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"--dtype {shape.dtype} is not one of bfloat16, float16, float32")
        if shape.kernel not in KERNELS:
            raise ValueError(f"--kernel {shape.kernel} is not one of {', '.join(KERNELS)}")
        if shape.document_block < 0:
            raise ValueError(f"--document-block must be >= 0, got {shape.document_block}")


@dataclass(frozen=True)
class Program:
    """A named program: `build(mesh, shape)` returns (function to jit, abstract arguments)."""

    name: str
    description: str
    build: Callable[[Mesh, Any], tuple[Callable, Sequence[jax.ShapeDtypeStruct]]]
    options: type = AttentionShape


PROGRAMS: dict[str, Program] = {}


def register(program: Program) -> Program:
    PROGRAMS[program.name] = program
    return program


def get_program(name: str) -> Program:
    """Returns the registered program or raises ValueError listing the known names."""
    if name not in PROGRAMS:
        raise ValueError(f"unknown program {name!r}; known programs: {', '.join(sorted(PROGRAMS))}")
    return PROGRAMS[name]


def program_options(name: str, **values) -> Any:
    """Returns the program's options dataclass from `values` (None means the default)."""
    program = get_program(name)
    known = {f.name for f in fields(program.options)}
    options = {k: v for k, v in values.items() if k in known and v is not None}
    return program.options(**options).resolved()


def lower_program(devices: Sequence[jax.Device], program: str, **values) -> jax.stages.Lowered:
    """Returns the lowered program over `devices` (the compile worker's builder): on the mesh its
    options describe, else a one-axis `sp` mesh; a function that is already jitted keeps its
    shardings and donation."""
    options = program_options(program, **values)
    options.validate(len(devices))
    mesh = options.mesh(devices) if hasattr(options, "mesh") else Mesh(np.array(devices), ("sp",))
    function, arguments = get_program(program).build(mesh, options)
    jitted = function if hasattr(function, "lower") else jax.jit(function)
    return jitted.lower(*arguments)
