"""The largest setting that passes a test which only gets harder as the setting grows (memory
grows with sequence length, batch, layers): a binary search over multiples of a step."""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


def largest_multiple(probe: Callable[[int], T | None], *, step: int, upper: int) -> tuple[int | None, T | None]:
    """Returns the largest multiple of `step` in [step, upper] at which `probe` returns a result
    (not None), with that result; (None, None) when even `step` fails or exceeds `upper`. `probe`
    must be monotone: once it fails at a value, it fails at every larger one. About
    log2(upper / step) probes."""
    if step < 1:
        raise ValueError(f"step must be positive, got {step}")
    best: tuple[int | None, T | None] = (None, None)
    lo, hi = 1, upper // step
    while lo <= hi:
        mid = (lo + hi) // 2
        result = probe(mid * step)
        if result is not None:
            best, lo = (mid * step, result), mid + 1
        else:
            hi = mid - 1
    return best
