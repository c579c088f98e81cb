"""Batches of one stream with a fraction of them taken from another (the `small` preset's base
stage: corpus rows with dense retrieval documents mixed in, `reftrain.phases.Phase.recall_fraction`)."""

from __future__ import annotations

from typing import Iterator

import numpy as np


class InterleavedBatches(Iterator[dict[str, np.ndarray]]):
    """Batch i comes from `other` when a draw seeded by (seed, i) falls below `fraction`, else
    from `main`: the same batches whatever the host or a resume, and resumable as a pair."""

    def __init__(self, main, other, fraction: float, seed: int):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        self.main, self.other, self.fraction, self.seed = main, other, fraction, seed
        self.index = 0

    def takes_other(self, index: int) -> bool:
        return bool(np.random.default_rng([self.seed, index]).random() < self.fraction)

    def __next__(self) -> dict[str, np.ndarray]:
        source = self.other if self.takes_other(self.index) else self.main
        self.index += 1
        return next(source)

    def get_state(self) -> dict:
        return {"index": self.index, "main": self.main.get_state(), "other": self.other.get_state()}

    def set_state(self, state: dict) -> None:
        self.index = int(state["index"])
        self.main.set_state(state["main"])
        self.other.set_state(state["other"])
