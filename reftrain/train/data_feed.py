"""The data of one phase, stage by stage, as global sharded arrays of `[accum, batch, len]`.

Each process builds only the rows its devices hold (`reftrain.data` iterators take a host
index and count), and `jax.make_array_from_process_local_data` assembles the global batch.
The feed's state (stage and iterator state) is small JSON saved with every checkpoint.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from reftrain import data
from reftrain.phases import Phase
from reftrain.flops import attended_length
from reftrain.train.step import BATCH_KEYS, batch_shardings


def _row_block(mesh: Mesh, batch: int, length: int) -> tuple[int, int]:
    """Returns (host_index, host_count): which equal block of rows this process's devices hold.

    When the sequence axis spans processes, every process holds a slice of every row and
    loads all rows (host_count 1).
    """
    sharding = batch_shardings(mesh)["tokens"]
    rows = set()
    for index in sharding.addressable_devices_indices_map((1, batch, length)).values():
        rows.update(range(batch)[index[1]])
    rows = sorted(rows)
    count = batch // len(rows)
    if rows != list(range(rows[0], rows[0] + len(rows))) or rows[0] % len(rows):
        raise ValueError(f"this process's rows {rows} are not one contiguous block of the batch")
    return rows[0] // len(rows), count


class PhaseFeed:
    """Batches of every stage of `phase` in order, for steps [0, phase.steps())."""

    def __init__(self, phase: Phase, spec: data.DataSpec, mesh: Mesh, *, grad_accum: int, seed: int):
        self.phase, self.spec, self.mesh = phase, spec, mesh
        self.grad_accum, self.seed = grad_accum, seed
        self.stage_of_step = [
            i for i, s in enumerate(phase.stages) for _ in range(-(-s.sequences // (s.batch_size * grad_accum)))
        ]
        self._stage = -1
        self._attended = 0.0
        self._iterator = None
        self.tokenizer = data.load_tokenizer(spec.tokenizer)
        self._corpora = None if phase.data == "sft" else data.load_corpora(spec, self.tokenizer)

    def __len__(self) -> int:
        return len(self.stage_of_step)

    def _open(self, stage: int) -> None:
        s = self.phase.stages[stage]
        host_index, host_count = _row_block(self.mesh, s.batch_size, s.seq_len)
        seed = self.seed * 1000 + self.phase.number * 10 + stage
        common = dict(batch_size=s.batch_size, seq_len=s.seq_len, seed=seed, host_index=host_index, host_count=host_count)
        if self.phase.data == "sft":
            self._iterator = data.make_qa_batches(tokenizer=self.tokenizer, **common)
        else:
            self._iterator = data.make_batches(self.spec, corpora=self._corpora, **common)
            if self.phase.recall_fraction:
                # The curriculum spans the first recall_warmup of the rows this stage draws from the stream.
                warmup = round(self.phase.recall_warmup * s.sequences * self.phase.recall_fraction)
                recall = data.RecallBatchIterator(self.tokenizer, self._corpora, warmup_rows=warmup, **common)
                self._iterator = data.InterleavedBatches(self._iterator, recall, self.phase.recall_fraction, seed)
        self._stage = stage

    def seq_len(self, step: int) -> int:
        return self.phase.stages[self.stage_of_step[step]].seq_len

    def batch(self, step: int) -> dict[str, jax.Array]:
        """Returns the global batch of `step` (steps are consumed in order)."""
        stage = self.stage_of_step[step]
        if stage != self._stage:
            self._open(stage)
        micro = [next(self._iterator) for _ in range(self.grad_accum)]
        shardings = batch_shardings(self.mesh)
        s = self.phase.stages[stage]
        # Documents in the rows this process built (every row when sp spans processes), for MFU.
        self._attended = attended_length(np.stack([m["segment_ids"] for m in micro]))
        out = {}
        for key in BATCH_KEYS:
            local = np.stack([m[key] for m in micro])
            out[key] = jax.make_array_from_process_local_data(shardings[key], local, (self.grad_accum, s.batch_size, s.seq_len))
        return out

    def attended_length(self) -> float:
        """The attention length of the last batch (reftrain.flops.attended_length)."""
        return self._attended

    def state(self) -> dict[str, Any]:
        return {"stage": self._stage, "iterator": None if self._iterator is None else self._iterator.get_state()}

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("stage", -1) >= 0:
            self._open(state["stage"])
            self._iterator.set_state(state["iterator"])
