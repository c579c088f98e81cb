"""`--tensorboard DIR`: the step scalars as TensorBoard event files, through tensorboardX.

tensorboardX writes TensorBoard's event format without TensorFlow (numpy and protobuf only);
it is the optional extra `tensorboard` (`pip install 'hloscope-reftrain[tensorboard]'`).
Written by process 0 only, beside metrics.jsonl, which stays the record of the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: metrics.jsonl field -> TensorBoard tag.
SCALARS = {
    "loss": "train/loss",
    "learning_rate": "train/learning_rate",
    "grad_norm": "train/grad_norm",
    "tokens_per_s": "perf/tokens_per_s",
    "mfu": "perf/mfu",
    "peak_bytes": "memory/peak_bytes",
    "probe_niah": "eval/probe_niah",
}

INSTALL_HINT = "--tensorboard needs tensorboardX: pip install 'hloscope-reftrain[tensorboard]'"


def available() -> bool:
    """True when tensorboardX can be imported (checked before a run writes anything)."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return False
    return True


class TensorBoardLog:
    """Writes each step record's scalars (those that are not None) at its step."""

    def __init__(self, directory: Path):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=str(directory))

    def write(self, record: dict[str, Any]) -> None:
        for key, tag in SCALARS.items():
            if record.get(key) is not None:
                self.writer.add_scalar(tag, float(record[key]), global_step=record["step"])

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
