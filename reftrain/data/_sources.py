"""Document sources: local files and folders of plain text, JSONL and Parquet.

A source yields `(title, text)` documents and has a fingerprint (a sha256 over its files'
contents) that keys its tokenized cache entry. Formats, by suffix:

- `.jsonl` / `.ndjson`: one JSON object per line, its `text_field` is a document;
- `.parquet`: one document per row of the string column `text_field`;
- anything else named as a file: the whole file is one document (UTF-8, bad bytes replaced);
- a folder: every file below it, in sorted order, whose suffix is `.jsonl`, `.ndjson`,
  `.parquet` or one of TEXT_SUFFIXES (hidden files and `__pycache__` skipped).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from reftrain.data._cache import DataError, sha256_file

Document = tuple[str, str]  # (title, text)

TEXT_SUFFIXES = frozenset(
    ".txt .md .rst .tex .html .htm .xml .py .pyi .c .h .cc .cpp .hpp .rs .go .java .js .ts "
    ".sh .toml .yaml .yml .cfg .ini .css".split()
)
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})


@dataclass(frozen=True)
class Source:
    """A named producer of documents; `fingerprint()` is cheap next to tokenizing them."""

    label: str
    fingerprint: Callable[[], str]
    documents: Callable[[], Iterator[Document]]


def _files_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    found = []
    for f in sorted(path.rglob("*")):
        rel = f.relative_to(path).parts
        if any(p.startswith(".") or p == "__pycache__" for p in rel) or not f.is_file():
            continue
        if f.suffix in TEXT_SUFFIXES or f.suffix in JSONL_SUFFIXES or f.suffix == ".parquet":
            found.append(f)
    return found


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def _jsonl_documents(path: Path, text_field: str) -> Iterator[Document]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: not a JSON object ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise DataError(f"{path}:{lineno}: no string field {text_field!r} (set text_field)")
            yield f"{path.name}:{lineno}", record[text_field]


def _parquet_documents(path: Path, text_field: str) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: not a Parquet file ({err})") from None
    if text_field not in pf.schema_arrow.names:
        raise DataError(f"{path}: no column {text_field!r} (columns: {pf.schema_arrow.names}; set text_field)")
    row = 0
    for batch in pf.iter_batches(columns=[text_field], batch_size=4096):
        for text in batch.column(0).to_pylist():
            row += 1
            if isinstance(text, str):
                yield f"{path.name}#{row}", text


def file_documents(path: Path, text_field: str = "text") -> Iterator[Document]:
    """Yields the documents of one file according to its suffix."""
    if path.suffix in JSONL_SUFFIXES:
        yield from _jsonl_documents(path, text_field)
    elif path.suffix == ".parquet":
        yield from _parquet_documents(path, text_field)
    else:
        yield path.name, _read_text(path)


def path_source(entry: str, base_dir: Path, text_field: str = "text") -> Source:
    """Returns the Source for a file or folder path (relative paths are taken from `base_dir`)."""
    path = Path(entry).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if not path.exists():
        raise DataError(f"source {entry!r} does not exist (looked at {path})")

    def fingerprint() -> str:
        digest = hashlib.sha256(f"path-source-v1\0{text_field}\0".encode())
        for f in _files_under(path):
            digest.update(f"{f.relative_to(path) if f != path else f.name}\0{sha256_file(f)}\0".encode())
        return digest.hexdigest()

    def documents() -> Iterator[Document]:
        for f in _files_under(path):
            yield from file_documents(f, text_field)

    return Source(label=str(entry), fingerprint=fingerprint, documents=documents)
