"""Export (ModelConfig, params) as a Hugging Face MistralForCausalLM checkpoint directory.

Everything is written into a temporary directory beside the target, which is renamed into
place only once complete: a crash leaves the target as it was (plus a `.NAME.tmp-*`
directory to delete), never a half-written checkpoint. Host memory: one shard's tensors
(at most `max_shard_bytes`, or one tensor if that is larger); layer slices are cut on the
device, so no whole `[L, ...]` leaf is copied to the host.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
from safetensors.numpy import save_file

from reftrain.config import DTYPES, ModelConfig
from reftrain.hf._config import CheckpointError, config_to_hf
from reftrain.hf._load import INDEX, SINGLE, numpy_dtype
from reftrain.hf._tensors import hf_tensors, leaf_at, rules

DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # transformers' historical "5GB"


def _check_params(config: ModelConfig, params) -> None:
    """Raises CheckpointError naming the first leaf whose shape differs from the config's."""
    want = {"/".join(r.path): r.leaf_shape(config) for r in rules(config)}
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    got = {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape) for path, leaf in flat}
    for name, shape in want.items():
        if name not in got:
            raise CheckpointError(f"params lack leaf {name}, which the config needs with shape {list(shape)}")
        if got[name] != shape:
            raise CheckpointError(f"params leaf {name} has shape {list(got[name])}, the config implies {list(shape)}")
    extra = sorted(set(got) - set(want))
    if extra:
        raise CheckpointError(
            f"params have leaf {extra[0]}, which this config does not take (tie_embeddings={config.tie_embeddings})"
        )


def _shard_plan(config: ModelConfig, itemsize: int, max_shard_bytes: int) -> list[list[str]]:
    """Returns HF tensor names grouped into shards, in checkpoint order, each under the limit."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, rule, _ in hf_tensors(config):
        nbytes = math.prod(rule.hf_shape(config)) * itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _prepare_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise CheckpointError(f"{path} exists and is not empty; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise CheckpointError(f"parent directory {path.parent} does not exist")


def _move_into_place(staging: Path, path: Path) -> None:
    """Renames the finished `staging` directory to `path`, replacing what was there."""
    if not path.exists():
        os.replace(staging, path)
        return
    old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
    os.replace(path, old / path.name)
    os.replace(staging, path)
    shutil.rmtree(old)


def save_checkpoint(
    config: ModelConfig,
    params: dict[str, Any],
    path: str | Path,
    *,
    dtype: str = "bfloat16",
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    max_position_embeddings: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes `params` of `config` to directory `path` as a MistralForCausalLM; returns the path.

    Tensors are cast to `dtype` ("bfloat16" or "float32") and split into shards of at most
    `max_shard_bytes` (`model-0000k-of-0000n.safetensors` plus `model.safetensors.index.json`,
    or one `model.safetensors`). config.json is `config_to_hf(config)`. An existing
    non-empty `path` is refused unless `overwrite`. Params must be fully addressable from
    this process (single-host); sharded arrays are fine.
    """
    if dtype not in DTYPES:
        raise CheckpointError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if max_shard_bytes < 1:
        raise CheckpointError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    path = Path(path).absolute()
    _check_params(config, params)
    _prepare_target(path, overwrite)
    hf_config = config_to_hf(config, dtype=dtype, max_position_embeddings=max_position_embeddings)
    np_dtype = numpy_dtype(dtype)
    plan = _shard_plan(config, np_dtype.itemsize, max_shard_bytes)
    by_name = {name: (rule, layer) for name, rule, layer in hf_tensors(config)}
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        weight_map: dict[str, str] = {}
        total_bytes = 0
        for k, names in enumerate(plan, start=1):
            file = SINGLE if len(plan) == 1 else f"model-{k:05d}-of-{len(plan):05d}.safetensors"
            tensors = {}
            for name in names:
                rule, layer = by_name[name]
                leaf = leaf_at(params, rule.path)
                value = np.asarray(jax.device_get(leaf if layer is None else leaf[layer]))
                tensors[name] = np.ascontiguousarray(rule.to_hf(value, config).astype(np_dtype))
                total_bytes += tensors[name].nbytes
                weight_map[name] = file
            save_file(tensors, staging / file, metadata={"format": "pt"})
            del tensors
        if len(plan) > 1:
            count = sum(math.prod(rule.hf_shape(config)) for rule, _ in by_name.values())
            index = {"metadata": {"total_size": total_bytes, "total_parameters": count}, "weight_map": weight_map}
            (staging / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        (staging / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        _move_into_place(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path
