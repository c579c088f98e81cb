"""The `cudnn` kernel: cuDNN's fused flash attention through jax's cuDNN primitives (GPU only).

The public `jax.nn.dot_product_attention(return_residual=True)` rounds the log-sum-exp to the
output dtype (bf16), too coarse to merge shards, and its VJP ignores the lse cotangent; so we
bind jax's cuDNN forward/backward primitives directly (`jax._src.cudnn`, identical in jax
0.10.2 and 0.11.2; docs/gpu.md).

Documents use cuDNN's packed-sequence mode, which takes each row's documents as slots (length
and offset) and pads every slot to the call's length in its backward workspace
(`hloscope/cudnn_workspace.py`), so the slot count is static and costs memory:

* a shard with itself packs its documents (padding runs are not documents: they see nothing)
  into `max_documents` slots. A row with more documents takes more calls, one per group of
  `max_documents` consecutive documents (a loop whose trip count is the batch's largest group
  count; the first call always runs), each token taking its output from its own group's call.
  Any count is exact; only the rare overflowing shard pays extra calls.
* an earlier shard shares at most one document with the queries (their first run, its last
  run): one packed pair.
* `document_block` cuts a shard with itself into (block, block) causal calls plus, for each
  earlier block that the block's first document reaches back to, that shared document; the
  workspace then follows the block, not the shard, and documents are counted per block.

Packed-mode statistics are per document, `[slots, Hq, position in document]`, the used slots of
all rows numbered in order (`analyses/gpu_probe_cudnn_stats.py`); they are gathered into
per-token lse here and scattered back for the backward.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from reftrain.attention._spec import (AttentionSpec, Kernel, add_into, empty_backward, empty_forward, merge_into, piece,
                                     when)
from reftrain.execution import fit_chunk


class Primitives(NamedTuple):
    """The two fused calls (a seam: tests on CPU substitute a reference for them).

    forward(q, k, v, causal, scale, sequences) -> (out, stats); backward(q, k, v, stats, out,
    d_out, causal, scale, sequences) -> (dq, dk, dv). `sequences`: None, or packed mode's
    (q seqlen `[B, S]`, kv seqlen, q offsets `[B, S + 1]`, kv offsets), -1 where unused.
    Stats: `[B, Hq, Tq]`, or `[B * S, Hq, Tq]` packed (see the module docstring).
    """

    forward: Callable
    backward: Callable


def cudnn_primitives() -> Primitives:
    from jax._src.cudnn import fused_attention_stablehlo as fa

    def static(causal, scale, packed):
        mask = {(True, False): fa.MaskType.CAUSAL, (False, False): fa.MaskType.NO_MASK,
                (True, True): fa.MaskType.PADDING_CAUSAL, (False, True): fa.MaskType.PADDING}[(causal, packed)]
        return dict(scale=float(scale), seed=0, dropout_rate=0.0, variadic_args=(False, False), mask_type=mask,
                    layout=fa.AttentionLayout.BTNH.value, sliding_window_length=None)

    def forward(q, k, v, causal, scale, sequences):
        if jax.default_backend() == "gpu":  # clear errors for shapes cuDNN cannot run (not when compiling deviceless)
            fa.check_is_flash_attention(q, k, v, fa.AttentionLayout.BTNH.value, fa.check_cudnn_version(),
                                        False, True, sequences is not None)
        n = jnp.zeros(0, q.dtype)
        return fa._dot_product_attention_fwd_p_wrapper.bind(
            q, k, v, n, *(sequences or (n,) * 4), n, n, is_training=True, **static(causal, scale, sequences is not None))

    def backward(q, k, v, stats, out, d_out, causal, scale, sequences):
        n = jnp.zeros(0, q.dtype)
        return fa._dot_product_attention_bwd_p_wrapper.bind(
            q, k, v, n, *(sequences or (n,) * 4), n, n, stats, out.astype(q.dtype), d_out.astype(q.dtype),
            **static(causal, scale, sequences is not None))

    return Primitives(forward, backward)


def _edges(ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Bool `[B, T]`: where a run of equal ids starts, and where one ends."""
    change = ids[:, 1:] != ids[:, :-1]
    edge = jnp.ones_like(ids[:, :1], bool)
    return jnp.concatenate([edge, change], axis=1), jnp.concatenate([change, edge], axis=1)


def document_groups(ids: jax.Array, slots: int) -> jax.Array:
    """How many packed calls of `slots` documents the row with the most documents needs (>= 1)."""
    documents = jnp.sum(_edges(ids)[0] & (ids != 0), axis=1)
    return jnp.maximum(jnp.max((documents + slots - 1) // slots), 1).astype(jnp.int32)


def packed_group(ids: jax.Array, slots: int, group) -> tuple[tuple, jax.Array, tuple[jax.Array, jax.Array]]:
    """cuDNN's packed arguments for documents `group * slots` up to `(group + 1) * slots - 1` of
    each row (documents: runs of equal non-zero ids, numbered from 0 in order): (sequences,
    member `[B, T]` whether each token is in one, (stats row, position in document) `[B, T]`)."""
    b, t = ids.shape
    starts, ends = _edges(ids)
    real = ids != 0
    document = jnp.cumsum(starts & real, axis=1) - 1 - group * slots
    member = real & (document >= 0) & (document < slots)
    first = lambda mask: jax.vmap(lambda row: jnp.nonzero(row, size=slots, fill_value=-1)[0])(mask & member)
    begin, end = first(starts), first(ends)
    used = begin >= 0
    seqlen = jnp.where(used, end + 1 - begin, -1).astype(jnp.int32)
    offsets = jnp.concatenate([begin, jnp.full((b, 1), -1)], axis=1).astype(jnp.int32)
    slot = jnp.clip(document, 0, slots - 1)
    count = jnp.sum(used, axis=1)
    row = jnp.where(member, (jnp.cumsum(count) - count)[:, None] + slot, b * slots)  # out of range: dropped
    position = jnp.arange(t) - jnp.take_along_axis(begin, slot, axis=1)
    return (seqlen, seqlen, offsets, offsets), member, (row, position)


def shared_document(q_ids: jax.Array, kv_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """With every key before every query: (how many leading queries, how many trailing keys)
    per row are in the one document both can share (0, 0 when none; padding is no document)."""
    lead = jnp.sum(jnp.cumprod(q_ids == kv_ids[:, -1:], axis=1), axis=1)
    trail = jnp.sum(jnp.cumprod((kv_ids == q_ids[:, :1])[:, ::-1], axis=1), axis=1)
    some = q_ids[:, 0] != 0
    return jnp.where(some, lead, 0).astype(jnp.int32), jnp.where(some, trail, 0).astype(jnp.int32)


def _select(member, new, old):
    return jnp.where(member.reshape(member.shape + (1,) * (new.ndim - 2)), new, old)


def cudnn_kernel(spec: AttentionSpec, primitives: Primitives | None = None) -> Kernel:
    call = primitives or cudnn_primitives()
    slots = spec.max_documents

    def shared(q_ids, kv_ids):
        """Packed arguments of the one document an earlier KV shard shares with the queries (two
        slots, so that jax passes offsets; the second is unused), who sees it, each row's stats row."""
        lead, trail = shared_document(q_ids, kv_ids)
        some, unused = lead > 0, jnp.full_like(lead, -1)
        seqlen = lambda n: jnp.stack([jnp.where(some, n, -1), unused], axis=1)
        offsets = lambda start: jnp.stack([jnp.where(some, start, -1), unused, unused], axis=1)
        sequences = (seqlen(lead), seqlen(trail), offsets(jnp.zeros_like(lead)), offsets(kv_ids.shape[1] - trail))
        stats_row = jnp.where(some, jnp.cumsum(some) - 1, 2 * lead.shape[0])  # out of range: dropped
        seen_q = jnp.arange(q_ids.shape[1]) < lead[:, None]
        seen_kv = jnp.arange(kv_ids.shape[1]) >= (kv_ids.shape[1] - trail)[:, None]
        return sequences, seen_q, seen_kv, stats_row

    def whole(q, k, v, causal, scale, segments):
        """(out in q's dtype, lse f32) of a call without documents, or of a shard with itself."""
        if segments is None:
            out, stats = call.forward(q, k, v, causal, scale, None)
            return out, jnp.swapaxes(stats, 1, 2)  # cuDNN's stats are [B, Hq, Tq]

        def group(g, acc=None):
            sequences, member, (row, position) = packed_group(segments[0], slots, g)
            out, stats = call.forward(q, k, v, True, scale, sequences)
            lse = stats.at[row, :, position].get(mode="fill", fill_value=-jnp.inf)
            acc = acc or (jnp.zeros_like(out), jnp.full_like(lse, -jnp.inf))
            return _select(member, out, acc[0]), _select(member, lse, acc[1])

        return lax.fori_loop(1, document_groups(segments[0], slots), group, group(0))

    def forward(q, k, v, causal, scale, segments=None, acc=None, at=0):
        acc = empty_forward(q) if acc is None else acc
        if segments is None or causal:
            return merge_into(acc, *whole(q, k, v, causal, scale, segments), at)
        sequences, seen_q, _, stats_row = shared(*segments)

        def visible(acc):
            out, stats = call.forward(q, k, v, False, scale, sequences)
            lse = jnp.swapaxes(stats.at[stats_row].get(mode="fill", fill_value=-jnp.inf), 1, 2)
            return merge_into(acc, _select(seen_q, out, 0), _select(seen_q, lse, -jnp.inf), at)

        return when(jnp.any(seen_q), visible, acc)

    def backward(q, k, v, out, lse, d_out, causal, scale, segments=None, acc=None, q_at=0, kv_at=0):
        acc = empty_backward(q, k, v) if acc is None else acc
        if segments is None:
            grads = call.backward(q, k, v, jnp.swapaxes(lse, 1, 2), out, d_out, causal, scale, None)
            return add_into(acc, grads, q_at, kv_at)
        b, t, h = lse.shape
        if causal:
            def group(g, grads=None):
                sequences, member, (row, position) = packed_group(segments[0], slots, g)
                stats = jnp.zeros((b * slots, h, t), jnp.float32).at[row, :, position].set(lse, mode="drop")
                new = call.backward(q, k, v, stats, out, d_out, True, scale, sequences)
                grads = grads or tuple(jnp.zeros_like(x) for x in new)
                return tuple(_select(member, n, old) for n, old in zip(new, grads))  # disjoint tokens

            grads = lax.fori_loop(1, document_groups(segments[0], slots), group, group(0))
            return add_into(acc, grads, q_at, kv_at)
        sequences, seen_q, seen_kv, stats_row = shared(*segments)
        stats = jnp.zeros((b * 2, h, t), jnp.float32).at[stats_row].set(jnp.swapaxes(lse, 1, 2), mode="drop")

        def visible(acc):
            dq, dk, dv = call.backward(q, k, v, stats, out, d_out, False, scale, sequences)
            return add_into(acc, (_select(seen_q, dq, 0), _select(seen_kv, dk, 0), _select(seen_kv, dv, 0)), q_at, kv_at)

        return when(jnp.any(seen_q), visible, acc)

    kernel = Kernel("cudnn", forward, backward)
    return blocked(kernel, spec.document_block) if spec.document_block else kernel


def _first_blocks(ids: jax.Array, block: int) -> jax.Array:
    """For each block: the block where the document of its first token starts (over the batch)."""
    positions = jnp.arange(ids.shape[1], dtype=jnp.int32)
    document_start = lax.cummax(jnp.where(_edges(ids)[0], positions, 0), axis=1)
    return jnp.min(document_start[:, ::block], axis=0) // block


def blocked(kernel: Kernel, block: int) -> Kernel:
    """`kernel`, with a causal shard-with-itself call under documents longer than `block` tokens
    done block by block: (block i, block i) causal, then each earlier block j that i's first
    document reaches back to, as an earlier shard. Every other call passes through."""
    def split(q, causal, segments):
        if not causal or segments is None or q.shape[1] <= block:
            return None
        size = fit_chunk(block, q.shape[1])
        return size, q.shape[1] // size, _first_blocks(segments[0], size), segments[0]

    def forward(q, k, v, causal, scale, segments=None, acc=None, at=0):
        plan = split(q, causal, segments)
        if plan is None:
            return kernel.forward(q, k, v, causal, scale, segments, acc, at)
        size, count, first, ids = plan

        def row(i, acc):
            start = i * size
            q_i, ids_i = piece(q, start, size), piece(ids, start, size)
            kv_i = piece(k, start, size), piece(v, start, size)
            acc = kernel.forward(q_i, *kv_i, True, scale, (ids_i, ids_i), acc, at + start)

            def earlier(j, acc):
                kv = (piece(k, j * size, size), piece(v, j * size, size))
                return kernel.forward(q_i, *kv, False, scale, (ids_i, piece(ids, j * size, size)), acc, at + start)

            return lax.fori_loop(first[i], i, earlier, acc)

        return lax.fori_loop(0, count, row, empty_forward(q) if acc is None else acc)

    def backward(q, k, v, out, lse, d_out, causal, scale, segments=None, acc=None, q_at=0, kv_at=0):
        plan = split(q, causal, segments)
        if plan is None:
            return kernel.backward(q, k, v, out, lse, d_out, causal, scale, segments, acc, q_at, kv_at)
        size, count, first, ids = plan

        def row(i, acc):
            start = i * size
            q_i, ids_i, o_i, l_i, g_i = (piece(x, start, size) for x in (q, ids, out, lse, d_out))
            kv_i = piece(k, start, size), piece(v, start, size)
            acc = kernel.backward(q_i, *kv_i, o_i, l_i, g_i, True, scale, (ids_i, ids_i), acc, q_at + start, kv_at + start)

            def earlier(j, acc):
                kv = (piece(k, j * size, size), piece(v, j * size, size))
                return kernel.backward(q_i, *kv, o_i, l_i, g_i, False, scale, (ids_i, piece(ids, j * size, size)), acc,
                                       q_at + start, kv_at + j * size)

            return lax.fori_loop(first[i], i, earlier, acc)

        return lax.fori_loop(0, count, row, empty_backward(q, k, v) if acc is None else acc)

    return Kernel(kernel.name, forward, backward)
