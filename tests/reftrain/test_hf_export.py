"""`python -m reftrain.hf export CHECKPOINT OUT_DIR`: a reftrain phase checkpoint as a Hugging
Face directory that imports back bit-identically; bad arguments get one line and no output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from reftrain import hf
from reftrain.config import get_config
from reftrain.phases import get_phase
from reftrain.sharding import make_mesh
from reftrain.train.checkpoint import Checkpoints
from reftrain.train.optim import make_optimizer
from reftrain.train.state import init_state

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "reftrain.hf", *args], env=env, capture_output=True, text=True, timeout=300)


def _errors(result: subprocess.CompletedProcess) -> list[str]:
    """stderr lines without the absl/XLA start-up chatter."""
    return [line for line in result.stderr.strip().splitlines()
            if not line.startswith(("WARNING: All log messages", "I0000", "W0000", "E0000"))]


@pytest.fixture(scope="module")
def phase_dir(tmp_path_factory):
    """A phase directory as the trainer leaves it: config.json and checkpoints at steps 1 and 2."""
    directory = tmp_path_factory.mktemp("run") / "phase1"
    config = get_config("tiny", hidden_size=64, intermediate_size=128, num_q_heads=4, num_kv_heads=2, head_dim=16)
    phase = get_phase("tiny", 1)
    optimizer, _ = make_optimizer(phase, phase.steps())
    mesh = make_mesh()
    checkpoints = Checkpoints(directory / "checkpoints", async_save=False)
    states = {}
    for step in (1, 2):
        states[step] = init_state(config, optimizer, mesh, jax.random.key(step))
        checkpoints.save(step, states[step], {"data": {}, "seed": step, "phase": 1})
    checkpoints.close()
    saved = {"model": config.to_dict(), "phase": phase.to_dict(), "total_steps": phase.steps()}
    (directory / "config.json").write_text(json.dumps(saved))
    return directory, config, {step: jax.device_get(state["params"]) for step, state in states.items()}


def _same(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_export_of_the_latest_and_of_one_step_import_back_exactly(phase_dir, tmp_path):
    directory, config, params = phase_dir
    latest = _cli("export", str(directory), str(tmp_path / "latest"), "--dtype", "float32")
    assert latest.returncode == 0, latest.stderr
    assert f"to {tmp_path / 'latest'}" in latest.stdout
    imported_config, imported = hf.load_checkpoint(tmp_path / "latest", param_dtype="float32")
    assert imported_config.hidden_size == config.hidden_size and imported_config.num_layers == config.num_layers
    assert _same(imported, params[2])

    first = _cli("export", str(directory / "checkpoints" / "1"), str(tmp_path / "first"), "--dtype", "float32")
    assert first.returncode == 0, first.stderr
    assert _same(hf.load_checkpoint(tmp_path / "first", param_dtype="float32")[1], params[1])


def test_bad_exports_get_one_line_and_write_nothing(phase_dir, tmp_path):
    directory, _, _ = phase_dir
    bad = _cli("export", str(tmp_path), str(tmp_path / "out"))
    assert bad.returncode == 2 and len(_errors(bad)) == 1 and "neither a reftrain phase directory" in bad.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    bad = _cli("export", str(directory), str(tmp_path / "full"))
    assert bad.returncode == 2 and _errors(bad) == [f"error: {tmp_path / 'full'} exists and is not an empty directory"]
    assert not (tmp_path / "out").exists() and [p.name for p in (tmp_path / "full").iterdir()] == ["x"]
