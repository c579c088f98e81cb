"""A step that does not fit the memory XLA was given: refused in one line, before it runs when the
compile already says so, and in the same line when the device runs out while it runs.

The line gives what the step needs (XLA's compile) beside what the plan predicted, what XLA was
given of how large a card, the plan, and the next plan down that fits: the largest of the
plan's `predicted["alternatives"]` (candidates hloscope search found to fit with less memory)
within the memory this device really has. Nothing is written; earlier checkpoints stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

from reftrain.memory import MemoryGrant
from reftrain.plan import Plan


class OutOfMemoryError(RuntimeError):
    """The step needs more device memory than XLA has; the message is one line (exit 1)."""


_ALLOCATION = re.compile(r"allocate ([\d,]+) bytes|allocat\w* ([\d.]+)\s*([KMGT]i?B)", re.IGNORECASE)
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def is_out_of_memory(error: BaseException) -> bool:
    """Whether a jax runtime error is the device running out of memory."""
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def failed_allocation(error: BaseException) -> int | None:
    """The bytes of the allocation that failed, read from XLA's message (None when absent)."""
    match = _ALLOCATION.search(str(error))
    if not match:
        return None
    if match.group(1):
        return int(match.group(1).replace(",", ""))
    return int(float(match.group(2)) * _UNITS[match.group(3)[0].upper()])


def xla_total(memory_analysis) -> int | None:
    """argument + output + temp - alias of a compiled step (None where the backend gives none)."""
    if memory_analysis is None:
        return None
    names = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes")
    sizes = [getattr(memory_analysis, name, None) for name in names]
    if any(size is None for size in sizes):
        return None
    return int(sizes[0] + sizes[1] + sizes[2] - sizes[3])


def next_plan_down(plan: Plan, bytes_limit: int) -> dict[str, Any] | None:
    """The plan's largest alternative that fits `bytes_limit` with the target's runtime overhead."""
    overhead = int(plan.target.get("runtime_overhead_bytes") or 0)
    fitting = [a for a in plan.predicted.get("alternatives") or [] if a.get("xla_total", 0) + overhead <= bytes_limit]
    return max(fitting, key=lambda a: (a["xla_total"], a.get("seq_len", 0)), default=None)


def _search_command(plan: Plan, seq_len: int, execution: dict[str, Any]) -> str:
    target = plan.target
    layers = f" --layers {plan.layers}" if plan.layers else ""
    remat = f" --remat {execution['remat_policy']}" if "remat_policy" in execution else ""
    return (f"hloscope search --target {target.get('name', 'TARGET')} --devices {target.get('count', plan.devices)} "
            f"--model {plan.model}{layers} --seq {seq_len}{remat} --out plan.json")


def message(plan: Plan, grant: MemoryGrant | None, *, phase: int, seq_len: int, needed: int | None,
            bytes_limit: int | None, device_kind: str, checkpoint: str) -> str:
    """The one line for a step of `seq_len` tokens that needs `needed` bytes of `bytes_limit`."""
    gib = lambda n: f"{n / 2**30:.2f} GiB"
    predicted = plan.predicted.get("xla_total")
    parts = [f"out of memory: phase {phase}'s step at {seq_len:,} tokens needs "
             + (f"{gib(needed)} per device (XLA's compile)" if needed else "more than the device has")
             + (f", the plan predicted {gib(predicted)}" if predicted else ", the plan made no prediction")]
    if bytes_limit is not None:
        fraction = grant.fraction if grant is not None and grant.fraction else None
        card = f" of the {gib(bytes_limit / fraction)} {device_kind}" if fraction else f" on the {device_kind}"
        share = f" ({fraction:.0%}: {grant.why})" if fraction else ""
        parts.append(f"XLA was given {gib(bytes_limit)}{card}{share}")
    layers = f", {plan.layers} layers" if plan.layers else ""
    parts.append(f"plan: {plan.source}, {plan.model}{layers}, {plan.seq_len:,} tokens, "
                 f"remat {plan.execution.get('remat_policy', 'as the preset')}")
    down = next_plan_down(plan, bytes_limit) if bytes_limit is not None else None
    if down is not None:
        parts.append(f"the search's next plan down that fits: {down['seq_len']:,} tokens, remat "
                     f"{down['execution'].get('remat_policy')} ({gib(down['xla_total'])} predicted): "
                     + _search_command(plan, down["seq_len"], down["execution"]))
    else:
        parts.append("search for one that fits: " + _search_command(plan, seq_len, {}) + " --max-seq")
    parts.append(checkpoint)
    return "; ".join(parts)
