"""A profile: compile (or read) a program, trace its memory, find offenders, as one JSON dict.

The dict is what `--json` writes and `hloscope diff` reads; docs/profile_json.md gives its schema.
"""

from __future__ import annotations

import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from hloscope.compile import CompileRequest, compile_in_worker
from hloscope.findings import find_offenders
from hloscope.hlo import HloModule, Instruction, parse_module
from hloscope.hlo_input import read_hlo_input
from hloscope.programs import builder_spec
from hloscope.targets import Target, get_target
from hloscope.text_model import measured_band
from hloscope.trace import Trace, trace_module
from hloscope.versions import toolchain_versions

SCHEMA = "hloscope.profile/2"
READABLE_SCHEMAS = ("hloscope.profile/1", SCHEMA)  # diff and Profile.load read both
CURVE_POINTS = 2000  # the accumulated curve is downsampled to at most this many points
TOP_BUFFERS = 10
LIVE_AT_PEAK = 25  # buffers live at the peak kept in the profile (the report's bar chart)


class CompileFailed(RuntimeError):
    """The worker did not produce a compiled program.

    `status` is the worker's: 'error' (the builder, its import or the compile raised),
    'crashed', 'oom' or 'timeout'; `log` the tail of what the worker printed.
    """

    def __init__(self, status: str, error: str, log: str = "") -> None:
        super().__init__(f"{status}: {error}")
        self.status, self.error, self.log = status, error, log


#: The figures a budget is judged by, best first: XLA's own total where a compile (or a dump's
#: buffer assignment) gave one, else the text model of XLA's heap, else the live peak.
JUDGED_FIGURES = ("xla_total", "layout_total", "live_peak")


def judged_figure(figures: dict[str, Any]) -> tuple[str, int]:
    """(name, bytes) of the first of JUDGED_FIGURES that `figures` has."""
    for name in JUDGED_FIGURES:
        if figures.get(name) is not None:
            return name, figures[name]
    raise KeyError("a profile has at least live_peak")


def _downsample(curve: list[int], points: int, keep: str) -> list[int]:
    """Returns the indices kept of `curve`: per bucket its last value ("last", right for a
    running sum) or its largest ("max", so that a peak is never smoothed away)."""
    if len(curve) <= points:
        return list(range(len(curve)))
    bounds = [round(i * len(curve) / points) for i in range(points + 1)]
    if keep == "last":
        return [bounds[i + 1] - 1 for i in range(points)]
    return [max(range(bounds[i], bounds[i + 1]), key=curve.__getitem__) for i in range(points)]


def _source(inst: Instruction) -> str | None:
    return f"{inst.source_file}:{inst.source_line}" if inst.source_file else None


def _curves(trace: Trace) -> dict[str, Any]:
    """Both curves over schedule order, downsampled, and what each kept point's instruction is."""
    kept_live = _downsample(trace.live_curve, CURVE_POINTS, "max")
    kept_accumulated = _downsample(trace.prealloc_accumulated, CURVE_POINTS, "last")
    at = {}
    for index in sorted({*kept_live, *kept_accumulated}):
        inst = trace.schedule[index]
        at[str(index)] = {"instruction": inst.name, "opcode": inst.opcode, "shape": str(inst.shape),
                          "source": _source(inst), "user_source": inst.user_source}
    return {
        "prealloc_accumulated": [[i, trace.prealloc_accumulated[i]] for i in kept_accumulated],
        "live": [[i, trace.live_curve[i]] for i in kept_live if i < len(trace.live_curve)],
        "live_peak_index": trace.live_peak_index,
        "at": at,
        "instructions": len(trace.prealloc_accumulated),
    }


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
            "source": _source(inst),
            "user_source": inst.user_source,
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
    sources = dict(trace.sources)
    band = measured_band() if trace.layout_total is not None else None
    if band is not None:
        sources["layout_total"] += f"; measured {band.held_out.percent()} from XLA's on {band.held_out.compiles} held-out compiles"
    return {
        "dialect": module.dialect,
        "module": module.name,
        # Why the sizes are the whole program's rather than one device's (unpartitioned input).
        "sizes_are_global": module.sizes_are_global,
        "figures": {
            "xla_total": trace.xla_total,
            "live_peak": trace.live_peak,
            "layout_total": trace.layout_total,
            "prealloc_accumulated": accumulated[-1] if accumulated else 0,
            # Straight from XLA's buffer-assignment dump, where the compile wrote one.
            "buffer_assignment_temp": trace.buffer_assignment_temp,
            "buffer_assignment_total": trace.buffer_assignment_total,
        },
        "figure_sources": sources,
        # How far layout_total has been measured from XLA's total (hloscope.text_model).
        "layout_total_band": band.to_dict() if band is not None else None,
        "live_at_peak": [
            {"instruction": inst.name, "opcode": inst.opcode, "shape": str(inst.shape), "bytes": size,
             "op_name": inst.op_name, "source": _source(inst), "user_source": inst.user_source}
            for inst, size in trace.live_at_peak[:LIVE_AT_PEAK]
        ],
        "curve": _curves(trace),
        "findings": [finding.to_dict() for finding in findings],
        "top_buffers": _top_buffers(trace, TOP_BUFFERS),
        "memory_analysis": memory,
    }


def _options_dict(options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    if is_dataclass(options):
        return asdict(options)
    return dict(options)


def profile_program(
    program: str, options: Any = None, *, target: str = "cpu", devices: int = 1,
    mesh: dict[str, int] | None = None, timeout_s: float = 600,
) -> dict[str, Any]:
    """Compiles a program (built-in name or `module:function`) for a target in a worker and
    returns its profile dict. `options` (a dict or a built-in program's options dataclass) are
    the builder's keyword arguments.

    Raises ValueError for arguments a user got wrong (checked before any compile),
    UnknownTargetError / MissingGpuAotError for the target, and CompileFailed when the worker
    did not produce a compiled program (the builder failed, the worker crashed, timed out or
    ran out of memory: `status` says which).
    """
    options = _options_dict(options)
    builder_spec(program)
    resolved_target = get_target(target)
    if not isinstance(devices, int) or devices < 1:
        raise ValueError(f"devices must be a positive integer, got {devices!r}")
    started = time.perf_counter()
    request = {"program": program, "options": options, "mesh": mesh}
    result = compile_in_worker(
        CompileRequest("hloscope._lower:lower_described", request, target, devices, dump=True, timeout_s=timeout_s)
    )
    if not result.ok:
        raise CompileFailed(result.status, result.error or "no error message", result.log)
    optimized = parse_module(result.hlo_text)
    profile = analyse(
        optimized, memory=result.memory, buffer_assignment=result.dumps.get("buffer_assignment"),
        target=resolved_target,
    )
    if resolved_target.platform == "cuda":
        # XLA:GPU's own peak of its buffer assignment; XLA:CPU reports a number that is not one.
        profile["figures"]["peak_memory_in_bytes"] = (result.memory or {}).get("peak_memory_in_bytes")
        profile["figure_sources"]["peak_memory_in_bytes"] = "XLA memory_analysis().peak_memory_in_bytes"
    # The pre-optimization StableHLO is where the paper read Appendix A's buffer.
    if result.stablehlo_text:
        profile["stablehlo_findings"] = [f.to_dict() for f in find_offenders(parse_module(result.stablehlo_text))]
    settings = " ".join(f"{key}={value}" for key, value in options.items() if value is not None)
    mesh_text = "" if mesh is None else " mesh " + ",".join(f"{axis}={size}" for axis, size in mesh.items())
    profile.update(
        schema=SCHEMA,
        label=f"{program}{' ' + settings if settings else ''} on {devices}x {target}{mesh_text}",
        # `built`: what the builder made of the options (reftrain's programs: the execution in effect).
        source={"program": program, "options": options, "devices": devices, "mesh": mesh, "built": result.built},
        target={"name": resolved_target.name, "device_kind": resolved_target.device_kind,
                "memory_bytes": resolved_target.memory_bytes,
                "runtime_overhead_bytes": resolved_target.runtime_overhead_bytes},
        versions=result.versions,
        # Modelled, not measured: a deviceless compile cannot ask cuDNN (hloscope/cudnn_workspace.py).
        cudnn_workspace=result.cudnn_workspace,
        timing={"compile_s": result.compile_s, "worker_s": result.wall_s,
                "total_s": time.perf_counter() - started},
    )
    return profile


def profile_text(path: Path | str, module: str | None = None) -> dict[str, Any]:
    """Returns the profile of HLO or StableHLO text: a file, or an `--xla_dump_to` folder whose
    buffer-assignment dump fills xla_total. Raises HloInputError (path) or ParseError (text)."""
    started = time.perf_counter()
    hlo = read_hlo_input(str(path), module)
    profile = analyse(hlo.module, memory=hlo.memory, buffer_assignment=hlo.buffer_assignment)
    profile.update(
        schema=SCHEMA,
        label=Path(path).name,
        source={"hlo_file": str(path), "files_read": hlo.files},
        notes=hlo.notes,
        target=None,
        versions=toolchain_versions(),
        timing={"total_s": time.perf_counter() - started},
    )
    return profile
