"""On-disk cache: where it lives, content hashes, and atomic writes.

Everything the data path derives (the members kept from the fetched archives in `assets/`:
the tokenizer and the built-in corpora's files; tokenized corpora in `corpora/`) lives under
one directory: `$REFTRAIN_CACHE` if set, else `$XDG_CACHE_HOME/reftrain`, else
`~/.cache/reftrain`. Every write goes to a temporary sibling first and is renamed into place,
so a reader never sees half a file and two processes filling the same entry at once both end
with a complete one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path


class DataError(ValueError):
    """A user-facing data-path error: the CLI prints its message on one line and exits 2."""


def cache_dir() -> Path:
    """Returns the cache root (created if missing)."""
    root = os.environ.get("REFTRAIN_CACHE")
    if root:
        path = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        path = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "reftrain"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def publish_dir(tmp_dir: Path, final: Path) -> None:
    """Moves a fully written `tmp_dir` to `final`; if another process won the race, keeps theirs."""
    try:
        os.rename(tmp_dir, final)
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(tmp_dir, ignore_errors=True)


def new_tmp_dir(parent: Path, name: str) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.", suffix=".tmp"))


def check_same_iterator(what: str, saved: dict, current: dict, ignore: tuple[str, ...] = ("step",)) -> None:
    """Raises DataError naming the first setting in which a saved iterator state (`saved`)
    differs from this iterator's (`current`), the keys in `ignore` apart: a resume that would
    continue another stream."""
    for key, value in current.items():
        if key not in ignore and saved.get(key) != value:
            raise DataError(f"{what} state has {key}={saved.get(key)!r}, this iterator {value!r}")


def check_host_split(batch_size: int, host_index: int, host_count: int) -> None:
    """Raises DataError unless a global batch of `batch_size` rows splits evenly over `host_count`
    hosts and `host_index` is one of them (every batch iterator's contract)."""
    if batch_size <= 0 or host_count <= 0 or batch_size % host_count:
        raise DataError(f"batch_size {batch_size} must be a positive multiple of host_count {host_count}")
    if not 0 <= host_index < host_count:
        raise DataError(f"host_index {host_index} must be in [0, {host_count})")
