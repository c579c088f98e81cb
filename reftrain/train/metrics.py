"""Throughput accounting (tokens/s, model FLOPs utilisation) and the JSONL step log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax

from reftrain.config import ModelConfig

#: Dense bf16 peak FLOP/s per device, by `device_kind` prefix (vendor datasheets).
PEAK_FLOPS = {"NVIDIA A100": 312e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA B200": 2250e12}


def train_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Model FLOPs to train on one token of a `seq_len` sequence (no rematerialisation counted).

    6 x matmul parameters (all but the embedding lookup) plus causal attention,
    6 x layers x q_heads x head_dim x seq_len: PaLM's 12 L H Dh S halved for the causal mask.
    """
    c = config
    attn = c.hidden_size * c.head_dim * (2 * c.num_q_heads + 2 * c.num_kv_heads)
    mlp = 3 * c.hidden_size * c.intermediate_size
    matmul_params = c.num_layers * (attn + mlp) + c.hidden_size * c.vocab_size
    return 6.0 * matmul_params + 6.0 * c.num_layers * c.num_q_heads * c.head_dim * seq_len


def peak_flops(device: jax.Device, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one device, from `override_tflops` or the table; None when unknown (CPU)."""
    if override_tflops:
        return override_tflops * 1e12
    kind = getattr(device, "device_kind", "")
    return next((flops for prefix, flops in PEAK_FLOPS.items() if kind.startswith(prefix)), None)


def mfu(config: ModelConfig, seq_len: int, tokens_per_second: float, devices: int, peak: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1], or None when the devices' peak is unknown."""
    if not peak:
        return None
    return train_flops_per_token(config, seq_len) * tokens_per_second / (peak * devices)


class JsonlLog:
    """Appends one JSON object per line; written by process 0 only, flushed every line."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.enabled = jax.process_index() == 0
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drops records of steps after `step` (a resumed run rewrites them)."""
        if not (self.enabled and self.path.exists()):
            return
        kept = [line for line in self.path.read_text().splitlines() if json.loads(line).get("step", -1) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))
