"""Where a phase starts: its own latest checkpoint, `--init-from`, the previous phase, or random.

`resolve_start` only reads (it creates no directory), so a start that fails leaves nothing
behind; `load_start_params` then reads the chosen parameters. The order:

1. the phase's own latest checkpoint (resume);
2. `--init-from` (a Hugging Face directory, an orbax checkpoint directory or a phase
   directory `<run>/phase<N>`), when given;
3. the previous phase's final checkpoint, when that phase finished (its latest checkpoint is
   at its last step);
4. a random initialisation (seed `--seed`).

An unfinished previous phase (stopped early by `--max-steps` or a kill: its latest checkpoint
is before its last step) is not chained by default: the phase starts from a random
initialisation and the start line says so and why. `--chain-unfinished` starts from that
checkpoint instead, and the start line names it as unfinished.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from reftrain.files import is_hf_checkpoint_dir, is_phase_dir
from reftrain.phases import Phase, Stage


class StartError(ValueError):
    """Nothing usable to start from (a bad `--init-from`); one line for the user."""


@dataclass(frozen=True)
class Start:
    """What a phase starts from.

    kind: "resume" | "init_from_hf" | "init_from_orbax" | "previous" | "previous_unfinished" | "random".
    source: the checkpoint path (step directory for orbax) or None for random.
    """

    kind: str
    source: str | None
    step: int | None
    line: str  # one line for the user: what the phase starts from (and what it does not)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "source": self.source, "step": self.step, "line": self.line}


def phase_from_dict(fields: dict) -> Phase:
    """The Phase saved in a phase directory's config.json."""
    fields = dict(fields)
    return Phase(**(fields | {"stages": tuple(Stage(**s) for s in fields["stages"])}))


def latest_step(checkpoints: Path) -> int | None:
    """The latest complete checkpoint step under `checkpoints`, without creating anything."""
    if not checkpoints.is_dir():
        return None
    from reftrain.train.checkpoint import Checkpoints

    reader = Checkpoints(checkpoints, read_only=True)
    try:
        return reader.latest_step()
    finally:
        reader.close()


def total_steps(phase_dir: Path) -> int | None:
    """The step count of the phase saved in `phase_dir` (None without a readable config.json)."""
    try:
        saved = json.loads((phase_dir / "config.json").read_text())
        return int(saved["total_steps"]) if "total_steps" in saved else phase_from_dict(saved["phase"]).steps()
    except (OSError, ValueError, KeyError, TypeError):
        return None


def resolve_start(phase_dir: Path, number: int, *, init_from: str | None, seed: int,
                  chain_unfinished: bool = False, total: int | None = None) -> Start:
    """Decides where phase `number` (in `phase_dir`) starts; reads only. Raises StartError."""
    phase_dir = Path(phase_dir)
    own = latest_step(phase_dir / "checkpoints")
    if own is not None:
        of = f" of {total}" if total is not None else ""
        path = phase_dir / "checkpoints" / str(own)
        return Start("resume", str(path), own, f"resuming from its own checkpoint at step {own}{of} ({path})")
    if init_from is not None:
        return _init_from(init_from)
    random = f"a random initialisation (seed {seed})"
    previous_dir = phase_dir.parent / f"phase{number - 1}"
    if number == 0 or (number == 1 and not previous_dir.exists()):  # the first phase (1, or a base stage, 0)
        return Start("random", None, None, f"starting from {random}")
    previous = number - 1
    step = latest_step(previous_dir / "checkpoints")
    if step is None:
        return Start("random", None, None, f"starting from {random}: no checkpoint of phase {previous} in {previous_dir}")
    path = previous_dir / "checkpoints" / str(step)
    previous_total = total_steps(previous_dir)
    if previous_total is not None and step >= previous_total:
        return Start("previous", str(path), step, f"starting from phase {previous}'s final checkpoint (step {step} of {previous_total}, {path})")
    of = f"step {step} of {previous_total}" if previous_total is not None else f"step {step} of an unknown total (no readable config.json)"
    if chain_unfinished:
        return Start("previous_unfinished", str(path), step,
                     f"starting from phase {previous}'s UNFINISHED checkpoint ({of}, {path}), as --chain-unfinished asks")
    return Start("random", None, None,
                 f"starting from {random}, not from phase {previous}: it is unfinished ({of} in {previous_dir}); "
                 f"finish it, or pass --chain-unfinished to start from it")


def _init_from(source: str) -> Start:
    path = Path(source)
    if is_hf_checkpoint_dir(path):
        return Start("init_from_hf", source, None, f"starting from --init-from {source} (Hugging Face directory)")
    if not path.is_dir():
        raise StartError(f"--init-from {source}: no such directory")
    checkpoints = path / "checkpoints" if is_phase_dir(path) else path  # a phase directory: its checkpoints
    step = latest_step(checkpoints)
    if step is None:
        raise StartError(f"--init-from {source}: neither a Hugging Face directory nor an orbax checkpoint directory")
    return Start("init_from_orbax", f"{checkpoints}/{step}", step,
                 f"starting from --init-from {source} (orbax checkpoint, step {step})")


def load_start_params(start: Start, abstract, param_dtype: str):
    """The parameters `start` names (None for a random initialisation or a resume); raises
    StartError when they are not shaped like the model this phase trains."""
    if start.kind in ("random", "resume"):
        return None
    if start.kind == "init_from_hf":
        from reftrain import hf

        try:
            _, params = hf.load_checkpoint(start.source, param_dtype=param_dtype)
        except hf.CheckpointError as e:
            raise StartError(f"--init-from {start.source}: {e}") from None
    else:
        from reftrain.train.checkpoint import Checkpoints

        checkpoints = Checkpoints(Path(start.source).parent, read_only=True)
        try:
            _, state, _ = checkpoints.restore(abstract, start.step)
        except (ValueError, KeyError) as e:
            raise StartError(f"{start.source}: cannot be read as this model's train state ({_first_line(e)})") from None
        finally:
            checkpoints.close()
        params = state["params"]
    _check_shapes(start.source, params, abstract["params"])
    return params


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [error.__class__.__name__])[0]


def _check_shapes(source: str, params, expected) -> None:
    """Raises StartError naming the first parameter whose shape differs from the model's."""
    import jax

    got = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    want = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
    if got.keys() != want.keys():
        missing = sorted(jax.tree_util.keystr(k) for k in want.keys() - got.keys())
        extra = sorted(jax.tree_util.keystr(k) for k in got.keys() - want.keys())
        raise StartError(f"{source}: parameters differ from the model's (missing {missing[:3]}, unexpected {extra[:3]})")
    for key, leaf in want.items():
        if tuple(got[key].shape) != tuple(leaf.shape):
            raise StartError(f"{source}: parameter {jax.tree_util.keystr(key)} has shape {tuple(got[key].shape)}, "
                             f"the model (--preset/--set) needs {tuple(leaf.shape)}")
