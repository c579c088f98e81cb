"""The `inspect` report: corpus per domain, realised mixture shares, a decoded row."""

from __future__ import annotations

import numpy as np
from rich.console import Console
from rich.table import Table

from reftrain.data._corpus import Corpus
from reftrain.data._iterator import make_batches, seq_len_schedule
from reftrain.data._spec import DataSpec
from reftrain.data._tokenizer import Tokenizer


def _percentiles(lengths: np.ndarray) -> str:
    p50, p90 = np.percentile(lengths, [50, 90])
    return f"{int(lengths.min()):,} / {int(p50):,} / {int(p90):,} / {int(lengths.max()):,}"


def corpus_table(spec: DataSpec, corpora: list[Corpus]) -> Table:
    table = Table(title="Corpus per domain (tokens include each document's bos and eos)")
    for col in ("domain", "weight", "sources", "documents", "tokens", "doc tokens min / p50 / p90 / max"):
        table.add_column(col, justify="left" if col in ("domain", "sources") else "right")
    for d, w, c in zip(spec.domains, spec.weights, corpora):
        table.add_row(d.name, f"{w:.1%}", ", ".join(d.sources), f"{c.n_docs:,}", f"{c.n_tokens:,}",
                      _percentiles(c.doc_lengths()))
    total = sum(c.n_tokens for c in corpora)
    table.add_row("total", "", "", f"{sum(c.n_docs for c in corpora):,}", f"{total:,}", "")
    return table


def mixture_table(spec: DataSpec, corpora: list[Corpus], *, batch_size: int, seq_len: int,
                  batches: int) -> tuple[Table, list]:
    """Returns the realised-shares table after `batches` batches and the first row's pieces."""
    it = make_batches(spec, batch_size=batch_size, seq_len=seq_len, corpora=corpora)
    first_layout, first_batch, padding = None, None, 0
    for _ in range(batches):
        batch = next(it)
        padding += int((batch["segment_ids"] == 0).sum())
        if first_layout is None:
            first_layout, first_batch = it.layout[0], {k: v[0] for k, v in batch.items()}
    placed = np.asarray(it.packer.placed, dtype=np.float64)
    total = placed.sum()
    bound = (len(corpora) - 1) * seq_len / total
    table = Table(title=f"Realised shares after {batches} batches of {batch_size} x {seq_len:,}",
                  caption=f"{int(total):,} real tokens, {padding:,} padding; "
                          f"guaranteed |share - weight| <= (domains - 1) x seq_len / tokens = {bound:.2%}")
    for col in ("domain", "weight", "tokens", "share", "share - weight"):
        table.add_column(col, justify="left" if col == "domain" else "right")
    for d, w, n in zip(spec.domains, spec.weights, placed):
        table.add_row(d.name, f"{w:.2%}", f"{int(n):,}", f"{n / total:.2%}", f"{n / total - w:+.3%}")
    return table, [first_layout, first_batch]


def decoded_row(tokenizer: Tokenizer, spec: DataSpec, corpora: list[Corpus], pieces, row: dict,
                chars: int) -> str:
    """Returns the first row decoded, each piece opened by a `⟦seg k · domain · title⟧` marker."""
    out = []
    for k, piece in enumerate(pieces, 1):
        corpus = corpora[piece.domain]
        doc_len = int(corpus.offsets[piece.doc + 1] - corpus.offsets[piece.doc])
        where = "whole" if piece.stop - piece.start == doc_len else f"tokens {piece.start:,}-{piece.stop:,} of {doc_len:,}"
        ids = row["tokens"][row["segment_ids"] == k]
        text = tokenizer.decode(ids)
        if len(text) > chars:
            text = text[: chars // 2] + f"\n[... {len(text) - chars:,} characters ...]\n" + text[-chars // 2 :]
        out.append(f"⟦seg {k} · {spec.domains[piece.domain].name} · {corpus.titles[piece.doc]} · "
                   f"{where} · positions {int(row['positions'][row['segment_ids'] == k][0])}..⟧\n{text}")
    pad = int((row["segment_ids"] == 0).sum())
    if pad:
        out.append(f"⟦padding · {pad:,} tokens · segment 0 · no loss⟧")
    return "\n".join(out)


def run_inspect(spec: DataSpec, tokenizer: Tokenizer, corpora: list[Corpus], *, batch_size: int,
                seq_len: int, batches: int, chars: int) -> None:
    console = Console(width=140)
    console.print(f"tokenizer: {tokenizer.path} (sha256 {tokenizer.sha256[:12]}, {tokenizer.vocab_size:,} "
                  f"pieces, bos={tokenizer.bos_id} eos={tokenizer.eos_id} unk={tokenizer.unk_id})")
    console.print(f"packing: mode={spec.packing.mode} split={spec.packing.split} "
                  f"shuffle={spec.packing.shuffle} seed={spec.seed}")
    console.print(corpus_table(spec, corpora))
    if spec.seq_mix:
        schedule = seq_len_schedule(spec, batch_size, spec.seed)
        mix = ", ".join(f"{s.sequences:,} x {s.seq_len:,}" for s in spec.seq_mix)
        console.print(f"seq_mix ({spec.seq_mix_order}): {mix} = {sum(s.sequences * s.seq_len for s in spec.seq_mix):,} "
                      f"tokens; {len(schedule):,} batches of {batch_size} without --seq-len")
    table, (pieces, row) = mixture_table(spec, corpora, batch_size=batch_size, seq_len=seq_len, batches=batches)
    console.print(table)
    console.print(f"First row of the first batch ({len(pieces)} pieces):", style="bold")
    console.print(decoded_row(tokenizer, spec, corpora, pieces, row, chars), markup=False, highlight=False)
