"""Attention with GQA and document masks: a dense reference, a blockwise and a ring version.

All three take q `[batch, len, q_heads, head_dim]`, k and v `[batch, len, kv_heads, head_dim]`
(`q_heads % kv_heads == 0`, kv never repeated), optional int32 `segment_ids` `[batch, len]`
(documents from 1, each one contiguous run; 0 for padding) and compute the same result.
`AttentionSpec` holds the static rest; `shard_kernel(spec)` is one shard pair's kernel (for
probes). Layout of the package (docs/attention.md): `_spec` (spec, mask, kernel contract),
`_dense`, `_xla` and `_cudnn` (the kernels), `_ring` (the one driver and its custom VJP).
"""

from __future__ import annotations

from typing import Hashable

import jax

from reftrain.attention._dense import dense_attention
from reftrain.attention._ring import ring, shard_kernel
from reftrain.attention._spec import DEFAULT, KERNELS, LAYOUTS, AttentionSpec, resolve_kernel

__all__ = ["KERNELS", "LAYOUTS", "AttentionSpec", "attend", "blockwise_attention", "dense_attention",
           "resolve_kernel", "ring_attention", "shard_kernel"]


def attend(q: jax.Array, k: jax.Array, v: jax.Array, spec: AttentionSpec,
           segment_ids: jax.Array | None = None) -> jax.Array:
    """Attention of the local shards under `spec` (checked here, once); see ring_attention."""
    spec = spec.check(q, k, v, segment_ids)
    if spec.kernel == "cudnn" and not spec.causal and segment_ids is not None:
        spec = spec._replace(kernel="xla")  # cuDNN's document cases are the causal ring's two
    return ring(spec, q, k, v, None if segment_ids is None else segment_ids.astype("int32"))


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, segment_ids: jax.Array | None = None,
                        causal: bool = True, q_chunk: int, kv_chunk: int, kernel: str = DEFAULT.attention_kernel,
                        max_documents: int = DEFAULT.max_documents,
                        document_block: int = DEFAULT.document_block) -> jax.Array:
    """Returns attention `[batch, len, q_heads, head_dim]` on one device, never building a
    `[len, len]` matrix; equals `dense_attention`. Softmax statistics are float32. The other
    arguments are `AttentionSpec`'s (ValueError if a chunk does not divide `len`)."""
    spec = AttentionSpec(causal, q_chunk, kv_chunk, kernel, "contiguous", None, max_documents, document_block)
    return attend(q, k, v, spec, segment_ids)


def ring_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, segment_ids: jax.Array | None = None,
                   causal: bool = True, q_chunk: int, kv_chunk: int, axis_name: Hashable,
                   kernel: str = DEFAULT.attention_kernel, layout: str = DEFAULT.sequence_layout,
                   max_documents: int = DEFAULT.max_documents, document_block: int = DEFAULT.document_block) -> jax.Array:
    """Returns this device's shard of attention `[batch, local_len, q_heads, head_dim]`.

    Call inside `shard_map` with q, k, v and segment_ids sharded over `axis_name` in `layout`
    order (contiguous: device i holds tokens `[i*local_len, (i+1)*local_len)`; zigzag: chunks
    i and 2N-1-i of local_len/2, see `reftrain.sharding.zigzag_order`); the result equals
    `dense_attention` on the gathered sequence. The other arguments are `AttentionSpec`'s.
    """
    spec = AttentionSpec(causal, q_chunk, kv_chunk, kernel, layout, axis_name, max_documents, document_block)
    return attend(q, k, v, spec, segment_ids)
