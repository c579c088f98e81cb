"""`hloscope search`: compile reftrain's train step for candidate execution settings (remat policy,
cuDNN's document block, the tp/sp split and the ring's layout; Q/KV chunks only where our XLA
kernel runs attention), keep those that fit the device budget with a safety margin, choose the
fastest predicted.

Candidates are compiled in order of predicted step time (hloscope.speed, fitted to measured
steps) and the search stops at the first round with one that fits: a slower candidate cannot be
chosen, so it is not compiled. Each candidate compiles in its own worker process (a crash or
OOM is recorded, never fatal), several at once where cores allow, and its outcome is cached on
disk by (program, arguments, jax and jaxlib versions, target). docs/search.md gives the margin
and the speed model.
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
from hloscope.binary_search import largest_multiple
from hloscope.programs.model_step import ModelStepShape
from hloscope.speed import equal_documents, predicted_seconds
from hloscope.targets import DEFAULT_MARGIN, get_target
from hloscope.versions import toolchain_versions

CHUNK_OPTIONS = (512, 1024, 2048, 4096, 8192)
_REMAT_WARNING = re.compile(r".*rematerializ.*", re.IGNORECASE)


@dataclass(frozen=True)
class Candidate:
    q_chunk: int
    kv_chunk: int
    remat: str
    document_block: int = 16384
    tp: int = 1
    layout: str = "contiguous"

    def shape(self, base: ModelStepShape) -> ModelStepShape:
        return ModelStepShape(**{**asdict(base), "q_chunk": self.q_chunk, "kv_chunk": self.kv_chunk, "remat": self.remat,
                                 "document_block": self.document_block, "tp": self.tp, "layout": self.layout})


@dataclass
class Outcome:
    """One compiled candidate: status, per-device figures, fit, and predicted step time."""

    candidate: Candidate
    status: str  # ok, error, crashed, oom, timeout; skipped (a faster one fits), pruned (a lighter one did not)
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


def candidates(local_by_tp: dict[int, int], remats: tuple[str, ...], q_options=CHUNK_OPTIONS, kv_options=CHUNK_OPTIONS, *,
               blocks: tuple[int, ...] = (16384,), layouts: tuple[str, ...] = ("contiguous",),
               cudnn: bool = False) -> list[Candidate]:
    """Every (chunks, remat, document block, tp, layout) with both chunks dividing the local length
    (`local_by_tp[tp]`: tokens per device on the mesh with that tp) and kv_chunk >= q_chunk. Where
    cuDNN runs attention the chunks do not change the step (only the first pair is kept) and the
    document block does (elsewhere it is unused: the blocks are kept as given)."""
    out = []
    for tp, local in local_by_tp.items():
        pairs = [(q, kv) for q in q_options for kv in kv_options
                 if q <= local and kv <= local and local % q == 0 and local % kv == 0 and kv >= q]
        # Under cuDNN a block at least the shard's length is one call: keep one of them.
        usable_blocks = sorted({0 if block >= local else block for block in blocks}) if cudnn else blocks
        # Under cuDNN one pair stands for all: the model's default where it divides (the chunks
        # then set only the --max-seq step, sp x the larger), else the largest.
        default = (ModelStepShape.q_chunk, 2 * ModelStepShape.q_chunk)
        for q, kv in ([default] if default in pairs else pairs[-1:]) if cudnn else pairs:
            out += [Candidate(q, kv, remat, block, tp, layout)
                    for remat in remats for block in usable_blocks for layout in layouts]
    return out


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


def predict(shape: ModelStepShape, target: str, devices: int, documents: int = 0) -> float:
    """Predicted step seconds of `shape` with `documents` equal documents per row (0: one)."""
    shape = shape.resolved()
    return predicted_seconds(shape.config(), shape.seq, shape.mesh_sizes(devices), get_target(target),
                             documents=equal_documents(shape.seq, documents))


def evaluate(
    shape: ModelStepShape, target: str, devices: int, budget: int | None, margin: float, *,
    timeout_s: float = 600, use_cache: bool = True, documents: int = 0, host_budget: int | None = None,
) -> Outcome:
    """Compiles the train step of `shape` for `target` and judges it against the budgets."""
    shape = shape.resolved()
    candidate = Candidate(shape.q_chunk, shape.kv_chunk, shape.remat, shape.document_block, shape.tp, shape.layout)
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
            outcome.figures["host_total"] = host_total(memory)
        if result.status in ("ok", "oom"):  # a deterministic outcome; errors and crashes are retried
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(outcome.to_dict()))
    if outcome.status == "ok":
        total = outcome.figures["xla_total"]
        # What the pool holds for the step: 1 - margin of the card (reftrain preallocates that
        # share) less the runtime's own workspaces.
        usable = None if budget is None else int(budget * (1 - margin)) - get_target(target).runtime_overhead_bytes
        outcome.fits = (usable is None or total <= usable) and (
            host_budget is None or outcome.figures.get("host_total", 0) <= host_budget)
        outcome.headroom_bytes = None if usable is None else usable - total
        outcome.predicted_s = predict(shape, target, devices, documents)
    else:
        outcome.fits, outcome.headroom_bytes, outcome.predicted_s = False, None, None
    return outcome


def host_total(memory: dict) -> int:
    """Host memory per device that XLA places (offloaded residuals): argument + output + temp - alias."""
    return sum(int(memory.get(f"host_{k}_size_in_bytes") or 0) for k in ("argument", "output", "temp")) - int(
        memory.get("host_alias_size_in_bytes") or 0)


def choose(outcomes: list[Outcome]) -> Outcome | None:
    """The fastest predicted candidate that fits; ties go to the larger headroom."""
    fitting = [o for o in outcomes if o.fits]
    if not fitting:
        return None
    return min(fitting, key=lambda o: (o.predicted_s, -(o.headroom_bytes or 0)))


def run_search(
    base: ModelStepShape, target: str, devices: int, cands: list[Candidate], *, budget: int | None,
    margin: float = DEFAULT_MARGIN, jobs: int = 1, timeout_s: float = 600, use_cache: bool = True,
    on_done: Callable[[Outcome], None] | None = None, documents: int = 0, host_budget: int | None = None,
    exhaustive: bool = False,
) -> list[Outcome]:
    """Evaluates candidates fastest-predicted first, `jobs` at a time, and stops after the first
    round in which one fits (the rest are `skipped`: slower than one that fits); a candidate that
    needs at least the memory of one that did not fit is `pruned`, not compiled. `exhaustive`
    compiles every candidate. Returns outcomes in input order."""

    def one(candidate: Candidate) -> Outcome:
        outcome = evaluate(candidate.shape(base), target, devices, budget, margin, timeout_s=timeout_s,
                           use_cache=use_cache, documents=documents, host_budget=host_budget)
        if on_done:
            on_done(outcome)
        return outcome

    predicted = {c: predict(c.shape(base), target, devices, documents) for c in cands}
    # On a tie (no documents to rank blocks by), a block before one whole-shard call (less
    # memory), and keeping on the device before offloading (its copies are not priced).
    pending = sorted(cands, key=lambda c: (predicted[c], c.document_block == 0, c.remat == "offload_layer_inputs"))
    outcomes: dict[Candidate, Outcome] = {}
    rounds = max(1, jobs)
    with ThreadPoolExecutor(max_workers=rounds) as pool:
        while pending and (exhaustive or not any(o.fits for o in outcomes.values())):
            batch = []
            while pending and len(batch) < rounds:
                c = pending.pop(0)
                if not exhaustive and any(_needs_at_least(c, o) for o in outcomes.values()):
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


# Device memory of reftrain's remat policies, least first (reftrain.remat: each keeps what the one
# before it keeps, and more); a document block needs more the larger it is, and 0 (one call) most.
MEMORY_ORDER = ("offload_layer_inputs", "full", "save_attention", "save_qkv_attention", "save_dots",
                "save_dots_attention", "none")


def _needs_at_least(c: Candidate, o: Outcome) -> bool:
    """Whether `c` needs at least the device memory of `o`'s candidate, which did not fit it."""
    f = o.candidate
    over = o.status == "oom" or (o.status == "ok" and o.headroom_bytes is not None and o.headroom_bytes < 0)
    block = lambda b: b or float("inf")
    return (over and (c.tp, c.layout, c.q_chunk, c.kv_chunk) == (f.tp, f.layout, f.q_chunk, f.kv_chunk)
            and MEMORY_ORDER.index(c.remat) >= MEMORY_ORDER.index(f.remat)
            and block(c.document_block) >= block(f.document_block))


def longest_fitting(
    base: ModelStepShape, target: str, devices: int, cands: list[Candidate], *, budget: int,
    margin: float, step: int, upper: int, jobs: int = 1, timeout_s: float = 600, use_cache: bool = True,
    on_probe: Callable[[int, Outcome | None], None] | None = None, documents: int = 0, host_budget: int | None = None,
) -> tuple[int | None, Outcome | None]:
    """Binary-searches the longest multiple of `step` in [step, upper] at which some candidate fits.

    Memory grows with length, so fitting is monotone. Returns (length, its chosen outcome).
    """
    def probe(seq: int) -> Outcome | None:
        at_seq = ModelStepShape(**{**asdict(base), "seq": seq})
        local = {c: seq // c.shape(at_seq).mesh_sizes(devices)["sp"] for c in cands}
        usable = [c for c in cands if local[c] % c.q_chunk == 0 and local[c] % c.kv_chunk == 0]
        outcomes = run_search(at_seq, target, devices, usable,
                              budget=budget, margin=margin, jobs=jobs, timeout_s=timeout_s, use_cache=use_cache,
                              documents=documents, host_budget=host_budget)
        chosen = choose(outcomes)
        if on_probe:
            on_probe(seq, chosen)
        return chosen

    return largest_multiple(probe, step=step, upper=upper)
