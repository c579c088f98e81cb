"""The pre-training batch iterator: global batches of packed rows, sharded by host, resumable.

Every host packs the same global batch (packing is cheap index arithmetic; only its own rows
are materialised) and returns rows `[host_index * B / H, (host_index + 1) * B / H)`. So the
stream depends only on (seed, spec, batch size, sequence lengths), never on the host count,
and the state saved by any host restores on any other host count.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from reftrain.data._cache import DataError, check_host_split, check_same_iterator
from reftrain.data._corpus import Corpus, join_corpora, tokenized_source
from reftrain.data._packing import Piece, StreamPacker, row_arrays
from reftrain.data._spec import DataSpec
from reftrain.data._tokenizer import Tokenizer, load_tokenizer

STATE_FORMAT = "reftrain.data/batches-v1"


def resolve_source(entry: str, spec: DataSpec, text_field: str):
    """Returns the Source for one `sources` entry of a domain (builtin:NAME or a path)."""
    from reftrain.data._builtin import BUILTIN_SOURCES, builtin_source
    from reftrain.data._sources import path_source

    if entry.startswith("builtin:"):
        if entry not in BUILTIN_SOURCES:
            raise DataError(f"unknown built-in source {entry!r}; known: {', '.join(BUILTIN_SOURCES)}")
        return builtin_source(entry)
    from pathlib import Path

    return path_source(entry, Path(spec.base_dir), text_field)


def load_corpora(spec: DataSpec, tokenizer: Tokenizer | None = None) -> list[Corpus]:
    """Returns one tokenized Corpus per domain of `spec`, in spec order (cached on disk)."""
    tokenizer = tokenizer or load_tokenizer(spec.tokenizer)
    return [join_corpora(d.name, [tokenized_source(resolve_source(s, spec, d.text_field), tokenizer)
                                  for s in d.sources])
            for d in spec.domains]


def seq_len_schedule(spec: DataSpec, batch_size: int, seed: int) -> list[int]:
    """Returns the sequence length of every batch of a run that follows `spec.seq_mix`.

    A stage of S sequences gives ceil(S / batch_size) batches; "interleaved" shuffles the
    batches of all stages with the seed, "sequential" keeps the stages in order.
    """
    lengths = [s.seq_len for s in spec.seq_mix for _ in range(math.ceil(s.sequences / batch_size))]
    if spec.seq_mix_order == "interleaved":
        rng = np.random.default_rng([seed, 0x5E9])
        lengths = [lengths[i] for i in rng.permutation(len(lengths))]
    return lengths


class BatchIterator(Iterator[dict[str, np.ndarray]]):
    """Yields this host's rows of each global batch: a dict of `[batch_size / host_count, seq_len]`
    arrays (tokens, targets, segment_ids, positions int32; loss_mask float32).

    `get_state()` is a small JSON-serialisable dict; `set_state()` continues the exact stream.
    `layout` holds the pieces of every row of the last global batch (for inspection).
    """

    def __init__(self, spec: DataSpec, corpora: list[Corpus], *, batch_size: int,
                 seq_len: int | None = None, seed: int | None = None,
                 host_index: int = 0, host_count: int = 1):
        check_host_split(batch_size, host_index, host_count)
        if seq_len is None and not spec.seq_mix:
            raise DataError("give seq_len, or a spec with a seq_mix")
        if seq_len is not None and seq_len <= 0:
            raise DataError(f"seq_len must be positive, got {seq_len}")
        self.spec, self.corpora = spec, corpora
        self.batch_size, self.seq_len = batch_size, seq_len
        self.seed = spec.seed if seed is None else seed
        self.host_index, self.host_count = host_index, host_count
        self.packer = StreamPacker(corpora, spec.weights, seed=self.seed,
                                   split=spec.packing.split, shuffle=spec.packing.shuffle)
        self.schedule = None if seq_len is not None else seq_len_schedule(spec, batch_size, self.seed)
        self.step = 0
        self.layout: list[list[Piece]] = []

    def __len__(self) -> int:
        if self.schedule is None:
            raise TypeError("an iterator with a fixed seq_len is endless")
        return len(self.schedule)

    def _identity(self) -> dict:
        return {"format": STATE_FORMAT, "spec": self.spec.fingerprint(), "seed": self.seed,
                "batch_size": self.batch_size, "seq_len": self.seq_len}

    def get_state(self) -> dict:
        """Returns the iterator state: identity fields, the batch count and the packer state."""
        return self._identity() | {"step": self.step} | self.packer.state()

    def set_state(self, state: dict) -> None:
        """Restores a state from `get_state()` of an iterator with the same spec, seed and shapes."""
        check_same_iterator("iterator", state, self._identity(), ignore=())
        self.packer.set_state(state)
        self.step = int(state["step"])

    def next_seq_len(self) -> int | None:
        """Returns the sequence length of the next batch (None when a finite run is over)."""
        if self.schedule is None:
            return self.seq_len
        return self.schedule[self.step] if self.step < len(self.schedule) else None

    def __next__(self) -> dict[str, np.ndarray]:
        seq_len = self.next_seq_len()
        if seq_len is None:
            raise StopIteration
        per_host = self.batch_size // self.host_count
        first = self.host_index * per_host
        self.layout = [self.packer.next_row(seq_len) for _ in range(self.batch_size)]
        rows = [row_arrays(pieces, self.corpora, seq_len, self.spec.packing.mode)
                for pieces in self.layout[first : first + per_host]]
        self.step += 1
        return {key: np.stack([r[key] for r in rows]) for key in rows[0]}


def make_batches(spec: DataSpec, *, batch_size: int, seq_len: int | None = None,
                 seed: int | None = None, host_index: int = 0, host_count: int = 1,
                 tokenizer: Tokenizer | None = None,
                 corpora: list[Corpus] | None = None) -> BatchIterator:
    """Returns the resumable batch iterator of `spec` (corpora tokenized and cached on first use).

    With seq_len None, batches follow `spec.seq_mix` and the iterator ends after its last
    stage; with seq_len given, it is endless. `seed` overrides `spec.seed`.
    """
    if corpora is None:
        corpora = load_corpora(spec, tokenizer)
    return BatchIterator(spec, corpora, batch_size=batch_size, seq_len=seq_len, seed=seed,
                         host_index=host_index, host_count=host_count)
