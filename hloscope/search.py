"""`hloscope search`: compile reftrain's train step for each (Q chunk, KV chunk, remat) candidate,
keep those that fit the device budget with a safety margin, choose the fastest predicted.

Each candidate compiles in its own worker process (a crash or OOM is recorded, never fatal),
several at once where cores allow, and its outcome is cached on disk by (program, arguments,
jax and jaxlib versions, target). docs/search.md gives the margin and the speed model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from hloscope._files import atomic_write_text
from hloscope.compile import CompileRequest, compile_in_worker
from hloscope.programs.model_step import ModelStepShape
from hloscope.speed import predicted_seconds
from hloscope.targets import DEFAULT_MARGIN, get_target
from hloscope.versions import toolchain_versions

CHUNK_OPTIONS = (512, 1024, 2048, 4096, 8192)
_REMAT_WARNING = re.compile(r".*rematerializ.*", re.IGNORECASE)


@dataclass(frozen=True)
class Candidate:
    q_chunk: int
    kv_chunk: int
    remat: str


@dataclass
class Outcome:
    """One compiled candidate: status, per-device figures, fit, and predicted step time."""

    candidate: Candidate
    status: str  # ok, error, crashed, oom, timeout
    error: str | None = None
    figures: dict[str, int] = field(default_factory=dict)
    fits: bool = False
    headroom_bytes: int | None = None
    predicted_s: float | None = None
    remat_warnings: list[str] = field(default_factory=list)
    compile_s: float | None = None
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Outcome:
        return cls(**{**raw, "candidate": Candidate(**raw["candidate"])})


def candidates(local_len: int, remats: tuple[str, ...], q_options=CHUNK_OPTIONS, kv_options=CHUNK_OPTIONS) -> list[Candidate]:
    """(q, kv, remat) with both chunks dividing the local length and kv_chunk >= q_chunk."""
    return [
        Candidate(q, kv, remat)
        for remat in remats
        for q in q_options
        for kv in kv_options
        if q <= local_len and kv <= local_len and local_len % q == 0 and local_len % kv == 0 and kv >= q
    ]


def cache_dir() -> Path:
    return Path(os.environ.get("HLOSCOPE_CACHE", Path.home() / ".cache" / "hloscope")) / "search"


def _code_fingerprint() -> str:
    """Hash of the code a train-step program is built from: reftrain and hloscope's programs."""
    import hloscope.programs
    import reftrain

    digest = hashlib.sha256()
    for package in (Path(reftrain.__file__).parent, Path(hloscope.programs.__file__).parent):
        for path in sorted(package.rglob("*.py")):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _cache_key(program: str, kwargs: dict, target: str, devices: int) -> str:
    versions = toolchain_versions()
    identity = {"program": program, "kwargs": kwargs, "target": target, "devices": devices,
                "jax": versions.get("jax"), "jaxlib": versions.get("jaxlib"), "code": _code_fingerprint()}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def evaluate(
    shape: ModelStepShape, target: str, devices: int, budget: int | None, margin: float, *,
    timeout_s: float = 600, use_cache: bool = True,
) -> Outcome:
    """Compiles the train step of `shape` for `target` and judges it against the budget."""
    shape = shape.resolved()
    candidate = Candidate(shape.q_chunk, shape.kv_chunk, shape.remat)
    kwargs = {"program": "train-step", "options": asdict(shape), "mesh": None}
    path = cache_dir() / f"{_cache_key('train-step', kwargs, target, devices)}.json"
    if use_cache and path.exists():
        outcome = Outcome.from_dict(json.loads(path.read_text()))
        outcome.cached = True
    else:
        result = compile_in_worker(CompileRequest("hloscope._lower:lower", kwargs, target, devices, dump=False, timeout_s=timeout_s))
        warnings = [line.strip()[:200] for line in (result.log or "").splitlines() if _REMAT_WARNING.match(line)]
        outcome = Outcome(candidate, result.status, result.error, remat_warnings=warnings[:5], compile_s=result.compile_s)
        if result.ok:
            memory = result.memory or {}
            outcome.figures = {k: int(memory[k]) for k in ("xla_total", "temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes") if k in memory}
        if result.status in ("ok", "oom"):  # a deterministic outcome; errors and crashes are retried
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(outcome.to_dict()))
    if outcome.status == "ok":
        total = outcome.figures["xla_total"]
        usable = None if budget is None else int(budget * (1 - margin))
        outcome.fits = usable is None or total <= usable
        outcome.headroom_bytes = None if usable is None else usable - total
        outcome.predicted_s = predicted_seconds(shape.config(), shape.seq, shape.mesh_sizes(devices), get_target(target))
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
    base: ModelStepShape, target: str, devices: int, cands: list[Candidate], *, budget: int | None,
    margin: float = DEFAULT_MARGIN, jobs: int = 1, timeout_s: float = 600, use_cache: bool = True,
    on_done: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Evaluates every candidate (in `jobs` parallel workers); returns outcomes in input order."""

    def one(candidate: Candidate) -> Outcome:
        shape = ModelStepShape(**{**asdict(base), "q_chunk": candidate.q_chunk, "kv_chunk": candidate.kv_chunk, "remat": candidate.remat})
        outcome = evaluate(shape, target, devices, budget, margin, timeout_s=timeout_s, use_cache=use_cache)
        if on_done:
            on_done(outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, cands))


def longest_fitting(
    base: ModelStepShape, target: str, devices: int, cands: list[Candidate], *, budget: int,
    margin: float, step: int, upper: int, jobs: int = 1, timeout_s: float = 600, use_cache: bool = True,
    on_probe: Callable[[int, Outcome | None], None] | None = None,
) -> tuple[int | None, Outcome | None]:
    """Binary-searches the longest multiple of `step` in [step, upper] at which some candidate fits.

    Memory grows with length, so fitting is monotone. Returns (length, its chosen outcome).
    """
    best: tuple[int | None, Outcome | None] = (None, None)
    lo, hi = 1, upper // step
    while lo <= hi:
        mid = (lo + hi) // 2
        seq = mid * step
        local = seq // ModelStepShape(**asdict(base)).mesh_sizes(devices)["sp"]
        usable = [c for c in cands if local % c.q_chunk == 0 and local % c.kv_chunk == 0]
        outcomes = run_search(ModelStepShape(**{**asdict(base), "seq": seq}), target, devices, usable,
                              budget=budget, margin=margin, jobs=jobs, timeout_s=timeout_s, use_cache=use_cache)
        chosen = choose(outcomes)
        if on_probe:
            on_probe(seq, chosen)
        if chosen is not None:
            best, lo = (seq, chosen), mid + 1
        else:
            hi = mid - 1
    return best
