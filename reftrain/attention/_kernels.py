"""Whole-shard attention kernels: one Q shard against one KV shard, forward and backward.

A kernel computes attention of q `[B, Tq, Hq, D]` to k, v `[B, Tk, Hkv, D]` with no mask
(`causal=False`) or the square causal mask (`causal=True`, Tq == Tk, query i sees keys <= i),
and returns the softmax statistics ring attention needs to merge shards:

    forward(q, k, v, causal, scale, segment_ids=None) -> (out in q's dtype, lse float32 [B, Tq, Hq])
    backward(q, k, v, out, lse, d_out, causal, scale, segment_ids=None) -> (dq, dk, dv)

`backward` takes the *final* out and lse (over every key of the ring), so each shard's
gradients need no rescaling (FlashAttention-2's backward, one shard at a time).

With `segment_ids` (square causal only: a whole sequence on one device) each document, a
contiguous run of equal ids, attends only to itself. cuDNN runs it in its packed-sequence
mode, whose softmax statistics are per document (`[B * max_documents, Hq, T]`), not per
token: they are returned as they are, to be handed back to `backward` unmerged. Padding
(segment 0) is a document of its own there; nothing real attends to it.

* `xla`: our chunked loops (`_chunked`), any backend; what the CPU tests check.
* `cudnn`: cuDNN's fused flash attention through jax's cuDNN primitives (GPU only). The
  public `jax.nn.dot_product_attention(return_residual=True)` rounds the log-sum-exp to the
  output dtype (bf16), too coarse to merge shards, and its VJP ignores the lse cotangent; so
  we bind jax's cuDNN forward/backward primitives directly (`jax._src.cudnn`, identical in
  jax 0.10.2 and 0.11.2; docs/attention.md).
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


def _divisor_at_most(chunk: int, length: int) -> int:
    return max(d for d in range(1, min(chunk, length) + 1) if length % d == 0)


def _xla_kernel(q_chunk: int, kv_chunk: int) -> Kernel:
    def positions(length):
        return jnp.arange(length, dtype=jnp.int32)

    def chunking(q, k, causal, scale):
        return Chunking(causal, _divisor_at_most(q_chunk, q.shape[1]), _divisor_at_most(kv_chunk, k.shape[1]), scale)

    def forward(q, k, v, causal, scale, segment_ids=None):
        ones_q, ones_k = jnp.ones_like(q[..., 0, 0], jnp.int32), jnp.ones_like(k[..., 0, 0], jnp.int32)
        if segment_ids is not None:
            ones_q = ones_k = segment_ids
        out = jnp.zeros_like(q, jnp.float32)
        lse = jnp.full_like(q[..., 0], -jnp.inf, jnp.float32)
        out, lse = shard_forward(q, k, v, ones_q, ones_k, positions(q.shape[1]), positions(k.shape[1]),
                                 out, lse, chunking(q, k, causal, scale))
        return out.astype(q.dtype), lse

    def backward(q, k, v, out, lse, d_out, causal, scale, segment_ids=None):
        ones_q, ones_k = jnp.ones_like(q[..., 0, 0], jnp.int32), jnp.ones_like(k[..., 0, 0], jnp.int32)
        if segment_ids is not None:
            ones_q = ones_k = segment_ids
        delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
        zeros = lambda x: jnp.zeros_like(x, jnp.float32)
        grads = shard_backward(q, k, v, ones_q, ones_k, positions(q.shape[1]), positions(k.shape[1]),
                               d_out, lse, delta, Grads(zeros(q), zeros(k), zeros(v)), chunking(q, k, causal, scale))
        return grads.dq, grads.dk, grads.dv

    return Kernel("xla", forward, backward)


def packed_documents(segment_ids: jax.Array, max_documents: int):
    """Returns cuDNN's packed-sequence arguments for the documents (runs of equal ids) of each
    row: (seqlen `[B, M]`, offsets `[B, M + 1]`, -1 where unused) and whether a row has more
    than M = max_documents runs (its extra runs are then merged into the last one)."""
    b, t = segment_ids.shape
    starts = jnp.concatenate([jnp.ones((b, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    index = jax.vmap(lambda row: jnp.nonzero(row, size=max_documents + 1, fill_value=t)[0])(starts)
    first, ends = index[:, :max_documents], index[:, 1:]
    ends = ends.at[:, -1].set(t)
    used = first < t
    seqlen = jnp.where(used, ends - first, -1).astype(jnp.int32)
    offsets = jnp.concatenate([jnp.where(used, first, -1), jnp.full((b, 1), -1)], axis=1).astype(jnp.int32)
    return seqlen, offsets, index[:, max_documents] < t


def _cudnn_kernel(max_documents: int) -> Kernel:
    from jax._src.cudnn import fused_attention_stablehlo as fa

    def static_args(causal, scale, packed):
        mask = {(True, False): fa.MaskType.CAUSAL, (False, False): fa.MaskType.NO_MASK,
                (True, True): fa.MaskType.PADDING_CAUSAL, (False, True): fa.MaskType.PADDING}[(causal, packed)]
        return dict(
            scale=float(scale), seed=0, dropout_rate=0.0, variadic_args=(False, False), mask_type=mask,
            layout=fa.AttentionLayout.BTNH.value, sliding_window_length=None,
        )

    def sequence_args(q, segment_ids):
        n = jnp.zeros(0, q.dtype)
        if segment_ids is None:
            return (n,) * 4, n, None
        seqlen, offsets, overflow = packed_documents(segment_ids, max_documents)
        return (seqlen, seqlen, offsets, offsets), n, overflow

    def forward(q, k, v, causal, scale, segment_ids=None):
        if segment_ids is not None and not causal:
            raise ValueError("cuDNN packed documents are only used for the causal diagonal shard")
        if jax.default_backend() == "gpu":  # clear errors for shapes cuDNN cannot run (not when compiling deviceless)
            fa.check_is_flash_attention(q, k, v, fa.AttentionLayout.BTNH.value, fa.check_cudnn_version(),
                                        False, True, segment_ids is not None)
        sequences, n, overflow = sequence_args(q, segment_ids)
        out, stats = fa._dot_product_attention_fwd_p_wrapper.bind(
            q, k, v, n, *sequences, n, n, is_training=True, **static_args(causal, scale, segment_ids is not None)
        )
        if segment_ids is None:
            return out, jnp.swapaxes(stats, 1, 2)  # cuDNN's stats are [B, Hq, Tq]
        # More documents than max_documents would silently mix them: poison the row instead, so
        # the trainer's non-finite guard stops (docs/attention.md: raise max_documents).
        out = jnp.where(overflow[:, None, None, None], jnp.nan, out).astype(q.dtype)
        return out, stats

    def backward(q, k, v, out, lse, d_out, causal, scale, segment_ids=None):
        sequences, n, _ = sequence_args(q, segment_ids)
        stats = lse if segment_ids is not None else jnp.swapaxes(lse, 1, 2)
        dq, dk, dv = fa._dot_product_attention_bwd_p_wrapper.bind(
            q, k, v, n, *sequences, n, n, stats, out.astype(q.dtype), d_out.astype(q.dtype),
            **static_args(causal, scale, segment_ids is not None)
        )
        return dq, dk, dv

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
