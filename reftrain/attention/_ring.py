"""The one ring driver: every kernel, both layouts, one custom VJP. Blockwise is a ring of one.

Each device keeps its Q shard and rotates K, V and their segment ids around `axis_name` with
`ppermute` (never full-length ids: under autodiff they became the 32 GiB residual of the
MegaBeam paper's Appendix A). Every visible (Q shard, KV shard) pair is one kernel call whose
(out, lse) is merged in float32, so a fused kernel runs at full size. Layouts:

* contiguous: device r holds tokens [r*L, (r+1)*L). At step s it holds device (r - s) mod N's
  KV, visible (in full) only when s <= r: device N-1 works every step, device 0 only at step 0.
* zigzag: the sequence is cut into 2N chunks of L/2 and device r holds chunks r and 2N-1-r.
  At step s >= 1 with source j, device r attends all its queries to j's first chunk when
  j < r, or its second chunk's queries to all of j's keys when j > r: the same (L x L/2) work
  on every device at every step (Brandon et al. 2023, striped/zig-zag attention).

Without the causal mask every pair is visible and the layout does not matter. Visibility that
depends on the device index is a loop of 0 or 1 trips (`_spec.when`), never `lax.cond`.

The custom VJP saves only the local q, k, v, ids, output and float32 lse; the backward
recomputes each pair from the final statistics (FlashAttention-2), and dK, dV travel with
their KV shard, home after a full turn. Autodiff through the loops would save every loop
carry per step (docs/attention.md).
"""

from __future__ import annotations

from functools import partial

import jax
from jax import lax
from jax.ad_checkpoint import checkpoint_name

from reftrain.attention._cudnn import cudnn_kernel
from reftrain.attention._spec import AttentionSpec, Kernel, empty_backward, empty_forward, when
from reftrain.attention._xla import xla_kernel

_KERNELS = {"xla": xla_kernel, "cudnn": cudnn_kernel}


def shard_kernel(spec: AttentionSpec) -> Kernel:
    """The kernel a (checked) spec names: one shard pair's forward and backward."""
    return _KERNELS[spec.kernel](spec)


def _size(spec: AttentionSpec) -> int:
    return 1 if spec.axis_name is None else lax.axis_size(spec.axis_name)


def _rotate(spec: AttentionSpec, tree):
    """Sends every array of `tree` to the next device of the ring (i -> i + 1)."""
    if spec.axis_name is None:
        return tree
    n = _size(spec)
    return jax.tree.map(lambda x: lax.ppermute(x, spec.axis_name, [(i, (i + 1) % n) for i in range(n)]), tree)


def _halves(x: jax.Array | None):
    return (None, None) if x is None else (x[:, : x.shape[1] // 2], x[:, x.shape[1] // 2 :])


def _zigzag(spec: AttentionSpec) -> bool:
    return spec.layout == "zigzag" and spec.causal


def _forward(spec: AttentionSpec, q, k, v, ids):
    """Returns (out in q's dtype, lse f32 `[B, L, Hq]`) of the local Q shard."""
    kernel, scale, n = shard_kernel(spec), q.shape[3] ** -0.5, _size(spec)
    r = 0 if spec.axis_name is None else lax.axis_index(spec.axis_name)
    h = q.shape[1] // 2

    def call(acc, q, q_ids, k, v, kv_ids, causal, at=0):
        return kernel.forward(q, k, v, causal, scale, None if ids is None else (q_ids, kv_ids), acc, at)

    incoming = _rotate(spec, (k, v, ids))  # issued before step 0's compute so the transfer overlaps it
    acc = empty_forward(q)
    if not _zigzag(spec):
        acc = call(acc, q, ids, k, v, ids, spec.causal)

        def fold(s, kv, acc):
            more = lambda acc: call(acc, q, ids, *kv, False)
            return when(s <= r, more, acc) if spec.causal else more(acc)
    else:
        (q_a, q_b), (k_a, k_b), (v_a, v_b), (i_a, i_b) = (_halves(x) for x in (q, k, v, ids))
        acc = call(acc, q_a, i_a, k_a, v_a, i_a, True)
        acc = call(acc, q_b, i_b, k_b, v_b, i_b, True, h)
        acc = call(acc, q_b, i_b, k_a, v_a, i_a, False, h)

        def fold(s, kv, acc):
            source = (r - s) % n
            # all queries x the source's first chunk, or the second query chunk x all its keys
            first_chunk = lambda acc: call(acc, q, ids, *(_halves(x)[0] for x in kv), False)
            acc = when(source < r, first_chunk, acc)
            return when(source > r, lambda acc: call(acc, q_b, i_b, *kv, False, h), acc)

    if n > 1:
        kv, acc = lax.fori_loop(1, n - 1, lambda s, c: (_rotate(spec, c[0]), fold(s, *c)), (incoming, acc))
        acc = fold(n - 1, kv, acc)
    out, lse = acc
    return out.astype(q.dtype), lse


def _backward(spec: AttentionSpec, q, k, v, ids, out, lse, d_out):
    """Returns float32 (dq, dk, dv) of the local shards, given the final out and lse."""
    kernel, scale, n = shard_kernel(spec), q.shape[3] ** -0.5, _size(spec)
    r = 0 if spec.axis_name is None else lax.axis_index(spec.axis_name)
    h = q.shape[1] // 2

    def grads(acc, q, q_ids, k, v, kv_ids, out, lse, d_out, causal, q_at=0, kv_at=0):
        segments = None if ids is None else (q_ids, kv_ids)
        return kernel.backward(q, k, v, out, lse, d_out, causal, scale, segments, acc, q_at, kv_at)

    acc = empty_backward(q, k, v)
    if not _zigzag(spec):
        acc = grads(acc, q, ids, k, v, ids, out, lse, d_out, spec.causal)

        def fold(s, kv, acc):
            more = lambda acc: grads(acc, q, ids, *kv, out, lse, d_out, False)
            return when(s <= r, more, acc) if spec.causal else more(acc)
    else:
        (q_a, q_b), (k_a, k_b), (v_a, v_b), (o_a, o_b), (l_a, l_b), (g_a, g_b), (i_a, i_b) = (
            _halves(x) for x in (q, k, v, out, lse, d_out, ids))
        acc = grads(acc, q_a, i_a, k_a, v_a, i_a, o_a, l_a, g_a, True)
        acc = grads(acc, q_b, i_b, k_b, v_b, i_b, o_b, l_b, g_b, True, h, h)
        acc = grads(acc, q_b, i_b, k_a, v_a, i_a, o_b, l_b, g_b, False, h, 0)

        def fold(s, kv, acc):
            source = (r - s) % n
            # all queries x the source's first chunk, or the second query chunk x all its keys
            first_chunk = lambda acc: grads(acc, q, ids, *(_halves(x)[0] for x in kv), out, lse, d_out, False)
            second_half = lambda acc: grads(acc, q_b, i_b, *kv, o_b, l_b, g_b, False, h, 0)
            return when(source > r, second_half, when(source < r, first_chunk, acc))

    if n == 1:
        return acc

    def step(s, carry):
        kv, acc = carry
        dq, dk, dv = fold(s, kv, acc)
        kv, (dk, dv) = _rotate(spec, (kv, (dk, dv)))  # dK and dV travel with their shard
        return kv, (dq, dk, dv)

    dq, dk, dv = acc
    # The barrier keeps XLA from merging this turn with the forward's identical first one (CSE),
    # which would hold that rotated KV shard from the forward to here: one more shard of memory.
    kv, (dk, dv) = _rotate(spec, (lax.optimization_barrier((k, v, ids)), (dk, dv)))
    kv, acc = lax.fori_loop(1, n - 1, step, (kv, (dq, dk, dv)))
    dq, dk, dv = fold(n - 1, kv, acc)
    dk, dv = _rotate(spec, (dk, dv))  # the last turn brings them home
    return dq, dk, dv


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def ring(spec: AttentionSpec, q, k, v, ids=None):
    """Attention of the local shards under a checked `spec` (see the module docstring)."""
    return _forward(spec, q, k, v, ids)[0]


def _ring_fwd(spec, q, k, v, ids=None):
    out, lse = _forward(spec, q, k, v, ids)
    # Named so that a remat policy can keep them (reftrain.remat's "save_attention"): with
    # them saved, the backward does not run the attention forward again.
    out, lse = checkpoint_name(out, "attention_out"), checkpoint_name(lse, "attention_lse")
    return out, (q, k, v, ids, out, lse)


def _ring_bwd(spec, residuals, d_out):
    q, k, v, ids, out, lse = residuals
    dq, dk, dv = _backward(spec, q, k, v, ids, out, lse, d_out)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


ring.defvjp(_ring_fwd, _ring_bwd)
