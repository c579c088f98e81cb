"""Masked next-token cross-entropy computed in chunks of tokens.

float32 logits `[local tokens, vocab]` never exist whole: each chunk of `chunk` tokens (of the
whole local batch, not of each row: 64 rows of a 2,048-token chunk once made 16.8 GB of logits)
makes its logits, reduces them to a loss and is rematerialised in the backward pass. With a mesh the loss
runs per device inside a shard_map (tokens over (dp, fsdp) x sp, vocabulary over tp, with the
softmax normaliser reduced across tp).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from reftrain.execution import fit_chunk
from reftrain.sharding import BATCH, activation_spec, batch_spec


def _chunk_nll(hidden, kernel, targets, vocab_axis):
    """Returns float32 nll `[c]` of `targets` under logits hidden @ kernel.

    hidden `[c, D]`, kernel `[D, V_local]` (this device's vocabulary slice when vocab_axis
    names the mesh axis that splits it), targets int `[c]` (global token ids).
    """
    logits = jnp.einsum("cd,dv->cv", hidden, kernel, preferred_element_type=jnp.float32)
    vocab_local = kernel.shape[1]
    offset = 0 if vocab_axis is None else lax.axis_index(vocab_axis) * vocab_local
    local_max = lax.stop_gradient(jnp.max(logits, axis=-1))
    top = local_max if vocab_axis is None else lax.pmax(local_max, vocab_axis)
    sum_exp = jnp.sum(jnp.exp(logits - top[..., None]), axis=-1)
    index = targets - offset
    inside = (index >= 0) & (index < vocab_local)
    picked = jnp.take_along_axis(logits, jnp.clip(index, 0, vocab_local - 1)[..., None], axis=-1)[..., 0]
    picked = jnp.where(inside, picked, 0.0)
    if vocab_axis is not None:
        sum_exp, picked = lax.psum(sum_exp, vocab_axis), lax.psum(picked, vocab_axis)
    return top + jnp.log(sum_exp) - picked


def _local_loss(hidden, kernel, targets, mask, chunk: int, vocab_axis):
    """Returns (sum of masked nll, sum of mask) over one device's tokens, in float32.

    hidden `[b, T, D]`; the b x T tokens are cut into chunks of `chunk` tokens across rows."""
    b, length, d = hidden.shape
    tokens = b * length
    chunk = fit_chunk(chunk, tokens)
    n = tokens // chunk

    def split(x):
        return x.reshape(n, chunk, *x.shape[2:])

    @jax.checkpoint
    def chunk_sum(h, t, m):
        return jnp.sum(_chunk_nll(h, kernel, t, vocab_axis) * m)

    def body(total, xs):
        return total + chunk_sum(*xs), None

    mask = mask.astype(jnp.float32)
    zero = jnp.zeros_like(mask[0, 0])  # like mask: same varying mesh axes inside shard_map
    total, _ = lax.scan(body, zero, (split(hidden), split(targets), split(mask)))
    return total, jnp.sum(mask)


def cross_entropy_sums(
    hidden: jax.Array,
    kernel: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    *,
    chunk: int,
    mesh: Mesh | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Returns (sum of nll over masked tokens, number of masked tokens), float32 scalars.

    hidden `[B, T, D]` (final-normed), kernel `[D, V]` (lm_head), targets int32 `[B, T]`,
    mask `[B, T]` (1 where the token's next-token prediction counts). The chunk used is the
    largest divisor of the local length not above `chunk`.
    """
    if mesh is None:
        return _local_loss(hidden, kernel, targets, mask, chunk, None)
    tp = "tp" if kernel.shape[1] % mesh.shape["tp"] == 0 and mesh.shape["tp"] > 1 else None

    def local(hidden, kernel, targets, mask):
        total, count = _local_loss(hidden, kernel, targets, mask, chunk, tp)
        token_axes = (*BATCH, "sp")
        return lax.psum(total, token_axes), lax.psum(count, token_axes)

    specs = (activation_spec(), P(None, tp), batch_spec(), batch_spec())
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=(P(), P()))(
        hidden, kernel, targets, mask
    )
