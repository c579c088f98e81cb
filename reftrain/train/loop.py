"""Train one phase: start (resume, previous phase, `--init-from` or random), step, log, save.

Run directory: `<run>/phase<N>/{config.json, metrics.jsonl, checkpoints/<step>/}` (docs/training.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from reftrain.config import ModelConfig
from reftrain.data import DataSpec
from reftrain.files import atomic_write_bytes
from reftrain.phases import Phase
from reftrain.plan import Plan
from reftrain.train import metrics as metrics_lib
from reftrain.train.checkpoint import Checkpoints
from reftrain.train.data_feed import PhaseFeed
from reftrain.train.optim import make_optimizer
from reftrain.train.state import abstract_state, init_state
from reftrain.train.step import make_train_step


class TrainingError(RuntimeError):
    """A run that cannot go on (non-finite loss, nothing to start from); one line for the user."""


@dataclass(frozen=True)
class PhaseRun:
    """Everything one phase needs; `config` already has the phase's and the plan's settings."""

    run_dir: Path
    phase: Phase
    config: ModelConfig
    plan: Plan
    mesh: Mesh
    data_spec: DataSpec
    seed: int = 0
    grad_accum: int = 1
    save_every: int = 10
    keep: int = 2
    max_steps: int | None = None  # stop early (the schedule still spans the whole phase)
    init_from: str | None = None
    peak_tflops: float | None = None
    progress: bool = True

    @property
    def phase_dir(self) -> Path:
        return Path(self.run_dir) / f"phase{self.phase.number}"

    def effective_config(self) -> dict[str, Any]:
        return {
            "model": self.config.to_dict(),
            "phase": self.phase.to_dict(),
            "plan": self.plan.to_dict(),
            "mesh": dict(self.mesh.shape),
            "data": self.data_spec.to_dict(),
            "seed": self.seed,
            "grad_accum": self.grad_accum,
            "versions": {"jax": jax.__version__, "jaxlib": jax.lib.__version__},
        }


def _write_json_atomic(path: Path, value: dict) -> None:
    if jax.process_index() != 0:
        return
    atomic_write_bytes(path, (json.dumps(value, indent=2, default=str) + "\n").encode())


def _starting_params(run: PhaseRun, abstract):
    """(source, params) to start a fresh phase from: `--init-from`, the previous phase's final
    checkpoint, or (None, None) for a random initialisation."""
    source = run.init_from
    if source is None and run.phase.number > 1:
        previous = Path(run.run_dir) / f"phase{run.phase.number - 1}" / "checkpoints"
        if not previous.exists():
            raise TrainingError(
                f"phase {run.phase.number} starts from phase {run.phase.number - 1}'s final checkpoint, "
                f"but {previous} does not exist: run phase {run.phase.number - 1} first or pass --init-from"
            )
        source = str(previous)
    if source is None:
        return None, None
    if (Path(source) / "config.json").exists() and any(Path(source).glob("*.safetensors")):
        from reftrain import hf

        _, params = hf.load_checkpoint(source, param_dtype=run.config.param_dtype)
        return source, params
    if not Path(source).is_dir():
        raise TrainingError(f"--init-from {source}: no such directory")
    checkpoints = Checkpoints(Path(source), async_save=False)
    step = checkpoints.latest_step()
    if step is None:
        raise TrainingError(f"--init-from {source}: neither a Hugging Face directory nor an orbax checkpoint directory")
    _, state, _ = checkpoints.restore(abstract)
    checkpoints.close()
    return f"{source}/{step}", state["params"]


def train_phase(run: PhaseRun) -> dict[str, Any]:
    """Trains `run.phase` to its end (or `max_steps`), resuming from its last checkpoint.

    Returns a summary: first and last loss, steps run, where the final checkpoint is.
    Raises TrainingError on a non-finite loss (the last good checkpoint stays).
    """
    total = run.phase.steps()
    optimizer, schedule = make_optimizer(run.phase, total)
    abstract = abstract_state(run.config, optimizer, run.mesh)
    checkpoints = Checkpoints(run.phase_dir / "checkpoints", keep=run.keep)
    feed = PhaseFeed(run.phase, run.data_spec, run.mesh, grad_accum=run.grad_accum, seed=run.seed)
    log = metrics_lib.JsonlLog(run.phase_dir / "metrics.jsonl")

    start = checkpoints.latest_step()
    if start is not None:
        start, state, extra = checkpoints.restore(abstract)
        feed.restore(extra["data"])
        log.truncate_after(start - 1)
        started_from = f"resumed at step {start}"
    else:
        start = 0
        source, params = _starting_params(run, abstract)
        state = init_state(run.config, optimizer, run.mesh, jax.random.key(run.seed), params)
        started_from = source or "random initialisation"
    _write_json_atomic(run.phase_dir / "config.json", run.effective_config() | {"started_from": started_from})

    step_fn = make_train_step(run.config, optimizer, schedule, run.mesh)
    peak = metrics_lib.peak_flops(run.mesh.devices.flat[0], run.peak_tflops)
    end = total if run.max_steps is None else min(total, start + run.max_steps)
    losses = []
    columns = (TextColumn(f"phase {run.phase.number}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeRemainingColumn())
    with Progress(*columns, disable=not run.progress or jax.process_index() != 0) as progress:
        task = progress.add_task("train", total=total, completed=start, info="")
        for step in range(start, end):
            batch = feed.batch(step)
            began = time.perf_counter()
            state, m = step_fn(state, batch)
            m = jax.device_get(m)
            seconds = time.perf_counter() - began
            seq_len = feed.seq_len(step)
            tokens_per_s = float(np.prod(batch["tokens"].shape)) / seconds
            record = {
                "step": step,
                "loss": float(m["loss"]),
                "grad_norm": float(m["grad_norm"]),
                "learning_rate": float(m["learning_rate"]),
                "seq_len": seq_len,
                "loss_tokens": int(m["tokens"]),
                "tokens_per_s": tokens_per_s,
                "mfu": metrics_lib.mfu(run.config, seq_len, tokens_per_s, run.mesh.size, peak),
                "seconds": seconds,
            }
            if not bool(m["finite"]):
                checkpoints.close()
                good = checkpoints.latest_step()
                raise TrainingError(
                    f"phase {run.phase.number} step {step}: loss {record['loss']} / grad norm {record['grad_norm']} "
                    f"is not finite; stopped, last good checkpoint: step {good} in {checkpoints.directory}"
                )
            log.write(record)
            losses.append(record["loss"])
            progress.update(task, advance=1, info=f"loss {record['loss']:.3f}  {tokens_per_s:,.0f} tok/s  len {seq_len}")
            done = step + 1
            if done % run.save_every == 0 or done == end:
                checkpoints.save(done, state, {"data": feed.state(), "seed": run.seed, "phase": run.phase.number})
    checkpoints.close()
    return {
        "phase": run.phase.number,
        "steps": end,
        "total_steps": total,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "checkpoint": str(checkpoints.directory / str(end)),
    }
