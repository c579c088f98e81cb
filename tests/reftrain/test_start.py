"""Where a phase starts (reftrain.train.start): resume, --init-from, a finished previous phase,
an unfinished one (not chained unless asked), or a random initialisation; deciding reads only."""

import json
from pathlib import Path

import jax.numpy as jnp
import pytest

from reftrain.train.checkpoint import Checkpoints
from reftrain.train.start import StartError, resolve_start


def _phase(run: Path, number: int, steps: list[int], total: int) -> Path:
    """A phase directory with checkpoints at `steps` of a phase of `total` steps."""
    phase_dir = run / f"phase{number}"
    checkpoints = Checkpoints(phase_dir / "checkpoints", keep=len(steps), async_save=False)
    for step in steps:
        checkpoints.save(step, {"w": jnp.full((2,), float(step))}, {"step": step})
    checkpoints.close()
    (phase_dir / "config.json").write_text(json.dumps({"total_steps": total}))
    return phase_dir


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("number", [1, 2, 3, 4])
def test_a_fresh_run_directory_starts_every_phase_from_random_and_creates_nothing(tmp_path, number):
    start = resolve_start(tmp_path / "run" / f"phase{number}", number, init_from=None, seed=5)
    assert start.kind == "random" and start.source is None
    assert "random initialisation (seed 5)" in start.line and "\n" not in start.line
    if number > 1:
        assert f"no checkpoint of phase {number - 1}" in start.line
    assert not (tmp_path / "run").exists()


def test_the_small_presets_phase_1_starts_from_its_base_stage(tmp_path):
    """Phase 0 (the small preset's base stage) is a first phase; phase 1 chains from it when
    the run has one, and starts from random when it has none (the other presets)."""
    assert resolve_start(tmp_path / "phase0", 0, init_from=None, seed=0).line == "starting from a random initialisation (seed 0)"
    _phase(tmp_path, 0, [4], total=4)
    start = resolve_start(tmp_path / "phase1", 1, init_from=None, seed=0)
    assert start.kind == "previous" and start.source == str(tmp_path / "phase0" / "checkpoints" / "4")


def test_a_finished_previous_phase_is_chained(tmp_path):
    _phase(tmp_path, 2, [2, 3], total=3)
    before = _tree(tmp_path)
    start = resolve_start(tmp_path / "phase3", 3, init_from=None, seed=0)
    assert start.kind == "previous" and start.step == 3
    assert start.source == str(tmp_path / "phase2" / "checkpoints" / "3")
    assert "phase 2's final checkpoint (step 3 of 3" in start.line
    assert _tree(tmp_path) == before, "deciding wrote nothing"


def test_an_unfinished_previous_phase_is_named_and_chained_only_when_asked(tmp_path):
    _phase(tmp_path, 1, [1], total=74)
    start = resolve_start(tmp_path / "phase2", 2, init_from=None, seed=0)
    assert start.kind == "random"
    assert "not from phase 1: it is unfinished (step 1 of 74" in start.line and "--chain-unfinished" in start.line
    chained = resolve_start(tmp_path / "phase2", 2, init_from=None, seed=0, chain_unfinished=True)
    assert chained.kind == "previous_unfinished" and chained.step == 1
    assert "UNFINISHED" in chained.line and "step 1 of 74" in chained.line


def test_an_unreadable_previous_config_counts_as_unfinished(tmp_path):
    phase_dir = _phase(tmp_path, 1, [4], total=4)
    (phase_dir / "config.json").unlink()
    start = resolve_start(tmp_path / "phase2", 2, init_from=None, seed=0)
    assert start.kind == "random" and "unknown total" in start.line


def test_own_checkpoints_resume_before_anything_else(tmp_path):
    _phase(tmp_path, 1, [3], total=3)
    _phase(tmp_path, 2, [1], total=9)
    start = resolve_start(tmp_path / "phase2", 2, init_from=str(tmp_path / "phase1" / "checkpoints"), seed=0, total=9)
    assert start.kind == "resume" and start.step == 1 and "step 1 of 9" in start.line


def test_init_from_wins_over_the_previous_phase(tmp_path):
    _phase(tmp_path / "other", 4, [7], total=7)
    _phase(tmp_path / "run", 1, [3], total=3)
    start = resolve_start(tmp_path / "run" / "phase2", 2, init_from=str(tmp_path / "other" / "phase4" / "checkpoints"), seed=0)
    assert start.kind == "init_from_orbax" and start.step == 7
    from_phase = resolve_start(tmp_path / "run" / "phase2", 2, init_from=str(tmp_path / "other" / "phase4"), seed=0)
    assert (from_phase.kind, from_phase.source) == ("init_from_orbax", str(tmp_path / "other" / "phase4" / "checkpoints" / "7"))
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"")
    assert resolve_start(tmp_path / "run" / "phase2", 2, init_from=str(hf), seed=0).kind == "init_from_hf"


def test_unusable_init_from_is_one_line(tmp_path):
    with pytest.raises(StartError, match="no such directory"):
        resolve_start(tmp_path / "run" / "phase1", 1, init_from=str(tmp_path / "nowhere"), seed=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StartError, match="neither a Hugging Face directory nor an orbax checkpoint directory"):
        resolve_start(tmp_path / "run" / "phase1", 1, init_from=str(tmp_path / "empty"), seed=0)
    assert not (tmp_path / "run").exists() and not (tmp_path / "nowhere").exists()
    assert list((tmp_path / "empty").iterdir()) == []
