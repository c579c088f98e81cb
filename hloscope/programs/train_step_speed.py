"""A model of reftrain's training step's time, fitted to steps measured on an H200, to rank the
train-step search's candidates (hloscope.programs.train_step_search).

XLA:GPU compiled deviceless reports no cost analysis, so hloscope counts the work of the busiest
device and prices it with coefficients fitted to measured steps (`speed_fit.json` beside this
file, written by `analyses/fit_speed_model.py` from `analyses/bench_train.py` rows):

    time = matmul FLOPs / (peak x matmul efficiency) + attention FLOPs / (peak x attention
           efficiency) + attention kernel calls x seconds per call + padded elements x seconds
           per padded element + fixed seconds

* matmul FLOPs: 6 x matmul parameters x tokens per device (forward 2, backward 4), plus 2 x the
  forward matmuls a remat policy runs again in the backward (reftrain.execution.REMAT names
  them).
* attention FLOPs (reftrain.flops.attention_flops): 4 x query heads x head_dim per attended
  (query, key) pair forward, the forward again where the policy does not keep attention's
  output, BACKWARD_OVER_FORWARD (2.5) forwards for the backward. cuDNN skips masked tiles, so the pairs are the
  causal ones, within documents where the row holds documents; the busiest device of a
  contiguous ring sees sp - 1 whole shards and its own diagonal. Our XLA kernel computes whole
  (q_chunk, kv_chunk) blocks and skips only blocks the causal mask hides entirely; each block
  also costs XLA_BLOCK_SECONDS of loop and launch overhead (not fitted: GPUs run cuDNN).
* calls: cuDNN calls per step (ring steps, document groups of `max_documents`, the blocks of
  `document_block`, earlier blocks a document reaches back to), counted from the row's
  document lengths as the kernel makes them: each call's own work around cuDNN's (slicing,
  merging into the float32 accumulators, small kernels: an H200 profile of 64K tokens with 16
  documents found 10.8 ms of it beside 26.8 ms of cuDNN's, docs/search.md).
* padded elements: packed mode pads each of a call's slots to the call's length in the
  backward's workspace, which is zeroed and reduced (slots x length x query heads x head_dim):
  why more slots per call cost time even where they hold nothing.

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

import numpy as np

from reftrain.attention import resolve_kernel
from reftrain.config import ModelConfig
from reftrain.execution import REMAT, fit_chunk
from reftrain.flops import (BACKWARD_OVER_FORWARD, attention_flops, matmul_parameters, peak_flops_of_kind,
                            projection_parameters)

CPU_PEAK_FLOPS = 1e11  # targets without a datasheet peak (reftrain/flops.py has the GPUs')
XLA_BLOCK_SECONDS = 5e-6
FIT_PATH = Path(__file__).with_name("speed_fit.json")


@dataclass(frozen=True)
class SpeedFit:
    """Coefficients of the model; `source` says what they were fitted to."""

    matmul_efficiency: float
    attention_efficiency: float
    seconds_per_call: float
    fixed_seconds: float
    seconds_per_padded_element: float = 0.0  # fits made before the term priced it at nothing
    source: str = ""


@functools.cache  # read once: the search predicts every candidate at every length
def load_fit(path: Path = FIT_PATH) -> SpeedFit:
    raw = json.loads(path.read_text())
    return SpeedFit(**{name: raw[name] for name in SpeedFit.__dataclass_fields__ if name in raw})


@dataclass(frozen=True)
class StepWork:
    """What one step asks of its busiest device: FLOPs executed (recompute included) and calls."""

    matmul_flops: float
    attention_flops: float
    attention_calls: int
    peak_flops: float
    xla_blocks: int = 0
    padded_elements: float = 0.0  # cuDNN backward: slots x call length x query heads x head_dim

    def seconds(self, fit: SpeedFit) -> float:
        return (self.matmul_flops / (self.peak_flops * fit.matmul_efficiency)
                + self.attention_flops / (self.peak_flops * fit.attention_efficiency)
                + self.attention_calls * fit.seconds_per_call + self.padded_elements * fit.seconds_per_padded_element
                + self.xla_blocks * XLA_BLOCK_SECONDS + fit.fixed_seconds)


def _diagonal_blocks(length: int, q_chunk: int, kv_chunk: int) -> int:
    """Blocks our XLA kernel computes for a shard with itself: all but those the causal mask
    hides entirely."""
    return sum(((i + 1) * q_chunk - 1) // kv_chunk + 1 for i in range(length // q_chunk))


def step_work(config: ModelConfig, seq: int, mesh: dict[str, int], device_kind: str, platform: str,
              documents: list[int] | None = None, padding: int = 0) -> StepWork:
    """The work of one step of one `seq`-token row per batch on the busiest device of `mesh`.
    `documents`: the row's document lengths in order, then `padding` tokens that are no
    document (the packer pads a row's end); None and no padding: one sequence, no segment ids."""
    c = config
    sp, tp = mesh["sp"], mesh["tp"]
    devices = math.prod(mesh.values())
    local = seq // sp
    projections, policy = projection_parameters(c), REMAT[c.remat_policy]  # reftrain's one parameter formula
    recomputed = c.num_layers * sum(projections[name] for name in policy.recomputed)  # the head is not rematerialised
    matmul = (6 * matmul_parameters(c) + 2 * recomputed) * seq / devices
    cudnn = resolve_kernel(c.attention_kernel, platform) == "cudnn"
    packed = documents is not None or padding > 0
    lengths = list(documents) if documents is not None else [seq - padding]
    if cudnn:
        # Causal pairs within documents, shared over the ring; with one sequence the last
        # device of a contiguous ring has sp - 1 whole shards and its own causal diagonal.
        within = sum(n * (n + 1) / 2 for n in lengths)
        if not packed and c.sequence_layout == "contiguous" and sp > 1:
            pairs = (sp - 1) * local * local + local * (local + 1) / 2
        else:
            pairs = within / sp
        (calls_per_pass, padded), blocks = _cudnn_calls(c, local, sp, lengths if packed else None), 0
    else:
        blocks = (sp - 1) * (local // c.q_chunk) * (local // c.kv_chunk) + _diagonal_blocks(local, c.q_chunk, c.kv_chunk)
        if c.sequence_layout == "zigzag" and sp > 1:  # balanced: every device a share of the row's blocks
            blocks = math.ceil((sp * (sp - 1) // 2 * (local // c.q_chunk) * (local // c.kv_chunk)
                                + sp * _diagonal_blocks(local, c.q_chunk, c.kv_chunk)) / sp)
        pairs, calls_per_pass, padded = blocks * c.q_chunk * c.kv_chunk, 0, 0
    passes = 1 + (1 if policy.recomputes_attention else 0) + BACKWARD_OVER_FORWARD
    heads = c.num_q_heads / tp
    attention = c.num_layers * attention_flops(pairs, heads, c.head_dim, passes)
    calls = int(calls_per_pass * c.num_layers * (passes - BACKWARD_OVER_FORWARD + 1))
    peak = peak_flops_of_kind(device_kind) or CPU_PEAK_FLOPS
    return StepWork(matmul, attention, calls, peak, blocks * c.num_layers, padded * heads * c.head_dim * c.num_layers)


def _overlapping(starts: np.ndarray, ends: np.ndarray, begin: int, end: int) -> int:
    """How many documents [start, end) overlap the tokens [begin, end)."""
    return int(np.searchsorted(starts, end, "left") - np.searchsorted(ends, begin, "right"))


def _cudnn_calls(c: ModelConfig, local: int, sp: int, lengths: list[int] | None) -> tuple[int, int]:
    """(cuDNN calls, padded slot tokens of their backward) of one attention pass on the busiest
    device, counted as `reftrain.attention._cudnn` makes them. Packed mode pads every slot to
    the call's length in the backward (a workspace it zeroes and reduces: docs/gpu.md), so a call
    of S slots over T tokens costs S x T slot tokens; a call without documents pads nothing.

    A shard with itself: one call per group of `max_documents` documents, per block of
    `document_block` (0: the whole shard), and a two-slot call for each earlier block that a
    block's first document reaches back to. An earlier shard of a contiguous ring: one two-slot
    call where a document spans both (zigzag rows are counted as if contiguous). `lengths`: the
    documents from the row's start, padding after them; None: no segment ids (one call a step,
    nothing padded)."""
    if lengths is None:
        return sp, 0
    ends = np.cumsum(lengths)
    starts = ends - np.asarray(lengths)
    slots = c.max_documents
    block = fit_chunk(c.document_block, local) if c.document_block and local > c.document_block else local
    busiest = (0, 0)
    for shard in range(sp):
        base, calls, padded = shard * local, 0, 0
        for b in range(local // block):
            begin = base + b * block
            groups = max(-(-_overlapping(starts, ends, begin, begin + block) // slots), 1)  # one call at least
            document = np.searchsorted(ends, begin, "right")  # of the block's first token (len: padding)
            reach = b - (max(int(starts[document]), base) - base) // block if document < len(lengths) else 0
            calls, padded = calls + groups + reach, padded + (groups * slots + 2 * reach) * block
        document = np.searchsorted(ends, base, "right")
        shared = sum(document < len(lengths) and document == np.searchsorted(ends, j * local + local - 1, "right")
                     for j in range(shard))
        calls, padded = calls + int(shared), padded + 2 * local * int(shared)
        busiest = max(busiest, (calls, padded))
    return busiest


def equal_documents(seq: int, count: int) -> list[int] | None:
    """`count` equal documents filling a `seq`-token row, as `documents` takes them (None: one)."""
    return [seq // count] * count if count > 1 else None


def predicted_seconds(config: ModelConfig, seq: int, mesh: dict[str, int], target,
                      documents: list[int] | None = None, fit: SpeedFit | None = None, padding: int = 0) -> float:
    """Predicted seconds of one optimizer step on `target` (hloscope.targets.Target)."""
    work = step_work(config, seq, mesh, target.device_kind, target.platform, documents, padding)
    return work.seconds(fit or load_fit())
