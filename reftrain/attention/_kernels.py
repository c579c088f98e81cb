"""Whole-shard attention kernels: one Q shard against one KV shard, forward and backward.

A kernel computes attention of q `[B, Tq, Hq, D]` to k, v `[B, Tk, Hkv, D]` with no mask
(`causal=False`) or the square causal mask (`causal=True`, Tq == Tk, query i sees keys <= i),
and returns the softmax statistics ring attention needs to merge shards:

    forward(q, k, v, causal, scale) -> (out in q's dtype, lse float32 [B, Tq, Hq])
    backward(q, k, v, out, lse, d_out, causal, scale) -> (dq, dk, dv)

`backward` takes the *final* out and lse (over every key of the ring), so each shard's
gradients need no rescaling (FlashAttention-2's backward, one shard at a time).

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

    def forward(q, k, v, causal, scale):
        ones_q, ones_k = jnp.ones_like(q[..., 0, 0], jnp.int32), jnp.ones_like(k[..., 0, 0], jnp.int32)
        out = jnp.zeros_like(q, jnp.float32)
        lse = jnp.full_like(q[..., 0], -jnp.inf, jnp.float32)
        out, lse = shard_forward(q, k, v, ones_q, ones_k, positions(q.shape[1]), positions(k.shape[1]),
                                 out, lse, chunking(q, k, causal, scale))
        return out.astype(q.dtype), lse

    def backward(q, k, v, out, lse, d_out, causal, scale):
        ones_q, ones_k = jnp.ones_like(q[..., 0, 0], jnp.int32), jnp.ones_like(k[..., 0, 0], jnp.int32)
        delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
        zeros = lambda x: jnp.zeros_like(x, jnp.float32)
        grads = shard_backward(q, k, v, ones_q, ones_k, positions(q.shape[1]), positions(k.shape[1]),
                               d_out, lse, delta, Grads(zeros(q), zeros(k), zeros(v)), chunking(q, k, causal, scale))
        return grads.dq, grads.dk, grads.dv

    return Kernel("xla", forward, backward)


def _cudnn_kernel() -> Kernel:
    from jax._src.cudnn import fused_attention_stablehlo as fa

    def static_args(causal, scale):
        return dict(
            scale=float(scale), seed=0, dropout_rate=0.0, variadic_args=(False, False),
            mask_type=fa.MaskType.CAUSAL if causal else fa.MaskType.NO_MASK,
            layout=fa.AttentionLayout.BTNH.value, sliding_window_length=None,
        )

    def unused(q):
        return jnp.zeros(0, q.dtype)

    def forward(q, k, v, causal, scale):
        fa.check_is_flash_attention(q, k, v, fa.AttentionLayout.BTNH.value, fa.check_cudnn_version(),
                                    False, True, False)
        n = unused(q)
        out, stats = fa._dot_product_attention_fwd_p_wrapper.bind(
            q, k, v, n, n, n, n, n, n, n, is_training=True, **static_args(causal, scale)
        )
        return out, jnp.swapaxes(stats, 1, 2)  # cuDNN's stats are [B, Hq, Tq]

    def backward(q, k, v, out, lse, d_out, causal, scale):
        n = unused(q)
        stats = jnp.swapaxes(lse, 1, 2)
        dq, dk, dv = fa._dot_product_attention_bwd_p_wrapper.bind(
            q, k, v, n, n, n, n, n, n, n, stats, out.astype(q.dtype), d_out.astype(q.dtype),
            **static_args(causal, scale)
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


def get_kernel(name: str, q_chunk: int, kv_chunk: int) -> Kernel:
    if name == "cudnn":
        return _cudnn_kernel()
    if name == "xla":
        return _xla_kernel(q_chunk, kv_chunk)
    raise ValueError(f"attention kernel {name!r} is not one of xla, cudnn")
