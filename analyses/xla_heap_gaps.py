"""Issue 17: how much of XLA's temp allocation is gaps between its chunks, from an --xla_dump_to folder.

    nice -n 10 python analyses/xla_heap_gaps.py DUMP_DIR [--module NAME]

XLA's temp allocation (memory_analysis' temp_size_in_bytes) is its heap simulator's layout of
every temporary at an offset; it can be larger than the most temporaries live at once, by the
gaps the layout leaves. This reads a module's `*after_optimizations-buffer-assignment.txt` (the
values of each allocation, their sizes and offsets) and `*after_optimizations-live-range.txt`
(XLA's live range of each value over its flattened schedule) and prints the temp allocation's
size, the most bytes of its values live at one point of that schedule, where, and the values
live there by offset with the gaps between them, and the heap size best-fit placement gives
over the same live ranges (replay_layout). docs/figures.md quotes it for the scanned
linen decoder on CPU, whose live_peak is under XLA's total by such gaps. `--module` picks the
module whose file name contains it (default: the one with the largest temp allocation).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hloscope.buffer_assignment import parse_buffer_assignment  # noqa: E402
from hloscope.heap_layout import best_fit_heap  # noqa: E402
from hloscope.hlo import ParseError  # noqa: E402

_SEQUENCE = re.compile(r"^\s+(\d+):(\S+)\s*$")
_RANGE = re.compile(r"^\s+([^\s{]+)\{([\d,]*)\}:(\d+)-(\d+)\s*$")


def live_ranges(text: str) -> tuple[dict[int, str], dict[tuple[str, tuple[int, ...]], tuple[int, int]]]:
    """(schedule position -> instruction, (instruction, shape index) -> (first, last) position)
    of a `*-live-range.txt` dump."""
    sequence: dict[int, str] = {}
    ranges: dict[tuple[str, tuple[int, ...]], tuple[int, int]] = {}
    section = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped in ("InstructionSequence:", "BufferLiveRange:"):
            section = stripped
            continue
        if stripped.startswith("Live ranges at"):
            section = None
        if section == "InstructionSequence:" and (m := _SEQUENCE.match(line)):
            sequence[int(m.group(1))] = m.group(2)
        elif section == "BufferLiveRange:" and (m := _RANGE.match(line)):
            index = tuple(int(k) for k in m.group(2).split(",") if k)
            ranges[(m.group(1), index)] = (int(m.group(3)), int(m.group(4)))
    return sequence, ranges


def heap_gaps(assignment_text: str, live_range_text: str) -> dict:
    """The temp allocations' size, their values' most bytes live at once and the values then."""
    assignment = parse_buffer_assignment(assignment_text)
    sequence, ranges = live_ranges(live_range_text)
    if not ranges:
        raise ValueError("expected a BufferLiveRange section in the live-range dump")
    temps = [a for a in assignment.allocations if a.category == "temp"]
    values = []  # (first, last, size, offset, allocation, name)
    for allocation in temps:
        for value in allocation.values:
            span = ranges.get((value.instruction, value.index))
            if span is not None:
                values.append((*span, value.size, value.offset, allocation.index,
                               value.instruction + "{" + ",".join(map(str, value.index)) + "}"))
    end = max((last for _, last, *_ in values), default=-1)
    best_bytes, best_at = 0, None
    for t in range(end + 1):
        # one chunk per (allocation, offset, size): aliased values of one buffer count once
        live = {(a, o, s) for first, last, s, o, a, _ in values if first <= t <= last}
        total = sum(s for _, _, s in live)
        if total > best_bytes:
            best_bytes, best_at = total, t
    at_peak = sorted((v for v in values if best_at is not None and v[0] <= best_at <= v[1]),
                     key=lambda v: (v[4], v[3]))
    return {"temp_bytes": sum(a.size for a in temps), "live_bytes": best_bytes, "at": best_at,
            "instruction": sequence.get(best_at) if best_at is not None else None,
            "live": [{"value": v[5], "allocation": v[4], "offset": v[3], "bytes": v[2]} for v in at_peak]}


def replay_layout(assignment_text: str, live_range_text: str, order: str = "spatial") -> int:
    """The temp heap size that best-fit placement (hloscope.heap_layout, the model layout_total
    uses) gives over XLA's own live ranges: values at one offset whose ranges touch are taken as
    one buffer (XLA places a buffer's values together), ordered by size, then longest-lived,
    then smallest value id ('spatial', XLA's GlobalDecreasingSizeBestFitHeap default), or
    longest-lived first ('temporal'). For the scanned linen decoder on CPU the spatial order
    gives XLA's temp size to 360 bytes."""
    assignment = parse_buffer_assignment(assignment_text)
    _, ranges = live_ranges(live_range_text)
    by_offset: dict[tuple[int, int], list[tuple[int, int, int, int]]] = {}
    for allocation in assignment.allocations:
        if allocation.category != "temp":
            continue
        for value in allocation.values:
            span = ranges.get((value.instruction, value.index))
            if span is not None:
                by_offset.setdefault((allocation.index, value.offset), []).append((*span, value.size, value.id))
    buffers: list[list[int]] = []  # [first, last, bytes, smallest value id]
    for values in by_offset.values():
        chain: list[int] | None = None
        for first, last, size, vid in sorted(values):
            if chain is not None and first <= chain[1]:
                chain[1], chain[2], chain[3] = max(chain[1], last), max(chain[2], size), min(chain[3], vid)
            else:
                chain = [first, last, size, vid]
                buffers.append(chain)
    return best_fit_heap([tuple(b) for b in buffers], order)


def _pick(folder: str, module: str | None) -> tuple[str, str]:
    found = sorted(glob.glob(os.path.join(folder, "*after_optimizations-buffer-assignment.txt")))
    if module:
        found = [f for f in found if module in os.path.basename(f)]
    if not found:
        raise ValueError(f"no *after_optimizations-buffer-assignment.txt{' matching ' + module if module else ''} "
                         f"in {folder}")
    best, best_temp = found[0], -1
    for path in found:
        with open(path) as f:
            temp = parse_buffer_assignment(f.read()).temp_bytes
        if temp > best_temp:
            best, best_temp = path, temp
    live = best.replace("-buffer-assignment.txt", "-live-range.txt")
    if not os.path.exists(live):
        raise ValueError(f"expected {os.path.basename(live)} next to {os.path.basename(best)}")
    return best, live


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--module", default=None)
    args = parser.parse_args(argv)
    try:
        assignment_path, live_path = _pick(args.folder, args.module)
        with open(assignment_path) as f, open(live_path) as g:
            assignment_text, live_text = f.read(), g.read()
        found = heap_gaps(assignment_text, live_text)
        replayed = {order: replay_layout(assignment_text, live_text, order) for order in ("spatial", "temporal")}
    except (OSError, ValueError, ParseError) as e:
        print(f"xla_heap_gaps: {e}", file=sys.stderr)
        return 2
    print(f"{os.path.basename(assignment_path)}")
    print(f"temp allocation: {found['temp_bytes']:,} bytes; most live at once: {found['live_bytes']:,} bytes "
          f"(at {found['at']}: {found['instruction']}); gaps and padding: "
          f"{found['temp_bytes'] - found['live_bytes']:,} bytes")
    print(f"best-fit over these live ranges: {replayed['spatial']:,} bytes in XLA's spatial order, "
          f"{replayed['temporal']:,} longest-lived first")
    cursor = None
    for v in found["live"]:
        if cursor is not None and v["offset"] > cursor:
            print(f"  {'gap':>40} {cursor:>12,} {v['offset'] - cursor:>12,}")
        print(f"  {v['value']:>40} {v['offset']:>12,} {v['bytes']:>12,}")
        cursor = max(cursor or 0, v["offset"] + v["bytes"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
