"""Import a Hugging Face Mistral checkpoint directory into (ModelConfig, params).

Memory: one parameter leaf at a time. Each leaf (for layer tensors the `[L, ...]` stack) is
preallocated on the host in `param_dtype`, filled tensor by tensor from the memory-mapped
safetensors files (any shard, in any order), placed on the device(s), and dropped. So the
host holds at most the largest leaf (about 1/10 of a 7B model) beyond the result, whatever
the number of shards. bfloat16 tensors arrive as ml_dtypes.bfloat16 numpy arrays (safetensors'
numpy API), so bf16 -> bf16 is bit-exact and bf16 -> float32 is exact.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np
from jax.sharding import Mesh
from safetensors import SafetensorError, safe_open

from reftrain.config import ModelConfig
from reftrain.hf._config import CheckpointError, config_from_hf
from reftrain.hf._tensors import hf_tensors, is_ignored, leaf_at, rules
from reftrain.model import abstract_params
from reftrain.sharding import param_shardings

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
_DTYPES = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32}


def numpy_dtype(name: str) -> np.dtype:
    """Returns the numpy dtype of "float32" | "bfloat16" (bfloat16 from ml_dtypes)."""
    return np.dtype(ml_dtypes.bfloat16 if name == "bfloat16" else name)


def read_hf_config(path: Path) -> dict:
    """Returns config.json of checkpoint directory `path` as a dict."""
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} has no config.json")
    try:
        hf_config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{config_file} is not valid JSON: {error}") from None
    if not isinstance(hf_config, dict):
        raise CheckpointError(f"{config_file} must hold a JSON object")
    return hf_config


def weight_files(path: Path) -> dict[str, str]:
    """Returns {tensor name: file name} from the shard index, or from the single file."""
    index = path / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{index} is not a safetensors index ({error})") from None
        for name in sorted(set(weight_map.values())):
            if not (path / name).is_file():
                raise CheckpointError(f"{index} names shard {name}, which is missing from {path}")
        return dict(weight_map)
    if (path / SINGLE).is_file():
        with _open(path / SINGLE) as f:
            return {name: SINGLE for name in f.keys()}
    found = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".safetensors"))
    raise CheckpointError(f"{path} has neither {SINGLE} nor {INDEX} (found: {', '.join(found) or 'no weight files'})")


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint holds, checked against its config without reading tensor data."""

    config: ModelConfig
    weight_map: dict[str, str]  # HF tensor name -> file name
    dtypes: dict[str, str]  # safetensors dtype code ("BF16", "F32") -> tensor count
    parameter_count: int
    total_bytes: int


def inspect_checkpoint(path: str | Path, *, allow_sliding_window: bool = False, **config_overrides) -> CheckpointInfo:
    """Returns the checkpoint's config and tensor inventory; raises CheckpointError on any mismatch.

    Every tensor the config needs must be present with the shape it implies, and no other
    tensor may be (except RoPE's `inv_freq` buffers). Reads only the safetensors headers.
    """
    path = Path(path)
    config = config_from_hf(read_hf_config(path), allow_sliding_window=allow_sliding_window, **config_overrides)
    weight_map = weight_files(path)
    expected = {name: rule.hf_shape(config) for name, rule, _ in hf_tensors(config)}
    missing = [name for name in expected if name not in weight_map]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(
            f"checkpoint {path} is missing tensor {missing[0]}{more}, expected shape {list(expected[missing[0]])}"
        )
    unexpected = sorted(name for name in weight_map if name not in expected and not is_ignored(name, config))
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(
            f"checkpoint {path} has unexpected tensor {unexpected[0]}{more} in {weight_map[unexpected[0]]}, "
            "which no parameter of a Mistral model with this config takes"
        )
    dtypes: dict[str, int] = {}
    total_bytes = 0
    with _open_shards(path, weight_map) as shards:
        for name, shape in expected.items():
            file = weight_map[name]
            if name not in shards[file].keys():
                raise CheckpointError(f"{INDEX} places tensor {name} in {file}, which does not hold it")
            tensor = shards[file].get_slice(name)
            actual, dtype = tuple(tensor.get_shape()), tensor.get_dtype()
            if actual != shape:
                raise CheckpointError(
                    f"tensor {name} in {file} has shape {list(actual)}, the config implies {list(shape)}"
                )
            if dtype not in _DTYPES:
                raise CheckpointError(f"tensor {name} in {file} has dtype {dtype}; supported: {', '.join(_DTYPES)}")
            dtypes[dtype] = dtypes.get(dtype, 0) + 1
            total_bytes += math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize
    count = sum(math.prod(shape) for shape in expected.values())
    return CheckpointInfo(config, weight_map, dtypes, count, total_bytes)


def _open(file: Path):
    """Opens a safetensors file (memory-mapped), as CheckpointError if it is not one."""
    try:
        return safe_open(file, framework="numpy")
    except SafetensorError as error:
        raise CheckpointError(f"{file} is not a readable safetensors file: {error}") from None


@contextlib.contextmanager
def _open_shards(path: Path, weight_map: dict[str, str]):
    """Yields {file name: safe_open handle} for every file the map names (memory-mapped)."""
    with contextlib.ExitStack() as stack:
        yield {
            file: stack.enter_context(_open(path / file))
            for file in sorted(set(weight_map.values()))
        }


def _place(host: np.ndarray, sharding) -> jax.Array:
    """Puts a host array on the device(s): whole, or each device's slice of a NamedSharding."""
    if sharding is None:
        return jax.device_put(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def load_checkpoint(
    path: str | Path,
    *,
    param_dtype: str | None = None,
    mesh: Mesh | None = None,
    allow_sliding_window: bool = False,
    **config_overrides,
) -> tuple[ModelConfig, dict[str, Any]]:
    """Returns (config, params) of a Hugging Face Mistral checkpoint directory.

    `path` holds config.json and `model.safetensors` or sharded files with
    `model.safetensors.index.json` (bfloat16, float16 or float32 tensors). Params are cast
    to `param_dtype` (default: the config's, float32 unless the checkpoint was exported by
    us with another); with a `mesh` each leaf is placed with `param_shardings`.
    `config_overrides` are ModelConfig fields (e.g. compute_dtype, q_chunk, rope_theta).
    Raises CheckpointError naming the tensor for a missing, unexpected or mis-shaped tensor.
    """
    if param_dtype is not None:
        if config_overrides.get("param_dtype", param_dtype) != param_dtype:
            other = config_overrides["param_dtype"]
            raise CheckpointError(f"param_dtype={param_dtype!r} conflicts with config override param_dtype={other!r}")
        config_overrides["param_dtype"] = param_dtype
    path = Path(path)
    info = inspect_checkpoint(path, allow_sliding_window=allow_sliding_window, **config_overrides)
    config = info.config
    abstract = abstract_params(config)
    shardings = param_shardings(abstract, mesh) if mesh is not None else None
    dtype = numpy_dtype(config.param_dtype)
    params: dict[str, Any] = {}
    with _open_shards(path, info.weight_map) as shards:
        for rule in rules(config):
            host = np.empty(rule.leaf_shape(config), dtype)
            layers = range(config.num_layers) if rule.layered else [None]
            for layer in layers:
                name = rule.hf_name.format(i=layer)
                tensor = shards[info.weight_map[name]].get_tensor(name)
                if layer is None:
                    host[...] = rule.to_ours(tensor, config)
                else:
                    host[layer] = rule.to_ours(tensor, config)
                del tensor
            node = params
            for key in rule.path[:-1]:
                node = node.setdefault(key, {})
            sharding = leaf_at(shardings, rule.path) if shardings is not None else None
            node[rule.path[-1]] = _place(host, sharding)
            del host
    _check_tree(params, abstract)
    return config, params


def _check_tree(params, abstract) -> None:
    """Asserts the imported tree is exactly what the model builds (a mapping bug, not user error)."""
    got = jax.tree.map(lambda x: (x.shape, x.dtype), params)
    want = jax.tree.map(lambda x: (x.shape, x.dtype), abstract)
    if got != want:
        raise AssertionError(f"imported parameter tree differs from the model's: {got} != {want}")
