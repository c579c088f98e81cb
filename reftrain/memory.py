"""How much of each GPU XLA preallocates for a run, decided before jax initialises.

JAX's GPU client preallocates 75% of the card unless told otherwise, while hloscope's search
judges a plan against 1 - margin of it (90% by default): a plan between the two was "fits" in
hloscope and out of memory in reftrain. Growth mode (`XLA_PYTHON_CLIENT_PREALLOCATE=false`) is
worse: its pool fragments, and steps of 54-58 GB died allocating one 35 GiB buffer on a 79 GiB
H100 (docs/gpu.md). So a run preallocates 1 - margin of the card, the margin being the plan's own
(`hloscope search --margin`, written into the plan; the search's default for reftrain's default
plan): the share hloscope judged usable is the share XLA is given, and the margin stays free for
what lives outside XLA's pool (the CUDA context, cuBLAS and cuDNN handles, NCCL). A user's own
`XLA_PYTHON_CLIENT_*` setting wins and is named.

Nothing here imports jax: `grant_memory` must run before jax's backend starts.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from dataclasses import asdict, dataclass

#: The margin of a plan that names none (reftrain's default plan): hloscope search's default
#: (hloscope.targets.DEFAULT_MARGIN; reftrain may not import hloscope, a test holds them equal).
DEFAULT_MARGIN = 0.10
#: The most of a card a run asks for, whatever the margin: the CUDA context and the libraries'
#: handles (about 0.5 GiB) live outside the pool. 0.95 and 0.97 ran on an H100 and an H200.
MAX_FRACTION = 0.97
#: The variables by which a user chooses the allocator themselves.
USER_VARIABLES = ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_ALLOCATOR")
#: JAX's own fraction when preallocating without XLA_PYTHON_CLIENT_MEM_FRACTION.
JAX_DEFAULT_FRACTION = 0.75


@dataclass(frozen=True)
class MemoryGrant:
    """What XLA's allocator was told for this run.

    fraction: the share of each card's memory XLA preallocates (None: growth mode or a platform
        without a device pool); preallocate: whether the pool is taken at start; margin: the
        plan's (None where the user decided); chosen_by: "plan", "default" (no plan margin),
        "user" or "cpu"; why: one line for the user.
    """

    fraction: float | None
    preallocate: bool
    margin: float | None
    chosen_by: str
    why: str

    def to_dict(self) -> dict:
        return asdict(self)


def grant_memory(margin: float | None, *, cpu: bool, environ: MutableMapping[str, str] = os.environ) -> MemoryGrant:
    """Sets XLA_PYTHON_CLIENT_MEM_FRACTION (and PREALLOCATE=true) in `environ` from the plan's
    `margin` (None: DEFAULT_MARGIN), unless the user set any of USER_VARIABLES; returns what
    was decided. Call it before jax is imported."""
    if cpu:
        return MemoryGrant(None, False, None, "cpu", "CPU devices: no device memory pool to size")
    mine = {name: environ[name] for name in USER_VARIABLES if name in environ}
    if mine:
        named = ", ".join(f"{k}={v}" for k, v in mine.items())
        preallocate = mine.get("XLA_PYTHON_CLIENT_PREALLOCATE", "true").lower() not in ("false", "0")
        fraction = _float(mine.get("XLA_PYTHON_CLIENT_MEM_FRACTION")) if preallocate else None
        if preallocate and fraction is None:
            fraction = JAX_DEFAULT_FRACTION
        note = "" if preallocate else ": growth mode, whose pool fragments (docs/gpu.md)"
        return MemoryGrant(fraction, preallocate, None, "user", f"your {named}, left as you set it{note}")
    chosen_by = "default" if margin is None else "plan"
    margin = DEFAULT_MARGIN if margin is None else margin
    fraction = round(min(1 - margin, MAX_FRACTION), 4)
    environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "true"
    environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{fraction}"
    whose = "the plan's" if chosen_by == "plan" else "hloscope search's default"
    capped = f", capped at {MAX_FRACTION:.0%}" if fraction < 1 - margin else ""
    return MemoryGrant(fraction, True, margin, chosen_by,
                       f"1 - {whose} margin {margin:g}{capped}: the share hloscope judges a plan against")


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def describe(grant: MemoryGrant, bytes_limit: int | None, device_kind: str, predicted: int | None) -> str:
    """One line: what XLA was given on each device, why, and the plan's prediction against it."""
    if bytes_limit is None:
        return f"memory: {grant.why}"
    share = f"{grant.fraction:.0%} of each {device_kind}" if grant.fraction else f"each {device_kind}"
    card = f" ({bytes_limit / 2**30:.1f} GiB of {bytes_limit / grant.fraction / 2**30:.1f} GiB)" if grant.fraction else \
        f" ({bytes_limit / 2**30:.1f} GiB limit)"
    mode = "preallocated" if grant.preallocate else "growing on demand"
    plan = "" if not predicted else (f"; the plan predicts {predicted / 2**30:.2f} GiB per device, "
                                     f"{predicted / bytes_limit:.1%} of it")
    return f"memory: XLA has {share}{card}, {mode}: {grant.why}{plan}"
