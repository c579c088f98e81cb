"""The tensor map between a Hugging Face MistralForCausalLM and our parameter tree.

torch's Linear stores `weight [out, in]`; our kernels are `[in, ...out]`, so every projection
is a transpose (and a reshape of the head axes). RoPE is the half-split layout on both sides,
so q and k need no permutation. Layer tensors `model.layers.{i}.*` are stacked on our leading
axis L.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from reftrain.config import ModelConfig

Shape = tuple[int, ...]


@dataclass(frozen=True)
class TensorRule:
    """One HF tensor name (with `{i}` for the layer) and the parameter leaf it fills.

    `to_ours` maps an HF array of `hf_shape` to one (layer's) slice of the leaf; `to_hf` is
    its inverse.
    """

    hf_name: str
    path: tuple[str, ...]
    hf_shape: Callable[[ModelConfig], Shape]
    to_ours: Callable[[np.ndarray, ModelConfig], np.ndarray]
    to_hf: Callable[[np.ndarray, ModelConfig], np.ndarray]

    @property
    def layered(self) -> bool:
        return "{i}" in self.hf_name

    @property
    def leaf_name(self) -> str:
        return "/".join(self.path)

    def leaf_shape(self, config: ModelConfig) -> Shape:
        """Returns the shape of our leaf: `[L, ...]` for layer tensors."""
        one = self.to_ours(np.empty(self.hf_shape(config), np.uint8), config).shape
        return (config.num_layers, *one) if self.layered else one


def _same(w: np.ndarray, config: ModelConfig) -> np.ndarray:
    return w


def _transpose(w: np.ndarray, config: ModelConfig) -> np.ndarray:
    return w.T


def _heads_in(heads: Callable[[ModelConfig], int]):
    """[H*Dh, D] (torch out x in) -> kernel [D, H, Dh], and back."""

    def to_ours(w, c):
        return w.T.reshape(c.hidden_size, heads(c), c.head_dim)

    def to_hf(kernel, c):
        return kernel.reshape(c.hidden_size, heads(c) * c.head_dim).T

    return to_ours, to_hf


def _heads_out(w: np.ndarray, c: ModelConfig) -> np.ndarray:
    """o_proj [D, Hq*Dh] -> kernel [Hq, Dh, D]."""
    return w.T.reshape(c.num_q_heads, c.head_dim, c.hidden_size)


def _heads_out_hf(kernel: np.ndarray, c: ModelConfig) -> np.ndarray:
    return kernel.reshape(c.num_q_heads * c.head_dim, c.hidden_size).T


_q = _heads_in(lambda c: c.num_q_heads)
_kv = _heads_in(lambda c: c.num_kv_heads)
_D = lambda c: (c.hidden_size,)  # noqa: E731
_LAYER = "model.layers.{i}."

RULES: tuple[TensorRule, ...] = (
    TensorRule("model.embed_tokens.weight", ("embed", "embedding"), lambda c: (c.vocab_size, c.hidden_size), _same, _same),
    TensorRule(_LAYER + "input_layernorm.weight", ("layers", "attn_norm", "scale"), _D, _same, _same),
    TensorRule(_LAYER + "self_attn.q_proj.weight", ("layers", "attn", "q", "kernel"),
               lambda c: (c.num_q_heads * c.head_dim, c.hidden_size), *_q),
    TensorRule(_LAYER + "self_attn.k_proj.weight", ("layers", "attn", "k", "kernel"),
               lambda c: (c.num_kv_heads * c.head_dim, c.hidden_size), *_kv),
    TensorRule(_LAYER + "self_attn.v_proj.weight", ("layers", "attn", "v", "kernel"),
               lambda c: (c.num_kv_heads * c.head_dim, c.hidden_size), *_kv),
    TensorRule(_LAYER + "self_attn.o_proj.weight", ("layers", "attn", "o", "kernel"),
               lambda c: (c.hidden_size, c.num_q_heads * c.head_dim), _heads_out, _heads_out_hf),
    TensorRule(_LAYER + "post_attention_layernorm.weight", ("layers", "mlp_norm", "scale"), _D, _same, _same),
    TensorRule(_LAYER + "mlp.gate_proj.weight", ("layers", "mlp", "gate", "kernel"),
               lambda c: (c.intermediate_size, c.hidden_size), _transpose, _transpose),
    TensorRule(_LAYER + "mlp.up_proj.weight", ("layers", "mlp", "up", "kernel"),
               lambda c: (c.intermediate_size, c.hidden_size), _transpose, _transpose),
    TensorRule(_LAYER + "mlp.down_proj.weight", ("layers", "mlp", "down", "kernel"),
               lambda c: (c.hidden_size, c.intermediate_size), _transpose, _transpose),
    TensorRule("model.norm.weight", ("final_norm", "scale"), _D, _same, _same),
    TensorRule("lm_head.weight", ("lm_head", "kernel"), lambda c: (c.vocab_size, c.hidden_size), _transpose, _transpose),
)  # fmt: skip


def rules(config: ModelConfig) -> tuple[TensorRule, ...]:
    """Returns the rules that apply to `config` (no lm_head when embeddings are tied)."""
    return tuple(r for r in RULES if not (config.tie_embeddings and r.path[0] == "lm_head"))


def hf_tensors(config: ModelConfig) -> Iterator[tuple[str, TensorRule, int | None]]:
    """Yields (HF name, rule, layer or None) in checkpoint order: embeddings, layer 0..L-1, head."""
    active = rules(config)
    for rule in active:
        if not rule.layered and rule.path[0] == "embed":
            yield rule.hf_name, rule, None
    for layer in range(config.num_layers):
        for rule in active:
            if rule.layered:
                yield rule.hf_name.format(i=layer), rule, layer
    for rule in active:
        if not rule.layered and rule.path[0] != "embed":
            yield rule.hf_name, rule, None


def leaf_at(params, path: tuple[str, ...]):
    """Returns the leaf of nested dict `params` at `path`."""
    for key in path:
        params = params[key]
    return params


def is_ignored(name: str, config: ModelConfig) -> bool:
    """True for tensors a checkpoint may carry that hold no parameters of ours.

    Old exports saved RoPE's `rotary_emb.inv_freq` buffer (recomputed from theta), and some
    tied-embedding checkpoints still store `lm_head.weight` (a copy of the embedding).
    """
    return name.endswith(".rotary_emb.inv_freq") or (config.tie_embeddings and name == "lm_head.weight")
