"""analyses/theta_bounds.py: the Xu et al. bound, its inverse, and the pairs with no full turn."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "analyses"))

import theta_bounds  # noqa: E402

# Hand-computed: 0.0424 * L**1.628 and (b / 0.0424)**(1 / 1.628), evaluated on a calculator.
BOUND_256K, BOUND_512K = 28.10e6, 86.86e6         # L = 262,144 and 524,288
BOUND_256000, BOUND_512000 = 27.04e6, 83.57e6     # L = 256,000 and 512,000
SUPPORTED = {25e6: 243_967, 75e6: 479_074, 100e6: 571_671}
# Pair i has no full turn when i > 64 * ln((L - 1) / 2pi) / ln(b):
# 25M over 262,144: 64 * 10.639 / 17.034 = 39.97; 75M over 524,288: 64 * 11.332 / 18.133 = 39.995;
# 100M over 524,288: 64 * 11.332 / 18.421 = 39.37. Each: pairs 40..63, 24 of them.
# 75M over 614,400: 64 * 11.491 / 18.133 = 40.56, so pairs 41..63 (23).


def test_bound_and_inverse_against_hand_values():
    assert theta_bounds.xu_lower_bound(262_144) == pytest.approx(BOUND_256K, rel=1e-3)
    assert theta_bounds.xu_lower_bound(524_288) == pytest.approx(BOUND_512K, rel=1e-3)
    assert theta_bounds.xu_lower_bound(256_000) == pytest.approx(BOUND_256000, rel=1e-3)
    assert theta_bounds.xu_lower_bound(512_000) == pytest.approx(BOUND_512000, rel=1e-3)
    for base, length in SUPPORTED.items():
        assert theta_bounds.supported_length(base) == pytest.approx(length, abs=1)


@pytest.mark.parametrize("base, length, first", [(25e6, 262_144, 40), (75e6, 524_288, 40), (100e6, 524_288, 40),
                                                 (75e6, 614_400, 41), (100e6, 614_400, 40)])
def test_incomplete_pairs_against_hand_values(base, length, first):
    assert theta_bounds.incomplete_pairs(base, length) == list(range(first, 64))
    assert theta_bounds.first_incomplete_pair(base, length) == first


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=16, max_value=1e9))
def test_inverting_the_fit_round_trips(length):
    base = theta_bounds.xu_lower_bound(length)
    assert theta_bounds.supported_length(base) == pytest.approx(length, rel=1e-9)
    assert theta_bounds.xu_lower_bound(theta_bounds.supported_length(base)) == pytest.approx(base, rel=1e-9)


@settings(max_examples=150, deadline=None)
@given(st.floats(min_value=1e3, max_value=1e12), st.floats(min_value=1e3, max_value=1e12),
       st.integers(min_value=2, max_value=4_000_000))
def test_incomplete_count_is_monotone_in_base(a, b, length):
    low, high = min(a, b), max(a, b)
    assert len(theta_bounds.incomplete_pairs(low, length)) <= len(theta_bounds.incomplete_pairs(high, length))


@settings(max_examples=150, deadline=None)
@given(st.floats(min_value=1e3, max_value=1e12), st.integers(min_value=8, max_value=4_000_000))
def test_reftrain_frequencies_agree_with_the_closed_form(base, length):
    """reftrain's float32 inv_freq and the float64 closed form disagree only at a boundary pair."""
    x = 64 * math.log((length - 1) / (2 * math.pi)) / math.log(base)
    if abs(x - round(x)) < 1e-4:
        return  # float32 rounding of inv_freq may decide the boundary pair either way
    missing = theta_bounds.incomplete_pairs(base, length)
    assert missing == list(range(theta_bounds.first_incomplete_pair(base, length), 64))


def test_script_claims_and_tables(analysis):
    data, stdout = analysis("theta_bounds")
    claims = {c["name"]: c for c in data["claims"]}
    assert claims["Xu bound at 256K, K=1,024 (L=262,144)"]["ours"] == pytest.approx(BOUND_256K / 1e6, abs=0.01)
    assert claims["Xu bound at 512K, K=1,024 (L=524,288)"]["ours"] == pytest.approx(BOUND_512K / 1e6, abs=0.01)
    assert data["k_1024_matches_paper"] and "truncated to whole millions" in stdout
    assert all(c["within_tolerance"] for c in data["claims"])
    rows = {r["base"]: r for r in data["bases"]}
    assert [rows[b]["training_length"] for b in (25e6, 75e6, 100e6)] == [262_144, 524_288, 524_288]
    for base, length in SUPPORTED.items():
        assert rows[base]["supported_length"] == pytest.approx(length, abs=1)
        assert rows[base]["incomplete_pairs"] == list(range(40, 64))
    # 75M's pair 40 turns 2*pi / inv_freq = 2*pi * 75e6**(80/128) = 524,920 tokens: just over 512K.
    assert rows[75e6]["first_incomplete_wavelength"] == pytest.approx(524_920, abs=2)
    assert data["incomplete_by_base_and_length"]["75M"]["614400"] == 23
    assert len(data["wavelengths"]["75M"]) == 64


def test_bad_head_dim_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "analyses" / "theta_bounds.py"), "--head-dim", "7",
                           "--out-dir", str(tmp_path)], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if "head-dim" in line]
    assert lines == ["theta_bounds: --head-dim must be an even number in 2..4096, got 7"]
