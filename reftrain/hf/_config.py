"""ModelConfig <-> Hugging Face `MistralConfig` (config.json), in both transformers formats.

transformers 4.x writes `rope_theta` and `rope_scaling` at the top level; 5.x writes one
`rope_parameters` dict. We read either and write both, so a checkpoint we export loads in
either major version (checked with 4.57.6 and 5.23.0). The fields a ModelConfig has and
config.json does not (how the model runs: chunk sizes, remat, dtypes) travel in a `reftrain`
block that transformers keeps as an inert attribute, so export then import is lossless.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from reftrain.config import EXECUTION_FIELDS, ModelConfig, YarnConfig


class CheckpointError(ValueError):
    """A checkpoint or config we cannot import or export; the message is one line for the user."""


# Hugging Face MistralConfig's defaults for keys a config.json may leave out.
_HF_DEFAULTS = {
    "rms_norm_eps": 1e-6,
    "rope_theta": 10_000.0,
    "tie_word_embeddings": False,
    "max_position_embeddings": 4096 * 32,
    "sliding_window": 4096,
    "hidden_act": "silu",
}
# The `reftrain` block of an exported config.json: the model's name and its RoPE numerics. How
# it ran (its Execution: chunks, kernel, remat, dtypes) is a plan's, not the checkpoint's;
# blocks written before carried them too, and they are read and left out.
REFTRAIN_BLOCK = ("name", "rope_dtype")
DEFAULT_MAX_POSITION_EMBEDDINGS = 32_768  # Mistral-7B-v0.2's, written when nothing says more


def _rope_scaling(hf_config: dict) -> tuple[float, dict | None]:
    """Returns (theta, scaling dict or None) from either the 4.x or the 5.x layout."""
    params = hf_config.get("rope_parameters")
    if params is not None and not isinstance(params, dict):
        raise CheckpointError(f"rope_parameters must be a JSON object, got {params!r}")
    if isinstance(params, dict) and any(isinstance(v, dict) for v in params.values()):
        raise CheckpointError(f"per-layer-type rope_parameters are not supported: {sorted(params)}")
    scaling = hf_config.get("rope_scaling") or params or {}
    if not isinstance(scaling, dict):
        raise CheckpointError(f"rope_scaling must be a JSON object or null, got {scaling!r}")
    theta = (params or {}).get("rope_theta") or hf_config.get("rope_theta") or _HF_DEFAULTS["rope_theta"]
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return float(theta), None
    return float(theta), {**scaling, "rope_type": rope_type}


def _yarn_from_hf(scaling: dict, max_positions: int) -> YarnConfig:
    """Maps a `rope_type: yarn` dict to YarnConfig; refuses what our YaRN does not compute."""
    factor = scaling.get("factor")
    original = scaling.get("original_max_position_embeddings") or max_positions
    if factor is None:
        factor = max_positions / original
    ours = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    attention_factor = scaling.get("attention_factor")
    if scaling.get("mscale") and scaling.get("mscale_all_dim"):  # DeepSeek-style, as transformers computes it
        get_mscale = lambda m: 0.1 * m * math.log(factor) + 1.0 if factor > 1 else 1.0  # noqa: E731
        attention_factor = get_mscale(scaling["mscale"]) / get_mscale(scaling["mscale_all_dim"])
    if attention_factor is not None and not math.isclose(attention_factor, ours, rel_tol=1e-6):
        raise CheckpointError(
            f"yarn attention factor {attention_factor:.6g} differs from 0.1*ln(factor)+1 = {ours:.6g}, "
            "the only one we compute"
        )
    try:
        return YarnConfig(
            factor=float(factor),
            original_length=int(original),
            alpha=float(scaling.get("beta_slow") or 1.0),
            beta=float(scaling.get("beta_fast") or 32.0),
            ramp="index",  # what transformers computes for this checkpoint
            truncate=bool(scaling.get("truncate", True)),
        )
    except ValueError as error:
        raise CheckpointError(f"invalid yarn rope_scaling {scaling}: {error}") from None


def config_from_hf(hf_config: dict, *, allow_sliding_window: bool = False, **overrides) -> ModelConfig:
    """Returns the ModelConfig of a Hugging Face Mistral config.json dict, with `overrides`.

    Architecture fields come from the HF keys; execution fields (chunks, dtypes, remat) from
    the `reftrain` block our export writes, else ModelConfig's defaults; `overrides` (any
    ModelConfig field) win over both. Raises CheckpointError (one line) for a model type,
    activation, RoPE scaling or sliding window we do not implement. A sliding window
    shorter than max_position_embeddings is refused unless `allow_sliding_window` (the
    imported model then attends over the whole context, unlike the original).
    """
    if hf_config.get("model_type") != "mistral":
        raise CheckpointError(f"model_type must be 'mistral', got {hf_config.get('model_type')!r}")
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [key for key in required if hf_config.get(key) is None]
    if missing:
        raise CheckpointError(f"config.json lacks required field(s) {', '.join(missing)}")

    def get(key: str):
        return hf_config[key] if hf_config.get(key) is not None else _HF_DEFAULTS[key]

    if get("hidden_act") != "silu":
        raise CheckpointError(f"hidden_act must be 'silu', got {get('hidden_act')!r}")
    max_positions = int(get("max_position_embeddings"))
    window = hf_config.get("sliding_window", _HF_DEFAULTS["sliding_window"])
    if window is not None and window < max_positions and not allow_sliding_window:
        raise CheckpointError(
            f"sliding_window={window} is smaller than max_position_embeddings={max_positions} and we do not "
            "implement sliding-window attention; pass allow_sliding_window=True to import it as full attention"
        )
    rope_parameters = hf_config.get("rope_parameters") or {}
    partial = hf_config.get("partial_rotary_factor", rope_parameters.get("partial_rotary_factor"))
    if partial not in (None, 1, 1.0):
        raise CheckpointError(f"partial_rotary_factor={partial} is not supported (we rotate the whole head)")
    theta, scaling = _rope_scaling(hf_config)
    yarn = None
    if scaling is not None:
        if scaling["rope_type"] != "yarn":
            raise CheckpointError(f"rope_scaling type {scaling['rope_type']!r} is not supported (only 'yarn' is)")
        yarn = _yarn_from_hf(scaling, max_positions)
    hidden, q_heads = int(hf_config["hidden_size"]), int(hf_config["num_attention_heads"])
    block = hf_config.get("reftrain") or {}
    unknown = set(block) - set(REFTRAIN_BLOCK) - set(EXECUTION_FIELDS)
    if unknown:
        raise CheckpointError(f"config.json 'reftrain' block has unknown fields {sorted(unknown)}")
    block = {name: block[name] for name in REFTRAIN_BLOCK if name in block}
    values: dict[str, Any] = {
        "name": "hf-mistral",
        **block,
        "vocab_size": int(hf_config["vocab_size"]),
        "hidden_size": hidden,
        "num_layers": int(hf_config["num_hidden_layers"]),
        "num_q_heads": q_heads,
        "num_kv_heads": int(hf_config.get("num_key_value_heads") or q_heads),
        "head_dim": int(hf_config.get("head_dim") or hidden // q_heads),
        "intermediate_size": int(hf_config["intermediate_size"]),
        "rms_norm_eps": float(get("rms_norm_eps")),
        "tie_embeddings": bool(get("tie_word_embeddings")),
        "rope_theta": theta,
        "yarn": yarn,
    }
    if hf_config.get("initializer_range") is not None:
        values["initializer_range"] = float(hf_config["initializer_range"])
    try:  # overrides may name execution fields too (replace routes them)
        return ModelConfig(**values).replace(**overrides)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"config.json does not make a valid ModelConfig: {error}") from None


def config_to_hf(config: ModelConfig, *, dtype: str = "bfloat16", max_position_embeddings: int | None = None) -> dict:
    """Returns the config.json dict of a MistralForCausalLM equal to `config`.

    `dtype` is the tensors' dtype (the `dtype` key, which transformers >= 4.56 reads). The context
    length is `max_position_embeddings`, else YaRN's factor x original length, else 32768
    (ModelConfig has no context length). sliding_window is null: we attend to everything.
    """
    if max_position_embeddings is None:
        yarn = config.yarn
        max_position_embeddings = (
            round(yarn.factor * yarn.original_length) if yarn is not None else DEFAULT_MAX_POSITION_EMBEDDINGS
        )
    rope_parameters: dict[str, Any] = {"rope_type": "default", "rope_theta": config.rope_theta}
    rope_scaling = None
    if config.yarn is not None:
        if config.yarn.ramp != "index":
            raise CheckpointError(
                "cannot export YaRN with ramp='rotations': transformers computes the index ramp, so the "
                "exported model would differ; use YarnConfig(ramp='index')"
            )
        rope_scaling = {
            "rope_type": "yarn",
            "type": "yarn",  # transformers < 4.41 reads `type`
            "factor": config.yarn.factor,
            "original_max_position_embeddings": config.yarn.original_length,
            "beta_slow": config.yarn.alpha,
            "beta_fast": config.yarn.beta,
            "truncate": config.yarn.truncate,
        }
        rope_parameters = {**rope_scaling, "rope_theta": config.rope_theta}
        del rope_parameters["type"]
    fields = dataclasses.asdict(config)
    return {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_q_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": int(max_position_embeddings),
        "initializer_range": config.initializer_range,
        "rms_norm_eps": config.rms_norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
        "rope_theta": config.rope_theta,
        "rope_scaling": rope_scaling,
        "rope_parameters": rope_parameters,
        "sliding_window": None,
        "attention_dropout": 0.0,
        "use_cache": True,
        "dtype": dtype,
        "reftrain": {name: fields[name] for name in REFTRAIN_BLOCK},
    }
