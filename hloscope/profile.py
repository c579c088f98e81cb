"""A profile: compile (or read) a program, trace its memory, find offenders, as one JSON dict.

The dict is what `--json` writes and `hloscope diff` reads; docs/profile_json.md gives its schema.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hloscope.compile import CompileRequest, compile_in_worker
from hloscope.findings import find_offenders
from hloscope.hlo import HloModule, parse_module
from hloscope.programs import AttentionShape, get_program
from hloscope.targets import Target, get_target
from hloscope.trace import Trace, trace_module
from hloscope.versions import toolchain_versions

SCHEMA = "hloscope.profile/1"
CURVE_POINTS = 2000  # the accumulated curve is downsampled to at most this many points
TOP_BUFFERS = 10


class CompileFailed(RuntimeError):
    """The worker could not compile the program (crash, out of memory, timeout, exception)."""


def _downsample(curve: list[int], points: int = CURVE_POINTS) -> list[list[int]]:
    """Returns [[schedule index, bytes], ...], keeping each bucket's last (largest) value."""
    if len(curve) <= points:
        return [[i, b] for i, b in enumerate(curve)]
    step = len(curve) / points
    picks = sorted({min(len(curve) - 1, int((i + 1) * step) - 1) for i in range(points)})
    return [[i, curve[i]] for i in picks]


def _top_buffers(trace: Trace, count: int) -> list[dict[str, Any]]:
    """Returns the `count` instructions that allocate the most (as prealloc_accumulated counts them)."""
    return [
        {
            "instruction": inst.name,
            "computation": inst.computation,
            "opcode": inst.opcode,
            "shape": str(inst.shape),
            "bytes": size,
            "op_name": inst.op_name,
            "source": f"{inst.source_file}:{inst.source_line}" if inst.source_file else None,
        }
        for inst, size in trace.largest_allocators(count)
    ]


def analyse(
    module: HloModule,
    *,
    memory: dict[str, int] | None = None,
    buffer_assignment: str | None = None,
    target: Target | None = None,
) -> dict[str, Any]:
    """Returns the figures, curve, findings and top buffers of one parsed module."""
    trace = trace_module(module, buffer_assignment=buffer_assignment, memory=memory)
    budget = target.memory_bytes if target else None
    findings = find_offenders(module, budget_bytes=budget)
    accumulated = trace.prealloc_accumulated
    return {
        "dialect": module.dialect,
        "module": module.name,
        "figures": {
            "xla_total": trace.xla_total,
            "live_peak": trace.live_peak,
            "prealloc_accumulated": accumulated[-1] if accumulated else 0,
            # Straight from XLA's buffer-assignment dump, where the compile wrote one.
            "buffer_assignment_temp": trace.buffer_assignment_temp,
            "buffer_assignment_total": trace.buffer_assignment_total,
        },
        "figure_sources": dict(trace.sources),
        "live_at_peak": [
            {"instruction": inst.name, "shape": str(inst.shape), "bytes": size}
            for inst, size in trace.live_at_peak[:TOP_BUFFERS]
        ],
        "curve": {"prealloc_accumulated": _downsample(accumulated), "instructions": len(accumulated)},
        "findings": [finding.to_dict() for finding in findings],
        "top_buffers": _top_buffers(trace, TOP_BUFFERS),
        "memory_analysis": memory,
    }


def profile_program(
    program: str, shape: AttentionShape, *, target: str, devices: int, timeout_s: float = 600
) -> dict[str, Any]:
    """Compiles a registered program for a target in a worker and returns its profile dict.

    Raises ValueError for arguments a user got wrong (checked before any compile) and
    CompileFailed when the worker did not produce a compiled program.
    """
    get_program(program)
    shape = shape.resolved()
    shape.validate(devices)
    resolved_target = get_target(target)
    started = time.perf_counter()
    kwargs = {"program": program, **asdict(shape)}
    result = compile_in_worker(
        CompileRequest("hloscope.programs:lower_program", kwargs, target, devices, dump=True, timeout_s=timeout_s)
    )
    if not result.ok:
        raise CompileFailed(f"compile {result.status}: {result.error}")
    optimized = parse_module(result.hlo_text)
    profile = analyse(
        optimized, memory=result.memory, buffer_assignment=result.dumps.get("buffer_assignment"),
        target=resolved_target,
    )
    # The pre-optimization StableHLO is where the paper read Appendix A's buffer.
    if result.stablehlo_text:
        profile["stablehlo_findings"] = [f.to_dict() for f in find_offenders(parse_module(result.stablehlo_text))]
    label = f"{program} seq={shape.seq} q={shape.q_chunk} kv={shape.kv_chunk} on {devices}x {target}"
    profile.update(
        schema=SCHEMA,
        label=label,
        source={"program": program, "options": asdict(shape), "devices": devices},
        target={"name": resolved_target.name, "device_kind": resolved_target.device_kind,
                "memory_bytes": resolved_target.memory_bytes},
        versions=result.versions,
        # Modelled, not measured: a deviceless compile cannot ask cuDNN (hloscope/cudnn_workspace.py).
        cudnn_workspace=result.cudnn_workspace,
        timing={"compile_s": result.compile_s, "worker_s": result.wall_s,
                "total_s": time.perf_counter() - started},
    )
    return profile


def profile_text(path: Path) -> dict[str, Any]:
    """Returns the profile of HLO or StableHLO text in a file (raises OSError, ParseError)."""
    started = time.perf_counter()
    module = parse_module(Path(path).read_text())
    profile = analyse(module)
    profile.update(
        schema=SCHEMA,
        label=Path(path).name,
        source={"hlo_file": str(path)},
        target=None,
        versions=toolchain_versions(),
        timing={"total_s": time.perf_counter() - started},
    )
    return profile
