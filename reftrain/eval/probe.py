"""Probes cheap enough to run while training: one forward pass, answers teacher-forced.

    probe = NeedleProbe(tokenizer, length=2048, trials=16)   # prompts built once, held-out haystack
    accuracy = probe(config, params, mesh)                   # fraction of needles retrieved
    answer_accuracy(config, params, batch)                   # answers of a batch's rows got exactly

Each trial is a NIAH prompt (`_needle.build_sample`, depths spread evenly over 0-100%) followed
by its answer's tokens, `length` tokens in all, so the program has the stage's own row length.
A trial counts when the argmax after the prompt is the answer's first token ("▁"), after each
answer token the next one, and after the last digit no token that continues the number: exactly
when greedy decoding would produce what `reftrain.eval niah` scores as correct for that
continuation (a model that spells the number otherwise, say "is 1,234,567", is missed here and
would be missed there). One forward over `[trials, length]` replaces `max_new_tokens` decoding
steps, so a probe costs about one training step's forward.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from reftrain.config import ModelConfig
from reftrain.data import Tokenizer
from reftrain.eval._haystack import Haystack, load_haystack
from reftrain.eval._needle import build_sample, draw_needles
from reftrain.model import hidden_states, lm_head_kernel, sequence_order


_DIGIT_BYTES = {f"<0x{ord(d):02X}>" for d in "0123456789"}


def _digit_continuations(tokenizer: Tokenizer) -> np.ndarray:
    """bool `[vocab]`: pieces that would extend a run of digits (they start with a digit, or are
    a digit's byte-fallback piece)."""
    return np.array([(lambda p: p[:1].isdigit() or p in _DIGIT_BYTES)(tokenizer.piece(i))
                     for i in range(tokenizer.vocab_size)])


@functools.lru_cache(maxsize=8)
def _scorer(config: ModelConfig, mesh: Mesh | None):
    # Replicated out, so that every process of a multi-host mesh reads the whole result.
    out = None if mesh is None else NamedSharding(mesh, P())
    """jit(params, tokens, positions, segment_ids `[T, L]`, where `[T, A]`) -> argmax `[T, A]` of
    the next-token logits at the positions `where`."""

    def argmax_at(params, tokens, positions, segment_ids, where):
        hidden = hidden_states(config, params, tokens, positions=positions, segment_ids=segment_ids, mesh=mesh)
        picked = jnp.take_along_axis(hidden, where[:, :, None], axis=1)  # [T, A, D]
        kernel = lm_head_kernel(config, params)
        logits = jnp.einsum("bad,dv->bav", picked, kernel.astype(picked.dtype), preferred_element_type=jnp.float32)
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return jax.jit(argmax_at, out_shardings=out)


class NeedleProbe:
    """`trials` single-needle prompts of `length` tokens (answers included) on `haystack`
    (default: reftrain.eval's held-out haystack), scored by one forward pass."""

    def __init__(self, tokenizer: Tokenizer, *, length: int, trials: int = 16, seed: int = 0,
                 haystack: Haystack | None = None):
        self.length, self.trials = length, trials
        self.haystack = haystack or load_haystack(tokenizer)
        rows, where, answers = [], [], []
        self.continues = _digit_continuations(tokenizer)
        for t in range(trials):
            depth = 100.0 * t / max(1, trials - 1)
            (city, number), = draw_needles(self.haystack, seed=seed, length=length, depth=depth, trials=1)
            answer = tokenizer.encode(number + ".")[:-1]  # "▁" and the digits, as the needle spells them
            sample = build_sample(tokenizer, self.haystack, length=length - len(answer), depth=depth, city=city,
                                  number=number)
            rows.append(np.concatenate([sample.tokens, answer]))
            start = sample.length - 1  # the position whose next token is the answer's first
            where.append(np.arange(start, start + len(answer) + 1))
            answers.append(answer)
        width = max(len(w) for w in where)
        self.tokens = np.stack(rows).astype(np.int32)
        self.where = np.stack([np.pad(w, (0, width - len(w)), mode="edge") for w in where]).astype(np.int32)
        self.answers = answers

    def __call__(self, config: ModelConfig, params, mesh: Mesh | None = None) -> float:
        """Returns the fraction of trials whose answer greedy decoding would give."""
        trials, length = self.tokens.shape
        positions = np.broadcast_to(np.arange(length, dtype=np.int32), (trials, length))
        predicted = _argmax_at(config, params, mesh, self.tokens, positions, np.ones_like(self.tokens), self.where)
        correct = 0
        for row, answer in zip(predicted, self.answers):
            n = len(answer)
            after = int(row[n])  # a piece beyond the tokenizer's (a larger model vocabulary) is no digit
            extends = after < len(self.continues) and self.continues[after]
            correct += bool(np.array_equal(row[:n], answer) and not extends)
        return correct / self.trials


def _argmax_at(config, params, mesh, tokens, positions, segment_ids, where) -> np.ndarray:
    order = sequence_order(config, mesh, np.shape(tokens)[1])
    if order is not None:  # hidden_states come in the model's (zigzag) order: where in that order
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        where = inverse[np.asarray(where)]
    arrays = (jnp.asarray(a, jnp.int32) for a in (tokens, positions, segment_ids, where))
    return np.asarray(jax.device_get(_scorer(config, mesh)(params, *arrays)))


def answer_spans(loss_mask: np.ndarray) -> list[tuple[int, int, int]]:
    """(row, start, stop) of every maximal run of loss-bearing positions of `[B, L]` loss_mask:
    in a recall row (reftrain.data's recall documents) each run is one answer."""
    spans = []
    for row, mask in enumerate(np.asarray(loss_mask) > 0):
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
        spans += [(row, int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]
    return spans


def answer_accuracy(config: ModelConfig, params, batch: dict, mesh: Mesh | None = None) -> float:
    """Returns the fraction of a batch's answers (runs of loss_mask) whose every target token is the
    argmax: what the model retrieves from context on rows whose answers only the context holds."""
    mask = np.asarray(batch["loss_mask"]) > 0
    spans = answer_spans(mask)
    if not spans:
        raise ValueError("the batch has no loss-bearing positions")
    # Row r's loss-bearing positions in order, padded with its last one: predicted[r, k] is the
    # argmax at where[r, k], so each answer is a run of consecutive entries.
    where = np.zeros((len(mask), max(1, int(mask.sum(axis=1).max()))), np.int32)
    for row, positions in enumerate(np.flatnonzero(m) for m in mask):
        if len(positions):
            where[row] = np.pad(positions, (0, where.shape[1] - len(positions)), mode="edge")
    predicted = _argmax_at(config, params, mesh, batch["tokens"], batch["positions"], batch["segment_ids"], where)
    targets = np.asarray(batch["targets"])
    correct = 0
    for row, a, b in spans:
        first = int(mask[row, :a].sum())
        correct += bool(np.array_equal(predicted[row, first : first + b - a], targets[row, a:b]))
    return correct / len(spans)
