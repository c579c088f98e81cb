"""Packed rows of documents for the benchmarks: reproducible lengths a user's data might hold."""

from __future__ import annotations


def document_lengths(length: int, count: int, seed: int = 0) -> list[int]:
    """`count` document lengths (multiples of 128, random cuts, seed `seed`) summing to `length`."""
    import numpy as np

    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, length // 128), count - 1, replace=False)) * 128
    return np.diff(np.concatenate([[0], cuts, [length]])).tolist()
