"""MegaBeam's four training phases as data (paper section 3), per model preset.

A phase is a RoPE setting, a list of stages (sequence length x token or sequence budget) and an
optimiser schedule. `mistral-7b` carries the paper's numbers; `small` adds a base stage (phase 0)
and scales the four phases for one GPU (`SMALL_*` below); `tiny` scales sequence lengths by
1/512 (rounded to a multiple of 128, so sp=8 x 16-token chunks divide them) and token budgets
by the per-phase factor in `TINY_BUDGET_SCALE`, so that each phase runs in minutes on 2 CPU
cores with 8 virtual devices and ring attention over sp=8 (SFT documents are at least 256),
and adds a base stage of its own (`TINY_BASE_LENGTH`).

The paper gives no learning rates; ours are stated assumptions (`docs/training.md`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from reftrain.fields import check_field_types

K = 1024  # "300K" is 307,200 tokens, as the paper's 512K is 524,288.


@dataclass(frozen=True)
class Stage:
    """`sequences` sequences of `seq_len` tokens, `batch_size` per micro-batch, in order."""

    seq_len: int
    sequences: int
    batch_size: int = 1

    def __post_init__(self):
        check_field_types(self, "stage")
        for name in ("seq_len", "sequences", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"stage {name} must be positive, got {getattr(self, name)}")

    @property
    def tokens(self) -> int:
        return self.seq_len * self.sequences


@dataclass(frozen=True)
class Phase:
    """One training phase: RoPE, data and optimiser settings. Lengths in tokens."""

    number: int
    name: str
    rope_theta: float
    rope_dtype: str
    stages: tuple[Stage, ...]
    data: str  # "pretrain" (packed long documents, 70/10/15/5) or "sft" (synthetic long QA)
    learning_rate: float
    warmup_steps: int
    grad_accum: int = 1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    note: str = ""
    paper: dict = field(default_factory=dict, compare=False, hash=False)
    # "pretrain" only: this fraction of batches is dense in-context retrieval (reftrain.data's
    # recall documents: many facts and questions per row, loss on every answer) instead of corpus
    # rows, so that a model trained from scratch learns to retrieve before its context is extended
    # (the base stages). Its curriculum (short documents first) spans the first `recall_warmup`
    # of each stage's recall rows.
    recall_fraction: float = 0.0
    recall_warmup: float = 0.3
    # Every `probe_every` steps (0: never) a NIAH probe at the stage's length on the held-out
    # haystack (reftrain.eval.probe, `probe_trials` needles) goes into metrics.jsonl as
    # `probe_niah`; once `probe_stop` (> 0) is reached twice in a row the phase ends there.
    probe_every: int = 0
    probe_trials: int = 16
    probe_stop: float = 0.0

    def __post_init__(self):
        check_field_types(self, "phase")
        if self.data not in ("pretrain", "sft"):
            raise ValueError(f"phase data must be 'pretrain' or 'sft', got {self.data!r}")
        if not 0.0 <= self.recall_fraction <= 1.0 or (self.data == "sft" and self.recall_fraction):
            raise ValueError(f"phase recall_fraction must be in [0, 1], and 0 for sft data; got {self.recall_fraction}")
        for name in ("recall_warmup", "probe_stop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"phase {name} must be in [0, 1], got {getattr(self, name)}")
        if self.probe_every < 0 or self.probe_trials < 1:
            raise ValueError(f"phase probe_every must be >= 0 and probe_trials >= 1, got {self.probe_every}, "
                             f"{self.probe_trials}")
        if not self.stages:
            raise ValueError("phase stages must not be empty")
        for name in ("warmup_steps", "weight_decay", "grad_clip", "learning_rate"):
            if getattr(self, name) < 0:
                raise ValueError(f"phase {name} must be >= 0, got {getattr(self, name)}")
        if self.grad_accum < 1:
            raise ValueError(f"phase grad_accum must be >= 1, got {self.grad_accum}")

    @property
    def tokens(self) -> int:
        return sum(stage.tokens for stage in self.stages)

    def steps(self) -> int:
        """Optimizer steps: each stage's sequences in batches of batch_size x grad_accum."""
        return sum(-(-stage.sequences // (stage.batch_size * self.grad_accum)) for stage in self.stages)

    def replace(self, **changes) -> Phase:
        return dataclasses.replace(self, **changes)

    def capped_at(self, seq_len: int) -> Phase:
        """This phase with every stage longer than `seq_len` run at `seq_len`, in as many more
        sequences as keep its tokens (what a plan searched at a shorter length can run)."""
        stages = tuple(stage if stage.seq_len <= seq_len else
                       Stage(seq_len, -(-stage.tokens // seq_len), stage.batch_size) for stage in self.stages)
        return self.replace(stages=stages)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _by_tokens(seq_len: int, tokens: float) -> Stage:
    return Stage(seq_len, max(1, round(tokens / seq_len)))


_PAPER = {
    1: dict(tokens="1.2B", stages="0.64B as 300K-token and 0.56B as 600K-token sequences", theta=25_000_000),
    2: dict(tokens="0.18B at 600K then 0.26B at 32K-80K", theta=75_000_000, why="depth 0 and 100 NIAH failures"),
    3: dict(stages="1,200 x 80K + 300 x 256K + 30 x 512K", rope="float32 (the bf16 RoPE bug fixed)", theta=75_000_000),
    4: dict(tokens="22M", documents="synthetic 64K-512K", loss="answers only"),
}

MISTRAL_7B: tuple[Phase, ...] = (
    Phase(1, "long-context pretraining", 25e6, "float32", (_by_tokens(300 * K, 0.64e9), _by_tokens(600 * K, 0.56e9)),
          "pretrain", 1e-5, 50, paper=_PAPER[1],
          note="The paper's phases 1-2 ran with bf16 RoPE by accident; set rope_dtype=bfloat16 to reproduce."),
    Phase(2, "theta 75M, then short sequences", 75e6, "float32",
          (_by_tokens(600 * K, 0.18e9), _by_tokens(32 * K, 0.13e9), _by_tokens(80 * K, 0.13e9)),
          "pretrain", 1e-5, 20, paper=_PAPER[2],
          note="0.26B tokens at 32K-80K split evenly between 32K and 80K sequences."),
    Phase(3, "float32 RoPE, balanced lengths", 75e6, "float32",
          (Stage(80 * K, 1200), Stage(256 * K, 300), Stage(512 * K, 30)), "pretrain", 1e-5, 20, paper=_PAPER[3]),
    Phase(4, "long-context SFT", 75e6, "float32",
          (_by_tokens(64 * K, 5.5e6), _by_tokens(128 * K, 5.5e6), _by_tokens(256 * K, 5.5e6), _by_tokens(512 * K, 5.5e6)),
          "sft", 5e-6, 10, paper=_PAPER[4], note="22M tokens spread evenly over 64K, 128K, 256K and 512K documents."),
)

#: Token budget of each tiny phase relative to the paper's, and the length scale. Phase 3 keeps
#: the paper's three lengths in the paper's proportions (12 + 10 + 2 steps); 1/8,000 instead of
#: 1/4,000 (47 steps) brings `--phase 3` on a fresh machine, data build included, from 353 s
#: to 232 s of CPU time at the same load (2 min 19 s wall, 128 s CPU on a quieter host; issue 18:
#: under 5 minutes on 2 cores).
TINY_LENGTH_SCALE = 1 / 512
TINY_BUDGET_SCALE = {1: 1 / 20_000, 2: 1 / 20_000, 3: 1 / 8_000, 4: 1 / 2_000}


def _tiny_length(seq_len: int, shortest: int) -> int:
    return max(shortest, round(seq_len * TINY_LENGTH_SCALE / 128) * 128)


#: The tiny preset's base stage (phase 0): retrieval learned from scratch at 256 tokens on 2 CPU
#: cores (its test: tests/reftrain/test_recipe_learns.py). Phase 1 chains it when it exists.
TINY_BASE_LENGTH = 256


def _tiny_base() -> Phase:
    from reftrain.rope import xu_lower_bound

    return Phase(0, "base: short context, from scratch", float(f"{xu_lower_bound(TINY_BASE_LENGTH):.3g}"), "float32",
                 (Stage(TINY_BASE_LENGTH, 4096, 8),), "pretrain", 3e-3, 20, weight_decay=0.1, recall_fraction=0.75,
                 probe_every=25, probe_stop=0.9,
                 note="Not in the paper: the tiny model's own short-context pretraining, so that retrieval exists "
                      "before its context is extended.")


def _tiny(phase: Phase) -> Phase:
    scale = TINY_BUDGET_SCALE[phase.number]
    stages = []
    shortest = 256 if phase.data == "sft" else 128  # a QA sample needs ~150 tokens besides its haystack
    for stage in phase.stages:
        seq_len = _tiny_length(stage.seq_len, shortest)
        # About 1,024 tokens per micro-batch whatever the length: short stages batch rows.
        stages.append(Stage(seq_len, max(1, round(stage.tokens * scale / seq_len)), max(1, 1024 // seq_len)))
    return phase.replace(stages=tuple(stages), learning_rate=3e-3 if phase.number == 1 else 1e-3, warmup_steps=3)


#: The `small` preset (issue 20: the recipe in miniature on one GPU). Its base stage (phase 0)
#: trains from scratch at SMALL_BASE_LENGTH with the theta Xu et al.'s bound gives that length
#: (section 4.1; `reftrain.rope.xu_lower_bound`), on the corpora with half of the batches
#: synthetic retrieval QA. Phases 1-4 are the paper's with lengths x SMALL_LENGTH_SCALE (the
#: base length over Mistral-7B's native 32K: 300K -> 19K, 512K -> 32K), token budgets x
#: SMALL_BUDGET_SCALE, and theta the bound at the scaled length the paper's theta answers
#: (25M ~ the bound at 256K -> the bound at 16K; 75M ~ 512K -> 32K), float32 RoPE.
SMALL_BASE_LENGTH = 2048
SMALL_LENGTH_SCALE = SMALL_BASE_LENGTH / (32 * K)
# Sized so that the whole recipe fits 25 minutes of one H200 at the speeds its first run measured
# (phase 0 at 566K tokens/s, 16K-39K rows at about 115K; analyses/results/recipe_in_miniature_h200_run1.md).
SMALL_BASE_ROWS = 100_000
SMALL_BUDGET_SCALE = {1: 1 / 40, 2: 1 / 24, 3: 1 / 12, 4: 1 / 8}
SMALL_TOKENS_PER_STEP = 128 * K


def _small_stage(stage: Stage, scale: float) -> Stage:
    seq_len = max(SMALL_BASE_LENGTH, round(stage.seq_len * SMALL_LENGTH_SCALE / 1024) * 1024)
    batch = max(1, SMALL_TOKENS_PER_STEP // seq_len)
    return Stage(seq_len, max(batch, round(stage.tokens * scale / seq_len)), batch)


def _small() -> tuple[Phase, ...]:
    from reftrain.rope import xu_lower_bound

    theta = lambda length: float(f"{xu_lower_bound(length):.3g}")  # the bound, to 3 figures
    base_stage = Stage(SMALL_BASE_LENGTH, SMALL_BASE_ROWS, SMALL_TOKENS_PER_STEP // SMALL_BASE_LENGTH)
    base = Phase(0, "base: short context, from scratch", theta(SMALL_BASE_LENGTH), "float32", (base_stage,),
                 "pretrain", 1e-3, 200, weight_decay=0.1, recall_fraction=0.5, probe_every=50, probe_stop=0.95,
                 note="Not in the paper (MegaBeam starts from Mistral-7B): the small model's own short-context pretraining.")
    extended = []
    for paper in MISTRAL_7B:
        scale = SMALL_BUDGET_SCALE[paper.number]
        extended.append(paper.replace(
            rope_theta=theta((256 * K if paper.number == 1 else 512 * K) * SMALL_LENGTH_SCALE),
            stages=tuple(_small_stage(stage, scale) for stage in paper.stages),
            learning_rate=3e-4 if paper.data == "pretrain" else 1e-4, warmup_steps=20,
            # Our corpora are 9.5M tokens, memorised within the base stage; the paper's 1.2B tokens of
            # real long documents teach reading far back, ours cannot: a fifth of the rows are recall
            # documents at the stage's length (no curriculum: the base stage had it).
            recall_fraction=0.2 if paper.data == "pretrain" else 0.0, recall_warmup=0.0,
            probe_every=40, probe_trials=8))
    return (base, *extended)


PHASES: dict[str, tuple[Phase, ...]] = {"mistral-7b": MISTRAL_7B, "tiny": (_tiny_base(), *(_tiny(p) for p in MISTRAL_7B)),
                                        "small": _small()}


def get_phase(preset: str, number: int) -> Phase:
    """Returns phase `number` of `preset` (1-4; `small` and `tiny` also have a base stage, 0); raises
    KeyError with the choices."""
    if preset not in PHASES:
        raise KeyError(f"no phases for preset {preset!r}; known: {', '.join(sorted(PHASES))}")
    numbers = [phase.number for phase in PHASES[preset]]
    if number not in numbers:
        raise KeyError(f"phase must be {min(numbers)}-{max(numbers)} for preset {preset!r}, got {number}")
    return PHASES[preset][numbers.index(number)]
