"""Sharded, atomic, asynchronous checkpoints of the train state with orbax-checkpoint.

A checkpoint holds the train state (sharded arrays: every process writes its own shards),
the data iterator's state and the run's RNG (JSON). orbax writes each step into a temporary
directory and renames it when complete, so a killed run never leaves a checkpoint that
`latest_step` would pick up; leftover temporary directories are removed on start. Old steps are
retired the same way: renamed into `TRASH` (one atomic rename) and only then deleted, because
orbax's own deletion removes files one by one and a kill in the middle of it left a step
directory without its items.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from reftrain.train.state import TrainState

TRASH = "retired"


class Checkpoints:
    """The checkpoints of one phase: `<run>/phase<N>/checkpoints/<step>/{state,extra}`."""

    def __init__(self, directory: Path, *, keep: int = 2, async_save: bool = True, read_only: bool = False):
        """`read_only`: a reader of another phase's (or `--init-from`'s) checkpoints, which
        neither creates the directory nor removes anything in it."""
        self.directory = Path(directory).absolute()
        self.read_only = read_only
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save and not read_only,
            cleanup_tmp_directories=not read_only,
            todelete_subdir=TRASH,
            create=not read_only,
            read_only=read_only,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "extra"))

    def _empty_trash(self) -> None:
        """Deletes the retired steps. Only the saving instance calls it, with no save in flight,
        so nothing renames into the trash meanwhile (a reader of the same directory never does)."""
        if self.read_only:
            return
        shutil.rmtree(self.directory / TRASH, ignore_errors=True)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: TrainState, extra: dict[str, Any]) -> None:
        """Starts saving `state` and the JSON-serialisable `extra` as step `step` (async)."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra))
        self._manager.wait_until_finished()  # orbax's save waits for the previous one anyway
        self._empty_trash()
        self._manager.save(step, args=args, force=True)

    def restore(self, abstract: TrainState, step: int | None = None) -> tuple[int, TrainState, dict[str, Any]]:
        """Returns (step, state placed as `abstract`'s shardings, extra) of `step` or the latest."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore())
        restored = self._manager.restore(step, args=args)
        return step, restored["state"], restored["extra"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
        self._empty_trash()


def load_phase_params(phase_dir: Path, mesh=None, step: int | None = None):
    """Returns (ModelConfig, params) of a trained phase directory (`<run>/phase<N>`).

    Reads the effective config saved beside the checkpoints and restores the parameters of
    `step` (default: the latest) onto `mesh` (default: one device).
    """
    import json

    from reftrain.config import ModelConfig
    from reftrain.sharding import make_mesh
    from reftrain.train.optim import make_optimizer
    from reftrain.train.start import phase_from_dict
    from reftrain.train.state import abstract_state

    phase_dir = Path(phase_dir)
    saved = json.loads((phase_dir / "config.json").read_text())
    config = ModelConfig.from_dict(saved["model"])
    phase = phase_from_dict(saved["phase"])
    optimizer, _ = make_optimizer(phase, phase.steps())
    mesh = mesh or make_mesh()
    checkpoints = Checkpoints(phase_dir / "checkpoints", read_only=True)
    try:
        _, state, _ = checkpoints.restore(abstract_state(config, optimizer, mesh), step)
    finally:
        checkpoints.close()
    return config, state["params"]
