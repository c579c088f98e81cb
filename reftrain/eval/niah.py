"""Needle-in-a-Haystack: accuracy over a grid of context lengths x needle depths.

    result = run_niah(config, params, tokenizer, lengths=[256, 512], depths=[0, 50, 100], trials=4)
    result["accuracy"][d][l]   # depth index d, length index l; mean trial score: 1/0 exact match, or for RULER's
                               # multi-value/multi-query variants the fraction of numbers given

Each cell (length, depth) runs `trials` prompts (different cities and numbers, seeded per
cell) as one batch through greedy decoding; see _needle.py for the prompt and the scoring,
_decode.py for the decoding.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from jax.sharding import Mesh

from reftrain.config import ModelConfig
from reftrain.data import Tokenizer
from reftrain.eval._decode import greedy_decode
from reftrain.eval._haystack import Haystack, NIAHError, load_haystack
from reftrain.eval._needle import NeedleSample, build_sample, check_depth, draw_needles, parse_number
from reftrain.eval._ruler import MAX_NEW_TOKENS, build_variant, check_kind, draw_variant

DEFAULT_MAX_NEW_TOKENS = MAX_NEW_TOKENS["niah"]  # "▁" + 7 digits (Mistral splits digits one per token) + 2 spare


@dataclass(frozen=True)
class Cell:
    """The prompts of one grid cell, all of `length` tokens."""

    length: int
    depth: float
    samples: tuple[NeedleSample, ...]

    def prompts(self) -> np.ndarray:
        """Returns int32 `[trials, length]`."""
        return np.stack([s.tokens for s in self.samples])


def _check_grid(lengths: Sequence[int], depths: Sequence[float], trials: int) -> None:
    if not lengths or not depths:
        raise NIAHError("give at least one length and one depth")
    for length in lengths:
        if int(length) != length or length < 1:
            raise NIAHError(f"length {length} must be a positive integer (tokens)")
    for depth in depths:
        check_depth(depth)
    if trials < 1:
        raise NIAHError(f"trials must be >= 1, got {trials}")


def build_cells(tokenizer: Tokenizer, *, lengths: Sequence[int], depths: Sequence[float], trials: int,
                seed: int = 0, haystack: Haystack | str | None = None, kind: str = "niah") -> list[Cell]:
    """Returns the grid's cells, length-major (every depth of lengths[0] first).

    haystack: a Haystack, a text, or None for the held-out haystack. kind: "niah" or a RULER
    variant (_ruler.KINDS). Raises NIAHError for an empty grid, an unknown kind, a depth outside
    [0, 100] or a length too short for the needles and question.
    """
    _check_grid(lengths, depths, trials)
    check_kind(kind)
    if not isinstance(haystack, Haystack):
        haystack = load_haystack(tokenizer, haystack)
    cells = []
    for length in lengths:
        for depth in depths:
            grid = dict(length=int(length), depth=float(depth))
            if kind == "niah":
                needles = draw_needles(haystack, seed=seed, trials=trials, **grid)
                samples = tuple(build_sample(tokenizer, haystack, city=city, number=number, **grid)
                                for city, number in needles)
            else:
                needles = draw_variant(haystack, kind=kind, seed=seed, trials=trials, **grid)
                samples = tuple(build_variant(tokenizer, haystack, kind=kind, cities=cities, numbers=numbers,
                                              seed=seed, **grid) for cities, numbers in needles)
            cells.append(Cell(int(length), float(depth), samples))
    return cells


def score_cell(cell: Cell, predictions: Sequence[str]) -> dict:
    """Returns the cell's record: accuracy and, per trial, the prediction and whether it matched."""
    trials = []
    for sample, prediction in zip(cell.samples, predictions, strict=True):
        points = sample.score(prediction)
        trials.append(sample.metadata() | {"prediction": prediction, "predicted_number": parse_number(prediction),
                                           "correct": points == 1.0, "score": points})
    correct = sum(t["correct"] for t in trials)
    return {"length": cell.length, "depth": cell.depth, "accuracy": sum(t["score"] for t in trials) / len(trials),
            "correct": correct, "trials": trials}


def run_niah(config: ModelConfig, params, tokenizer: Tokenizer, *, lengths: Sequence[int], depths: Sequence[float],
             trials: int = 4, seed: int = 0, haystack_text: Haystack | str | None = None, mesh: Mesh | None = None,
             max_new_tokens: int | None = None, on_cell: Callable[[dict], None] | None = None,
             kind: str = "niah") -> dict:
    """Returns the NIAH result of (config, params): the accuracy grid and every trial.

    lengths: prompt lengths in tokens (bos, haystack, needle and question together); depths:
    needle depths in percent of the haystack; trials: prompts per cell. haystack_text: the
    filler text (None: the held-out haystack, _haystack.HELD_OUT). kind: "niah" or a RULER
    variant (_ruler.py; max_new_tokens None: the kind's own). With a `mesh` (params placed on it), prompts run
    sharded, over `sp` with ring attention. `on_cell(record)` is called after each cell.
    Result keys: kind, rope_dtype, lengths, depths, trials, seed, max_new_tokens, haystack,
    accuracy (`[depth][length]` fractions), mean_accuracy, cells (one record per cell), seconds.
    """
    check_kind(kind)
    max_new_tokens = MAX_NEW_TOKENS[kind] if max_new_tokens is None else max_new_tokens
    if max_new_tokens < 1:
        raise NIAHError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not isinstance(haystack_text, Haystack):
        haystack_text = load_haystack(tokenizer, haystack_text)
    cells = build_cells(tokenizer, lengths=lengths, depths=depths, trials=trials, seed=seed, haystack=haystack_text,
                        kind=kind)
    if tokenizer.vocab_size > config.vocab_size:
        raise NIAHError(f"tokenizer has {tokenizer.vocab_size} pieces, the model only {config.vocab_size}")
    started = time.perf_counter()
    records = []
    for cell in cells:
        t0 = time.perf_counter()
        generated = greedy_decode(config, params, cell.prompts(), max_new_tokens=max_new_tokens, mesh=mesh)
        record = score_cell(cell, [tokenizer.decode(row) for row in generated])
        record["seconds"] = round(time.perf_counter() - t0, 3)
        records.append(record)
        if on_cell is not None:
            on_cell(record | {"rope_dtype": config.rope_dtype})
    by_cell = {(r["length"], r["depth"]): r["accuracy"] for r in records}
    accuracy = [[by_cell[(int(length), float(depth))] for length in lengths] for depth in depths]
    return {
        "kind": kind,
        "rope_dtype": config.rope_dtype,
        "lengths": [int(x) for x in lengths],
        "depths": [float(x) for x in depths],
        "trials": trials,
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "haystack": haystack_text.label,
        "accuracy": accuracy,
        "mean_accuracy": float(np.mean([r["accuracy"] for r in records])),
        "cells": records,
        "seconds": round(time.perf_counter() - started, 3),
    }
