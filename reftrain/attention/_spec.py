"""The vocabulary every attention module shares: the spec, the mask, the kernel contract.

Shapes: B batch, T/Tq/Tk lengths, Hq/Hkv heads (Hq % Hkv == 0, GQA), D head_dim.
"""

from __future__ import annotations

from typing import Callable, Hashable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from reftrain.execution import ATTENTION_KERNELS as KERNELS
from reftrain.execution import SEQUENCE_LAYOUTS as LAYOUTS
from reftrain.execution import Execution

#: The defaults of every attention entry point: reftrain.execution's, written there once.
DEFAULT = Execution()


def resolve_kernel(kernel: str, platform: str | None = None) -> str:
    """Returns "xla" or "cudnn": `auto` picks cuDNN on an NVIDIA GPU, our XLA loops elsewhere."""
    if kernel not in KERNELS:
        raise ValueError(f"attention kernel {kernel!r} is not one of {', '.join(KERNELS)}")
    if kernel != "auto":
        return kernel
    return "cudnn" if (platform or jax.default_backend()) in ("gpu", "cuda") else "xla"


class AttentionSpec(NamedTuple):
    """Everything static about one attention call, checked once by `check`.

    causal: keys after a query are hidden. layout: how the sequence lies on the `axis_name`
    ring (None: one device); "zigzag" gives device i the chunks i and 2N-1-i of 2N.
    q_chunk, kv_chunk: block sizes of the xla kernel (cuDNN tiles for itself); they must divide
    the local length. max_documents: cuDNN packed-mode document slots per call (any count
    runs: a shard with more documents takes one call per group of this many). document_block:
    cuDNN with documents runs a shard with itself in blocks of this many tokens (0: whole).
    """

    causal: bool = True
    q_chunk: int = DEFAULT.q_chunk
    kv_chunk: int = DEFAULT.kv_chunk
    kernel: str = DEFAULT.attention_kernel
    layout: str = DEFAULT.sequence_layout
    axis_name: Hashable | None = None
    max_documents: int = DEFAULT.max_documents
    document_block: int = DEFAULT.document_block

    @classmethod
    def of(cls, execution: Execution, local_length: int, *, axis_name: Hashable | None = None,
           causal: bool = True, platform: str | None = None) -> "AttentionSpec":
        """The attention part of `execution` for shards of `local_length` tokens: its chunks
        fitted to that length (`fit_chunk`), its kernel resolved for `platform`."""
        fitted = execution.fitted(local_length)
        return cls(causal, fitted.q_chunk, fitted.kv_chunk, resolve_kernel(execution.attention_kernel, platform),
                   execution.sequence_layout if axis_name is not None else "contiguous", axis_name,
                   execution.max_documents, execution.document_block)

    def check(self, q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None) -> "AttentionSpec":
        """Returns the spec with the kernel resolved; ValueError names what does not fit."""
        check_shapes(q, k, v, segment_ids)
        length = q.shape[1]
        for name, chunk in (("q_chunk", self.q_chunk), ("kv_chunk", self.kv_chunk)):
            if chunk <= 0 or length % chunk:
                raise ValueError(f"{name}={chunk} does not divide the local sequence length {length}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"sequence layout {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        if self.layout == "zigzag" and length % 2:
            raise ValueError(f"zigzag layout needs an even local length, got {length}")
        if self.max_documents < 1 or self.document_block < 0:
            raise ValueError(f"max_documents={self.max_documents} must be >= 1 and document_block="
                             f"{self.document_block} >= 0")
        return self._replace(kernel=resolve_kernel(self.kernel))


def check_shapes(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None) -> None:
    """Raises ValueError naming the numbers when q, k, v, segment_ids disagree."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q, k, v must be [batch, len, heads, head_dim]; got ranks {q.ndim}, {k.ndim}, {v.ndim}")
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {k.shape} vs {v.shape}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {q.shape} and k {k.shape} differ in batch or head_dim")
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"q length {q.shape[1]} != kv length {k.shape[1]} (self-attention only)")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"q heads {q.shape[2]} are not a multiple of kv heads {k.shape[2]} (GQA)")
    if segment_ids is not None and segment_ids.shape != q.shape[:2]:
        raise ValueError(f"segment_ids shape {segment_ids.shape} != [batch, len] {q.shape[:2]}")


def attention_mask(q_ids: jax.Array, kv_ids: jax.Array, q_positions: jax.Array, kv_positions: jax.Array,
                   causal: bool) -> jax.Array:
    """Returns bool `[B, Tq, Tk]`: a query sees a key of its own document (ids from 1; padding,
    0, sees nothing and is seen by nothing) and, if causal, at the same or an earlier position."""
    mask = (q_ids[:, :, None] == kv_ids[:, None, :]) & (q_ids[:, :, None] != 0)
    if causal:
        mask = mask & (q_positions[:, None] >= kv_positions[None, :])[None]
    return mask


class Kernel(NamedTuple):
    """Attention of one Q shard `[B, Tq, Hq, D]` to one KV shard `[B, Tk, Hkv, D]`, folded into
    accumulators that may be longer than the call (the ring's whole local shard):

        forward(q, k, v, causal, scale, segments=None, acc=None, at=0) -> acc
        backward(q, k, v, out, lse, d_out, causal, scale, segments=None, acc=None, q_at=0, kv_at=0)
            -> acc

    forward's acc is float32 (out `[B, T, Hq, D]`, lse `[B, T, Hq]`), the call's queries at rows
    `[at, at + Tq)` (None: a fresh one of the call's length); backward's is float32 (dq, dk, dv),
    the call's queries at `q_at` and keys at `kv_at`. Folding in place, not returning a result to
    add, spares a shard-sized float32 temporary per call (the XLA kernel never holds one).
    `causal`: the square mask (Tq == Tk, query i sees keys <= i), else no position mask.
    `segments`: (q ids `[B, Tq]`, kv ids `[B, Tk]`), each document one contiguous run. The ring
    needs two cases: causal with q ids == kv ids (a shard with itself), and non-causal with
    every key before every query (an earlier shard: only the queries' first run and the keys'
    last run can share a document). A query that sees nothing adds nothing (out 0, lse -inf).
    `backward` takes the *final* out and lse (over every key) of the call's queries, so no shard
    needs rescaling.
    """

    name: str
    forward: Callable
    backward: Callable


def empty_forward(q: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Float32 (out 0, lse -inf) shaped like q's; *_like keeps q's varying manual axes under
    shard_map, which loop carries must match."""
    return jnp.zeros_like(q, jnp.float32), jnp.full_like(q[..., 0], -jnp.inf, jnp.float32)


def empty_backward(q: jax.Array, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Float32 zeros shaped like (q, k, v)."""
    return tuple(jnp.zeros_like(x, jnp.float32) for x in (q, k, v))


def merge_into(acc: tuple[jax.Array, jax.Array], out: jax.Array, lse: jax.Array, at=0) -> tuple[jax.Array, jax.Array]:
    """`acc` with one call's (out, lse) of the queries at rows `[at, at + len)` merged in."""
    t = out.shape[1]
    merged = merge(piece(acc[0], at, t), piece(acc[1], at, t), out, lse)
    return tuple(lax.dynamic_update_slice_in_dim(a, m, at, axis=1) for a, m in zip(acc, merged))


def add_into(acc: tuple, grads: tuple, q_at=0, kv_at=0) -> tuple:
    """`acc` (dq, dk, dv) with one call's gradients added at the call's query and key rows."""
    dq, dk, dv = (g.astype(jnp.float32) for g in grads)
    return add_piece(acc[0], dq, q_at), add_piece(acc[1], dk, kv_at), add_piece(acc[2], dv, kv_at)


def merge(out_a: jax.Array, lse_a: jax.Array, out_b: jax.Array, lse_b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns float32 (out, lse) over the union of two disjoint key sets from each one's
    (out `[B, T, Hq, D]`, lse `[B, T, Hq]`); rows empty in both stay (0, -inf)."""
    top = jnp.maximum(lse_a, lse_b)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    w_a, w_b = jnp.exp(lse_a - top), jnp.exp(lse_b - top)
    total = w_a + w_b
    safe = jnp.where(total > 0, total, 1.0)
    out = (out_a.astype(jnp.float32) * w_a[..., None] + out_b.astype(jnp.float32) * w_b[..., None]) / safe[..., None]
    return out, jnp.where(total > 0, top + jnp.log(safe), -jnp.inf)


def when(flag: jax.Array, fn, init):
    """fn(init) if flag else init, as a loop of 0 or 1 trips. Not `lax.cond`: inside the
    differentiated layer scan JAX linearised a cond in this custom-VJP forward and saved every
    block's scores, 3.8 TB per device for Mistral-7B at 512K (`hloscope profile`)."""
    return lax.fori_loop(0, flag.astype(jnp.int32), lambda _, acc: fn(acc), init)


def piece(x: jax.Array, start, size: int) -> jax.Array:
    """`x[:, start:start+size]` of a batched array, `x[start:start+size]` of a 1-D one."""
    return lax.dynamic_slice_in_dim(x, start, size, axis=0 if x.ndim == 1 else 1)


def add_piece(acc: jax.Array, update: jax.Array, start) -> jax.Array:
    """`acc` with `update` added at `acc[:, start:start+len(update)]`."""
    return lax.dynamic_update_slice_in_dim(acc, piece(acc, start, update.shape[1]) + update, start, axis=1)
