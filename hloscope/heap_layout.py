"""Where XLA puts temporaries: best-fit placement at offsets, and the heap size it leaves.

XLA's buffer assignment does not allocate "the bytes live at once": it gives every temporary an
offset in one slab (GlobalDecreasingSizeBestFitHeap, the heap simulator's default), and the
slab is as large as the highest offset + size, gaps included. Buffers are placed largest first
(then longest-lived first, then in order of definition), each at the start of the smallest gap
that the buffers already placed over its lifetime leave, or above them all when no gap fits.
Over XLA's own live ranges this gives XLA's temp size (to 360 bytes on the scanned linen
decoder, exactly on the other programs of `analyses/hlo_real_programs.py`;
`analyses/xla_heap_gaps.py` replays it from a dump), so over hloscope's simulated lifetimes it
models the gaps that `live_peak` cannot see. docs/figures.md.
"""

from __future__ import annotations

from typing import Any

# Lifetimes are bucketed by time so that a placement looks only at the buffers that may
# overlap it; a bucket this wide keeps long-lived buffers' registrations few.
_BUCKETS = 4096


def best_fit_heap(intervals: "list[tuple[int, int, int, Any]]", order: str = "spatial") -> int:
    """The slab size best-fit placement needs for `intervals` (first, last, bytes, key), a
    buffer being live from its first to its last time step, both included. Buffers are placed
    largest first, then longest-lived first ('spatial', XLA's default), or longest-lived first,
    then largest ('temporal'); `key` breaks the remaining ties (XLA: the value's id)."""
    offsets = best_fit_offsets(intervals, order)
    return max((offset + interval[2] for offset, interval in zip(offsets, intervals)), default=0)


def best_fit_offsets(intervals: "list[tuple[int, int, int, Any]]", order: str = "spatial") -> list[int]:
    """Each interval's offset under best-fit placement (best_fit_heap)."""
    if order not in ("spatial", "temporal"):
        raise ValueError(f"order must be 'spatial' or 'temporal', got {order!r}")
    if not intervals:
        return []
    horizon = max(interval[1] for interval in intervals) + 1
    width = max(1, -(-horizon // _BUCKETS))
    buckets: list[list[int]] = [[] for _ in range(-(-horizon // width))]

    def rank(k: int) -> tuple:
        first, last, size, key = intervals[k]
        if order == "spatial":
            return -size, first - last, key, k
        return first - last, -size, key, k

    offsets = [0] * len(intervals)
    for k in sorted(range(len(intervals)), key=rank):
        first, last, size, _ = intervals[k]
        if size <= 0:
            continue
        busy: list[tuple[int, int]] = []
        seen: set[int] = set()
        for bucket in buckets[first // width:last // width + 1]:
            for j in bucket:
                if j not in seen:
                    seen.add(j)
                    a, b, other, _ = intervals[j]
                    if a <= last and first <= b:
                        busy.append((offsets[j], offsets[j] + other))
        best, best_gap, cursor = None, None, 0
        for start, end in sorted(busy):
            gap = start - cursor
            if gap >= size and (best_gap is None or gap < best_gap):
                best, best_gap = cursor, gap
            cursor = max(cursor, end)
        offsets[k] = cursor if best is None else best
        for bucket in buckets[first // width:last // width + 1]:
            bucket.append(k)
    return offsets


def into_output_allocations(intervals: "list[tuple[int, int, int, Any]]",
                            outputs: list[tuple[int, int]]) -> "list[tuple[int, int, int, Any]]":
    """The intervals left for the heap once XLA's buffer assignment has put what it can into
    the outputs' own allocations: before packing temporaries, it offers each (largest first) to
    the allocations it already has, and an output's allocation, (defined at, bytes), takes any
    buffer no larger that is dead before the output is written and does not overlap the others
    it took (seen in XLA:CPU and XLA:GPU dumps: the conv net's kernel transposes, the ring
    attention's gradient accumulators)."""
    if not outputs or not intervals:
        return list(intervals)
    slots = sorted(((size, defined, []) for defined, size in outputs if size > 0), key=lambda s: (-s[0], s[1]))
    left = []
    for interval in sorted(intervals, key=lambda iv: (-iv[2], iv[3])):
        first, last, size, _ = interval
        for capacity, defined, taken in slots:
            if size > capacity:
                left.append(interval)  # the slots are largest first: none further fits
                break
            if last < defined and all(last < a or b < first for a, b in taken):
                taken.append((first, last))
                break
        else:
            left.append(interval)
    return left
