"""`--config run.toml`: a run's options and field overrides in one file.

    preset = "tiny"
    phase = 3
    run_dir = "runs/tiny"
    max_steps = 20
    tensorboard = "runs/tiny/tb"

    [set]                      # what --set holds, with TOML types
    learning_rate = 1e-4
    q_chunk = 512
    stages = "128x8x2,256x4"

Top-level keys are the command line's options (dashes or underscores); the command line wins
over the file, and each `--set` over the file's `[set]`. Relative paths are relative to the
working directory, as on the command line. The file is copied into the phase directory as
`run.toml` once the phase has started.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from reftrain.fields import describe, matches

#: Top-level keys: option (argparse dest) -> type. Not here: --config itself, --dry-run and the
#: multi-host options, which belong to one invocation rather than to the run.
OPTIONS: dict[str, Any] = {
    "phase": int,
    "preset": str,
    "run_dir": str,
    "plan": str,
    "init_from": str,
    "chain_unfinished": bool,
    "data_spec": str,
    "max_steps": int,
    "max_seconds": float,
    "grad_accum": int,
    "save_every": int,
    "keep": int,
    "seed": int,
    "peak_tflops": float,
    "cpu_devices": int,
    "tensorboard": str,
    "no_progress": bool,
}
PATHS = ("run_dir", "plan", "data_spec", "tensorboard")


class RunConfigError(ValueError):
    """A run config file that cannot be used; one line for the user."""


def load_run_config(path: Path) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """Returns (options by argparse dest, [(field, value)] of its `[set]` table)."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunConfigError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RunConfigError(f"--config {path}: cannot read it ({e.__class__.__name__})") from None
    except tomllib.TOMLDecodeError as e:
        raise RunConfigError(f"--config {path} is not TOML: {e}") from None
    settings = raw.pop("set", {})
    if not isinstance(settings, dict):
        raise RunConfigError(f"--config {path}: [set] must be a table of field = value")
    options = {}
    for key, value in raw.items():
        dest = key.replace("-", "_")
        if dest not in OPTIONS:
            raise RunConfigError(f"--config {path}: unknown option {key!r}; known: {', '.join(sorted(OPTIONS))}, [set]")
        if not matches(value, OPTIONS[dest]):
            raise RunConfigError(f"--config {path}: {key} must be {describe(OPTIONS[dest])}, got {value!r}")
        options[dest] = Path(value) if dest in PATHS else value
    return options, list(settings.items())
