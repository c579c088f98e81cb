"""The Arize-style needle: prompts with a magic number at a depth, and exact-match scoring.

A prompt of `length` tokens is

    [bos] haystack[:b] NEEDLE haystack[b:] QUESTION

NEEDLE = "The special magic {city} number is: {number}." (7 digits) and QUESTION asks for it and
ends with "The special magic {city} number is:" so that greedy decoding continues with the
number. The haystack gets exactly `length - 1 - |NEEDLE| - |QUESTION|` tokens and ends at a
sentence end; b is the sentence boundary nearest to depth% of it (0 = first, 100 = right
before the question). A prediction is correct when its first run of digits is the number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from reftrain.data import Tokenizer
from reftrain.eval._haystack import Haystack, NIAHError

NEEDLE = "The special magic {city} number is: {number}."
QUESTION = "What is the special magic {city} number? Answer: The special magic {city} number is:"
CITIES = (
    "Chicago", "Yangon", "Antananarivo", "Colombo", "Almaty", "Sydney", "Mexico City", "Seattle",
    "Lagos", "Amsterdam", "Belgrade", "Cairo", "Baghdad", "Damascus", "Kigali", "Dakar", "Sofia",
    "Victoria", "Tashkent", "Mumbai", "Barcelona", "Lisbon", "Montevideo", "Helsinki", "Nairobi",
    "Hanoi", "Quito", "Reykjavik", "Tbilisi", "Oslo", "Lima", "Santiago", "Karachi", "Osaka",
    "Vienna", "Havana", "Bogota", "Manila", "Kyiv", "Dublin",
)
_DIGITS = re.compile(r"\d+")


@dataclass(frozen=True)
class NeedleSample:
    """One NIAH prompt. tokens: int32 `[length]` (bos, context, question). needle_span is the
    `[start, stop)` token range of the needle in `tokens`; needle_offset is its start within the
    haystack (of `haystack_len` tokens), always one of `boundaries` (int64 `[k]`, haystack
    offsets after a sentence end, 0 and haystack_len included). depth is the requested percent,
    placed_depth = 100 * needle_offset / haystack_len the one achieved."""

    tokens: np.ndarray
    length: int
    depth: float
    city: str
    number: str
    needle_span: tuple[int, int]
    needle_offset: int
    haystack_len: int
    boundaries: np.ndarray
    kind: str = "niah"  # or a RULER variant (_ruler.py): more needles, and `answers` asked for
    answers: tuple[str, ...] = ()

    @property
    def placed_depth(self) -> float:
        return 100.0 * self.needle_offset / self.haystack_len if self.haystack_len else self.depth

    def metadata(self) -> dict:
        """Returns the JSON-serialisable record of the sample (everything but the arrays)."""
        record = {"city": self.city, "number": self.number, "needle_span": list(self.needle_span),
                  "placed_depth": round(self.placed_depth, 3)}
        return record if self.kind == "niah" else record | {"kind": self.kind, "answers": list(self.answers)}

    def score(self, prediction: str) -> float:
        """1.0 when `prediction` answers (is_correct); for a RULER variant the fraction it gets."""
        if self.kind == "niah":
            return float(is_correct(prediction, self.number))
        from reftrain.eval._ruler import score

        return score(self.kind, prediction, self.answers)


def check_depth(depth: float) -> None:
    """Raises NIAHError unless 0 <= depth <= 100 (percent)."""
    if not 0.0 <= depth <= 100.0:
        raise NIAHError(f"depth {depth:g} is outside [0, 100] (percent of the haystack)")


def build_sample(tokenizer: Tokenizer, haystack: Haystack, *, length: int, depth: float, city: str,
                 number: str) -> NeedleSample:
    """Returns the prompt of exactly `length` tokens with the needle at `depth` percent.

    Raises NIAHError for a depth outside [0, 100] or a length that cannot hold bos, the needle
    and the question.
    """
    check_depth(depth)
    needle = tokenizer.encode(NEEDLE.format(city=city, number=number))
    question = tokenizer.encode(QUESTION.format(city=city))
    haystack_len = length - 1 - len(needle) - len(question)
    if haystack_len < 0:
        raise NIAHError(f"length {length} is too short for the needle and the question "
                        f"(needs at least {length - haystack_len} tokens)")
    hay, boundaries = haystack.window(haystack_len)
    target = depth / 100.0 * haystack_len
    offset = int(boundaries[np.argmin(np.abs(boundaries - target))])
    tokens = np.concatenate([[tokenizer.bos_id], hay[:offset], needle, hay[offset:], question]).astype(np.int32)
    start = 1 + offset
    return NeedleSample(tokens, length, float(depth), city, number, (start, start + len(needle)),
                        offset, haystack_len, boundaries)


def draw_needles(haystack: Haystack, *, seed: int, length: int, depth: float, trials: int) -> list[tuple[str, str]]:
    """Returns `trials` (city, 7-digit number) pairs of one cell, distinct cities while they last.

    Drawn from `default_rng([seed, length, depth * 1000])` alone, so a cell's needles do not
    depend on the other cells (a float32 and a bfloat16 run see the same prompts). Numbers
    that occur in the haystack are redrawn, so the number appears exactly once in the prompt.
    """
    rng = np.random.default_rng([seed, length, round(depth * 1000)])
    cities = rng.choice(len(CITIES), trials, replace=trials > len(CITIES))
    needles = []
    for c in cities:
        number = str(rng.integers(1_000_000, 10_000_000))
        while haystack.contains_number(number):
            number = str(rng.integers(1_000_000, 10_000_000))
        needles.append((CITIES[int(c)], number))
    return needles


def parse_number(prediction: str) -> str | None:
    """Returns the first run of digits in `prediction` (the model's continuation), or None."""
    match = _DIGITS.search(prediction)
    return match.group() if match else None


def is_correct(prediction: str, number: str) -> bool:
    """Returns True when the first run of digits of `prediction` is exactly `number`."""
    return parse_number(prediction) == number
