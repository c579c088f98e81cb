"""How far `layout_total`, hloscope's model of XLA's total from the optimized HLO's text, has
been measured from XLA's own figure: the band that a verdict judged on it rests on.

`analyses/hlo_real_programs.py` compiles programs from several libraries for XLA:CPU and a
deviceless H100 and writes, per set of programs, the lowest and highest layout_total /
xla_total into layout_total_band.json beside this file (`held out`: programs the rules were
never tuned on; `all`: every compile). docs/figures.md gives the table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from hloscope.units import human_bytes

BAND_PATH = Path(__file__).with_name("layout_total_band.json")


@dataclass(frozen=True)
class Band:
    """layout_total / xla_total measured from `low` to `high` over `compiles` compiles."""

    low: float
    high: float
    compiles: int

    def percent(self) -> str:
        return f"{(self.low - 1) * 100:+.1f}% to {(self.high - 1) * 100:+.1f}%"


@dataclass(frozen=True)
class MeasuredBand:
    held_out: Band
    every: Band
    jax: str

    def to_dict(self) -> dict:
        return {"held_out": vars(self.held_out), "all": vars(self.every), "jax": self.jax,
                "source": "analyses/hlo_real_programs.py (layout_total / xla_total)"}

    def describe(self) -> str:
        return (f"hloscope's model from the text alone, measured {self.held_out.percent()} from XLA's total on "
                f"{self.held_out.compiles} held-out compiles ({self.every.percent()} on all {self.every.compiles}; "
                f"jax {self.jax})")

    def verdict_note(self, needed: int, budget: int) -> str:
        """Where `budget` lies against the range of XLA totals the band allows for `needed`: a
        plain note when the verdict holds across it, a warning when it does not."""
        # layout / xla in [low, high]  =>  xla in [layout / high, layout / low]
        lowest, highest = int(needed / self.every.high), int(needed / self.every.low)
        if lowest <= budget < highest:
            return (f"too close to call from text: within the measured band XLA's total may be "
                    f"{human_bytes(lowest)} to {human_bytes(highest)}; pass the --xla_dump_to folder for XLA's own "
                    f"figure ({self.describe()})")
        return self.describe()


@lru_cache(maxsize=1)
def measured_band(path: Path = BAND_PATH) -> MeasuredBand | None:
    """The band the last full run of the real-program table measured; None before there was
    one (the table's own first run)."""
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    return MeasuredBand(Band(**raw["held_out"]), Band(**raw["all"]), raw["jax"])


def band_of(ratios: list[float]) -> Band:
    return Band(min(ratios), max(ratios), len(ratios))
