"""Device mesh (dp, fsdp, tp, sp), parameter partition rules and per-device parameter bytes.

Large matrices are sharded over fsdp and sp together (as the paper's codebase does: the sp
devices would otherwise hold full copies), heads and MLP width over tp. Activations carry the
batch over (dp, fsdp), the sequence over sp and heads over tp.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("dp", "fsdp", "tp", "sp")
BATCH = ("dp", "fsdp")
FSDP = ("fsdp", "sp")


def make_mesh(dp: int = 1, fsdp: int = 1, tp: int = 1, sp: int = 1, devices=None) -> Mesh:
    """Returns a Mesh with axes (dp, fsdp, tp, sp) over `devices` (default: all of jax's)."""
    sizes = {"dp": dp, "fsdp": fsdp, "tp": tp, "sp": sp}
    for name, size in sizes.items():
        if size < 1:
            raise ValueError(f"mesh axis {name} must be >= 1, got {size}")
    devices = list(jax.devices() if devices is None else devices)
    need = math.prod(sizes.values())
    if need > len(devices):
        raise ValueError(f"mesh dp={dp} fsdp={fsdp} tp={tp} sp={sp} needs {need} devices, {len(devices)} available")
    return Mesh(np.asarray(devices[:need]).reshape(dp, fsdp, tp, sp), AXES)


# (regex on the '/'-joined parameter path, spec of the trailing dims). Scanned layer params have
# one more leading axis (layers), left unsharded.
_RULES: tuple[tuple[str, tuple], ...] = (
    (r"embed/embedding$", ("tp", FSDP)),  # [V, D]
    (r"lm_head/kernel$", (FSDP, "tp")),  # [D, V]
    (r"attn/(q|k|v)/kernel$", (FSDP, "tp", None)),  # [D, H, Dh]
    (r"attn/o/kernel$", ("tp", None, FSDP)),  # [H, Dh, D]
    (r"mlp/(gate|up)/kernel$", (FSDP, "tp")),  # [D, F]
    (r"mlp/down/kernel$", ("tp", FSDP)),  # [F, D]
    (r"scale$", (None,)),  # RMSNorm [D]
)


def _path_name(path) -> str:
    return "/".join(str(getattr(key, "key", key)) for key in path)


def _fits(dim: int, axes, mesh: Mesh) -> bool:
    names = axes if isinstance(axes, tuple) else (axes,)
    return dim % math.prod(mesh.shape[n] for n in names) == 0


def param_spec(name: str, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Returns the PartitionSpec of parameter `name` (a '/'-joined path) of `shape`.

    An axis that does not divide its dimension is dropped (that dimension is replicated), so a
    tiny model still places on any mesh.
    """
    for pattern, trailing in _RULES:
        if re.search(pattern, name):
            lead = (None,) * (len(shape) - len(trailing))
            spec = lead + trailing
            return P(*(axes if axes is None or _fits(dim, axes, mesh) else None for dim, axes in zip(shape, spec)))
    raise ValueError(f"no partition rule for parameter {name} {shape}")


def param_specs(params, mesh: Mesh):
    """Returns a pytree of PartitionSpec matching `params` (arrays or ShapeDtypeStructs)."""
    return jax.tree_util.tree_map_with_path(lambda path, x: param_spec(_path_name(path), x.shape, mesh), params)


def param_shardings(params, mesh: Mesh):
    """Returns a pytree of NamedSharding matching `params`."""
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs(params, mesh))


def batch_spec() -> P:
    """Spec of a `[batch, len]` token array: batch over (dp, fsdp), sequence over sp."""
    return P(BATCH, "sp")


def activation_spec() -> P:
    """Spec of hidden states `[batch, len, D]`."""
    return P(BATCH, "sp", None)


def check_divisible(shape: tuple[int, int], mesh: Mesh) -> None:
    """Raises ValueError unless a `[batch, len]` array splits evenly over the mesh."""
    batch, length = shape
    ways = mesh.shape["dp"] * mesh.shape["fsdp"]
    if batch % ways:
        raise ValueError(f"batch {batch} is not divisible by dp x fsdp = {ways}")
    if length % mesh.shape["sp"]:
        raise ValueError(f"sequence length {length} is not divisible by sp={mesh.shape['sp']}")


def heads_spec() -> P:
    """Spec of q, k, v `[batch, len, heads, head_dim]` entering attention."""
    return P(BATCH, "sp", "tp", None)


@dataclass(frozen=True)
class ParamReport:
    """Parameter count and bytes: in total and on one device (the largest shard per leaf)."""

    count: int
    bytes_total: int
    bytes_per_device: int
    replicated_leaves: tuple[str, ...]

    def __str__(self) -> str:
        text = (
            f"{self.count:,} parameters, {self.bytes_total / 1e9:.2f} GB in total, "
            f"{self.bytes_per_device / 1e9:.2f} GB per device"
        )
        return text + (f" (replicated matrices: {', '.join(self.replicated_leaves)})" if self.replicated_leaves else "")


def param_report(params, mesh: Mesh) -> ParamReport:
    """Counts parameters of `params` (arrays or ShapeDtypeStructs) and their bytes per device."""
    count = bytes_total = bytes_device = 0
    replicated = []
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in flat:
        name = _path_name(path)
        spec = param_spec(name, leaf.shape, mesh)
        size = math.prod(leaf.shape)
        itemsize = np.dtype(leaf.dtype).itemsize
        shards = math.prod(
            math.prod(mesh.shape[n] for n in (axes if isinstance(axes, tuple) else (axes,)))
            for axes in spec
            if axes is not None
        )
        count += size
        bytes_total += size * itemsize
        bytes_device += size // shards * itemsize
        if shards == 1 and leaf.ndim > 1 + name.startswith("layers"):
            replicated.append(name)
    return ParamReport(count, bytes_total, bytes_device, tuple(replicated))


def zigzag_permutation(seq_len: int, sp: int) -> np.ndarray:
    """Returns the token order of the zigzag layout: `x[:, perm]` sharded contiguously over sp
    puts the sequence's chunks i and 2*sp-1-i (of seq_len / (2*sp) tokens) on device i.

    Under a causal mask every device then has the same work (reftrain.attention, layout
    "zigzag"); `np.argsort(perm)` restores the original order.
    """
    if seq_len % (2 * sp):
        raise ValueError(f"zigzag layout needs the sequence length {seq_len} divisible by 2 x sp = {2 * sp}")
    chunks = np.arange(seq_len).reshape(2 * sp, seq_len // (2 * sp))
    order = [c for i in range(sp) for c in (i, 2 * sp - 1 - i)]
    return chunks[order].reshape(seq_len)
