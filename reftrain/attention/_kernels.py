"""Whole-shard attention kernels: one Q shard against one KV shard, forward and backward.

A kernel computes attention of q `[B, Tq, Hq, D]` to k, v `[B, Tk, Hkv, D]` with no mask
(`causal=False`) or the square causal mask (`causal=True`, Tq == Tk, query i sees keys <= i),
and returns the softmax statistics ring attention needs to merge shards:

    forward(q, k, v, causal, scale, segments=None) -> (out in q's dtype, lse float32 [B, Tq, Hq])
    backward(q, k, v, out, lse, d_out, causal, scale, segments=None) -> (dq, dk, dv)

`backward` takes the *final* out and lse (over every key of the ring), so each shard's
gradients need no rescaling (FlashAttention-2's backward, one shard at a time).

`segments` = (q ids `[B, Tq]`, kv ids `[B, Tk]`) masks documents: a query sees a key only if
their ids are equal. Each document must be one contiguous run of its id (how packing lays
them out). The two cases ring attention needs are the ones a kernel must support: causal with
q ids == kv ids (a shard with itself), and non-causal where every key precedes every query in
the sequence (an earlier shard), so that only the queries' first run and the keys' last run can
share a document. A query that sees no key gets out 0 and lse -inf.

* `xla`: our chunked loops (`_chunked`), any backend, any mask; what the CPU tests check.
* `cudnn`: cuDNN's fused flash attention through jax's cuDNN primitives (GPU only). The
  public `jax.nn.dot_product_attention(return_residual=True)` rounds the log-sum-exp to the
  output dtype (bf16), too coarse to merge shards, and its VJP ignores the lse cotangent; so
  we bind jax's cuDNN forward/backward primitives directly (`jax._src.cudnn`, identical in
  jax 0.10.2 and 0.11.2; docs/attention.md). Documents use cuDNN's packed-sequence mode: a
  shard with itself packs up to `max_documents` documents per row; an earlier shard packs
  the one shared document (queries' leading run x keys' trailing run). Packed-mode statistics
  are per document, `[documents, Hq, position in document]` with the documents of all rows
  numbered in order (`analyses/gpu_probe_cudnn_stats.py`); they are gathered into per-token
  lse here and scattered back for the backward.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from reftrain.attention._chunked import Chunking, Grads, shard_backward, shard_forward

KERNELS = ("auto", "xla", "cudnn")


class Kernel(NamedTuple):
    name: str
    forward: Callable
    backward: Callable


def divisor_at_most(chunk: int, length: int) -> int:
    return max(d for d in range(1, min(chunk, length) + 1) if length % d == 0)


def _xla_kernel(q_chunk: int, kv_chunk: int) -> Kernel:
    def positions(length):
        return jnp.arange(length, dtype=jnp.int32)

    def chunking(q, k, causal, scale):
        return Chunking(causal, divisor_at_most(q_chunk, q.shape[1]), divisor_at_most(kv_chunk, k.shape[1]), scale)

    def ids(q, k, segments):
        if segments is not None:
            return segments
        return jnp.ones_like(q[..., 0, 0], jnp.int32), jnp.ones_like(k[..., 0, 0], jnp.int32)

    def forward(q, k, v, causal, scale, segments=None):
        ones_q, ones_k = ids(q, k, segments)
        out = jnp.zeros_like(q, jnp.float32)
        lse = jnp.full_like(q[..., 0], -jnp.inf, jnp.float32)
        out, lse = shard_forward(q, k, v, ones_q, ones_k, positions(q.shape[1]), positions(k.shape[1]),
                                 out, lse, chunking(q, k, causal, scale))
        return out.astype(q.dtype), lse

    def backward(q, k, v, out, lse, d_out, causal, scale, segments=None):
        ones_q, ones_k = ids(q, k, segments)
        delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
        zeros = lambda x: jnp.zeros_like(x, jnp.float32)
        grads = shard_backward(q, k, v, ones_q, ones_k, positions(q.shape[1]), positions(k.shape[1]),
                               d_out, lse, delta, Grads(zeros(q), zeros(k), zeros(v)), chunking(q, k, causal, scale))
        return grads.dq, grads.dk, grads.dv

    return Kernel("xla", forward, backward)


def run_starts(segment_ids: jax.Array) -> jax.Array:
    b = segment_ids.shape[0]
    return jnp.concatenate([jnp.ones((b, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)


def packed_documents(segment_ids: jax.Array, max_documents: int):
    """Returns cuDNN's packed-sequence arguments for the documents (runs of equal ids) of each
    row: (seqlen `[B, M]`, offsets `[B, M + 1]`, -1 where unused) and whether a row has more
    than M = max_documents runs (its extra runs are then merged into the last one)."""
    b, t = segment_ids.shape
    starts = run_starts(segment_ids)
    index = jax.vmap(lambda row: jnp.nonzero(row, size=max_documents + 1, fill_value=t)[0])(starts)
    first, ends = index[:, :max_documents], index[:, 1:]
    ends = ends.at[:, -1].set(t)
    used = first < t
    seqlen = jnp.where(used, ends - first, -1).astype(jnp.int32)
    offsets = jnp.concatenate([jnp.where(used, first, -1), jnp.full((b, 1), -1)], axis=1).astype(jnp.int32)
    return seqlen, offsets, index[:, max_documents] < t


def packed_stats_index(segment_ids: jax.Array, max_documents: int) -> tuple[jax.Array, jax.Array]:
    """For each token `[B, T]`: the row of its document in cuDNN's packed statistics (documents
    of all rows numbered in order, unused slots skipped) and its position in that document."""
    seqlen, offsets, _ = packed_documents(segment_ids, max_documents)
    run = jnp.minimum(jnp.cumsum(run_starts(segment_ids), axis=1) - 1, max_documents - 1)
    position = jnp.arange(segment_ids.shape[1]) - jnp.take_along_axis(offsets, run, axis=1)
    used = jnp.sum(seqlen >= 0, axis=1)
    return (jnp.cumsum(used) - used)[:, None] + run, position


def shared_document(q_ids: jax.Array, kv_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """With every key before every query: (how many leading queries, how many trailing keys)
    per row are in the one document both can share (0, 0 when the ids differ there)."""
    lead = jnp.sum(jnp.cumprod(q_ids == kv_ids[:, -1:], axis=1), axis=1)
    trail = jnp.sum(jnp.cumprod((kv_ids == q_ids[:, :1])[:, ::-1], axis=1), axis=1)
    return lead.astype(jnp.int32), trail.astype(jnp.int32)


def when(flag: jax.Array, fn, init):
    """fn(init) if flag else init, as a loop of 0 or 1 trips (not `lax.cond`: see
    `_chunked._visible_chunks` for what a cond cost inside the differentiated layer scan)."""
    return jax.lax.fori_loop(0, flag.astype(jnp.int32), lambda _, acc: fn(acc), init)


def _cudnn_kernel(max_documents: int) -> Kernel:
    from jax._src.cudnn import fused_attention_stablehlo as fa

    def static_args(causal, scale, packed):
        mask = {(True, False): fa.MaskType.CAUSAL, (False, False): fa.MaskType.NO_MASK,
                (True, True): fa.MaskType.PADDING_CAUSAL, (False, True): fa.MaskType.PADDING}[(causal, packed)]
        return dict(
            scale=float(scale), seed=0, dropout_rate=0.0, variadic_args=(False, False), mask_type=mask,
            layout=fa.AttentionLayout.BTNH.value, sliding_window_length=None,
        )

    def call_forward(q, k, v, causal, scale, sequences):
        packed = sequences is not None
        if jax.default_backend() == "gpu":  # clear errors for shapes cuDNN cannot run (not when compiling deviceless)
            fa.check_is_flash_attention(q, k, v, fa.AttentionLayout.BTNH.value, fa.check_cudnn_version(),
                                        False, True, packed)
        n = jnp.zeros(0, q.dtype)
        return fa._dot_product_attention_fwd_p_wrapper.bind(
            q, k, v, n, *(sequences or (n,) * 4), n, n, is_training=True, **static_args(causal, scale, packed))

    def call_backward(q, k, v, stats, out, d_out, causal, scale, sequences):
        n = jnp.zeros(0, q.dtype)
        return fa._dot_product_attention_bwd_p_wrapper.bind(
            q, k, v, n, *(sequences or (n,) * 4), n, n, stats, out.astype(q.dtype), d_out.astype(q.dtype),
            **static_args(causal, scale, sequences is not None))

    def own_documents(ids):
        """Packed arguments of a shard with itself, and the token -> statistics index."""
        seqlen, offsets, overflow = packed_documents(ids, max_documents)
        return (seqlen, seqlen, offsets, offsets), overflow, packed_stats_index(ids, max_documents)

    def shared(q_ids, kv_ids):
        """Packed arguments of the one document an earlier KV shard shares with the queries (two
        slots, so that jax passes offsets; the second is unused), the queries that see it, and
        each row's statistics row."""
        lead, trail = shared_document(q_ids, kv_ids)
        some = lead > 0
        unused = jnp.full_like(lead, -1)
        seqlen = lambda n: jnp.stack([jnp.where(some, n, -1), unused], axis=1)
        offsets = lambda start: jnp.stack([jnp.where(some, start, -1), unused, unused], axis=1)
        sequences = (seqlen(lead), seqlen(trail), offsets(jnp.zeros_like(lead)), offsets(kv_ids.shape[1] - trail))
        stats_row = jnp.where(some, jnp.cumsum(some) - 1, 2 * lead.shape[0])  # out of range: dropped
        seen_q = jnp.arange(q_ids.shape[1]) < lead[:, None]
        seen_kv = jnp.arange(kv_ids.shape[1]) >= (kv_ids.shape[1] - trail)[:, None]
        return sequences, seen_q, seen_kv, stats_row

    def forward(q, k, v, causal, scale, segments=None):
        if segments is None:
            out, stats = call_forward(q, k, v, causal, scale, None)
            return out, jnp.swapaxes(stats, 1, 2)  # cuDNN's stats are [B, Hq, Tq]
        if causal:
            sequences, overflow, (row, position) = own_documents(segments[0])
            out, stats = call_forward(q, k, v, True, scale, sequences)
            # More documents than max_documents would silently mix them: poison the row instead,
            # so the trainer's non-finite guard stops (docs/attention.md: raise max_documents).
            out = jnp.where(overflow[:, None, None, None], jnp.nan, out).astype(q.dtype)
            return out, stats[row, :, position]
        sequences, seen_q, _, stats_row = shared(*segments)

        def visible(_):
            out, stats = call_forward(q, k, v, False, scale, sequences)
            lse = jnp.swapaxes(stats.at[stats_row].get(mode="fill", fill_value=-jnp.inf), 1, 2)
            return jnp.where(seen_q[..., None, None], out, 0).astype(q.dtype), jnp.where(seen_q[..., None], lse, -jnp.inf)

        # *_like keep q's varying manual axes under shard_map (the loop carry must match them).
        nothing = (jnp.zeros_like(q), jnp.full_like(q[..., 0], -jnp.inf, jnp.float32))
        return when(jnp.any(seen_q), visible, nothing)

    def backward(q, k, v, out, lse, d_out, causal, scale, segments=None):
        if segments is None:
            return call_backward(q, k, v, jnp.swapaxes(lse, 1, 2), out, d_out, causal, scale, None)
        b, t, h = lse.shape
        if causal:
            sequences, _, (row, position) = own_documents(segments[0])
            stats = jnp.zeros((b * max_documents, h, t), jnp.float32).at[row, :, position].set(lse)
            return call_backward(q, k, v, stats, out, d_out, True, scale, sequences)
        sequences, seen_q, seen_kv, stats_row = shared(*segments)
        stats = jnp.zeros((b * 2, h, t), jnp.float32).at[stats_row].set(jnp.swapaxes(lse, 1, 2), mode="drop")

        def visible(_):
            dq, dk, dv = call_backward(q, k, v, stats, out, d_out, False, scale, sequences)
            keep = lambda x, seen: jnp.where(seen[..., None, None], x, 0).astype(x.dtype)
            return keep(dq, seen_q), keep(dk, seen_kv), keep(dv, seen_kv)

        nothing = (jnp.zeros_like(q), jnp.zeros_like(k), jnp.zeros_like(v))
        return when(jnp.any(seen_q), visible, nothing)

    return Kernel("cudnn", forward, backward)


def gpu_platform(platform: str) -> bool:
    return platform in ("gpu", "cuda")


def resolve_kernel(kernel: str, platform: str | None = None) -> str:
    """Returns "xla" or "cudnn": `auto` picks cuDNN on an NVIDIA GPU, our XLA loops elsewhere."""
    if kernel not in KERNELS:
        raise ValueError(f"attention kernel {kernel!r} is not one of {', '.join(KERNELS)}")
    if kernel != "auto":
        return kernel
    platform = platform or jax.default_backend()
    return "cudnn" if gpu_platform(platform) else "xla"


def get_kernel(name: str, q_chunk: int, kv_chunk: int, max_documents: int = 64) -> Kernel:
    if name == "cudnn":
        return _cudnn_kernel(max_documents)
    if name == "xla":
        return _xla_kernel(q_chunk, kv_chunk)
    raise ValueError(f"attention kernel {name!r} is not one of xla, cudnn")
