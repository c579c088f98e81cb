"""Rotary position embeddings in the half-split layout of Hugging Face Mistral checkpoints.

Pair d of a head vector is (x[d], x[d + Dh/2]), rotated by angle `position * inv_freq[d]`.
Positions are int32 and frequencies and angles are float32 whatever the compute dtype; cos and
sin are cast to the compute dtype only at the end. `rope_dtype="bfloat16"` builds the angle
table in bfloat16 as the MegaBeam paper's codebase did (section 4.2): `position x frequency`
keeps 8 significant bits, so positions 262,144..524,287 are 2,048 apart and a 7-digit needle
at depth ~500K shares one rotation. It exists to reproduce that failure, never to train.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from reftrain.config import ModelConfig, YarnConfig


# Xu et al. (2024), Fig. 1: the fitted lower bound of the RoPE base for a context length (the
# MegaBeam paper's section 4.1 argument for 25M at 256K and 75M at 512K).
XU_COEFFICIENT, XU_EXPONENT = 0.0424, 1.628


def xu_lower_bound(length: float) -> float:
    """Returns the smallest RoPE base Xu et al.'s fit allows for context length `length`."""
    return XU_COEFFICIENT * length**XU_EXPONENT


def inverse_frequencies(head_dim: int, theta: float, yarn: YarnConfig | None = None) -> np.ndarray:
    """Returns float32 `[head_dim // 2]`: theta ** (-2d / head_dim), YaRN-scaled if given.

    Computed in float64 on the host and rounded once, so it is the same on every backend.
    """
    d = np.arange(head_dim // 2, dtype=np.float64)
    inv_freq = theta ** (-2.0 * d / head_dim)
    if yarn is not None:
        inv_freq = inv_freq * yarn_ramp_scale(inv_freq, yarn)
    return inv_freq.astype(np.float32)


def yarn_ramp_scale(inv_freq: np.ndarray, yarn: YarnConfig) -> np.ndarray:
    """Returns the per-pair frequency multiplier of YaRN: (1 - g) / s + g.

    ramp "rotations": g = clip((r - alpha) / (beta - alpha), 0, 1) where r = original_length /
    wavelength is the number of full rotations pair d makes over the original context.
    ramp "index": g falls linearly in the pair index d from 1 at the pair that turns `beta`
    times to 0 at the one that turns `alpha` times (transformers' `_compute_yarn_parameters`).
    """
    if yarn.ramp == "index":
        return _index_ramp_scale(len(inv_freq), inv_freq, yarn)
    rotations = yarn.original_length * inv_freq / (2 * math.pi)
    gamma = np.clip((rotations - yarn.alpha) / (yarn.beta - yarn.alpha), 0.0, 1.0)
    return (1.0 - gamma) / yarn.factor + gamma


def _index_ramp_scale(pairs: int, inv_freq: np.ndarray, yarn: YarnConfig) -> np.ndarray:
    # The pair index d (fractional) at which a pair turns `rotations` times: inv_freq is
    # theta^(-d/pairs), so d = pairs * log(L / (2 pi rotations)) / log(theta).
    log_theta = -math.log(float(inv_freq[1])) * pairs if pairs > 1 else 1.0

    def pair_turning(rotations: float) -> float:
        return pairs * math.log(yarn.original_length / (rotations * 2 * math.pi)) / log_theta

    low, high = pair_turning(yarn.beta), pair_turning(yarn.alpha)
    if yarn.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, 2 * pairs - 1)
    if low == high:
        high += 0.001
    gamma = 1.0 - np.clip((np.arange(pairs) - low) / (high - low), 0.0, 1.0)
    return (1.0 - gamma) / yarn.factor + gamma


def rope_angles(positions: jax.Array, inv_freq: jax.Array | np.ndarray, rope_dtype: str = "float32") -> jax.Array:
    """Returns angles `[..., head_dim // 2]` = positions[..., None] * inv_freq in `rope_dtype`."""
    dtype = jnp.dtype(rope_dtype)
    return positions.astype(dtype)[..., None] * jnp.asarray(inv_freq, dtype)


def rope_tables(positions: jax.Array, config: ModelConfig) -> tuple[jax.Array, jax.Array]:
    """Returns (cos, sin), each `[..., head_dim // 2]` in the compute dtype, for int positions."""
    if not jnp.issubdtype(positions.dtype, jnp.integer):
        raise TypeError(f"positions must be integers, got {positions.dtype}")
    inv_freq = inverse_frequencies(config.head_dim, config.rope_theta, config.yarn)
    angles = rope_angles(positions.astype(jnp.int32), inv_freq, config.rope_dtype)
    scale = config.yarn.mscale if config.yarn is not None else 1.0
    cos = jnp.cos(angles.astype(jnp.float32)) * scale
    sin = jnp.sin(angles.astype(jnp.float32)) * scale
    dtype = jnp.dtype(config.compute_dtype)
    return cos.astype(dtype), sin.astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates x `[batch, len, heads, head_dim]` by cos, sin `[batch, len, head_dim // 2]`."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos = cos[..., None, :].astype(x.dtype)
    sin = sin[..., None, :].astype(x.dtype)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
