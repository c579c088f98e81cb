"""A NIAH probe cheap enough to run while training: one forward pass, answers teacher-forced.

    probe = NeedleProbe(tokenizer, length=2048, trials=16)   # prompts built once, held-out haystack
    accuracy = probe(config, params, mesh)                   # fraction of needles retrieved

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
from jax.sharding import Mesh

from reftrain.config import ModelConfig
from reftrain.data import Tokenizer
from reftrain.eval._haystack import Haystack, load_haystack
from reftrain.eval._needle import build_sample, draw_needles
from reftrain.model import hidden_states, lm_head_kernel


def _digit_continuations(tokenizer: Tokenizer) -> np.ndarray:
    """bool `[vocab]`: pieces that would extend a run of digits (they start with a digit)."""
    return np.array([tokenizer.piece(i)[:1].isdigit() for i in range(tokenizer.vocab_size)])


@functools.lru_cache(maxsize=8)
def _scorer(config: ModelConfig, mesh: Mesh | None):
    """jit(params, tokens `[T, L]`, first, count) -> argmax `[T, A]` at the answer positions."""

    def argmax_at(params, tokens, where):
        batch, length = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        segment_ids = jnp.ones((batch, length), jnp.int32)
        hidden = hidden_states(config, params, tokens, positions=positions, segment_ids=segment_ids, mesh=mesh)
        picked = jnp.take_along_axis(hidden, where[:, :, None], axis=1)  # [T, A, D]
        kernel = lm_head_kernel(config, params)
        logits = jnp.einsum("bad,dv->bav", picked, kernel.astype(picked.dtype), preferred_element_type=jnp.float32)
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return jax.jit(argmax_at)


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
        predicted = np.asarray(jax.device_get(_scorer(config, mesh)(params, jnp.asarray(self.tokens),
                                                                    jnp.asarray(self.where))))
        correct = 0
        for row, answer in zip(predicted, self.answers):
            n = len(answer)
            correct += bool(np.array_equal(row[:n], answer) and not self.continues[row[n]])
        return correct / self.trials
