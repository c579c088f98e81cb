"""Greedy decoding: with a key-value cache on one device (_cached_decode.py), or by repeated full
forwards on a fixed, padded buffer (with a mesh, and as the tests' reference).

Without the cache each new token costs one forward over the whole buffer `[B, P]`: the prompt and the tokens so
far are segment 1, the rest is padding (segment 0, which attends to nothing and is seen by
nothing), and the next token is the argmax of the logits at the last real position. P is the
prompt length plus `max_new_tokens`, rounded up to a multiple of `64 x sp`, so one program per
(batch, length) serves every step and every depth, and ring attention's local length (P / sp)
has good chunk divisors. Slow for long contexts, but simple and exactly the model's forward.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from reftrain.config import ModelConfig
from reftrain.eval._cached_decode import cached_decoder
from reftrain.model import hidden_states, lm_head_kernel

PAD_QUANTUM = 64


def buffer_length(prompt_len: int, max_new_tokens: int, sp: int = 1) -> int:
    """Returns P: prompt_len + max_new_tokens rounded up to a multiple of PAD_QUANTUM * sp."""
    quantum = PAD_QUANTUM * sp
    return -(-(prompt_len + max_new_tokens) // quantum) * quantum


@functools.lru_cache(maxsize=16)
def _decoder(config: ModelConfig, mesh: Mesh | None, max_new_tokens: int):
    """Returns jit(params, tokens `[B, P]`, prompt_len) -> generated int32 `[B, max_new_tokens]`."""

    def decode(params, tokens, prompt_len):
        batch, length = tokens.shape
        index = jnp.arange(length, dtype=jnp.int32)
        positions = jnp.broadcast_to(index, (batch, length))
        kernel = lm_head_kernel(config, params)

        def step(i, tokens):
            end = prompt_len + i  # tokens[:, :end] are real
            segment_ids = jnp.broadcast_to((index < end).astype(jnp.int32), (batch, length))
            hidden = hidden_states(config, params, tokens, positions=positions, segment_ids=segment_ids, mesh=mesh)
            last = jax.lax.dynamic_index_in_dim(hidden, end - 1, axis=1, keepdims=False)  # [B, D]
            logits = jnp.einsum("bd,dv->bv", last, kernel.astype(last.dtype), preferred_element_type=jnp.float32)
            next_token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            return jax.lax.dynamic_update_slice(tokens, next_token[:, None], (0, end))

        tokens = jax.lax.fori_loop(0, max_new_tokens, step, tokens)
        return jax.lax.dynamic_slice_in_dim(tokens, prompt_len, max_new_tokens, axis=1)

    return jax.jit(decode)


def greedy_decode(config: ModelConfig, params, prompts: np.ndarray, *, max_new_tokens: int,
                  mesh: Mesh | None = None, pad_id: int = 0, cache: bool = True) -> np.ndarray:
    """Returns int32 `[B, max_new_tokens]`: the greedy continuation of each prompt.

    prompts: int32 `[B, L]`, all of the same length L. On one device (no mesh, or a mesh of
    one; with `cache`): one prefill and a key-value cache. On a larger mesh the buffer is split
    over its `sp` axis (ring attention when sp > 1) and B over dp x fsdp, and every token runs a
    full forward.
    """
    prompts = np.asarray(prompts, np.int32)
    batch, prompt_len = prompts.shape
    if cache and (mesh is None or mesh.size == 1):
        generated = cached_decoder(config, max_new_tokens, PAD_QUANTUM)(params, jnp.asarray(prompts))
        return np.asarray(jax.device_get(generated))
    sp = mesh.shape["sp"] if mesh is not None else 1
    tokens = np.full((batch, buffer_length(prompt_len, max_new_tokens, sp)), pad_id, np.int32)
    tokens[:, :prompt_len] = prompts
    generated = _decoder(config, mesh, max_new_tokens)(params, jnp.asarray(tokens), jnp.int32(prompt_len))
    return np.asarray(jax.device_get(generated))
