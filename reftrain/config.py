"""Model configurations: typed, frozen dataclasses with named presets.

A `ModelConfig` holds the architecture (what a Hugging Face config.json holds and a checkpoint
must match: ARCHITECTURE_FIELDS), the phase's RoPE numerics (`rope_dtype`) and how it runs
(EXECUTION_FIELDS: kernel, chunks, layout, documents, remat, dtypes), declared once below with
`_execution`. A plan is the execution half plus the mesh (reftrain.plan); a phase sets theta and
RoPE precision; the Hugging Face round trip carries the architecture only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from reftrain.fields import check_field_types

# reftrain.remat.POLICIES says what each keeps (kept here as names: config imports no jax).
REMAT_POLICIES = ("full", "save_attention", "save_qkv_attention", "save_dots", "save_dots_attention",
                  "offload_layer_inputs", "none")
# Built in; `reftrain.layers.register_attention` adds others (hloscope's paper reproduction).
ATTENTION_IMPLS = ("auto", "dense", "blockwise")
ATTENTION_KERNELS = ("auto", "xla", "cudnn")  # reftrain.attention.KERNELS
SEQUENCE_LAYOUTS = ("contiguous", "zigzag")  # reftrain.attention.LAYOUTS
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class YarnConfig:
    """YaRN context extension as UltraLong uses it (Peng et al. 2023; Xu et al. 2025).

    `factor` is s = target length / `original_length`. A RoPE pair that turns fewer than
    `alpha` times over the original context is interpolated (frequency / s), one that turns
    more than `beta` times is kept, and the ramp between is linear. Attention logits are
    sharpened by mscale**2 with mscale = 0.1 ln(s) + 1 (applied to cos and sin).

    `ramp="rotations"` is the paper's ramp, linear in the rotation count r. `ramp="index"` is
    the YaRN reference code's and Hugging Face's: linear in the pair index between the pairs
    that turn `beta` and `alpha` times (bounds floored and ceiled when `truncate`); imported
    checkpoints use it so that they compute what transformers computes.
    """

    factor: float
    original_length: int = 32_768
    alpha: float = 1.0
    beta: float = 4.0
    ramp: str = "rotations"
    truncate: bool = True

    def __post_init__(self):
        check_field_types(self, "yarn")
        if self.ramp not in ("rotations", "index"):
            raise ValueError(f"yarn ramp must be 'rotations' or 'index', got {self.ramp!r}")
        if not self.factor >= 1.0:
            raise ValueError(f"yarn factor must be >= 1, got {self.factor}")
        if not 0 < self.alpha < self.beta:
            raise ValueError(f"yarn needs 0 < alpha < beta, got alpha={self.alpha} beta={self.beta}")

    @property
    def mscale(self) -> float:
        return 0.1 * math.log(self.factor) + 1.0


def _execution(default):
    """A field that says how the model runs, not what it is: a plan sets it (EXECUTION_FIELDS)."""
    return field(default=default, metadata={"execution": True})


@dataclass(frozen=True)
class ModelConfig:
    """A Mistral-architecture decoder and how it runs.

    Shapes: D = hidden_size, Hq = num_q_heads, Hkv = num_kv_heads, Dh = head_dim,
    F = intermediate_size, V = vocab_size, L = num_layers.
    """

    name: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False
    # RoPE: theta is per phase; angles are float32 unless rope_dtype reproduces the paper's bug.
    rope_theta: float = 1e6
    rope_dtype: str = "float32"
    yarn: YarnConfig | None = None
    initializer_range: float = 0.02
    # Execution: what a plan file sets (reftrain.plan), declared with _execution.
    param_dtype: str = _execution("float32")
    compute_dtype: str = _execution("bfloat16")
    remat_policy: str = _execution("full")
    attention_impl: str = _execution("auto")
    # Block kernel: "auto" is cuDNN's fused attention on an NVIDIA GPU, our XLA loops elsewhere.
    attention_kernel: str = _execution("auto")
    # "zigzag" gives device i the sequence chunks i and 2*sp-1-i, balancing causal ring work.
    sequence_layout: str = _execution("contiguous")
    # cuDNN packed mode (documents): document slots per call (more documents take more calls).
    # Packed-mode memory grows with slots x call length; 4 slots on 16K blocks is the default
    # measured on an H200 (analyses/results/bench_attention_documents_*.md, docs/gpu.md).
    max_documents: int = _execution(4)
    # cuDNN with documents: a shard with itself in blocks of this many tokens (0: one call).
    document_block: int = _execution(16384)
    q_chunk: int = _execution(2048)
    kv_chunk: int = _execution(4096)
    loss_chunk: int = _execution(2048)
    mlp_chunk: int = _execution(8192)  # tokens per device per MLP chunk; 0 runs the MLP whole

    def __post_init__(self):
        check_field_types(self, "model")
        if self.num_q_heads % self.num_kv_heads:
            raise ValueError(f"num_q_heads {self.num_q_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        for name, allowed in (
            ("rope_dtype", DTYPES),
            ("param_dtype", DTYPES),
            ("compute_dtype", DTYPES),
            ("remat_policy", REMAT_POLICIES),
            ("attention_kernel", ATTENTION_KERNELS),
            ("sequence_layout", SEQUENCE_LAYOUTS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("mlp_chunk", "document_block"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_q_heads", "num_kv_heads", "head_dim",
                     "intermediate_size", "q_chunk", "kv_chunk", "loss_chunk", "max_documents"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def execution(self) -> dict[str, Any]:
        """How this model runs (EXECUTION_FIELDS): what a plan holds."""
        return {name: getattr(self, name) for name in EXECUTION_FIELDS}

    def with_execution(self, values: dict[str, Any]) -> ModelConfig:
        """This model run as `values` say (any of EXECUTION_FIELDS; the rest stays)."""
        unknown = set(values) - set(EXECUTION_FIELDS)
        if unknown:
            raise ValueError(f"not execution settings: {sorted(unknown)}; they are {', '.join(EXECUTION_FIELDS)}")
        return self.replace(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        values = dict(values)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        if values.get("yarn") is not None:
            values["yarn"] = YarnConfig(**values["yarn"])
        return cls(**values)


EXECUTION_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.metadata.get("execution"))
#: What a Hugging Face config.json holds (reftrain.hf maps each to its key).
ARCHITECTURE_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig)
                            if not f.metadata.get("execution") and f.name not in ("name", "rope_dtype"))

PRESETS: dict[str, ModelConfig] = {
    # Mistral-7B-Instruct-v0.2, MegaBeam's base: theta 1e6, no sliding window.
    "mistral-7b": ModelConfig(
        name="mistral-7b",
        vocab_size=32_000,
        hidden_size=4096,
        num_layers=32,
        num_q_heads=32,
        num_kv_heads=8,
        head_dim=128,
        intermediate_size=14_336,
    ),
    # Mistral-shaped (GQA 4:1, real vocabulary), 57M parameters (24M in its 8 layers): the recipe
    # in miniature on one GPU (issue 20; reftrain.phases' `small` phases, base stage at 2K).
    "small": ModelConfig(
        name="small",
        vocab_size=32_000,
        hidden_size=512,
        num_layers=8,
        num_q_heads=8,
        num_kv_heads=2,
        head_dim=64,
        intermediate_size=1536,
        q_chunk=1024,
        kv_chunk=1024,
        # Tokens per loss chunk across the batch: 2 GB of float32 logits; on an H100 the base
        # stage ran 546,778 tokens/s against 515,316 with 2,048 (analyses/results/plan_runs.md).
        loss_chunk=16384,
        # One cuDNN call per shard, 16 document slots: an H200 has memory to spare for so small a
        # model (about 8 GB of packed-mode workspace at 39K tokens x 3 rows), and the blocked path's
        # many small calls held its first run's 19K-39K phases to about 115K tokens/s (6-8% MFU).
        max_documents=16,
        document_block=0,
    ),
    # Mistral-shaped (GQA 4:1, real vocabulary) and small enough to train on 2 CPU cores.
    "tiny": ModelConfig(
        name="tiny",
        vocab_size=32_000,
        hidden_size=256,
        num_layers=2,
        num_q_heads=8,
        num_kv_heads=2,
        head_dim=32,
        intermediate_size=704,
        q_chunk=256,
        kv_chunk=256,
        loss_chunk=256,
    ),
}


def get_config(name: str, **overrides) -> ModelConfig:
    """Returns preset `name` with `overrides` applied; raises KeyError naming the presets."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
