"""Checkpoints retire old steps atomically: a kill at any moment leaves only whole steps."""

import jax.numpy as jnp

from reftrain.train.checkpoint import TRASH, Checkpoints


def _steps(directory):
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def test_old_steps_are_renamed_whole_before_they_are_deleted(tmp_path, monkeypatch):
    checkpoints = Checkpoints(tmp_path, keep=2, async_save=False)
    monkeypatch.setattr(checkpoints, "_empty_trash", lambda: None)  # stop between rename and delete
    for step in (1, 2, 3):
        checkpoints.save(step, {"w": jnp.full((4,), float(step))}, {"step": step})
    checkpoints.wait()
    assert _steps(tmp_path) == [2, 3]
    assert all((tmp_path / str(s) / "state").is_dir() and (tmp_path / str(s) / "extra").is_dir() for s in (2, 3))
    assert (tmp_path / TRASH / "1" / "state").is_dir(), "step 1 was moved in one rename, not deleted file by file"

    monkeypatch.undo()
    checkpoints.save(4, {"w": jnp.full((4,), 4.0)}, {"step": 4})
    checkpoints.close()
    assert _steps(tmp_path) == [3, 4] and not (tmp_path / TRASH).exists()
    step, state, extra = Checkpoints(tmp_path, async_save=False).restore({"w": jnp.zeros((4,))})
    assert step == 4 and extra == {"step": 4} and float(state["w"][0]) == 4.0
