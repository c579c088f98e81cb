"""A user's own model, written the way Flax users write it, as a hloscope program.

A linen decoder (token embedding, `nn.scan` over rematerialised blocks of causal self-attention
and a GELU MLP, tied to nothing), trained by an optax AdamW step that is jitted with explicit
`NamedSharding`s over a 2-D mesh (batch over "data", weight matrices' last dimension over
"model") and donates its state. hloscope calls `build(mesh, **options)` and compiles what it
returns for the target, so the same file answers "does this fit 8 x A100-80GB?" on a laptop:

    hloscope profile --program examples/flax_decoder.py:build --target a100-80gb --devices 8 \
        --mesh data=2,model=4 --set layers=24 --set d_model=2048 --seq 8192

docs/api.md shows it profiled from Python and checked against a budget in a pytest test.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


class Block(nn.Module):
    """Pre-norm causal self-attention and MLP; `[batch, seq, d_model]` in and out."""

    heads: int
    d_ff: int
    dtype: jnp.dtype = jnp.bfloat16

    @nn.compact
    def __call__(self, x: jax.Array, _: None) -> tuple[jax.Array, None]:
        d_model = x.shape[-1]
        h = nn.LayerNorm(dtype=self.dtype)(x)
        q, k, v = (nn.DenseGeneral((self.heads, d_model // self.heads), dtype=self.dtype, name=name)(h)
                   for name in ("query", "key", "value"))
        mask = nn.make_causal_mask(jnp.ones(x.shape[:2], jnp.int32))
        attended = nn.dot_product_attention(q, k, v, mask=mask, dtype=self.dtype)
        x = x + nn.DenseGeneral(d_model, axis=(-2, -1), dtype=self.dtype, name="out")(attended)
        h = nn.LayerNorm(dtype=self.dtype)(x)
        h = nn.Dense(d_model, dtype=self.dtype)(nn.gelu(nn.Dense(self.d_ff, dtype=self.dtype)(h)))
        return x + h, None


class Decoder(nn.Module):
    """Token ids `[batch, seq]` -> logits `[batch, seq, vocab]` (float32)."""

    vocab: int
    d_model: int
    heads: int
    layers: int

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = nn.Embed(self.vocab, self.d_model, dtype=jnp.bfloat16)(tokens)
        blocks = nn.scan(nn.remat(Block), variable_axes={"params": 0}, split_rngs={"params": True},
                         length=self.layers)
        x, _ = blocks(self.heads, 4 * self.d_model, name="blocks")(x, None)
        return nn.Dense(self.vocab, dtype=jnp.float32)(nn.LayerNorm()(x))


def _weight_spec(mesh: Mesh, leaf: jax.ShapeDtypeStruct) -> P:
    """Matrices split their last dimension over "model" where it divides; the rest replicated."""
    model = mesh.shape.get("model", 1)
    if leaf.ndim >= 2 and model > 1 and leaf.shape[-1] % model == 0:
        return P(*([None] * (leaf.ndim - 1)), "model")
    return P()


def build(mesh: Mesh, *, batch: int = 8, seq: int = 1024, d_model: int = 512, heads: int = 8, layers: int = 4,
          vocab: int = 32_000):
    """Returns (the jitted, donating train step; abstract train state and token batch)."""
    model = Decoder(vocab=vocab, d_model=d_model, heads=heads, layers=layers)
    optimizer = optax.adamw(3e-4, weight_decay=0.1)
    tokens = jax.ShapeDtypeStruct((batch, seq + 1), jnp.int32)

    def init(rng: jax.Array) -> dict:
        params = model.init(rng, jnp.zeros((batch, seq), jnp.int32))["params"]
        return {"params": params, "opt": optimizer.init(params)}

    abstract = jax.eval_shape(init, jax.random.key(0))
    state_shardings = jax.tree.map(lambda leaf: NamedSharding(mesh, _weight_spec(mesh, leaf)), abstract)
    data = "data" if "data" in mesh.shape else None
    batch_sharding = NamedSharding(mesh, P(data, None))

    def train_step(state: dict, batch_tokens: jax.Array) -> tuple[dict, jax.Array]:
        def loss_fn(params):
            logits = model.apply({"params": params}, batch_tokens[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch_tokens[:, 1:]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt = optimizer.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, loss

    step = jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, NamedSharding(mesh, P())), donate_argnums=0)
    state = jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                         abstract, state_shardings)
    return step, (state, jax.ShapeDtypeStruct(tokens.shape, tokens.dtype, sharding=batch_sharding))
