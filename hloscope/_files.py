"""Writing output files whole: a reader (or a crash) never sees half of one.

hloscope's one atomic writer (its CLI, API, worker, HTML report and search cache use it).
reftrain has its own, `reftrain.files.atomic_write_bytes`, because the two packages may not
import each other (DESIGN.md: hloscope's core imports no reftrain; reftrain never imports
hloscope); analyses/ use reftrain's."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` through a temporary file in the same folder, then renames it."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, value: Any, indent: int | None = 1) -> None:
    """Writes `value` as JSON to `path`, whole (`atomic_write_text`): hloscope's one JSON writer."""
    atomic_write_text(path, json.dumps(value, indent=indent))
