"""Synthetic long-context QA for phase 4 (SFT): real evidence at a controlled depth in long text.

One sample of `length` tokens is laid out as

    [bos] haystack .. distractor evidence .. haystack .. EVIDENCE .. haystack .. distractor ..
    "\\n\\nQuestion: {question}\\nAnswer:" {answer} [eos]

The context is everything between bos and the question. The evidence block starts at context
token `round(depth * (context_len - evidence_len))`, so depth 0 puts it first and depth 1 last.
Distractors are other QA pairs' evidence (never one that could change the answer, see
`compatible`), at random places that do not overlap it; the haystack is real text (by default
the books corpus) cut at token boundaries. The loss mask is 1 exactly where the target is an
answer token. Sample i of a run is drawn from `default_rng([seed, i])` alone, so the QA stream
is stateless: its resume state is just the step.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from reftrain.data._cache import DataError, check_host_split, check_same_iterator
from reftrain.data._corpus import Corpus
from reftrain.data._qa_pairs import KNOWN_QA_KINDS, QA_KINDS, QAPair, compatible, draw_pair
from reftrain.data._tokenizer import Tokenizer, load_tokenizer

QA_STATE_FORMAT = "reftrain.data/qa-v1"


@dataclass(frozen=True)
class QASample:
    """One synthetic sample. tokens int32 `[length]`; loss_mask float32 `[length]`, where
    loss_mask[t] is 1 when tokens[t + 1] is an answer token. Spans are `[start, stop)` token
    indices into `tokens`; depth is in [0, 1]."""

    tokens: np.ndarray
    loss_mask: np.ndarray
    question: str
    answer: str
    evidence: str
    kind: str
    depth: float
    length: int
    evidence_span: tuple[int, int]
    answer_span: tuple[int, int]
    distractors: int

    def metadata(self) -> dict:
        """Returns the JSON-serialisable record of the sample (everything but the arrays)."""
        return {"kind": self.kind, "question": self.question, "answer": self.answer,
                "depth": self.depth, "length": self.length, "evidence_span": list(self.evidence_span),
                "answer_span": list(self.answer_span), "distractors": self.distractors}


_CLEAN_CACHE: dict[int, np.ndarray] = {}


def _haystack(corpus: Corpus, n: int, rng: np.random.Generator, drop: tuple[int, ...]) -> np.ndarray:
    """Returns int32 `[n]`: a run of corpus tokens (bos/eos removed) from a random start, wrapping."""
    key = id(corpus.tokens)
    if key not in _CLEAN_CACHE:
        tokens = np.asarray(corpus.tokens)
        _CLEAN_CACHE[key] = tokens[~np.isin(tokens, drop)]
    clean = _CLEAN_CACHE[key]
    start = int(rng.integers(len(clean)))
    return np.take(clean, np.arange(start, start + n), mode="wrap").astype(np.int32)


def _free_slot(taken: list[tuple[int, int]], size: int, limit: int, rng) -> int | None:
    """Returns a random start s with [s, s + size) inside [0, limit) overlapping nothing taken."""
    for _ in range(20):
        s = int(rng.integers(0, limit - size + 1))
        if all(s + size <= a or s >= b for a, b in taken):
            return s
    return None


def make_qa_sample(tokenizer: Tokenizer, haystack: Corpus, *, length: int, seed: int | list[int],
                   depth: float | None = None, kind: str | None = None,
                   n_distractors: int = 3, pair: QAPair | None = None) -> QASample:
    """Returns one sample of exactly `length` tokens (see the module docstring).

    depth None draws it uniformly; kind None draws one of QA_KINDS; `pair` fixes the target.
    Raises DataError when `length` cannot hold the evidence, question and answer.
    """
    rng = np.random.default_rng(seed)
    kind = kind or QA_KINDS[int(rng.integers(len(QA_KINDS)))]
    if kind not in KNOWN_QA_KINDS:
        raise DataError(f"unknown QA kind {kind!r}; known: {KNOWN_QA_KINDS}")
    target = pair or draw_pair(rng, kind)
    depth = float(rng.random()) if depth is None else float(depth)
    if not 0.0 <= depth <= 1.0:
        raise DataError(f"depth must be in [0, 1], got {depth}")
    evidence = tokenizer.encode(f"\n{target.evidence}\n")
    tail_question = tokenizer.encode(f"\n\nQuestion: {target.question}\nAnswer:")
    answer = tokenizer.encode(target.answer)
    context_len = length - 1 - len(tail_question) - len(answer) - 1
    if context_len < len(evidence):
        raise DataError(f"length {length} is too short for this sample (needs at least "
                        f"{length - context_len + len(evidence)} tokens)")
    ev_start = round(depth * (context_len - len(evidence)))
    blocks = [(ev_start, evidence)]
    taken = [(ev_start, ev_start + len(evidence))]
    for _ in range(n_distractors):
        # A passkey's distractors are other names' codes (the look-alikes retrieval must skip).
        other = draw_pair(rng, "passkey" if kind == "passkey" else QA_KINDS[int(rng.integers(len(QA_KINDS)))])
        if not compatible(target, other):
            continue
        ids = tokenizer.encode(f"\n{other.evidence}\n")
        slot = _free_slot(taken, len(ids), context_len, rng) if len(ids) <= context_len else None
        if slot is not None:
            blocks.append((slot, ids))
            taken.append((slot, slot + len(ids)))
    blocks.sort(key=lambda b: b[0])
    filler_total = context_len - sum(len(ids) for _, ids in blocks)
    filler = _haystack(haystack, filler_total, rng, (tokenizer.bos_id, tokenizer.eos_id))
    parts, used, cursor = [np.array([tokenizer.bos_id], np.int32)], 0, 0
    for start, ids in blocks:
        gap = start - cursor
        parts += [filler[used : used + gap], ids]
        used, cursor = used + gap, start + len(ids)
    parts += [filler[used:], tail_question, answer, np.array([tokenizer.eos_id], np.int32)]
    tokens = np.concatenate(parts).astype(np.int32)
    answer_start = length - 1 - len(answer)
    loss_mask = np.zeros(length, np.float32)
    loss_mask[answer_start - 1 : length - 2] = 1.0
    assert len(tokens) == length, (len(tokens), length)
    return QASample(tokens, loss_mask, target.question, target.answer, target.evidence, target.kind,
                    depth, length, (1 + ev_start, 1 + ev_start + len(evidence)),
                    (answer_start, length - 1), len(blocks) - 1)


class QABatchIterator(Iterator[dict[str, np.ndarray]]):
    """Yields this host's rows of each global QA batch, dicts of `[batch_size / host_count,
    seq_len]` arrays like the pre-training batches; `samples` holds the last rows' metadata."""

    def __init__(self, tokenizer: Tokenizer, haystack: Corpus, *, batch_size: int, seq_len: int,
                 seed: int = 0, host_index: int = 0, host_count: int = 1,
                 min_length: int | None = None, kinds: tuple[str, ...] = QA_KINDS,
                 n_distractors: int = 3):
        check_host_split(batch_size, host_index, host_count)
        if min_length is not None and not 0 < min_length <= seq_len:
            raise DataError(f"min_length {min_length} must be in [1, seq_len={seq_len}]")
        unknown = set(kinds) - set(KNOWN_QA_KINDS)
        if not kinds or unknown:
            raise DataError(f"QA kinds {sorted(unknown) or '(none)'} not in {KNOWN_QA_KINDS}")
        self.tokenizer, self.haystack = tokenizer, haystack
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.host_index, self.host_count = host_index, host_count
        self.min_length, self.kinds, self.n_distractors = min_length, tuple(kinds), n_distractors
        self.step = 0
        self.samples: list[dict] = []

    def get_state(self) -> dict:
        return {"format": QA_STATE_FORMAT, "seed": self.seed, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "step": self.step}

    def set_state(self, state: dict) -> None:
        check_same_iterator("QA iterator", state, self.get_state())
        self.step = int(state["step"])

    def sample(self, index: int) -> QASample:
        """Returns sample `index` of the run (a pure function of seed and index)."""
        rng = np.random.default_rng([self.seed, index])
        length = self.seq_len if self.min_length is None else int(rng.integers(self.min_length, self.seq_len + 1))
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        return make_qa_sample(self.tokenizer, self.haystack, length=length, kind=kind,
                              seed=[self.seed, index, 1], n_distractors=self.n_distractors)

    def __next__(self) -> dict[str, np.ndarray]:
        per_host = self.batch_size // self.host_count
        first = self.step * self.batch_size + self.host_index * per_host
        shape = (per_host, self.seq_len)
        batch = {k: np.zeros(shape, np.int32) for k in ("tokens", "targets", "segment_ids", "positions")}
        batch["loss_mask"] = np.zeros(shape, np.float32)
        self.samples = []
        for row in range(per_host):
            s = self.sample(first + row)
            n = s.length
            batch["tokens"][row, :n] = s.tokens
            batch["targets"][row, : n - 1] = s.tokens[1:]
            batch["segment_ids"][row, :n] = 1
            batch["positions"][row, :n] = np.arange(n)
            batch["loss_mask"][row, :n] = s.loss_mask
            self.samples.append(s.metadata())
        self.step += 1
        return batch


def make_qa_batches(*, batch_size: int, seq_len: int, seed: int = 0, host_index: int = 0,
                    host_count: int = 1, tokenizer: Tokenizer | None = None,
                    haystack: Corpus | None = None, min_length: int | None = None,
                    kinds: tuple[str, ...] = QA_KINDS, n_distractors: int = 3) -> QABatchIterator:
    """Returns the endless, resumable SFT iterator (haystack defaults to the built-in books)."""
    tokenizer = tokenizer or load_tokenizer()
    if haystack is None:
        from reftrain.data._builtin import builtin_source
        from reftrain.data._corpus import tokenized_source

        haystack = tokenized_source(builtin_source("builtin:books"), tokenizer)
    return QABatchIterator(tokenizer, haystack, batch_size=batch_size, seq_len=seq_len, seed=seed,
                           host_index=host_index, host_count=host_count, min_length=min_length,
                           kinds=kinds, n_distractors=n_distractors)
