"""Issue 33: where hloscope's text model and XLA disagree, buffer by buffer, from an --xla_dump_to folder.

    nice -n 10 python analyses/layout_vs_xla.py DUMP_DIR [--module NAME] [--at POSITION] [--top 12]

Reads a module's `*after_optimizations.txt` (what hloscope models from), its
`*-buffer-assignment.txt` and `*-live-range.txt` (what XLA did), and prints layout_total beside
XLA's total, the temporaries' bytes live at each point of the schedule on both sides (XLA's:
the values of its temp allocation over its own live ranges; hloscope's: what layout_total lays
out), the points where they differ most, and at the worst of them (or `--at`) the buffers live
on each side, largest first. The two schedules are the same flattened sequence, matched by
instruction name. Values XLA put in a parameter's or output's allocation are not temporaries
on its side, which is how this found the rules of docs/figures.md ("What the development set
taught"): a value live here and missing there is one XLA placed elsewhere or shared.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hloscope.buffer_assignment import parse_buffer_assignment  # noqa: E402
from hloscope.hlo import ParseError, parse_module  # noqa: E402
from hloscope.heap_layout import best_fit_heap  # noqa: E402
from hloscope.trace import heap_temporaries  # noqa: E402
from xla_heap_gaps import live_ranges  # noqa: E402  (this folder is first on sys.path)


def _one(folder: str, suffix: str, module: str | None) -> str:
    found = sorted(glob.glob(os.path.join(folder, f"*after_optimizations{suffix}")))
    if module:
        found = [f for f in found if module in os.path.basename(f)]
    if not found:
        raise ValueError(f"no *after_optimizations{suffix}{' matching ' + module if module else ''} in {folder}")
    # The last compiled (jax compiles its helpers first), as hloscope --hlo DIR picks.
    with open(found[-1], encoding="utf-8", errors="replace") as f:
        return f.read()


def compare(folder: str, module: str | None = None) -> dict:
    """Both sides' temporaries per schedule position, matched by instruction name."""
    hlo = parse_module(_one(folder, ".txt", module))
    assignment = parse_buffer_assignment(_one(folder, "-buffer-assignment.txt", module))
    sequence, ranges = live_ranges(_one(folder, "-live-range.txt", module))
    xla_values = []   # (first, last, bytes, allocation, offset, name): values of XLA's temp allocations
    for allocation in assignment.allocations:
        if allocation.category == "temp":
            for value in allocation.values:
                span = ranges.get((value.instruction, value.index))
                if span is not None:
                    name = value.instruction + "{" + ",".join(map(str, value.index)) + "}"
                    xla_values.append((*span, value.size, allocation.index, value.offset, name))
    schedule, ours, fixed = heap_temporaries(hlo)
    where = {}
    for i, name in enumerate(schedule):
        where.setdefault(name, i)
    points = []
    for t in sorted(sequence):
        i = where.get(sequence[t])
        if i is None:
            continue
        # one chunk per (allocation, offset, size): values of one buffer count once
        xla = sum(size for _, _, size in {(a, o, s) for f, l, s, a, o, _ in xla_values if f <= t <= l})
        mine = sum(size for f, l, size, _ in ours if f <= i <= l)
        points.append({"position": t, "instruction": sequence[t], "xla": xla, "hloscope": mine, "index": i})
    return {"xla_temp": sum(a.size for a in assignment.allocations if a.category == "temp"),
            "xla_total": assignment.total_bytes, "fixed": fixed,
            "heap": best_fit_heap([(f, l, s, k) for k, (f, l, s, _) in enumerate(ours)]),
            "points": points, "xla_values": xla_values, "ours": ours}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--module", help="the module whose file name contains this (default: the last compiled)")
    parser.add_argument("--at", type=int, help="XLA schedule position to list the live buffers at (default: the worst)")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    try:
        found = compare(args.folder, args.module)
    except (OSError, ValueError, ParseError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    points = found["points"]
    if not points:
        print("error: no schedule position matched between the HLO and XLA's live ranges", file=sys.stderr)
        return 2
    print(f"XLA temp {found['xla_temp']:,}; hloscope's heap {found['heap']:,} over {found['fixed']:,} of arguments "
          f"and outputs (XLA's buffer-assignment total {found['xla_total']:,})")
    print(f"most live: XLA {max(p['xla'] for p in points):,}, hloscope {max(p['hloscope'] for p in points):,}")
    worst = sorted(points, key=lambda p: -abs(p["hloscope"] - p["xla"]))
    print(f"\nlargest differences (hloscope - XLA), of {len(points)} matched positions:")
    for p in worst[:args.top]:
        print(f"  {p['position']:>6} {p['instruction']:<48} XLA {p['xla']:>16,}  hloscope {p['hloscope']:>16,}  "
              f"{p['hloscope'] - p['xla']:>+16,}")
    at = next((p for p in points if p["position"] == args.at), None) if args.at is not None else worst[0]
    if at is None:
        print(f"error: --at {args.at}: no such matched position", file=sys.stderr)
        return 2
    t, i = at["position"], at["index"]
    xla = sorted(((s, n) for f, l, s, _, _, n in found["xla_values"] if f <= t <= l), reverse=True)
    mine = sorted(((s, n) for f, l, s, n in found["ours"] if f <= i <= l), reverse=True)
    print(f"\nlive at {t} ({at['instruction']}): XLA {at['xla']:,}, hloscope {at['hloscope']:,}")
    names_xla, names_mine = {n for _, n in xla}, {n for _, n in mine}
    print("  only hloscope's:")
    for size, name in [(s, n) for s, n in mine if n not in names_xla][:args.top]:
        print(f"    {size:>16,} {name}")
    print("  only XLA's (temp allocation):")
    for size, name in [(s, n) for s, n in xla if n not in names_mine][:args.top]:
        print(f"    {size:>16,} {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
