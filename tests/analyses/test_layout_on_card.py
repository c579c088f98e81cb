"""analyses/layout_on_card.py: a program compiled in-process, its text read back by hloscope alone."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "analyses"))

import jax  # noqa: E402

import layout_on_card  # noqa: E402
from hlo_real_programs import PROGRAMS  # noqa: E402


def test_text_row_matches_the_workers_compile_of_the_same_program(tmp_path):
    import hloscope

    name = "donated optax step"
    program, devices, mesh, options = PROGRAMS[name]
    row = layout_on_card.text_row("fitted", name, program, mesh, options, jax.devices("cpu")[0], tmp_path)
    assert "error" not in row, row
    worker = hloscope.profile(program, target="cpu", devices=devices, mesh=mesh, **options).data["figures"]
    # The same program for the same XLA:CPU: XLA's total and the text model's figures agree exactly.
    assert row["xla_total"] == worker["xla_total"]
    assert row["layout_total"] == worker["layout_total"]
    assert abs(row["layout_ratio"] - 1) <= 0.03
    assert list(tmp_path.glob("*.txt")), "the compiled text is written where it was read from"


def test_a_program_that_fails_is_a_row_not_a_traceback(tmp_path):
    row = layout_on_card.text_row("fitted", "missing", "no_such_module:build", None, {}, jax.devices("cpu")[0], tmp_path)
    assert set(row) == {"set", "program", "error"} and "no_such_module" in row["error"]


def test_an_unknown_set_is_a_usage_error_naming_the_sets():
    import subprocess

    for script in ("layout_on_card.py", "hlo_real_programs.py"):
        done = subprocess.run([sys.executable, str(REPO / "analyses" / script), "--sets", "fitted,held"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "unknown set 'held'; the sets are fitted, development, held out" in done.stderr.splitlines()[-1]
        assert "Traceback" not in done.stderr
