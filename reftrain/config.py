"""Model configurations: typed, frozen dataclasses with named presets.

A `ModelConfig` holds the architecture (what a Hugging Face config.json holds and a checkpoint
must match: ARCHITECTURE_FIELDS), the phase's RoPE numerics (`rope_dtype`) and how it runs: its
`execution` (reftrain.execution.Execution: kernel, chunks, layout, documents, remat, dtypes),
whose fields read through the config too (`config.q_chunk`). A plan is an execution plus the
mesh (reftrain.plan); a phase sets theta and RoPE precision; the Hugging Face round trip carries
the architecture only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from reftrain.execution import (ATTENTION_IMPLS, DTYPES, EXECUTION_FIELDS, REMAT_POLICIES, Execution)
from reftrain.fields import check_field_types

__all__ = ["ARCHITECTURE_FIELDS", "ATTENTION_IMPLS", "EXECUTION_FIELDS", "PRESETS", "REMAT_POLICIES", "Execution",
           "ModelConfig", "YarnConfig", "get_config"]


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
    execution: Execution = field(default_factory=Execution)  # how it runs: what a plan sets

    def __post_init__(self):
        check_field_types(self, "model")
        if self.num_q_heads % self.num_kv_heads:
            raise ValueError(f"num_q_heads {self.num_q_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.rope_dtype not in DTYPES:
            raise ValueError(f"rope_dtype must be one of {DTYPES}, got {self.rope_dtype!r}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_q_heads", "num_kv_heads", "head_dim",
                     "intermediate_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def __getattr__(self, name: str):
        # Only reached for names the config itself lacks: an execution field reads through.
        if name in EXECUTION_FIELDS:
            return getattr(object.__getattribute__(self, "execution"), name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def replace(self, **changes) -> ModelConfig:
        """A copy with `changes`, architecture or execution fields alike (`q_chunk=1024`)."""
        execution = {k: changes.pop(k) for k in list(changes) if k in EXECUTION_FIELDS}
        if execution:
            changes["execution"] = changes.get("execution", self.execution).replace(**execution)
        return dataclasses.replace(self, **changes)

    def with_execution(self, values: dict[str, Any] | Execution) -> ModelConfig:
        """This model run as `values` say (an Execution, or any of EXECUTION_FIELDS: the rest stays)."""
        if isinstance(values, Execution):
            return dataclasses.replace(self, execution=values)
        return dataclasses.replace(self, execution=self.execution.replace(**values))

    def to_dict(self) -> dict:
        """Flat, as config.json has always held it: the architecture and the execution's fields."""
        values = dataclasses.asdict(self)
        return values | values.pop("execution")

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        """From `to_dict`'s flat form (execution fields at the top, as every run directory has
        them) or with an `execution` mapping."""
        values = dict(values)
        execution = dict(values.pop("execution", None) or {}) | {k: values.pop(k) for k in list(values)
                                                                  if k in EXECUTION_FIELDS}
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        if values.get("yarn") is not None:
            values["yarn"] = YarnConfig(**values["yarn"])
        return cls(**values, execution=Execution(**execution))


#: What a Hugging Face config.json holds (reftrain.hf maps each to its key).
ARCHITECTURE_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig)
                            if f.name not in ("name", "rope_dtype", "execution"))

# Mistral-7B-Instruct-v0.2, MegaBeam's base: theta 1e6, no sliding window.
_MISTRAL_7B = ModelConfig(name="mistral-7b", vocab_size=32_000, hidden_size=4096, num_layers=32, num_q_heads=32,
                          num_kv_heads=8, head_dim=128, intermediate_size=14_336)
PRESETS: dict[str, ModelConfig] = {
    "mistral-7b": _MISTRAL_7B,
    # Mistral-shaped (GQA 4:1, real vocabulary), 57M parameters (24M in its 8 layers): the recipe
    # in miniature on one GPU (issue 20; reftrain.phases' `small` phases, base stage at 2K).
    "small": _MISTRAL_7B.replace(
        name="small", hidden_size=512, num_layers=8, num_q_heads=8, num_kv_heads=2, head_dim=64,
        intermediate_size=1536,
        execution=Execution(
            q_chunk=1024,
            kv_chunk=1024,
            # Tokens per loss chunk across the batch: 2 GB of float32 logits; on an H100 the base
            # stage ran 546,778 tokens/s against 515,316 with 2,048 (analyses/results/plan_runs.md).
            loss_chunk=16384,
            # One cuDNN call per shard, 16 document slots: an H200 has memory to spare for so small
            # a model (about 8 GB of packed-mode workspace at 39K tokens x 3 rows), and the blocked
            # path's many small calls held its first run's 19K-39K phases to about 115K tokens/s.
            max_documents=16,
            document_block=0,
        ),
    ),
    # Mistral-shaped (GQA 4:1, real vocabulary) and small enough to train on 2 CPU cores.
    "tiny": _MISTRAL_7B.replace(name="tiny", hidden_size=256, num_layers=2, num_q_heads=8, num_kv_heads=2, head_dim=32,
                                intermediate_size=704, execution=Execution(q_chunk=256, kv_chunk=256, loss_chunk=256)),
}


def get_config(name: str, **overrides) -> ModelConfig:
    """Returns preset `name` with `overrides` applied; raises KeyError naming the presets."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
