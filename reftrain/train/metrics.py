"""Throughput accounting (MFU from reftrain.flops, peak device memory) and the JSONL step log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax

from reftrain.config import ModelConfig
from reftrain.flops import peak_flops_of_kind, train_flops_per_token


def peak_flops(device: jax.Device, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one device, from `override_tflops` or the table; None when unknown (CPU)."""
    if override_tflops:
        return override_tflops * 1e12
    return peak_flops_of_kind(getattr(device, "device_kind", ""))


def mfu(config: ModelConfig, attended: float, tokens_per_second: float, devices: int, peak: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1] (attention over `attended` keys: `attended_length`),
    or None when the devices' peak is unknown."""
    if not peak:
        return None
    return train_flops_per_token(config, attended) * tokens_per_second / (peak * devices)


def peak_bytes_in_use(devices) -> int | None:
    """The largest `peak_bytes_in_use` of `devices`' memory_stats, None where the backend has
    none (CPU). XLA keeps the peak since the process started, so it is the run's peak so far."""
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in devices]
    peaks = [p for p in peaks if p is not None]
    return max(peaks) if peaks else None


#: How far a measured peak may exceed the plan's prediction before the run warns.
MEMORY_TOLERANCE = 0.05


def memory_warning(peak: int | None, predicted: int | float | None, tolerance: float = MEMORY_TOLERANCE) -> str | None:
    """One line when the measured `peak` bytes exceed `predicted` by more than `tolerance`, else None."""
    if peak is None or not predicted or peak <= predicted * (1 + tolerance):
        return None
    return (f"measured peak device memory {peak / 2**30:.2f} GiB exceeds the plan's predicted {predicted / 2**30:.2f} GiB "
            f"by {peak / predicted - 1:.1%} (more than {tolerance:.0%}): the plan's memory model does not hold here")


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
