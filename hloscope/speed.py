"""A documented model of one training step's time, to rank candidates that fit.

XLA:GPU compiled deviceless reports no cost analysis, so hloscope predicts instead:

    time = (matmul FLOPs x remat factor + attention FLOPs of the busiest device) / (peak x 0.5)
           + blocks x 5 us

* matmul FLOPs: 6 x matmul parameters x tokens per device (forward 2, backward 4); a remat
  policy that recomputes the matmuls (RECOMPUTED) multiplies them by 8/6.
* attention: 4 x q_chunk x kv_chunk x q_heads x head_dim per computed (Q, KV) block, forward,
  recomputed forward where the policy does not keep attention's output, and 2.5x for the
  backward, for every layer. Blocks hidden by the causal mask are skipped, but a block that straddles the diagonal is computed
  whole, so larger chunks waste more. The busiest device of a contiguous ring (the last) sees
  sp - 1 whole shards plus its own diagonal shard.
* 0.5 is the fraction of peak a good step sustains (MEASUREMENTS.md: 42-44% MFU on H100);
  5 us per block is the loop, slicing and launch overhead that makes tiny chunks slow.

Only the ranking matters; docs/search.md states the model and its limits.
"""

from __future__ import annotations

from reftrain.config import ModelConfig
from reftrain.flops import matmul_parameters, peak_flops_of_kind

# Per remat policy (reftrain.remat): does the backward run the matmuls' forward again, and
# attention's? Rounded: save_attention still skips the o and down projections' forward.
RECOMPUTED = {
    "full": (True, True),
    "offload_layer_inputs": (True, True),
    "save_attention": (True, False),
    "save_qkv_attention": (True, False),
    "save_dots": (False, True),  # attention is a cuDNN call or loops, not a dot
    "save_dots_attention": (False, False),
    "none": (False, False),
}
CPU_PEAK_FLOPS = 1e11  # targets without a datasheet peak (reftrain/flops.py has the GPUs')
SUSTAINED = 0.5
BLOCK_OVERHEAD_S = 5e-6


def _diagonal_blocks(length: int, q_chunk: int, kv_chunk: int) -> int:
    """Computed blocks of one shard attending to itself under the causal mask."""
    return sum(((i + 1) * q_chunk - 1) // kv_chunk + 1 for i in range(length // q_chunk))


def predicted_seconds(config: ModelConfig, seq: int, mesh: dict[str, int], target) -> float:
    """Predicted seconds of one optimizer step (one sequence of `seq` tokens per batch row)."""
    sp = mesh["sp"]
    devices = sp * mesh["dp"] * mesh["fsdp"] * mesh["tp"]
    local = seq // sp
    c = config
    matmul_params = matmul_parameters(c)  # reftrain's one FLOPs formula (reftrain/flops.py)
    matmuls_again, attention_again = RECOMPUTED[c.remat_policy]
    matmul_flops = 6 * matmul_params * seq / devices * (8 / 6 if matmuls_again else 1.0)
    blocks = (sp - 1) * (local // c.q_chunk) * (local // c.kv_chunk) + _diagonal_blocks(local, c.q_chunk, c.kv_chunk)
    passes = 1 + (1 if attention_again else 0) + 2.5
    heads_here = c.num_q_heads / mesh["tp"]
    attention_flops = blocks * 4 * c.q_chunk * c.kv_chunk * heads_here * c.head_dim * passes * c.num_layers
    peak = peak_flops_of_kind(target.device_kind) or CPU_PEAK_FLOPS
    return (matmul_flops + attention_flops) / (peak * SUSTAINED) + blocks * c.num_layers * BLOCK_OVERHEAD_S
