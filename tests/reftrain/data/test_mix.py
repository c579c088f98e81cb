"""reftrain.data.InterleavedBatches: a seeded share of batches from the second stream, the same
after a resume."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reftrain.data import InterleavedBatches


class _Counter:
    """A resumable stream of batches that say which stream and which batch of it they are."""

    def __init__(self, name: str):
        self.name, self.next_index = name, 0

    def __next__(self):
        self.next_index += 1
        return {"source": self.name, "index": self.next_index - 1}

    def get_state(self):
        return {"next": self.next_index}

    def set_state(self, state):
        self.next_index = state["next"]


@given(fraction=st.floats(0.0, 1.0), seed=st.integers(0, 2**31), cut=st.integers(0, 60))
def test_each_stream_is_consumed_in_order_and_a_resume_continues_exactly(fraction, seed, cut):
    mixed = InterleavedBatches(_Counter("main"), _Counter("other"), fraction, seed)
    batches = list(itertools.islice(mixed, 120))
    for name in ("main", "other"):  # no batch of either stream is skipped or repeated
        indices = [b["index"] for b in batches if b["source"] == name]
        assert indices == list(range(len(indices)))
    if fraction in (0.0, 1.0):
        assert {b["source"] for b in batches} == {"other" if fraction else "main"}
    again = InterleavedBatches(_Counter("main"), _Counter("other"), fraction, seed)
    list(itertools.islice(again, cut))
    resumed = InterleavedBatches(_Counter("main"), _Counter("other"), fraction, seed)
    resumed.set_state(again.get_state())
    assert list(itertools.islice(resumed, 120 - cut)) == batches[cut:]


def test_the_share_of_the_second_stream_is_the_fraction():
    mixed = InterleavedBatches(_Counter("main"), _Counter("other"), 0.25, seed=3)
    share = np.mean([b["source"] == "other" for b in itertools.islice(mixed, 4000)])
    assert abs(share - 0.25) < 0.03
    with pytest.raises(ValueError, match="fraction"):
        InterleavedBatches(_Counter("main"), _Counter("other"), 1.5, seed=0)
