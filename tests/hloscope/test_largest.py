"""The largest setting that fits: the binary search (against a brute-force oracle), the API on a
program whose memory is known exactly (8,192 bytes a row), and `hloscope check --largest`."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import hloscope
from hloscope.binary_search import largest_multiple

ROOT = Path(__file__).resolve().parents[2]
GROWING = "tests/hloscope/programs/growing.py:build"  # xla_total = 8,192 x rows on cpu
ROW_BYTES = 8192


@given(step=st.integers(1, 50), upper=st.integers(0, 5000), threshold=st.integers(0, 6000))
def test_the_search_finds_what_trying_every_multiple_finds(step, upper, threshold):
    tried = []

    def probe(value):
        tried.append(value)
        return f"ok {value}" if value <= threshold else None

    value, result = largest_multiple(probe, step=step, upper=upper)
    passing = [m for m in range(step, upper + 1, step) if m <= threshold]
    assert value == (max(passing) if passing else None)
    assert result == (f"ok {value}" if passing else None)
    assert all(v % step == 0 and step <= v <= upper for v in tried)
    assert len(tried) <= (math.floor(math.log2(upper // step)) + 1 if upper >= step else 0)


def test_a_step_below_one_is_refused():
    with pytest.raises(ValueError, match="step"):
        largest_multiple(lambda v: v, step=0, upper=10)


def test_largest_finds_the_last_row_count_that_fits():
    seen = []
    found = hloscope.largest(GROWING, "rows", target="cpu", devices=1, budget=ROW_BYTES * 24 + 100, step=8, up_to=32,
                             on_probe=lambda value, profile: seen.append(value))
    assert (found.option, found.value, found.budget) == ("rows", 24, ROW_BYTES * 24 + 100)
    assert found.profile.xla_total == ROW_BYTES * 24
    assert [p[0] for p in found.probes] == seen == [16, 24, 32]
    assert [(p[2], p[3]) for p in found.probes] == [(ROW_BYTES * 16, True), (ROW_BYTES * 24, True),
                                                    (ROW_BYTES * 32, False)]


def test_largest_refuses_bad_arguments_before_compiling():
    for kwargs, message in (({"step": 0}, "step"), ({"up_to": 4, "step": 8}, "up_to"), ({"rows": 8}, "searched")):
        arguments = {"step": 8, "up_to": 32, **kwargs}
        with pytest.raises(ValueError, match=message):
            hloscope.largest(GROWING, "rows", target="cpu", devices=1, budget="1MiB", **arguments)


def _check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hloscope", "check", "--program", GROWING, "--devices", "1", *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_check_largest_prints_the_search_and_the_answer(tmp_path):
    result = _check("--budget", str(ROW_BYTES * 16), "--largest", "rows", "--step", "8", "--up-to", "24",
                    "--json", str(tmp_path / "largest.json"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["rows=16: xla_total 131,072 B (0.00 GiB) per device, fits",
                         "rows=24: xla_total 196,608 B (0.00 GiB) per device, does not fit"]
    assert lines[-1] == ("largest rows that fits 131,072 B (0.00 GiB) per device: 16 (xla_total 131,072 B "
                         "(0.00 GiB)); 24 does not fit")
    assert hloscope.Profile.load(tmp_path / "largest.json").xla_total == ROW_BYTES * 16


def test_check_largest_exits_1_when_nothing_fits_and_2_on_bad_flags(tmp_path):
    nothing = _check("--budget", "1000", "--largest", "rows", "--step", "8", "--up-to", "16",
                     "--json", str(tmp_path / "none.json"))
    assert nothing.returncode == 1, nothing.stderr
    assert nothing.stdout.splitlines()[-1].startswith("NOTHING FITS: rows=8 does not fit")
    assert not (tmp_path / "none.json").exists()
    for flags, message in ((["--largest", "rows"], "needs --up-to"),
                           (["--largest", "rows", "--up-to", "16", "--set", "rows=8"], "searched"),
                           (["--largest", "rows", "--up-to", "16", "--hlo", "x.txt"], "cannot read --hlo")):
        bad = _check("--budget", "1MiB", *flags)
        assert bad.returncode == 2 and message in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr
