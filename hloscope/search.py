"""`hloscope search`'s engine: compile a program's candidate settings, keep those that fit the
device budget with a safety margin, choose the fastest predicted. It knows no program: a
`CandidateSpace` (hloscope.programs.train_step_search is reftrain's train step's) says what the
candidates are, how each is built, how fast it is predicted to be and which need at least the
memory of another.

Candidates are compiled in order of predicted step time and the search stops at the first round
with one that fits: a slower candidate cannot be chosen, so it is not compiled. Each candidate
compiles in its own worker process (a crash or OOM is recorded, never fatal), several at once
where cores allow, and its outcome is cached on disk by (program, arguments, jax and jaxlib
versions, target, the space's code fingerprint). docs/search.md gives the margin.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Protocol

from hloscope._files import write_json
from hloscope.binary_search import largest_multiple
from hloscope.compile import CompileRequest, compile_in_worker
from hloscope.targets import DEFAULT_MARGIN, Target
from hloscope.versions import toolchain_versions

_REMAT_WARNING = re.compile(r".*rematerializ.*", re.IGNORECASE)


class CandidateSpace(Protocol):
    """A program's candidates at one length, for one target (hloscope.targets.Target, resolved once
    by the caller) and device count."""

    program: str  # what compiles them: a built-in program name or `module:function`

    def candidates(self) -> list[Hashable]: ...

    def options(self, candidate: Hashable) -> dict[str, Any]:
        """The program's builder options for `candidate`."""

    def predicted_seconds(self, candidate: Hashable) -> float: ...

    def needs_at_least(self, candidate: Hashable, than: Hashable) -> bool:
        """Whether `candidate` needs at least the device memory of `than` (prunes what cannot fit)."""

    def fingerprint(self) -> str:
        """A hash of the code the program is built from (part of the cache key)."""


@dataclass
class Outcome:
    """One compiled candidate: status, per-device figures, fit, and predicted step time."""

    candidate: Any
    status: str  # ok, error, crashed, oom, timeout; skipped (a faster one fits), pruned (a lighter one did not)
    error: str | None = None
    figures: dict[str, int] = field(default_factory=dict)
    fits: bool = False
    headroom_bytes: int | None = None
    predicted_s: float | None = None
    remat_warnings: list[str] = field(default_factory=list)
    compile_s: float | None = None
    cached: bool = False

    def compiled(self) -> dict[str, Any]:
        """What the cache keeps: the compile's result, not the candidate or the verdict."""
        return {k: getattr(self, k) for k in ("status", "error", "figures", "remat_warnings", "compile_s")}


def cache_dir() -> Path:
    return Path(os.environ.get("HLOSCOPE_CACHE", Path.home() / ".cache" / "hloscope")) / "search"


def _cache_key(space: CandidateSpace, kwargs: dict, target: Target, devices: int) -> str:
    versions = toolchain_versions()
    identity = {"program": space.program, "kwargs": kwargs, "target": target.name, "devices": devices,
                "jax": versions.get("jax"), "jaxlib": versions.get("jaxlib"), "code": space.fingerprint()}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def host_total(memory: dict) -> int:
    """Host memory per device that XLA places (offloaded residuals): argument + output + temp - alias."""
    return sum(int(memory.get(f"host_{k}_size_in_bytes") or 0) for k in ("argument", "output", "temp")) - int(
        memory.get("host_alias_size_in_bytes") or 0)


def usable_bytes(budget: int | None, margin: float, target: Target) -> int | None:
    """What the pool holds for the step: 1 - margin of the card (reftrain preallocates that share)
    less the runtime's own workspaces; None without a budget."""
    return None if budget is None else int(budget * (1 - margin)) - target.runtime_overhead_bytes


def evaluate(
    space: CandidateSpace, candidate: Hashable, target: Target, devices: int, budget: int | None, margin: float, *,
    timeout_s: float = 600, use_cache: bool = True, host_budget: int | None = None,
) -> Outcome:
    """Compiles `candidate` of `space` for `target` and judges it against the budgets."""
    kwargs = {"program": space.program, "options": space.options(candidate), "mesh": None}
    path = cache_dir() / f"{_cache_key(space, kwargs, target, devices)}.json"
    if use_cache and path.exists():
        outcome = Outcome(candidate, **json.loads(path.read_text()), cached=True)
    else:
        result = compile_in_worker(CompileRequest("hloscope._lower:lower", kwargs, target.name, devices, dump=False, timeout_s=timeout_s))
        warnings = [line.strip()[:200] for line in (result.log or "").splitlines() if _REMAT_WARNING.match(line)]
        outcome = Outcome(candidate, result.status, result.error, remat_warnings=warnings[:5], compile_s=result.compile_s)
        if result.ok:
            memory = result.memory or {}
            outcome.figures = {k: int(memory[k]) for k in ("xla_total", "temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes") if k in memory}
            outcome.figures["host_total"] = host_total(memory)
        if result.status in ("ok", "oom"):  # a deterministic outcome; errors and crashes are retried
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, outcome.compiled(), indent=None)
    if outcome.status == "ok":
        total, usable = outcome.figures["xla_total"], usable_bytes(budget, margin, target)
        outcome.fits = (usable is None or total <= usable) and (
            host_budget is None or outcome.figures.get("host_total", 0) <= host_budget)
        outcome.headroom_bytes = None if usable is None else usable - total
        outcome.predicted_s = space.predicted_seconds(candidate)
    else:
        outcome.fits, outcome.headroom_bytes, outcome.predicted_s = False, None, None
    return outcome


def choose(outcomes: list[Outcome]) -> Outcome | None:
    """The fastest predicted candidate that fits; ties go to the larger headroom."""
    fitting = [o for o in outcomes if o.fits]
    if not fitting:
        return None
    return min(fitting, key=lambda o: (o.predicted_s, -(o.headroom_bytes or 0)))


def run_search(
    space: CandidateSpace, target: Target, devices: int, *, budget: int | None, margin: float = DEFAULT_MARGIN,
    jobs: int = 1, timeout_s: float = 600, use_cache: bool = True, on_done: Callable[[Outcome], None] | None = None,
    host_budget: int | None = None, exhaustive: bool = False, order: Callable[[Hashable], Any] | None = None,
) -> list[Outcome]:
    """Evaluates the space's candidates fastest-predicted first (ties broken by `order`), `jobs`
    at a time, and stops after the first round in which one fits (the rest are `skipped`:
    slower than one that fits); a candidate that needs at least the memory of one that did not
    fit is `pruned`, not compiled. `exhaustive` compiles every candidate. Returns outcomes in
    the space's order."""
    cands = space.candidates()

    def one(candidate) -> Outcome:
        outcome = evaluate(space, candidate, target, devices, budget, margin, timeout_s=timeout_s,
                           use_cache=use_cache, host_budget=host_budget)
        if on_done:
            on_done(outcome)
        return outcome

    predicted = {c: space.predicted_seconds(c) for c in cands}
    pending = sorted(cands, key=lambda c: (predicted[c], order(c) if order else 0))
    outcomes: dict[Hashable, Outcome] = {}
    rounds = max(1, jobs)
    with ThreadPoolExecutor(max_workers=rounds) as pool:
        while pending and (exhaustive or not any(o.fits for o in outcomes.values())):
            batch = []
            while pending and len(batch) < rounds:
                c = pending.pop(0)
                if not exhaustive and any(_over(o) and space.needs_at_least(c, o.candidate) for o in outcomes.values()):
                    outcomes[c] = Outcome(c, "pruned", predicted_s=predicted[c])  # a lighter one did not fit
                    if on_done:
                        on_done(outcomes[c])
                else:
                    batch.append(c)
            for outcome in pool.map(one, batch):
                outcomes[outcome.candidate] = outcome
    for c in cands:
        if c not in outcomes:
            outcomes[c] = Outcome(c, "skipped", predicted_s=predicted[c])
            if on_done:
                on_done(outcomes[c])
    return [outcomes[c] for c in cands]


def _over(o: Outcome) -> bool:
    """Whether `o` did not fit for want of memory (out of memory, or compiled over the budget)."""
    return o.status == "oom" or (o.status == "ok" and o.headroom_bytes is not None and o.headroom_bytes < 0)


def longest_fitting(
    space_at: Callable[[int], CandidateSpace], target: Target, devices: int, *, budget: int, margin: float, step: int,
    upper: int, jobs: int = 1, timeout_s: float = 600, use_cache: bool = True,
    on_probe: Callable[[int, Outcome | None], None] | None = None, host_budget: int | None = None,
) -> tuple[int | None, Outcome | None]:
    """Binary-searches the longest multiple of `step` in [step, upper] at which some candidate of
    `space_at(length)` fits. Memory grows with length, so fitting is monotone. Returns (length,
    its chosen outcome)."""
    def probe(seq: int) -> Outcome | None:
        chosen = choose(run_search(space_at(seq), target, devices, budget=budget, margin=margin, jobs=jobs,
                                   timeout_s=timeout_s, use_cache=use_cache, host_budget=host_budget))
        if on_probe:
            on_probe(seq, chosen)
        return chosen

    return largest_multiple(probe, step=step, upper=upper)


__all__ = ["CandidateSpace", "Outcome", "cache_dir", "choose", "evaluate", "host_total", "longest_fitting",
           "run_search", "usable_bytes"]
