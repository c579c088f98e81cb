"""Remat (activation checkpointing) policies by name: what a layer keeps for its backward.

The layer names its residuals with `jax.ad_checkpoint.checkpoint_name` (reftrain.layers and
the attention's custom VJP); a policy keeps some of them and recomputes the rest in the
backward. Per layer and token, for Mistral-7B's shapes (bfloat16; attention's statistics
float32):

  name              what                                  bytes per token
  layer_input       the layer's input x                    8 KiB  (D)
  query/key/value   projections after RoPE                 8 + 2 + 2 KiB
  attention_out     attention's output, before o           8 KiB
  attention_lse     its log-sum-exp (float32, per head)    128 B
  mlp_gate/mlp_up   the MLP's two [F] projections          28 + 28 KiB

"full" keeps only what the scan must (the layer inputs) and recomputes the whole forward;
"save_attention" keeps attention's output and statistics, so the backward recomputes the
projections and the MLP but not attention (the most FLOPs at long context, for 8 KiB a token);
"save_qkv_attention" also keeps q, k and v; "save_dots" keeps every matmul output (not
attention, a cuDNN call rather than a dot); "save_dots_attention" both; "offload_layer_inputs"
moves the layer inputs to host memory (XLA copies them back for the backward) and recomputes
the rest; "none" keeps everything.
"""

from __future__ import annotations

from typing import Callable

import jax

from reftrain.execution import REMAT_POLICIES

_cp = jax.checkpoint_policies
_ATTENTION = ("attention_out", "attention_lse")

_BY_NAME: dict[str, Callable | None] = {
    "full": _cp.nothing_saveable,
    "save_attention": _cp.save_only_these_names(*_ATTENTION),
    "save_qkv_attention": _cp.save_only_these_names("query", "key", "value", *_ATTENTION),
    "save_dots": _cp.dots_with_no_batch_dims_saveable,
    "save_dots_attention": _cp.save_from_both_policies(_cp.dots_with_no_batch_dims_saveable,
                                                       _cp.save_only_these_names(*_ATTENTION)),
    "offload_layer_inputs": _cp.save_and_offload_only_these_names(
        names_which_can_be_saved=[], names_which_can_be_offloaded=["layer_input"],
        offload_src="device", offload_dst="pinned_host"),
    "none": None,  # no remat at all
}
# In reftrain.execution.REMAT's order (least device memory first), which names them once.
POLICIES: dict[str, Callable | None] = {name: _BY_NAME[name] for name in REMAT_POLICIES}
assert POLICIES.keys() == _BY_NAME.keys(), "reftrain.execution.REMAT and the jax policies name different policies"


def remat_policy(name: str) -> Callable | None:
    """The jax.checkpoint policy for a config's `remat_policy`; None: do not rematerialise."""
    if name not in POLICIES:
        raise ValueError(f"remat_policy must be one of {', '.join(POLICIES)}, got {name!r}")
    return POLICIES[name]
