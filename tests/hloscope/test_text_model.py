"""The band hloscope states beside a verdict judged on layout_total: it is the one the committed
real-program table measured, every row of that table is within 3%, and `check` on text alone
says that its verdict rests on a model (and when the budget is too close to call)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import pytest

from hloscope import cli
from hloscope.text_model import Band, MeasuredBand, band_of, measured_band
from tests.analyses.conftest import REPO

RESULTS = REPO / "analyses" / "results" / "hlo_real_programs.json"


def test_the_packaged_band_is_the_committed_tables():
    rows = [r for r in json.loads(RESULTS.read_text())["rows"] if "error" not in r]
    band = measured_band()
    assert band.held_out == band_of([r["layout_ratio"] for r in rows if r["set"] == "held out"])
    assert band.every == band_of([r["layout_ratio"] for r in rows])
    # Both targets, every set, and a held-out half large enough to state a band on.
    assert {r["target"] for r in rows} == {"cpu", "h100-80gb"}
    assert {r["set"] for r in rows} == {"fitted", "development", "held out"}
    assert band.held_out.compiles >= 16


def test_every_committed_row_is_within_3_percent():
    rows = json.loads(RESULTS.read_text())["rows"]
    assert not [r for r in rows if "error" in r]
    outside = [(r["program"], r["target"], r["layout_ratio"]) for r in rows if abs(r["layout_ratio"] - 1) > 0.03]
    assert not outside


@pytest.mark.parametrize("needed, budget, close", [
    (1000, 1100, False),   # XLA's total at most 1000 / 0.98 = 1020: fits whatever the error
    (1000, 1010, True),    # fits by the model, but XLA's total may be up to 1020
    (1000, 995, True),     # does not fit by the model, but XLA's total may be down to 990
    (1000, 980, False),    # at least 990: does not fit whatever the error
])
def test_a_verdict_inside_the_band_is_too_close_to_call(needed, budget, close):
    band = MeasuredBand(Band(0.99, 1.0, 10), Band(0.98, 1.01, 40), "0.10.2")
    note = band.verdict_note(needed, budget)
    assert note.startswith("too close to call") == close
    assert "10 held-out compiles" in note and "-1.0% to +0.0%" in note


def _compiled_text(tmp_path):
    def loss(w):
        return jnp.sum(jnp.tanh(w @ w.T) ** 2)

    path = tmp_path / "step.hlo.txt"
    path.write_text(jax.jit(jax.grad(loss)).lower(jax.ShapeDtypeStruct((256, 128), jnp.float32)).compile().as_text())
    return path


def test_check_on_text_alone_says_its_verdict_rests_on_a_model(tmp_path, capsys):
    path = _compiled_text(tmp_path)
    out = tmp_path / "profile.json"
    assert cli.main(["check", "--hlo", str(path), "--budget", "1GiB", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fits: layout_total" in printed
    assert "the verdict rests on a model" in printed and "held-out compiles" in printed
    profile = json.loads(out.read_text())
    assert profile["layout_total_band"]["held_out"]["compiles"] == measured_band().held_out.compiles
    assert "held-out compiles" in profile["figure_sources"]["layout_total"]
    # A budget a hair above the figure is inside the band: said so, with the range it allows.
    layout = profile["figures"]["layout_total"]
    assert cli.main(["check", "--hlo", str(path), "--budget", str(layout + 1)]) == 0
    assert "too close to call" in capsys.readouterr().out
