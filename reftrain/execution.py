"""How a step runs, apart from what the model is: the one `Execution` object (no jax here).

An `Execution` holds every setting that changes how a training step is computed but not what it
computes: attention kernel, chunks, sequence layout, documents per call, remat policy, dtypes and
the MLP and loss chunks. Each default is written once, below; a preset carries its own
`Execution` (reftrain.config.PRESETS), a plan is an `Execution` plus the mesh (reftrain.plan),
and hloscope's train-step program compiles the one reftrain runs (reftrain.setup).

Also here, because the trainer, the speed model and the search all need them without jax: the
remat policies in order of the device memory they keep (`REMAT`; reftrain.remat gives each its
jax policy) and the one rule for fitting a chunk to a length (`fit_chunk`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from reftrain.fields import check_field_types


@dataclass(frozen=True)
class RematPolicy:
    """A remat policy by what its backward runs again: the layer's projections whose forward is
    recomputed (a layer's backward needs q, k, v for attention's gradient and h = x +
    o(attention) for the MLP's norm, so full remat recomputes all but `down`, whose output only
    feeds the residual), and whether attention's forward runs again. hloscope's speed model
    prices both."""

    name: str
    recomputed: tuple[str, ...]
    recomputes_attention: bool


_ALL_BUT_DOWN = ("q", "k", "v", "o", "gate", "up")
#: The remat policies, least device memory first: each keeps what the one before it keeps, and
#: more (reftrain.remat says what; "offload_layer_inputs" keeps its layer inputs on the host).
REMAT: dict[str, RematPolicy] = {p.name: p for p in (
    RematPolicy("offload_layer_inputs", _ALL_BUT_DOWN, True),
    RematPolicy("full", _ALL_BUT_DOWN, True),
    RematPolicy("save_attention", _ALL_BUT_DOWN, False),
    RematPolicy("save_qkv_attention", ("o", "gate", "up"), False),
    RematPolicy("save_dots", (), True),  # attention is a cuDNN call or loops, not a dot
    RematPolicy("save_dots_attention", (), False),
    RematPolicy("none", (), False),
)}
REMAT_POLICIES = tuple(REMAT)
# Built in; `reftrain.layers.register_attention` adds others (hloscope's paper reproduction).
ATTENTION_IMPLS = ("auto", "dense", "blockwise")
ATTENTION_KERNELS = ("auto", "xla", "cudnn")  # reftrain.attention.KERNELS
SEQUENCE_LAYOUTS = ("contiguous", "zigzag")  # reftrain.attention.LAYOUTS
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class Execution:
    """How one step runs. Chunks and blocks are upper bounds fitted to each length (`fit_chunk`),
    so one execution serves every sequence length of a phase."""

    param_dtype: str = "float32"
    compute_dtype: str = "bfloat16"
    remat_policy: str = "full"
    attention_impl: str = "auto"
    # Block kernel: "auto" is cuDNN's fused attention on an NVIDIA GPU, our XLA loops elsewhere.
    attention_kernel: str = "auto"
    # "zigzag" gives device i the sequence chunks i and 2*sp-1-i, balancing causal ring work.
    sequence_layout: str = "contiguous"
    # cuDNN packed mode (documents): document slots per call (more documents take more calls).
    # Packed-mode memory grows with slots x call length; 4 slots on 16K blocks is the default
    # measured on an H200 (analyses/results/bench_attention_documents_*.md, docs/gpu.md).
    max_documents: int = 4
    # cuDNN with documents: a shard with itself in blocks of this many tokens (0: one call).
    document_block: int = 16384
    q_chunk: int = 2048  # our XLA kernel's blocks (cuDNN tiles for itself)
    kv_chunk: int = 4096
    loss_chunk: int = 2048  # tokens per loss chunk across the batch
    mlp_chunk: int = 8192  # tokens per device per MLP chunk; 0 runs the MLP whole

    def __post_init__(self):
        check_field_types(self, "execution")
        for name, allowed in (("param_dtype", DTYPES), ("compute_dtype", DTYPES), ("remat_policy", REMAT_POLICIES),
                              ("attention_kernel", ATTENTION_KERNELS), ("sequence_layout", SEQUENCE_LAYOUTS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("mlp_chunk", "document_block"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("q_chunk", "kv_chunk", "loss_chunk", "max_documents"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def replace(self, **changes) -> Execution:
        unknown = set(changes) - set(EXECUTION_FIELDS)
        if unknown:
            raise ValueError(f"not execution settings: {sorted(unknown)}; they are {', '.join(EXECUTION_FIELDS)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fitted(self, local_length: int) -> Execution:
        """This execution with its attention chunks fitted to `local_length` tokens per device."""
        return self.replace(q_chunk=fit_chunk(self.q_chunk, local_length), kv_chunk=fit_chunk(self.kv_chunk, local_length))


EXECUTION_FIELDS = tuple(f.name for f in dataclasses.fields(Execution))


def fit_chunk(chunk: int, length: int) -> int:
    """The largest divisor of `length` not above `chunk`: chunk sizes are upper bounds, so one
    plan serves every sequence length of a phase (38,400 local tokens with 4,096 gives 3,840;
    with a 16,384-token document block, 12,800). The one chunk rule of the attention kernels,
    the MLP, the loss and the speed model."""
    chunk = min(chunk, length)
    while length % chunk:
        chunk -= 1
    return chunk
