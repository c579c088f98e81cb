"""The train-step search's candidate space and plan: what `hloscope search` tries for reftrain's
step (remat policy, cuDNN's document block, the tp/sp split and the ring's layout; Q/KV chunks
only where our XLA kernel runs attention), how fast each is predicted to be
(hloscope.programs.train_step_speed), which need at least another's memory, and the plan file
written from the chosen one. hloscope.search drives it through its `CandidateSpace` interface.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hloscope.programs.model_step import ModelStepShape
from hloscope.programs.train_step_speed import equal_documents, predicted_seconds
from hloscope.targets import Target
from hloscope.versions import toolchain_versions
from reftrain.attention import resolve_kernel
from reftrain.execution import REMAT_POLICIES, Execution
from reftrain.plan import Plan, write_plan

CHUNK_OPTIONS = (512, 1024, 2048, 4096, 8192)
# Full remat; save_attention, which skips attention's recompute for 8 KiB a token and layer; and
# save_dots_attention, which skips all but elementwise work (the fastest on an H200:
# analyses/results/speed_vs_anchor.md). --remat may name any of REMAT_POLICIES.
REMAT_OPTIONS = ("full", "save_attention", "save_dots_attention")
# reftrain's document block and one call.
DOCUMENT_BLOCKS = (Execution.document_block, 0)
_SEARCHED = ("q_chunk", "kv_chunk", "remat_policy", "document_block", "sequence_layout")


@dataclass(frozen=True)
class Candidate:
    """The execution settings a search varies (the rest are the preset's) and the tp split."""

    settings: tuple[tuple[str, Any], ...]
    tp: int = 1

    @classmethod
    def of(cls, tp: int = 1, **settings) -> Candidate:
        unknown = set(settings) - set(_SEARCHED)
        if unknown:
            raise ValueError(f"a train-step candidate varies {', '.join(_SEARCHED)}, not {sorted(unknown)}")
        return cls(tuple(sorted(settings.items())), tp)

    def __getattr__(self, name: str):
        if name in _SEARCHED:  # c.q_chunk, c.remat_policy, ...
            return dict(object.__getattribute__(self, "settings"))[name]
        raise AttributeError(f"'Candidate' object has no attribute {name!r}")

    def columns(self) -> dict[str, str]:
        """The search table's cells for this candidate."""
        return {"q": str(self.q_chunk), "kv": str(self.kv_chunk), "remat": self.remat_policy,
                "block": str(self.document_block), "tp": str(self.tp), "layout": self.sequence_layout}


def candidates(local_by_tp: dict[int, int], remats: tuple[str, ...], q_options=CHUNK_OPTIONS, kv_options=CHUNK_OPTIONS, *,
               blocks: tuple[int, ...] = (Execution.document_block,), layouts: tuple[str, ...] = ("contiguous",),
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
        # Under cuDNN one pair stands for all: reftrain's default where it divides (the chunks
        # then set only the --max-seq step, sp x the larger), else the largest.
        default = (Execution.q_chunk, Execution.kv_chunk)
        for q, kv in ([default] if default in pairs else pairs[-1:]) if cudnn else pairs:
            out += [Candidate.of(tp, q_chunk=q, kv_chunk=kv, remat_policy=remat, document_block=block,
                                 sequence_layout=layout)
                    for remat in remats for block in usable_blocks for layout in layouts]
    return out


def code_fingerprint() -> str:
    """Hash of the code a train-step program is built from: reftrain and hloscope's programs."""
    import reftrain

    digest = hashlib.sha256()
    for package in (Path(reftrain.__file__).parent, Path(__file__).parent):
        for path in sorted(package.rglob("*.py")):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class TrainStepSpace:
    """`hloscope search`'s candidates for reftrain's train step of `base` on `devices` x `target`,
    ranked with `documents` equal documents per row (0: one)."""

    program = "train-step"

    def __init__(self, base: ModelStepShape, target: Target, devices: int, cands: list[Candidate], documents: int = 0):
        self.base, self.target, self.devices, self.documents = base, target, devices, documents
        self.cands = list(cands)
        self._predicted: dict[Candidate, float] = {}

    def at_length(self, seq: int) -> TrainStepSpace:
        """This space at `seq` tokens, with the candidates whose chunks divide its local length."""
        base = dataclasses.replace(self.base, seq=seq)
        usable = [c for c in self.cands if (seq // self.mesh(c)["sp"]) % c.q_chunk == 0
                  and (seq // self.mesh(c)["sp"]) % c.kv_chunk == 0]
        return TrainStepSpace(base, self.target, self.devices, usable, self.documents)

    def candidates(self) -> list[Candidate]:
        return list(self.cands)

    def only(self, c: Candidate) -> TrainStepSpace:
        return TrainStepSpace(self.base, self.target, self.devices, [c], self.documents)

    def shape(self, c: Candidate) -> ModelStepShape:
        return dataclasses.replace(self.base, tp=c.tp).with_execution(**dict(c.settings))

    def mesh(self, c: Candidate) -> dict[str, int]:
        return self.shape(c).mesh_sizes(self.devices)

    def options(self, c: Candidate) -> dict[str, Any]:
        return asdict(self.shape(c))

    def config(self, c: Candidate):
        return self.shape(c).config(self.devices, self.target.platform)

    def predicted_seconds(self, c: Candidate) -> float:
        if c not in self._predicted:
            seq = self.base.seq
            self._predicted[c] = predicted_seconds(self.config(c), seq, self.mesh(c), self.target,
                                                   documents=equal_documents(seq, self.documents))
        return self._predicted[c]

    def needs_at_least(self, c: Candidate, than: Candidate) -> bool:
        """Same mesh, layout and chunks, a remat policy that keeps at least as much
        (reftrain.execution.REMAT's order) and a document block at least as large (0, one call,
        the largest)."""
        block = lambda b: b or float("inf")
        return ((c.tp, c.sequence_layout, c.q_chunk, c.kv_chunk) == (than.tp, than.sequence_layout, than.q_chunk, than.kv_chunk)
                and REMAT_POLICIES.index(c.remat_policy) >= REMAT_POLICIES.index(than.remat_policy)
                and block(c.document_block) >= block(than.document_block))

    @staticmethod
    def order(c: Candidate) -> tuple:
        """Ties in predicted time (no documents to rank blocks by): a block before one whole-shard
        call (less memory), and keeping on the device before offloading (its copies are not priced)."""
        return c.document_block == 0, c.remat_policy == "offload_layer_inputs"

    def fingerprint(self) -> str:
        return code_fingerprint()

    def lightest(self, c: Candidate, remats: tuple[str, ...], blocks: tuple[int, ...]) -> Candidate:
        """`c` with the remat policy and document block of least memory among those searched:
        the one that reaches furthest in length (the --max-seq search)."""
        settings = dict(c.settings) | {"remat_policy": min(remats, key=REMAT_POLICIES.index),
                                       "document_block": min((b for b in blocks if b), default=0)}
        return Candidate.of(c.tp, **settings)

    def plan(self, outcome, seq: int, target: dict[str, Any], alternatives: list[dict]) -> Plan:
        """The plan of `outcome`'s candidate at `seq` tokens: the execution of the very step that
        was compiled, and what was predicted."""
        at = self.at_length(seq) if seq != self.base.seq else self
        c, versions = outcome.candidate, toolchain_versions()
        return Plan(
            model=self.base.model, seq_len=seq, mesh=at.mesh(c), execution=at.config(c).execution.to_dict(),
            layers=self.base.layers, target=target,
            predicted={"xla_total": outcome.figures["xla_total"], "host_total": outcome.figures.get("host_total"),
                       "headroom_bytes": outcome.headroom_bytes, "step_seconds": outcome.predicted_s,
                       "documents": self.documents, "alternatives": alternatives},
            versions={"jax": versions.get("jax"), "jaxlib": versions.get("jaxlib")}, source="hloscope search",
        )

    def alternatives(self, seq: int, outcome, fitting: list) -> list[dict]:
        """The candidates that fit with less memory than the plan's (shorter lengths, lighter
        remat), most memory first: where reftrain, out of memory on a smaller card, finds the
        next plan down."""
        found = {}
        for at, o in fitting:
            if o.figures["xla_total"] < outcome.figures["xla_total"]:
                execution = self.at_length(at).config(o.candidate).execution.to_dict()
                found[(at, tuple(sorted(execution.items())))] = {
                    "seq_len": at, "execution": execution, "xla_total": o.figures["xla_total"]}
        return sorted(found.values(), key=lambda a: -a["xla_total"])[:8]

    def write_plan(self, outcome, seq: int, target: dict[str, Any], fitting: list, path: Path) -> None:
        write_plan(self.plan(outcome, seq, target, self.alternatives(seq, outcome, fitting)), path)


def uses_cudnn(kernel: str, platform: str) -> bool:
    """Whether reftrain's attention runs cuDNN for `kernel` on `platform` (then the chunks do not
    change the step and the document block does)."""
    return resolve_kernel(kernel, platform) == "cudnn"


def _ints(text: str, flag: str, smallest: int = 1) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated integers") from None
    if not values or min(values) < smallest:
        raise ValueError(f"{flag} {text!r}: expected integers >= {smallest}")
    return values


def _names(text: str, flag: str, noun: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values or not set(values) <= set(allowed):
        raise ValueError(f"{flag} {text!r}: expected comma-separated {noun} of {', '.join(allowed)}")
    return values


def _mesh(text: str) -> dict[str, int]:
    sizes = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in ("dp", "fsdp", "tp") or not value.isdigit() or int(value) < 1:
            raise ValueError(f"--mesh {text!r}: expected dp=N,fsdp=N,tp=N (sp takes the rest)")
        sizes[key] = int(value)
    return sizes


@dataclass(frozen=True)
class Searched:
    """What `hloscope search`'s flags ask: the space, and the remat policies and document
    blocks it spans (the --max-seq search takes the lightest of them)."""

    space: TrainStepSpace
    remats: tuple[str, ...]
    blocks: tuple[int, ...]


def space_from_flags(args, target: Target) -> Searched:
    """The train-step space of `hloscope search`'s parsed flags on `target` (resolved once, by the
    caller); ValueError names a bad flag."""
    from reftrain.execution import SEQUENCE_LAYOUTS

    fixed = _mesh(args.mesh)
    tps = (fixed.pop("tp"),) if "tp" in fixed else _ints(args.tp, "--tp")
    if args.layers is not None and args.layers < 1:
        raise ValueError(f"--layers must be positive, got {args.layers}")
    if args.documents < 0:
        raise ValueError(f"--documents must be >= 0, got {args.documents}")
    base = ModelStepShape(model=args.model, seq=args.seq, layers=args.layers, phase=args.phase, **fixed)
    base = base.with_execution(attention_kernel=args.kernel)
    local_by_tp = {}
    for tp in tps:
        sizes = dataclasses.replace(base, tp=tp).mesh_sizes(args.devices)
        if sizes["sp"] < 1 or args.seq % sizes["sp"]:
            raise ValueError(f"--tp {tp}: the mesh {sizes} does not split --seq {args.seq} over --devices {args.devices}")
        local_by_tp[tp] = args.seq // sizes["sp"]
    layouts = (_names(args.layouts, "--layouts", "layouts", SEQUENCE_LAYOUTS) if any(args.seq // n > 1 for n in local_by_tp.values())
               else ("contiguous",))
    cudnn = uses_cudnn(args.kernel, target.platform)
    blocks = (_ints(args.document_blocks or ",".join(map(str, DOCUMENT_BLOCKS)), "--document-blocks", 0) if cudnn
              else (Execution.document_block,))
    remats = _names(args.remat or ",".join(REMAT_OPTIONS), "--remat", "policies", REMAT_POLICIES)
    cands = candidates(local_by_tp, remats, _ints(args.q_chunks, "--q-chunks"), _ints(args.kv_chunks, "--kv-chunks"),
                       blocks=blocks, layouts=layouts, cudnn=cudnn)
    if not cands:
        lengths = ", ".join(f"{n} (= {args.seq} on tp={tp})" for tp, n in local_by_tp.items())
        raise ValueError(f"no chunk pair divides the local length {lengths}")
    space = TrainStepSpace(base, target, args.devices, cands, args.documents)
    for c in {c.tp: c for c in cands}.values():
        space.shape(c).validate(args.devices, target.platform)
    return Searched(space, remats, blocks)
