"""analyses/rope_precision.py against an independent bfloat16 written by hand in numpy.

numpy has no bfloat16, so the oracle rounds by hand: an integer keeps its 8 leading significant
bits, round to nearest, ties to even; a float32 keeps the top 16 bits of its pattern after the
usual round-to-nearest-even bias. The script uses jnp's casts (through reftrain.rope).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "analyses"))

import rope_precision  # noqa: E402
from reftrain.rope import inverse_frequencies  # noqa: E402

N = 524_288


def bf16_round_integers(n) -> np.ndarray:
    """Returns non-negative integers rounded to 8 significant bits, ties to even (int64)."""
    n = np.asarray(n, np.int64)
    positive = np.maximum(n, 1)
    exponent = np.floor(np.log2(positive)).astype(np.int64)  # 2^exponent <= n < 2^(exponent + 1)
    exponent -= np.left_shift(1, exponent) > positive         # guard log2 rounding near powers of two
    exponent += np.left_shift(1, exponent + 1) <= positive
    shift = np.maximum(exponent - 7, 0)                    # bits below the 8 significant ones
    kept = np.right_shift(n, shift)
    rest = n - np.left_shift(kept, shift)
    half = np.where(shift > 0, np.left_shift(1, np.maximum(shift - 1, 0)), 1)
    up = (shift > 0) & ((rest > half) | ((rest == half) & (kept % 2 == 1)))
    return np.left_shift(kept + up, shift)


def bf16_round_float32(x) -> np.ndarray:
    """Returns float32 values rounded to bfloat16 (nearest, ties to even), as float32."""
    bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return bits.astype(np.uint32).view(np.float32)


def test_oracle_gives_the_issue_numbers():
    rounded = bf16_round_integers(np.arange(N))
    # 0..255 exact (256 values), then 128 values per binade [2^k, 2^(k+1)) for k = 8..18, and
    # 524,287 rounds up to 524,288: 256 + 11 * 128 + 1 = 1,665.
    assert len(np.unique(rounded)) == 256 + 11 * 128 + 1 == 1665
    assert set(np.diff(np.unique(rounded[262_144:]))) == {2048}
    assert np.max(np.abs(rounded - np.arange(N))) == 1024
    assert np.all(rounded[:257] == np.arange(257)) and rounded[257] != 257


def test_oracle_matches_jnp_on_every_position_below_512k():
    assert np.array_equal(bf16_round_integers(np.arange(N)), rope_precision.bf16_positions(N))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=1 << 24), min_size=1, max_size=64))
def test_integer_oracle_matches_jnp_bfloat16(values):
    # Up to 2^24 an int32 is exact in float32, so any route XLA takes to bf16 rounds once.
    cast = np.asarray(jnp.asarray(values, jnp.int32).astype(jnp.bfloat16).astype(jnp.float32)).astype(np.int64)
    assert np.array_equal(bf16_round_integers(values), cast)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=-2.0**100, max_value=2.0**100, width=32),
                min_size=1, max_size=64))
def test_float_oracle_matches_jnp_bfloat16(values):
    cast = np.asarray(jnp.asarray(values, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32))
    assert np.array_equal(bf16_round_float32(values), cast)


def test_script_numbers_against_the_oracle(analysis):
    data, stdout = analysis("rope_precision")
    positions = data["positions"]
    assert positions["distinct"] == 1665 and positions["top_binade_spacing"] == [2048]
    assert positions["top_binade"] == [262_144, N] and positions["max_error_tokens"] == 1024
    assert positions["largest_exact"] == 256 and positions["needle_max_span"] == 2
    claims = {c["name"]: c for c in data["claims"]}
    assert claims["distinct bf16 values of positions 0..524,287"]["ours"] == 1665
    assert claims["bf16 spacing of positions in [262,144, 524,287]"]["ours"] == 2048
    assert all(c["paper"] is None for c in data["claims"]), "section 4.2 states no numbers"

    # The bf16 angle table rebuilt by hand: round(round(p) * round(inv_freq)); a product of two
    # 8-bit significands is exact in float32, so one more rounding gives the bf16 product.
    angles = data["angles"]
    inv_freq = inverse_frequencies(128, 75e6)
    p32 = bf16_round_integers(np.arange(N)).astype(np.float32)
    exact = np.arange(N, dtype=np.float64)
    scrambled, randomised = [], []
    for d in range(64):
        angle = bf16_round_float32(p32 * bf16_round_float32(inv_freq[d]))
        error = np.abs(rope_precision.wrap(angle.astype(np.float64) - exact * np.float64(inv_freq[d])))
        assert error.max() == pytest.approx(angles["bf16_max"][d], rel=1e-9, abs=1e-12)
        scrambled += [d] if error.max() > math.pi / 2 else []
        randomised += [d] if error[N // 2:].mean() >= 0.9 * math.pi / 2 else []
    assert angles["scrambled"] == scrambled == list(range(27))
    assert angles["randomised"] == randomised == list(range(23))
    # float32 angles: at most half an ulp of a value below 2^19, i.e. 2^-6 rad (docs/model.md).
    assert max(angles["f32_max"]) <= 2**-6
    running = data["binned"]["scrambled_pairs_up_to_bin_end"]
    assert running == sorted(running) and running[-1] == 27

    drift = data["drift"]
    assert drift["replay_vs_model"] < 1e-4
    control, bug, fix, both = drift["modes"].values()
    for row in control:  # float32 RoPE against itself: the replay is deterministic, so exactly 0
        assert row["scores"] == [0.0] * len(row["scores"]) and row["hidden"] == [0.0] * len(row["hidden"])
        assert row["final"] == 0.0
    for mode in (bug, fix, both):
        assert all(v > 0 for row in mode for v in (*row["scores"], *row["hidden"], row["final"]))
    assert bug[-1]["scores"][0] > 10 * fix[-1]["scores"][0] > 0, "bf16 RoPE must dwarf the bf16 compute noise"
    assert bug[-1]["scores"][0] > bug[0]["scores"][0] > 0, "the drift grows with position"
    assert len(bug[0]["scores"]) == data["inputs"]["layers"]


@pytest.mark.parametrize("flag, value", [("--seq", "5"), ("--layers", "0")])
def test_bad_input_is_one_line_and_exit_2(tmp_path, flag, value):
    done = subprocess.run([sys.executable, str(REPO / "analyses" / "rope_precision.py"), flag, value,
                           "--out-dir", str(tmp_path)], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if flag in line]
    assert len(lines) == 1 and lines[0].startswith(f"rope_precision: {flag} must be")
