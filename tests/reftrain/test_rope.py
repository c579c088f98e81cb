"""RoPE: float32 angles by construction, relative-position invariance, the paper's bf16 failure, YaRN."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from reftrain.config import YarnConfig, get_config
from reftrain.rope import apply_rope, inverse_frequencies, rope_angles, rope_tables, yarn_ramp_scale

THETA = 75e6
HEAD_DIM = 128
POSITIONS = np.arange(262_144, 262_152)


def test_float32_angles_increase_and_match_float64():
    inv_freq = inverse_frequencies(HEAD_DIM, THETA)
    angles = np.asarray(rope_angles(jnp.asarray(POSITIONS, jnp.int32), inv_freq))
    assert angles.dtype == np.float32
    reference = POSITIONS[:, None].astype(np.float64) * THETA ** (-2.0 * np.arange(HEAD_DIM // 2) / HEAD_DIM)
    assert np.all(np.diff(angles, axis=0) > 0), "every rotation pair must distinguish consecutive positions"
    assert np.max(np.abs(angles - reference)) < 0.05


def test_bfloat16_angles_collapse_the_positions():
    """Section 4.2: in bf16, positions 262,144..262,151 share one angle in every pair."""
    inv_freq = inverse_frequencies(HEAD_DIM, THETA)
    angles = np.asarray(rope_angles(jnp.asarray(POSITIONS, jnp.int32), inv_freq, "bfloat16").astype(jnp.float32))
    assert np.all(angles == angles[0]), "bf16 positions above 2^18 are 2,048 apart: these 8 collapse to one"
    distinct = np.unique(np.asarray(jnp.arange(524_288, dtype=jnp.int32).astype(jnp.bfloat16).astype(jnp.float32)))
    assert len(distinct) == 1665


def _score(config, m: int, n: int, q: np.ndarray, k: np.ndarray) -> float:
    cos, sin = rope_tables(jnp.asarray([[m, n]], jnp.int32), config)
    x = jnp.asarray(np.stack([q, k])[None, :, None, :], jnp.float32)
    rotated = np.asarray(apply_rope(x, cos, sin), np.float64)[0, :, 0]
    return float(rotated[0] @ rotated[1])


@pytest.mark.parametrize("base", [0, 2**18])
def test_score_depends_only_on_relative_offset(base):
    config = get_config("mistral-7b", rope_theta=THETA, compute_dtype="float32")
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((2, HEAD_DIM))
    for offset in (0, 1, 3, 7):
        reference = _score(config, 10 + offset, 10, q, k)
        score = _score(config, base + 10 + offset, base + 10, q, k)
        assert abs(score - reference) < 0.05 * (np.linalg.norm(q) * np.linalg.norm(k)) ** 0.5
    near = [_score(config, base + 10 + o, base + 10, q, k) for o in (0, 1, 3, 7)]
    assert len(set(np.round(near, 3))) == 4, "different offsets must give different scores"


def test_bfloat16_mode_loses_the_offset_near_2_pow_18():
    config = get_config("mistral-7b", rope_theta=THETA, compute_dtype="float32", rope_dtype="bfloat16")
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((2, HEAD_DIM))
    base = 2**18
    scores = [_score(config, base + o, base, q, k) for o in range(8)]
    assert np.allclose(scores, scores[0]), "the paper's failure: offsets 0..7 are indistinguishable"
    exact = get_config("mistral-7b", rope_theta=THETA, compute_dtype="float32")
    assert not np.isclose(_score(exact, base + 3, base, q, k), scores[0])


def test_rope_tables_cast_only_at_the_end():
    config = get_config("mistral-7b", rope_theta=THETA)  # compute dtype bfloat16
    positions = jnp.asarray(POSITIONS[None], jnp.int32)
    cos, sin = rope_tables(positions, config)
    assert cos.dtype == jnp.bfloat16 and sin.dtype == jnp.bfloat16
    angles = POSITIONS[:, None] * inverse_frequencies(HEAD_DIM, THETA).astype(np.float64)
    expected = np.cos(angles).astype(jnp.bfloat16).astype(np.float32)
    # A float32 angle here is off by at most half an ulp (2^-6 rad), plus one bf16 rounding of cos.
    assert np.max(np.abs(np.asarray(cos[0], np.float32) - expected)) <= 2**-6 + 2**-8
    bf16_cos, _ = rope_tables(positions, config.replace(rope_dtype="bfloat16"))
    assert np.max(np.abs(np.asarray(bf16_cos[0], np.float32) - expected)) > 0.5, "bf16 angles are far off"
    with pytest.raises(TypeError):
        rope_tables(positions.astype(jnp.float32), config)


def _yarn_reference(d: int, head_dim: int, theta: float, yarn: YarnConfig) -> float:
    """YaRN's per-pair frequency, written out from its definition in float64."""
    inv_freq = theta ** (-2.0 * d / head_dim)
    rotations = yarn.original_length / (2 * math.pi / inv_freq)
    if rotations < yarn.alpha:
        return inv_freq / yarn.factor
    if rotations > yarn.beta:
        return inv_freq
    gamma = (rotations - yarn.alpha) / (yarn.beta - yarn.alpha)
    return (1 - gamma) * inv_freq / yarn.factor + gamma * inv_freq


def test_yarn_matches_its_formula():
    yarn = YarnConfig(factor=16.0, original_length=32_768, alpha=1.0, beta=4.0)
    theta = 1e6
    ours = inverse_frequencies(HEAD_DIM, theta, yarn)
    reference = np.asarray([_yarn_reference(d, HEAD_DIM, theta, yarn) for d in range(HEAD_DIM // 2)])
    np.testing.assert_allclose(ours, reference, rtol=1e-6)
    scale = yarn_ramp_scale(theta ** (-2.0 * np.arange(HEAD_DIM // 2) / HEAD_DIM), yarn)
    ramp = (scale > 1 / 16 + 1e-9) & (scale < 1 - 1e-9)
    assert scale[0] == 1.0 and scale[-1] == 1 / 16 and ramp.any(), "the sample must cover all three regions"
    assert yarn.mscale == pytest.approx(0.1 * math.log(16) + 1)
    cos, _ = rope_tables(jnp.zeros((1, 1), jnp.int32), get_config("tiny", yarn=yarn, compute_dtype="float32"))
    np.testing.assert_allclose(np.asarray(cos), yarn.mscale, rtol=1e-6)


def test_yarn_rejects_bad_parameters():
    with pytest.raises(ValueError):
        YarnConfig(factor=0.5)
    with pytest.raises(ValueError):
        YarnConfig(factor=4.0, alpha=4.0, beta=1.0)
