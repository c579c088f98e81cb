"""Train one phase: start (resume, `--init-from`, previous phase or random: train/start.py), step, log, save.

Run directory: `<run>/phase<N>/{config.json, metrics.jsonl, checkpoints/<step>/}` (docs/training.md).
"""

from __future__ import annotations

import json
import shutil
import sys
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
from reftrain.files import atomic_write_bytes, write_json
from reftrain.memory import MemoryGrant
from reftrain.phases import Phase
from reftrain.plan import Plan
from reftrain.train import metrics as metrics_lib
from reftrain.train.checkpoint import Checkpoints
from reftrain.train.data_feed import PhaseFeed
from reftrain.train.optim import make_optimizer
from reftrain.train.out_of_memory import OutOfMemoryError, failed_allocation, is_out_of_memory, message, xla_total
from reftrain.train.start import StartError, load_start_params, resolve_start
from reftrain.train.tensorboard import TensorBoardLog
from reftrain.train.state import abstract_state, init_state
from reftrain.train.step import make_train_step


class _Probe:
    """The phase's NIAH probe (reftrain.eval.probe) at each stage length, prompts built once per
    length, and the stop rule: `probe_stop` reached by two probes in a row (of this process's
    steps: a resumed run counts afresh)."""

    def __init__(self, run: PhaseRun, tokenizer):
        self.run, self.tokenizer = run, tokenizer
        self.probes: dict[int, Any] = {}
        self.history: list[float] = []

    def due(self, done: int, end: int) -> bool:
        every = self.run.phase.probe_every
        return every > 0 and (done % every == 0 or done == end)

    def __call__(self, params, seq_len: int) -> float:
        from reftrain.eval.probe import NeedleProbe

        if seq_len not in self.probes:
            # Trials split over the batch axes like a batch's rows: rounded up to a multiple of them.
            ways = self.run.mesh.shape["dp"] * self.run.mesh.shape["fsdp"]
            trials = -(-self.run.phase.probe_trials // ways) * ways
            self.probes[seq_len] = NeedleProbe(self.tokenizer, length=seq_len, trials=trials, seed=self.run.seed)
        accuracy = self.probes[seq_len](self.run.config, params, self.run.mesh)
        self.history.append(accuracy)
        return accuracy

    def learned(self) -> bool:
        stop = self.run.phase.probe_stop
        return stop > 0 and len(self.history) >= 2 and min(self.history[-2:]) >= stop


def stopped_early(phase_dir: Path) -> dict | None:
    """The `stopped_early` record of a phase that its probe ended (config.json), else None."""
    try:
        return json.loads((Path(phase_dir) / "config.json").read_text()).get("stopped_early")
    except (OSError, ValueError, AttributeError):
        return None


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
    save_every: int = 10  # 0: no checkpoints at all (run --no-checkpoints)
    keep: int = 2
    max_steps: int | None = None  # stop early (the schedule still spans the whole phase)
    max_seconds: float | None = None  # stop at the first step boundary after this much training, and save
    init_from: str | None = None
    chain_unfinished: bool = False  # start from an unfinished previous phase (reftrain.train.start)
    peak_tflops: float | None = None
    progress: bool = True
    tensorboard: Path | None = None  # also write the step scalars as TensorBoard events here
    run_config: Path | None = None  # the --config TOML, copied into the phase directory
    memory: MemoryGrant | None = None  # what XLA's allocator was told before jax started (reftrain.memory)

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
            # The plan's prediction of each device's peak (None for the default plan): the run
            # warns once when a step's measured peak exceeds it by more than 5%.
            "predicted_bytes": self.plan.predicted.get("xla_total"),
            "run_config": None if self.run_config is None else str(self.run_config),
            "memory": None if self.memory is None else self.memory.to_dict() | {"bytes_limit": device_bytes_limit(self.mesh)},
            "versions": {"jax": jax.__version__, "jaxlib": jax.lib.__version__},
        }


def device_bytes_limit(mesh: Mesh) -> int | None:
    """The memory XLA's allocator may use on this process's first device of `mesh` (None on CPU)."""
    device = next(d for d in mesh.devices.flat if d.process_index == jax.process_index())
    return (device.memory_stats() or {}).get("bytes_limit")


class _Steps:
    """The train step compiled once per batch shape, each refused in one line (OutOfMemoryError)
    when XLA's compile needs more than the device's pool, and any out-of-memory while a step
    runs turned into the same line."""

    def __init__(self, run: PhaseRun, step_fn, checkpoints: Checkpoints):
        self.run, self.step_fn, self.checkpoints = run, step_fn, checkpoints
        self.compiled: dict[tuple, Any] = {}
        self.xla_total: int | None = None  # the last step's, from its compile (metrics.jsonl)
        self.limit = device_bytes_limit(run.mesh)
        self.kind = run.mesh.devices.flat[0].device_kind

    def __call__(self, state, batch, seq_len: int):
        key = tuple((name, batch[name].shape) for name in sorted(batch))
        try:
            if key not in self.compiled:
                compiled = self.step_fn.lower(state, batch).compile()
                needed = xla_total(compiled.memory_analysis())
                if self.limit is not None and needed is not None and needed > self.limit:
                    raise OutOfMemoryError(self._line(seq_len, needed))
                self.compiled[key] = (compiled, needed)
            compiled, self.xla_total = self.compiled[key]
            state, metrics = compiled(state, batch)
            return state, jax.device_get(metrics)
        except jax.errors.JaxRuntimeError as error:
            if not is_out_of_memory(error):
                raise
            raise OutOfMemoryError(self._line(seq_len, failed_allocation(error))) from None

    def _line(self, seq_len: int, needed: int | None) -> str:
        self.checkpoints.close()
        latest = self.checkpoints.latest_step()
        kept = (f"nothing written; the latest checkpoint, step {latest} in {self.checkpoints.directory}, is intact"
                if latest is not None else "nothing written (no checkpoint of this phase yet)")
        return message(self.run.plan, self.run.memory, phase=self.run.phase.number, seq_len=seq_len, needed=needed,
                       bytes_limit=self.limit, device_kind=self.kind, checkpoint=kept)


def _write_config(phase_dir: Path, value: dict) -> None:
    """The phase's config.json, written whole by the first process only."""
    if jax.process_index() == 0:
        write_json(phase_dir / "config.json", value, indent=2, default=str)


def _missing_dirs(phase_dir: Path) -> list[Path]:
    """The phase directory and those of its parents that do not exist yet (outermost first)."""
    missing = []
    for path in (Path(phase_dir).absolute(), *Path(phase_dir).absolute().parents):
        if path.exists():
            break
        missing.insert(0, path)
    return missing


def _remove(created: list[Path]) -> None:
    """Removes the directories this run created (a failed start leaves nothing behind)."""
    if created:
        shutil.rmtree(created[0], ignore_errors=True)


def train_phase(run: PhaseRun) -> dict[str, Any]:
    """Trains `run.phase` to its end (or `max_steps`), resuming from its last checkpoint.

    Returns a summary: first and last loss, steps run, where the final checkpoint is.
    Raises TrainingError on a non-finite loss (the last good checkpoint stays).
    """
    total = run.phase.steps()
    # Decide where to start before anything is written: a start that fails leaves nothing.
    try:
        start_info = resolve_start(run.phase_dir, run.phase.number, init_from=run.init_from, seed=run.seed,
                                   chain_unfinished=run.chain_unfinished, total=total)
    except StartError as e:
        raise TrainingError(str(e)) from None
    created = _missing_dirs(run.phase_dir)
    try:
        optimizer, schedule = make_optimizer(run.phase, total)
        abstract = abstract_state(run.config, optimizer, run.mesh)
        feed = PhaseFeed(run.phase, run.data_spec, run.mesh, grad_accum=run.grad_accum, seed=run.seed)
        checkpoints = Checkpoints(run.phase_dir / "checkpoints", keep=run.keep)
        log = metrics_lib.JsonlLog(run.phase_dir / "metrics.jsonl")
        if start_info.kind == "resume":
            start, state, extra = checkpoints.restore(abstract, start_info.step)
            feed.restore(extra["data"])
            log.truncate_after(start - 1)
        else:
            start = 0
            params = load_start_params(start_info, abstract, run.config.param_dtype)
            state = init_state(run.config, optimizer, run.mesh, jax.random.key(run.seed), params)
    except BaseException:
        _remove(created)
        raise
    stopped = stopped_early(run.phase_dir) if start_info.kind == "resume" else None
    if stopped is not None and start >= stopped["step"]:
        checkpoints.close()
        print(f"phase {run.phase.number}: finished at step {start} when its probe reached "
              f"{stopped['probe_niah']:.2f} (config.json stopped_early); nothing to do", file=sys.stderr, flush=True)
        return {"phase": run.phase.number, "steps": start, "total_steps": start, "first_loss": None, "last_loss": None,
                "checkpoint": str(checkpoints.directory / str(start))}
    if jax.process_index() == 0:
        print(f"phase {run.phase.number}: {start_info.line}", file=sys.stderr, flush=True)
    started_from = {"resume": f"resumed at step {start_info.step}", "random": "random initialisation"}.get(
        start_info.kind, start_info.source)
    _write_config(run.phase_dir, run.effective_config() | {
        "total_steps": total, "started_from": started_from, "start": start_info.to_dict()})
    if run.run_config is not None and jax.process_index() == 0:
        atomic_write_bytes(run.phase_dir / "run.toml", Path(run.run_config).read_bytes())

    step_fn = _Steps(run, make_train_step(run.config, optimizer, schedule, run.mesh), checkpoints)
    end = total if run.max_steps is None else min(total, start + run.max_steps)
    try:
        losses, end, learned = _train_steps(run, state, feed, step_fn, checkpoints, log, start, end, total)
    except BaseException:
        if created and checkpoints.latest_step() is None:  # nothing to resume from: leave nothing
            checkpoints.close()
            _remove(created)
        raise
    checkpoints.close()
    if learned is not None and jax.process_index() == 0:  # the process that wrote config.json
        # The phase is finished here: the next phase chains this checkpoint, a resume does nothing.
        config = json.loads((run.phase_dir / "config.json").read_text())
        _write_config(run.phase_dir, config | {"total_steps": end, "stopped_early": learned})
        print(f"phase {run.phase.number}: stopped at step {end} of {total}: the NIAH probe reached "
              f"{learned['probe_niah']:.2f} >= {learned['probe_stop']} twice in a row", file=sys.stderr, flush=True)
    return {
        "phase": run.phase.number,
        "steps": end,
        "total_steps": end if learned is not None else total,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "checkpoint": str(checkpoints.directory / str(end)) if run.save_every else None,
    }


def _record(run: PhaseRun, step: int, m: dict, seq_len: int, tokens_per_s: float, attended: float, seconds: float,
            peak: float | None, local_devices) -> dict[str, Any]:
    """One line of metrics.jsonl (docs/training.md lists the fields)."""
    return {
        "step": step,
        "loss": float(m["loss"]),
        "grad_norm": float(m["grad_norm"]),
        "learning_rate": float(m["learning_rate"]),
        "seq_len": seq_len,
        "loss_tokens": int(m["tokens"]),
        "tokens_per_s": tokens_per_s,
        "attention_length": attended,
        "mfu": metrics_lib.mfu(run.config, attended, tokens_per_s, run.mesh.size, peak),
        "peak_bytes": metrics_lib.peak_bytes_in_use(local_devices),
        "seconds": seconds,
    }


def _train_steps(run: PhaseRun, state, feed: PhaseFeed, step_fn, checkpoints: Checkpoints, log, start: int,
                 end: int, total: int) -> tuple[list[float], int, dict | None]:
    """Runs steps [start, end), or fewer when `max_seconds` runs out or the probe says the phase
    has learned: logs each, probes every `probe_every`, checkpoints every `save_every` and at the
    last step run. Returns the losses, the step it ended at and the probe's stop record (or None)."""
    peak = metrics_lib.peak_flops(run.mesh.devices.flat[0], run.peak_tflops)
    local_devices = [d for d in run.mesh.devices.flat if d.process_index == jax.process_index()]
    predicted = run.plan.predicted.get("xla_total")
    warned = False
    board = TensorBoardLog(run.tensorboard) if run.tensorboard and jax.process_index() == 0 else None
    probe = _Probe(run, feed.tokenizer)
    learned = None
    losses, done, clock = [], start, time.perf_counter()
    columns = (TextColumn(f"phase {run.phase.number}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeRemainingColumn())
    try:
        with Progress(*columns, disable=not run.progress or jax.process_index() != 0) as progress:
            task = progress.add_task("train", total=total, completed=start, info="")
            for step in range(start, end):
                batch = feed.batch(step)
                seq_len = feed.seq_len(step)
                began = time.perf_counter()
                state, m = step_fn(state, batch, seq_len)
                seconds = time.perf_counter() - began
                tokens_per_s = float(np.prod(batch["tokens"].shape)) / seconds
                record = _record(run, step, m, seq_len, tokens_per_s, feed.attended_length(), seconds, peak, local_devices)
                record["xla_total"] = step_fn.xla_total
                if probe.due(step + 1, end):
                    record["probe_niah"] = probe(state["params"], seq_len)
                if not bool(m["finite"]):
                    checkpoints.close()
                    good = checkpoints.latest_step()
                    raise TrainingError(
                        f"phase {run.phase.number} step {step}: loss {record['loss']} / grad norm {record['grad_norm']} "
                        f"is not finite; stopped, last good checkpoint: step {good} in {checkpoints.directory}"
                    )
                log.write(record)
                if board is not None:
                    board.write(record)
                if not warned and jax.process_index() == 0:
                    warning = metrics_lib.memory_warning(record["peak_bytes"], predicted)
                    if warning:
                        print(f"warning: phase {run.phase.number} step {step}: {warning}", file=sys.stderr, flush=True)
                        warned = True
                losses.append(record["loss"])
                progress.update(task, advance=1, info=f"loss {record['loss']:.3f}  {tokens_per_s:,.0f} tok/s  len {seq_len}")
                done = step + 1
                out_of_time = run.max_seconds is not None and time.perf_counter() - clock >= run.max_seconds
                if "probe_niah" in record and probe.learned() and run.save_every:  # a stop the next phase can chain
                    learned = {"step": done, "probe_niah": record["probe_niah"], "probe_stop": run.phase.probe_stop,
                               "planned_steps": total}
                if run.save_every and (done % run.save_every == 0 or done == end or out_of_time or learned):
                    checkpoints.save(done, state, {"data": feed.state(), "seed": run.seed, "phase": run.phase.number})
                if out_of_time or learned:
                    break
    finally:
        if board is not None:
            board.close()
    return losses, done, learned
