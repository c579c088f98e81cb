"""RULER's synthetic retrieval variants of the needle (Hsieh et al. 2024, section 3.1), in the
words of our needle (_needle.py), so a grid is more than one kind of needle:

- "niah": one needle, one question (the Arize-style test, _needle.py).
- "multikey": four needles of four cities; the question asks for one (the other three are
  look-alikes the model must skip). Correct when the first number is the asked city's.
- "multivalue": four needles of one city with four numbers; the question asks for all of them
  ("What are all the special magic {city} numbers? ... numbers are:"). A trial scores the
  fraction of the four numbers that its continuation contains (RULER's string_match_all).
- "multiquery": four needles of four cities; the question asks for all four, scored the same.

The first needle (the asked one for "multikey") sits at the requested depth, the others at
sentence boundaries drawn from the cell's seed. Every number appears once in the prompt.
"""

from __future__ import annotations

import re

import numpy as np

from reftrain.data import Tokenizer
from reftrain.eval._haystack import Haystack, NIAHError
from reftrain.eval._needle import CITIES, NEEDLE, QUESTION, NeedleSample, check_depth

KINDS = ("niah", "multikey", "multivalue", "multiquery")
NEEDLES = {"niah": 1, "multikey": 4, "multivalue": 4, "multiquery": 4}
#: Decoding steps each kind needs: "▁" + 7 digits (+ 2 spare), or four numbers with separators.
MAX_NEW_TOKENS = {"niah": 10, "multikey": 10, "multivalue": 40, "multiquery": 40}
_MANY_QUESTION = ("What are all the special magic {city} numbers? Answer: The special magic {city} numbers are:")
_QUERY_QUESTION = ("What are the special magic numbers for {cities}? Answer: The special magic numbers for "
                   "{cities} are:")
_DIGITS = re.compile(r"\d+")


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise NIAHError(f"unknown needle kind {kind!r}; known: {', '.join(KINDS)}")


def _join(names) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"


def draw_variant(haystack: Haystack, *, kind: str, seed: int, length: int, depth: float,
                 trials: int) -> list[tuple[list[str], list[str]]]:
    """Returns `trials` (cities, numbers) of one cell: one pair per needle, the asked one first.
    Drawn from the cell's seed and the kind alone (build_cells draws "niah" with _needle.draw_needles)."""
    rng = np.random.default_rng([seed, length, round(depth * 1000), KINDS.index(kind)])
    n = NEEDLES[kind]
    out = []
    for _ in range(trials):
        cities = [CITIES[int(i)] for i in rng.choice(len(CITIES), 1 if kind == "multivalue" else n, replace=False)]
        cities = cities * n if kind == "multivalue" else cities
        numbers = []
        while len(numbers) < n:
            number = str(rng.integers(1_000_000, 10_000_000))
            if not haystack.contains_number(number) and number not in numbers:
                numbers.append(number)
        out.append((cities, numbers))
    return out


def build_variant(tokenizer: Tokenizer, haystack: Haystack, *, kind: str, length: int, depth: float,
                  cities: list[str], numbers: list[str], seed: int = 0) -> NeedleSample:
    """Returns the prompt of exactly `length` tokens: the needles, then the kind's question."""
    check_kind(kind)
    check_depth(depth)
    needles = [tokenizer.encode(NEEDLE.format(city=c, number=x)) for c, x in zip(cities, numbers)]
    if kind in ("niah", "multikey"):
        question = QUESTION.format(city=cities[0])
    elif kind == "multivalue":
        question = _MANY_QUESTION.format(city=cities[0])
    else:
        question = _QUERY_QUESTION.format(cities=_join(cities))
    question_ids = tokenizer.encode(question)
    haystack_len = length - 1 - sum(len(n) for n in needles) - len(question_ids)
    if haystack_len < 0:
        raise NIAHError(f"length {length} is too short for {len(needles)} needle(s) and the question "
                        f"(needs at least {length - haystack_len} tokens)")
    hay, boundaries = haystack.window(haystack_len)
    first = int(boundaries[np.argmin(np.abs(boundaries - depth / 100.0 * haystack_len))])
    rng = np.random.default_rng([seed, length, round(depth * 1000), len(needles)])
    offsets = [first] + [int(b) for b in rng.choice(boundaries, len(needles) - 1)]
    order = sorted(range(len(needles)), key=lambda i: (offsets[i], i))
    parts, cursor, starts = [np.array([tokenizer.bos_id], np.int32)], 0, {}
    position = 1
    for i in order:
        parts.append(hay[cursor : offsets[i]])
        position += offsets[i] - cursor
        starts[i] = position
        parts.append(needles[i])
        position += len(needles[i])
        cursor = offsets[i]
    parts += [hay[cursor:], question_ids]
    tokens = np.concatenate(parts).astype(np.int32)
    assert len(tokens) == length, (len(tokens), length)
    return NeedleSample(tokens, length, float(depth), cities[0], numbers[0], (starts[0], starts[0] + len(needles[0])),
                        first, haystack_len, boundaries, kind=kind, answers=tuple(_asked(kind, numbers)))


def _asked(kind: str, numbers: list[str]) -> list[str]:
    return numbers[:1] if kind in ("niah", "multikey") else numbers


def score(kind: str, prediction: str, answers: tuple[str, ...]) -> float:
    """1.0 or 0.0 for "niah"/"multikey" (the first number); the fraction of answers found otherwise."""
    found = _DIGITS.findall(prediction)
    if kind in ("niah", "multikey"):
        return float(bool(found) and found[0] == answers[0])
    return sum(a in found for a in answers) / len(answers)
