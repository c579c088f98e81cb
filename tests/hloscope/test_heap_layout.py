"""hloscope.heap_layout: best-fit placement of temporaries, as XLA's heap simulator does."""

from __future__ import annotations

from hypothesis import given, strategies as st

from hloscope.heap_layout import best_fit_heap, best_fit_offsets


def _most_live(intervals) -> int:
    end = max((b for _, b, _, _ in intervals), default=-1)
    return max((sum(s for a, b, s, _ in intervals if a <= t <= b) for t in range(end + 1)), default=0)


def test_a_gap_that_the_live_bytes_cannot_see() -> None:
    # 3 bytes at t=1 go first (largest) at 0; of the 2-byte buffers the longest-lived, [3,5],
    # also at 0; [1,2] must sit above the 3 bytes, at 3; [2,3] then finds the 1-byte hole
    # between 2 and 3 too small and goes above everything, at 5: a 7-byte heap where at most 5
    # bytes are ever live at once.
    intervals = [(1, 2, 2, 0), (2, 3, 2, 1), (3, 5, 2, 2), (1, 1, 3, 3)]
    assert best_fit_offsets(intervals) == [3, 5, 0, 0]
    assert best_fit_heap(intervals) == 7 and _most_live(intervals) == 5


def test_ties_are_broken_by_the_order_key() -> None:
    # Two equal buffers with the same lifetime: the lower key is placed first, at offset 0.
    assert best_fit_offsets([(0, 1, 4, 1), (0, 1, 4, 0)]) == [4, 0]
    assert best_fit_offsets([(0, 1, 4, 0), (0, 1, 4, 1)]) == [0, 4]


def test_empty_and_zero_sized() -> None:
    assert best_fit_heap([]) == 0
    assert best_fit_heap([(0, 3, 0, 0), (1, 2, 8, 1)]) == 8


intervals_strategy = st.lists(
    st.tuples(st.integers(0, 40), st.integers(0, 12), st.sampled_from([1, 2, 3, 4, 8, 16, 64])),
    min_size=1, max_size=40,
).map(lambda raw: [(a, a + d, s, k) for k, (a, d, s) in enumerate(raw)])


@given(intervals_strategy)
def test_placement_never_overlaps_and_bounds_the_heap(intervals) -> None:
    offsets = best_fit_offsets(intervals)
    for i, (a, b, s, _) in enumerate(intervals):
        assert offsets[i] >= 0
        for j in range(i):
            c, d, t, _ = intervals[j]
            if a <= d and c <= b:  # live at the same time: disjoint in memory
                assert offsets[i] + s <= offsets[j] or offsets[j] + t <= offsets[i]
    heap = best_fit_heap(intervals)
    assert _most_live(intervals) <= heap <= sum(s for _, _, s, _ in intervals)
    # Buffers all live at one time leave no gap.
    stacked = [(0, 1, s, k) for _, _, s, k in intervals]
    assert best_fit_heap(stacked) == sum(s for _, _, s, _ in intervals)


def test_dead_temporaries_move_into_an_output_allocation() -> None:
    from hloscope.heap_layout import into_output_allocations

    # One 8-byte output written at t=5. The 8-byte [0,2] and the 4-byte [3,4] fit in it, one
    # after the other; [4,6] is still live when the output is written; 16 bytes are too many.
    intervals = [(0, 2, 8, 0), (3, 4, 4, 1), (4, 6, 4, 2), (0, 1, 16, 3)]
    assert into_output_allocations(intervals, [(5, 8)]) == [(0, 1, 16, 3), (4, 6, 4, 2)]
    # Two buffers live at once cannot share one output's allocation.
    assert into_output_allocations([(0, 2, 8, 0), (1, 3, 8, 1)], [(5, 8)]) == [(1, 3, 8, 1)]
    assert into_output_allocations(intervals, []) == intervals
