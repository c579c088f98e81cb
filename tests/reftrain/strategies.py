"""Hypothesis strategies for attention problems: shapes, GQA ratios, chunks, packed documents."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st


@dataclass(frozen=True)
class Problem:
    batch: int
    length: int  # global sequence length
    q_heads: int
    kv_heads: int
    head_dim: int
    q_chunk: int
    kv_chunk: int
    causal: bool
    segment_ids: np.ndarray | None  # int32 [batch, length]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def segment_layouts(draw, batch: int, length: int) -> np.ndarray:
    """Returns int32 `[batch, length]`: contiguous documents numbered from 1, padding runs of 0.

    Covers one document spanning everything, one-token documents and padding anywhere.
    """
    rows = []
    for _ in range(batch):
        kind = draw(st.sampled_from(["one_doc", "runs", "single_tokens"]))
        if kind == "one_doc":
            rows.append(np.ones(length, np.int32))
            continue
        if kind == "single_tokens":
            cuts = list(range(1, length))
        else:
            cuts = sorted(draw(st.sets(st.integers(1, length - 1), max_size=min(6, length - 1))))
        bounds = [0, *cuts, length]
        row, doc = np.zeros(length, np.int32), 0
        for start, stop in zip(bounds[:-1], bounds[1:]):
            if draw(st.booleans()) and draw(st.booleans()):
                continue  # a padding run (about a quarter of the runs)
            doc += 1
            row[start:stop] = doc
        rows.append(row)
    return np.stack(rows)


@st.composite
def problems(draw, shards: int = 1, max_local: int = 32) -> Problem:
    """Returns an attention problem whose length splits into `shards` equal local shards."""
    local = draw(st.sampled_from([n for n in (4, 8, 12, 16, 24, 32) if n <= max_local]))
    length = local * shards
    batch = draw(st.integers(1, 2))
    kv_heads = draw(st.sampled_from([1, 2]))
    ratio = draw(st.sampled_from([1, 2, 4, 8]))
    head_dim = draw(st.sampled_from([8, 16]))
    q_chunk = draw(st.sampled_from(_divisors(local)))
    kv_chunk = draw(st.sampled_from(_divisors(local)))
    causal = draw(st.booleans())
    with_segments = draw(st.integers(0, 4)) > 0
    segment_ids = draw(segment_layouts(batch, length)) if with_segments else None
    return Problem(batch, length, kv_heads * ratio, kv_heads, head_dim, q_chunk, kv_chunk, causal, segment_ids)
