"""hloscope.units: the one home of hloscope's byte formatters and size parser."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hloscope.units import gib, human_bytes, parse_size, short_bytes

UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def test_examples():
    assert short_bytes(512) == "512 B"
    assert short_bytes(2**35) == "32.0 GiB"
    assert short_bytes(3 * 2**40) == "3.0 TiB"
    assert short_bytes(5000 * 2**40) == "5000.0 TiB"
    assert human_bytes(2**35) == "34,359,738,368 B (32.00 GiB)"
    assert gib(44_967_160_989) == "41.88 GiB" and gib(None) == "-"


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=0, max_value=2**50))
def test_short_bytes_reads_back_within_its_rounding(count):
    number, unit = short_bytes(count).split()
    scale = UNITS[unit]
    assert abs(float(number) * scale - count) <= 0.05 * scale + 0.5
    assert unit == "TiB" or float(number) < 1024
    assert unit == "B" or count >= 1024


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=1, max_value=2**50))
def test_parse_size_reads_what_human_bytes_writes(count):
    assert parse_size(human_bytes(count).split(" B ")[0]) == count
