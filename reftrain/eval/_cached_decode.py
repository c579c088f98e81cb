"""Greedy decoding with a key-value cache: one prefill over the prompt, then one token a step.

The layer is composed from the model's own modules (RMSNorm, the q/k/v/o DenseGeneral
projections, RoPE, MLP) applied to each layer's slice of the stacked parameters, so the
arithmetic is the model's; only attention differs in form. The prefill attends over the prompt
with the model's blockwise attention (cuDNN on a GPU: no `[T, T]` scores at 128K tokens) and
stores every layer's RoPE'd keys and values; each new token then attends to the cache up to its
own position. One device (no mesh): `_decode.greedy_decode` uses the full-forward decoder for
meshes, and tests hold the two to the same tokens.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from reftrain.config import ModelConfig
from reftrain.layers import MLP, RMSNorm, _dtypes, attend
from reftrain.model import lm_head_kernel
from reftrain.rope import apply_rope, rope_tables


def _layer(config: ModelConfig, params, x, cos, sin, cache, start, prefill: bool, segment_ids):
    """One decoder layer over the new tokens x `[B, T, D]` at positions start..start+T-1; returns
    (x, cache) with their keys and values written into cache = (k, v), each `[B, P, Hkv, Dh]`.
    The prefill's tokens attend to each other as in the model (`segment_ids`: 1 for the prompt,
    0 for padding; None when there is none); after it, the one new token attends to the cache
    up to itself."""
    c = config
    norm = {"eps": c.rms_norm_eps, **_dtypes(c)}

    def proj(h, name, heads):
        module = nn.DenseGeneral((heads, c.head_dim), use_bias=False, **_dtypes(c))
        return module.apply({"params": params["attn"][name]}, h)

    h = RMSNorm(**norm).apply({"params": params["attn_norm"]}, x)
    q = apply_rope(proj(h, "q", c.num_q_heads), cos, sin)
    k = apply_rope(proj(h, "k", c.num_kv_heads), cos, sin)
    v = proj(h, "v", c.num_kv_heads)
    cache = tuple(jax.lax.dynamic_update_slice(whole, new.astype(whole.dtype), (0, start, 0, 0))
                  for whole, new in ((cache[0], k), (cache[1], v)))
    if prefill:
        out = attend(c.replace(attention_impl="blockwise"), None, q, k, v, segment_ids)
    else:
        out = _attend_cache(q, *cache, start + x.shape[1])
    o = nn.DenseGeneral(c.hidden_size, axis=(-2, -1), use_bias=False, **_dtypes(c))
    x = x + o.apply({"params": params["attn"]["o"]}, out.astype(x.dtype))
    x = x + MLP(c, None).apply({"params": params["mlp"]}, RMSNorm(**norm).apply({"params": params["mlp_norm"]}, x))
    return x, cache


def _attend_cache(q, keys, values, end):
    """q `[B, 1, Hq, Dh]` against the cache's first `end` keys (GQA: Hq / Hkv queries a key head)."""
    batch, _, q_heads, head_dim = q.shape
    kv_heads = keys.shape[2]
    q = q.reshape(batch, kv_heads, q_heads // kv_heads, head_dim).astype(jnp.float32)
    scores = jnp.einsum("bhgd,bkhd->bhgk", q, keys.astype(jnp.float32)) / jnp.sqrt(jnp.float32(head_dim))
    scores = jnp.where(jnp.arange(keys.shape[1]) < end, scores, -jnp.inf)
    weights = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bhgk,bkhd->bhgd", weights, values.astype(jnp.float32))
    return out.reshape(batch, 1, q_heads, head_dim)


def _logits_and_cache(config: ModelConfig, params, tokens, start, caches, *, prefill: bool, segment_ids=None, last=-1):
    """Runs every layer over tokens `[B, T]` at positions start..; returns (the logits `[B, V]` at
    index `last`, caches)."""
    dtype = jnp.dtype(config.compute_dtype)
    x = jnp.take(params["embed"]["embedding"].astype(dtype), tokens, axis=0)
    positions = start + jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    cos, sin = rope_tables(positions, config)

    def layer(x, scanned):
        layer_params, k, v = scanned
        x, (k, v) = _layer(config, layer_params, x, cos, sin, (k, v), start, prefill, segment_ids)
        return x, (k, v)

    x, caches = jax.lax.scan(layer, x, (params["layers"], *caches))
    norm = RMSNorm(config.rms_norm_eps, dtype, jnp.dtype(config.param_dtype))
    hidden = norm.apply({"params": params["final_norm"]}, x[:, last])
    logits = jnp.einsum("bd,dv->bv", hidden, lm_head_kernel(config, params).astype(hidden.dtype),
                        preferred_element_type=jnp.float32)
    return logits, caches


@functools.lru_cache(maxsize=16)
def cached_decoder(config: ModelConfig, max_new_tokens: int, pad_quantum: int):
    """Returns jit(params, prompts `[B, L]`) -> generated int32 `[B, max_new_tokens]`."""

    def decode(params, prompts):
        batch, prompt_len = prompts.shape
        # The prefill runs on the prompt padded to a multiple of pad_quantum (segment 0: attends to
        # nothing, seen by nothing), so that its attention has good chunk divisors; decoding
        # overwrites the padding's cache entries before anything attends to them.
        padded = -(-prompt_len // pad_quantum) * pad_quantum
        shape = (config.num_layers, batch, max(padded, prompt_len + max_new_tokens), config.num_kv_heads, config.head_dim)
        caches = (jnp.zeros(shape, config.compute_dtype), jnp.zeros(shape, config.compute_dtype))
        tokens = jnp.pad(prompts, ((0, 0), (0, padded - prompt_len)))
        segment_ids = None if padded == prompt_len else jnp.broadcast_to(
            (jnp.arange(padded) < prompt_len).astype(jnp.int32), tokens.shape)  # plain causal when unpadded
        logits, caches = _logits_and_cache(config, params, tokens, 0, caches, prefill=True, segment_ids=segment_ids,
                                           last=prompt_len - 1)
        first = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        generated = jnp.zeros((batch, max_new_tokens), jnp.int32).at[:, 0].set(first)

        def step(i, carry):
            generated, caches = carry
            token = jax.lax.dynamic_slice_in_dim(generated, i - 1, 1, axis=1)
            logits, caches = _logits_and_cache(config, params, token, prompt_len + i - 1, caches, prefill=False)
            generated = jax.lax.dynamic_update_slice(generated, jnp.argmax(logits, -1).astype(jnp.int32)[:, None], (0, i))
            return generated, caches

        generated, _ = jax.lax.fori_loop(1, max_new_tokens, step, (generated, caches))
        return generated

    return jax.jit(decode)
