"""Packing documents of several weighted domains into fixed-length rows, with exact token shares.

Pure and deterministic: the stream of rows depends only on the corpora, the weights, the seed
and the packing options, and the whole packer state is a few integers per domain.

Mixture. Before each piece the packer picks the domain furthest below its share, the one with
the least `placed_tokens[d] / weight[d]` (ties to the first), and takes the next piece of that
domain's current document. A piece is at most one row long, so after C real tokens every
domain's share is within `(n_domains - 1) * seq_len / C` of its weight (one row's worth of
tokens per competing domain; in practice within seq_len / C).

Rows (`split`):
- "long": a document that fits in what is left of the row goes in whole; one that does not
  fit but would fit in an empty row starts the next row (the rest of this one is padding); one
  longer than a row fills the rest of this row and continues in later rows.
- "any": every row is filled to the end, the last document cut at the boundary.

Layout per token (mode "document", MegaBeam): segment ids number the pieces of a row from 1
(0 = padding); positions restart at 0 for every piece, including the continuation of a split
document (RoPE is relative, so attention within a piece is the same either way, and positions
never exceed seq_len). Mode "concat" (UltraLong): segment id 1 for every real token, positions
count from 0 along the row, and documents follow each other separated by their eos token.
In both modes targets[t] is the next token of the same document (also across a split), and
loss_mask is 0 on padding and on each document's final (eos) token, which has no next token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reftrain.data._corpus import Corpus


@dataclass(frozen=True)
class Piece:
    """Tokens `[start, stop)` of document `doc` of domain `domain`, placed in one row."""

    domain: int
    doc: int
    start: int
    stop: int


class StreamPacker:
    """Cuts rows of any length from the weighted, shuffled, endlessly repeated domain streams.

    State (see `state()`): per domain (epoch, index in that epoch's order, offset in the
    document) and the real tokens placed so far.
    """

    def __init__(self, corpora: list[Corpus], weights: tuple[float, ...], *, seed: int,
                 split: str = "long", shuffle: bool = True):
        if len(corpora) != len(weights) or not corpora:
            raise ValueError("need one weight per corpus")
        self.corpora = corpora
        self.weights = np.asarray(weights, dtype=np.float64) / float(sum(weights))
        self.seed, self.split, self.shuffle = seed, split, shuffle
        self.cursors = [[0, 0, 0] for _ in corpora]
        self.placed = [0 for _ in corpora]
        self._orders: dict[tuple[int, int], np.ndarray] = {}

    def state(self) -> dict:
        """Returns the JSON-serialisable packer state."""
        return {"cursors": [list(c) for c in self.cursors], "placed": list(self.placed)}

    def set_state(self, state: dict) -> None:
        cursors, placed = state["cursors"], state["placed"]
        if len(cursors) != len(self.corpora) or len(placed) != len(self.corpora):
            raise ValueError("packer state is for a different number of domains")
        self.cursors = [[int(x) for x in c] for c in cursors]
        self.placed = [int(x) for x in placed]

    def _order(self, domain: int, epoch: int) -> np.ndarray:
        key = (domain, epoch)
        if key not in self._orders:
            n = self.corpora[domain].n_docs
            if len(self._orders) > 4 * len(self.corpora):
                self._orders.clear()
            self._orders[key] = (np.random.default_rng([self.seed, domain, epoch]).permutation(n)
                                 if self.shuffle else np.arange(n))
        return self._orders[key]

    def current_doc(self, domain: int) -> int:
        epoch, index, _ = self.cursors[domain]
        return int(self._order(domain, epoch)[index])

    def _pick_domain(self) -> int:
        ratios = np.asarray(self.placed, dtype=np.float64) / self.weights
        return int(np.argmin(ratios))

    def next_row(self, seq_len: int) -> list[Piece]:
        """Returns the pieces of the next row of `seq_len` tokens, in row order."""
        pieces: list[Piece] = []
        fill = 0
        while fill < seq_len:
            d = self._pick_domain()
            corpus = self.corpora[d]
            epoch, index, offset = self.cursors[d]
            doc = self.current_doc(d)
            doc_len = int(corpus.offsets[doc + 1] - corpus.offsets[doc])
            remaining, space = doc_len - offset, seq_len - fill
            if remaining <= space:
                take = remaining
            elif self.split == "any" or remaining > seq_len:
                take = space
            else:
                break  # pad: this document starts the next row whole
            pieces.append(Piece(d, doc, offset, offset + take))
            fill += take
            self.placed[d] += take
            offset += take
            if offset == doc_len:
                offset, index = 0, index + 1
                if index == corpus.n_docs:
                    epoch, index = epoch + 1, 0
            self.cursors[d] = [epoch, index, offset]
        return pieces


def row_arrays(pieces: list[Piece], corpora: list[Corpus], seq_len: int,
               mode: str = "document") -> dict[str, np.ndarray]:
    """Returns the arrays of one row, each `[seq_len]`: tokens, targets, segment_ids, positions
    (int32) and loss_mask (float32), laid out as the module docstring says."""
    tokens = np.zeros(seq_len, np.int32)
    targets = np.zeros(seq_len, np.int32)
    segment_ids = np.zeros(seq_len, np.int32)
    positions = np.zeros(seq_len, np.int32)
    loss_mask = np.zeros(seq_len, np.float32)
    p = 0
    for k, piece in enumerate(pieces, 1):
        doc = corpora[piece.domain].doc(piece.doc)
        m = piece.stop - piece.start
        tokens[p : p + m] = doc[piece.start : piece.stop]
        nxt = doc[piece.start + 1 : piece.stop + 1]  # one shorter at the document's end
        targets[p : p + len(nxt)] = nxt
        loss_mask[p : p + len(nxt)] = 1.0
        if mode == "document":
            segment_ids[p : p + m] = k
            positions[p : p + m] = np.arange(m, dtype=np.int32)
        else:
            segment_ids[p : p + m] = 1
            positions[p : p + m] = np.arange(p, p + m, dtype=np.int32)
        p += m
    return {"tokens": tokens, "targets": targets, "segment_ids": segment_ids,
            "positions": positions, "loss_mask": loss_mask}
