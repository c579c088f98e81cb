"""Small file helpers: atomic writes (a reader sees the old file or the new one, never half of
it) and telling a Hugging Face checkpoint directory and a phase directory apart.

reftrain's one atomic writer (plan, run config.json and run.toml, NIAH report; analyses/ too),
and `write_json` on it, the one JSON writer;
hloscope keeps its own in hloscope/_files.py because neither package may import the other
(DESIGN.md)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file in the same directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, value: Any, indent: int | None = 1, **dumps) -> None:
    """Writes `value` as JSON (and a newline) to `path`, atomically: the one JSON writer of
    reftrain and analyses/ (`dumps`: json.dumps' other options, such as `default=str`)."""
    atomic_write_bytes(Path(path), (json.dumps(value, indent=indent, **dumps) + "\n").encode())


def is_hf_checkpoint_dir(path: Path) -> bool:
    """True for a Hugging Face checkpoint directory: config.json beside *.safetensors files
    (what `--init-from` and `reftrain.eval --checkpoint` tell from an orbax or phase directory)."""
    path = Path(path)
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def is_phase_dir(path: Path) -> bool:
    """True for a reftrain phase directory (`<run>/phase<N>`): config.json beside checkpoints/."""
    path = Path(path)
    return (path / "config.json").is_file() and (path / "checkpoints").is_dir()
