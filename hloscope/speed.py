"""A model of one training step's time, fitted to steps measured on an H200, to rank candidates.

XLA:GPU compiled deviceless reports no cost analysis, so hloscope counts the work of the busiest
device and prices it with coefficients fitted to measured steps (`speed_fit.json` beside this
file, written by `analyses/fit_speed_model.py` from `analyses/bench_train.py` rows):

    time = matmul FLOPs / (peak x matmul efficiency) + attention FLOPs / (peak x attention
           efficiency) + attention kernel calls x seconds per call + fixed seconds

* matmul FLOPs: 6 x matmul parameters x tokens per device (forward 2, backward 4), plus 2 x the
  forward matmuls a remat policy runs again in the backward (RECOMPUTED names them: a layer's
  backward needs q, k, v for attention's gradient and h = x + o(attention) for the MLP's
  norm, so full remat recomputes every projection but `down`, whose output only feeds the
  residual).
* attention FLOPs: 4 x query heads x head_dim per attended (query, key) pair forward, the
  forward again where the policy does not keep attention's output, 2.5x the forward for the
  backward (five matmuls to the forward's two). cuDNN skips masked tiles, so the pairs are the
  causal ones, within documents where the row holds documents; the busiest device of a
  contiguous ring sees sp - 1 whole shards and its own diagonal. Our XLA kernel computes whole
  (q_chunk, kv_chunk) blocks and skips only blocks the causal mask hides entirely; each block
  also costs XLA_BLOCK_SECONDS of loop and launch overhead (not fitted: GPUs run cuDNN).
* calls: cuDNN calls per step (ring steps, document groups of `max_documents`, the blocks of
  `document_block`): what makes many small calls slower than one large one (docs/gpu.md).

Efficiencies are fractions of the device's dense bf16 peak, so one fit prices every GPU kind
(an assumption: it was measured on an H200 only). Communication is not modelled: on one
device it is none; on several, ring steps overlap it with compute (docs/search.md).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

from reftrain.config import ModelConfig
from reftrain.flops import peak_flops_of_kind, projection_parameters

# Per remat policy (reftrain.remat): the projections whose forward the backward runs again,
# and whether attention's forward runs again.
_ALL_BUT_DOWN = ("q", "k", "v", "o", "gate", "up")
RECOMPUTED = {
    "full": (_ALL_BUT_DOWN, True),
    "offload_layer_inputs": (_ALL_BUT_DOWN, True),
    "save_attention": (_ALL_BUT_DOWN, False),
    "save_qkv_attention": (("o", "gate", "up"), False),
    "save_dots": ((), True),  # attention is a cuDNN call or loops, not a dot
    "save_dots_attention": ((), False),
    "none": ((), False),
}
CPU_PEAK_FLOPS = 1e11  # targets without a datasheet peak (reftrain/flops.py has the GPUs')
BACKWARD_OVER_FORWARD = 2.5
XLA_BLOCK_SECONDS = 5e-6
FIT_PATH = Path(__file__).with_name("speed_fit.json")


@dataclass(frozen=True)
class SpeedFit:
    """Coefficients of the model; `source` says what they were fitted to."""

    matmul_efficiency: float
    attention_efficiency: float
    seconds_per_call: float
    fixed_seconds: float
    source: str = ""


@functools.cache  # read once: the search predicts every candidate at every length
def load_fit(path: Path = FIT_PATH) -> SpeedFit:
    raw = json.loads(path.read_text())
    return SpeedFit(**{name: raw[name] for name in SpeedFit.__dataclass_fields__})


@dataclass(frozen=True)
class StepWork:
    """What one step asks of its busiest device: FLOPs executed (recompute included) and calls."""

    matmul_flops: float
    attention_flops: float
    attention_calls: int
    peak_flops: float
    xla_blocks: int = 0

    def seconds(self, fit: SpeedFit) -> float:
        return (self.matmul_flops / (self.peak_flops * fit.matmul_efficiency)
                + self.attention_flops / (self.peak_flops * fit.attention_efficiency)
                + self.attention_calls * fit.seconds_per_call + self.xla_blocks * XLA_BLOCK_SECONDS
                + fit.fixed_seconds)


def _diagonal_blocks(length: int, q_chunk: int, kv_chunk: int) -> int:
    """Blocks our XLA kernel computes for a shard with itself: all but those the causal mask
    hides entirely."""
    return sum(((i + 1) * q_chunk - 1) // kv_chunk + 1 for i in range(length // q_chunk))


def step_work(config: ModelConfig, seq: int, mesh: dict[str, int], device_kind: str, platform: str,
              documents: list[int] | None = None) -> StepWork:
    """The work of one step of one `seq`-token row per batch (`documents`: the row's document
    lengths; None: one document) on the busiest device of `mesh`."""
    c = config
    sp, tp = mesh["sp"], mesh["tp"]
    devices = math.prod(mesh.values())
    local = seq // sp
    projections = projection_parameters(c)  # reftrain's one parameter formula
    again, attention_again = RECOMPUTED[c.remat_policy]
    layer_tokens = c.num_layers * seq / devices
    matmul = (6 * sum(projections.values()) + 2 * sum(projections[name] for name in again)) * layer_tokens
    matmul += 6 * c.hidden_size * c.vocab_size * seq / devices  # the output head (not rematerialised)
    cudnn = c.attention_kernel == "cudnn" or (c.attention_kernel == "auto" and platform == "cuda")
    lengths = list(documents) if documents else [seq]
    if cudnn:
        # Causal pairs within documents, shared over the ring; with one document the last
        # device of a contiguous ring has sp - 1 whole shards and its own causal diagonal.
        within = sum(n * (n + 1) / 2 for n in lengths)
        if len(lengths) == 1 and c.sequence_layout == "contiguous" and sp > 1:
            pairs = (sp - 1) * local * local + local * (local + 1) / 2
        else:
            pairs = within / sp
        calls_per_pass, blocks = _cudnn_calls(c, local, sp, lengths), 0
    else:
        blocks = (sp - 1) * (local // c.q_chunk) * (local // c.kv_chunk) + _diagonal_blocks(local, c.q_chunk, c.kv_chunk)
        if c.sequence_layout == "zigzag" and sp > 1:  # balanced: every device a share of the row's blocks
            blocks = math.ceil((sp * (sp - 1) // 2 * (local // c.q_chunk) * (local // c.kv_chunk)
                                + sp * _diagonal_blocks(local, c.q_chunk, c.kv_chunk)) / sp)
        pairs, calls_per_pass = blocks * c.q_chunk * c.kv_chunk, 0
    passes = 1 + (1 if attention_again else 0) + BACKWARD_OVER_FORWARD
    heads = c.num_q_heads / tp
    attention = 4 * pairs * heads * c.head_dim * passes * c.num_layers
    calls = int(calls_per_pass * c.num_layers * (passes - BACKWARD_OVER_FORWARD + 1))
    peak = peak_flops_of_kind(device_kind) or CPU_PEAK_FLOPS
    return StepWork(matmul, attention, calls, peak, blocks * c.num_layers)


def _cudnn_calls(c: ModelConfig, local: int, sp: int, lengths: list[int]) -> int:
    """cuDNN calls of one attention pass on one device: one per ring step, and with documents
    one per group of `max_documents` documents in each block pair of `document_block`."""
    if len(lengths) == 1:
        return sp
    block = c.document_block or local
    blocks = max(local // block, 1)
    documents_per_block = max(len(lengths) / sp / blocks, 1)
    groups = math.ceil(documents_per_block / c.max_documents)
    return (sp - 1) + groups * blocks * (blocks + 1) // 2


def equal_documents(seq: int, count: int) -> list[int] | None:
    """`count` equal documents filling a `seq`-token row, as `documents` takes them (None: one)."""
    return [seq // count] * count if count > 1 else None


def predicted_seconds(config: ModelConfig, seq: int, mesh: dict[str, int], target,
                      documents: list[int] | None = None, fit: SpeedFit | None = None) -> float:
    """Predicted seconds of one optimizer step on `target` (hloscope.targets.Target)."""
    work = step_work(config, seq, mesh, target.device_kind, target.platform, documents)
    return work.seconds(fit or load_fit())
