"""Tokenized corpora and their on-disk cache.

A Corpus is a flat int32 token array plus document offsets; every document is stored as
`[bos] + ids + [eos]`. A source's tokens are cached under `<cache>/corpora/<key>/`, where
the key hashes the tokenizer file, the source's fingerprint (its files' sha256) and
CORPUS_FORMAT; the folder is written aside and renamed into place, so it is complete or
absent. Cached tokens are memory-mapped, so loading costs milliseconds.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

import numpy as np

from reftrain.data._cache import DataError, cache_dir, new_tmp_dir, publish_dir, sha256_bytes
from reftrain.data._sources import Source
from reftrain.data._tokenizer import Tokenizer

CORPUS_FORMAT = "corpus-v1"
_BATCH_CHARS = 8 << 20  # characters handed to one multi-threaded encode call


@dataclass(frozen=True)
class Corpus:
    """Documents of one domain: document i is `tokens[offsets[i]:offsets[i + 1]]`.

    tokens: int32 `[n_tokens]`; offsets: int64 `[n_docs + 1]`, offsets[0] == 0;
    titles: one name per document (a file, a package, a row).
    """

    name: str
    tokens: np.ndarray
    offsets: np.ndarray
    titles: tuple[str, ...]

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def doc(self, i: int) -> np.ndarray:
        """Returns int32 `[len_i]`: document i's tokens (a view)."""
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def doc_lengths(self) -> np.ndarray:
        """Returns int64 `[n_docs]`."""
        return np.diff(self.offsets)


def corpus_from_documents(name: str, docs: list[np.ndarray], titles: list[str]) -> Corpus:
    """Returns a Corpus holding `docs` (int32 arrays, already framed) as they are."""
    if not docs:
        raise DataError(f"corpus {name!r} has no non-empty document")
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Corpus(name, np.concatenate(docs).astype(np.int32), offsets, tuple(titles))


def _tokenize(source: Source, tokenizer: Tokenizer) -> tuple[list[np.ndarray], list[str], dict]:
    docs, titles, chars = [], [], 0
    pending: list[tuple[str, str]] = []
    started = time.perf_counter()
    encode_seconds = 0.0

    def flush() -> None:
        nonlocal encode_seconds
        t0 = time.perf_counter()
        ids = tokenizer.encode_batch([text for _, text in pending])
        encode_seconds += time.perf_counter() - t0
        for (title, _), doc_ids in zip(pending, ids):
            if len(doc_ids):
                framed = np.empty(len(doc_ids) + 2, np.int32)
                framed[0], framed[-1], framed[1:-1] = tokenizer.bos_id, tokenizer.eos_id, doc_ids
                docs.append(framed)
                titles.append(title)
        pending.clear()

    batch_chars = 0
    for title, text in source.documents():
        if not text.strip():
            continue
        pending.append((title, text))
        chars += len(text)
        batch_chars += len(text)
        if batch_chars >= _BATCH_CHARS:
            flush()
            batch_chars = 0
    if pending:
        flush()
    n_tokens = int(sum(len(d) for d in docs))
    meta = {"label": source.label, "n_docs": len(docs), "n_tokens": n_tokens, "chars": chars,
            "encode_seconds": round(encode_seconds, 3),
            "total_seconds": round(time.perf_counter() - started, 3)}
    return docs, titles, meta


def tokenized_source(source: Source, tokenizer: Tokenizer, *, use_cache: bool = True) -> Corpus:
    """Returns the tokenized Corpus of `source`, from the cache when its key is there."""
    key = sha256_bytes(f"{CORPUS_FORMAT}\0{tokenizer.sha256}\0{source.fingerprint()}".encode())[:32]
    entry = cache_dir() / "corpora" / key
    if use_cache and (entry / "meta.json").exists():
        titles = json.loads((entry / "titles.json").read_text())
        return Corpus(source.label, np.load(entry / "tokens.npy", mmap_mode="r"),
                      np.load(entry / "offsets.npy"), tuple(titles))
    docs, titles, meta = _tokenize(source, tokenizer)
    if not docs:
        raise DataError(f"source {source.label!r} holds no non-empty document")
    corpus = corpus_from_documents(source.label, docs, titles)
    if meta["encode_seconds"] > 1:
        rate = meta["n_tokens"] / meta["encode_seconds"]
        print(f"reftrain.data: tokenized {source.label}: {meta['n_tokens']:,} tokens "
              f"({rate / 1e6:.2f}M tokens/s), cached", file=sys.stderr)
    if use_cache:
        tmp = new_tmp_dir(entry.parent, key)
        np.save(tmp / "tokens.npy", corpus.tokens)
        np.save(tmp / "offsets.npy", corpus.offsets)
        (tmp / "titles.json").write_text(json.dumps(list(titles)))
        (tmp / "meta.json").write_text(json.dumps(meta | {"tokenizer_sha256": tokenizer.sha256}))
        publish_dir(tmp, entry)
    return corpus


def join_corpora(name: str, parts: list[Corpus]) -> Corpus:
    """Returns one Corpus with the documents of `parts` in order (no copy for a single part)."""
    if len(parts) == 1:
        return Corpus(name, parts[0].tokens, parts[0].offsets, parts[0].titles)
    tokens = np.concatenate([np.asarray(p.tokens) for p in parts])
    shifts = np.cumsum([0] + [p.n_tokens for p in parts[:-1]])
    offsets = np.concatenate([[0]] + [p.offsets[1:] + s for p, s in zip(parts, shifts)]).astype(np.int64)
    return Corpus(name, tokens, offsets, tuple(t for p in parts for t in p.titles))
