"""Programs written after hloscope's text model, in other libraries' idioms (issue 33), for
`analyses/hlo_real_programs.py`: builders `build(mesh) -> (fn, args)` that the compile worker
imports by path. Imports nothing at module level, so that the worker pays only for the library
the program uses.

Two sets, fixed before any of them was compiled: DEVELOPMENT, the programs the rules may be
tuned on (the five kinds a new user found outside 5%), and HELD_OUT, which the rules are never
tuned on and whose error is reported apart (three were added to it after the first ten had
compiled, before they themselves had).
"""

from __future__ import annotations

import os
from functools import partial


def _is_abstract_array(leaf) -> bool:
    """eqx.is_array for an eqx.filter_eval_shape'd model, whose arrays are ShapeDtypeStructs."""
    import jax

    return isinstance(leaf, jax.ShapeDtypeStruct)


def _sharded_lm_step(model, rules, mesh, *, batch: int, seq: int):
    """A linen LM's AdamW step with its state sharded by the model's logical axes and `rules`
    (nn.logical_to_mesh_sharding), the batch over `data`, the state donated."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    opt = optax.adamw(1e-3)
    tokens = jax.ShapeDtypeStruct((batch, seq + 1), jnp.int32, sharding=NamedSharding(mesh, P("data")))

    def init(key):
        params = model.init(key, jnp.zeros((batch, seq), jnp.int32))
        return params, opt.init(params)

    abstract = jax.eval_shape(init, jax.random.key(0))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(abstract),
                         nn.unbox(shardings))

    def step(state, tokens):
        params, opt_state = state

        def loss(params):
            logits = model.apply(params, tokens[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

        grads = jax.grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.jit(step, donate_argnums=0, out_shardings=jax.tree.map(lambda a: a.sharding, state)), [state, tokens]


# --- development ------------------------------------------------------------------------------

def build_equinox_scanned_mlp(mesh):
    """An equinox MLP stack of 8 layers applied under lax.scan (the layers stacked with
    eqx.filter_vmap, as equinox's docs do), gradient of a squared loss wrt the stack."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    width, depth = 512, 8

    def make(key):
        return eqx.nn.Linear(width, width, key=key)

    stack = eqx.filter_eval_shape(lambda: eqx.filter_vmap(make)(jax.random.split(jax.random.key(0), depth)))
    params, static = eqx.partition(stack, _is_abstract_array)

    def loss(params, x):
        def layer(h, p):
            return jax.nn.gelu(jax.vmap(eqx.combine(p, static))(h)), None
        h, _ = jax.lax.scan(layer, x, params)
        return jnp.mean(h ** 2)

    return jax.grad(loss), [params, jax.ShapeDtypeStruct((256, width), jnp.float32)]


def build_haiku_resnet50(mesh):
    """haiku's ResNet-50 (hk.nets.ResNet50, batch norm in training mode) on 8 x 64 x 64 images:
    one SGD-with-momentum step of params and state, both donated."""
    import haiku as hk
    import jax
    import jax.numpy as jnp
    import optax

    def forward(images, is_training):
        return hk.nets.ResNet50(num_classes=100)(images, is_training=is_training)

    model = hk.transform_with_state(forward)
    opt = optax.sgd(0.1, momentum=0.9)
    images = jax.ShapeDtypeStruct((8, 64, 64, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((8,), jnp.int32)

    def init(key):
        params, state = model.init(key, jnp.zeros(images.shape), True)
        return params, state, opt.init(params)

    def step(params, state, opt_state, x, y):
        def loss(params):
            logits, state_out = model.apply(params, state, None, x, True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state_out

        grads, state_out = jax.grad(loss, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state_out, opt_state

    params, state, opt_state = jax.eval_shape(init, jax.random.key(0))
    return jax.jit(step, donate_argnums=(0, 1, 2)), [params, state, opt_state, images, labels]


def build_nnx_cnn(mesh):
    """A flax NNX CNN (nnx.Conv, nnx.BatchNorm, nnx.avg_pool) with an optax AdamW step written
    the split/merge way around nnx.grad, batch statistics updated, state donated."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    class CNN(nnx.Module):
        def __init__(self, rngs):
            self.convs = nnx.List([nnx.Conv(i, o, (3, 3), rngs=rngs) for i, o in ((3, 32), (32, 64), (64, 128))])
            self.norms = nnx.List([nnx.BatchNorm(o, rngs=rngs) for o in (32, 64, 128)])
            self.head = nnx.Linear(128 * 4 * 4, 10, rngs=rngs)

        def __call__(self, x):
            for conv, norm in zip(self.convs, self.norms):
                x = nnx.avg_pool(nnx.relu(norm(conv(x))), (2, 2), strides=(2, 2))
            return self.head(x.reshape(x.shape[0], -1))

    graphdef, params, rest = nnx.split(nnx.eval_shape(lambda: CNN(nnx.Rngs(0))), nnx.Param, ...)
    opt = optax.adamw(1e-3)

    def step(params, rest, opt_state, x, y):
        model = nnx.merge(graphdef, params, rest)

        def loss(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        grads = nnx.grad(loss)(model)   # updates the batch statistics in `model`
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), nnx.state(model, nnx.BatchStat), opt_state

    return (jax.jit(step, donate_argnums=(0, 1, 2)),
            [params, rest, jax.eval_shape(opt.init, params), jax.ShapeDtypeStruct((32, 32, 32, 3), jnp.float32),
             jax.ShapeDtypeStruct((32,), jnp.int32)])


def build_linen_sharded_lm(mesh):
    """A flax linen language model with logical partitioning (nn.with_logical_partitioning,
    nn.logical_to_mesh_sharding) over a 2-D (data, model) mesh: an AdamW step, params and
    optimizer state sharded and donated, the batch over data."""
    import flax.linen as nn
    import jax

    rules = (("batch", "data"), ("embed", None), ("mlp", "model"), ("heads", "model"), ("vocab", "model"))
    dense = partial(nn.DenseGeneral, use_bias=False)

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.RMSNorm()(x)
            q = dense((4, 64), kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "heads", None)))(h)
            k = dense((4, 64), kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "heads", None)))(h)
            v = dense((4, 64), kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "heads", None)))(h)
            a = jax.nn.dot_product_attention(q, k, v, is_causal=True)
            x = x + dense(256, axis=(-2, -1), kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("heads", None, "embed")))(a)
            h = nn.RMSNorm()(x)
            h = nn.gelu(dense(1024, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")))(h))
            return x + dense(256, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("mlp", "embed")))(h)

    class LM(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            embed = nn.Embed(8192, 256, embedding_init=nn.with_logical_partitioning(nn.initializers.normal(), ("vocab", "embed")))
            x = embed(tokens)
            for _ in range(4):
                x = Block()(x)
            return embed.attend(nn.RMSNorm()(x))

    return _sharded_lm_step(LM(), rules, mesh, batch=8, seq=512)


def build_while_loop(mesh):
    """A data-dependent lax.while_loop: power iteration on a 2048 x 2048 matrix until the
    eigenvalue estimate moves less than a tolerance (or 500 steps), returning vector and value."""
    import jax
    import jax.numpy as jnp

    def power(a, v):
        def cond(carry):
            i, _, value, previous = carry
            return (i < 500) & (jnp.abs(value - previous) > 1e-6 * jnp.abs(value))

        def body(carry):
            i, v, value, _ = carry
            w = a @ v
            return i + 1, w / jnp.linalg.norm(w), v @ w, value

        _, v, value, _ = jax.lax.while_loop(cond, body, (0, v / jnp.linalg.norm(v), jnp.float32(0), jnp.float32(1)))
        return v, value, a @ jnp.outer(v, v)

    return power, [jax.ShapeDtypeStruct((2048, 2048), jnp.float32), jax.ShapeDtypeStruct((2048,), jnp.float32)]



def build_equinox_scanned_mlp_step(mesh):
    """The equinox scanned MLP as a training step: optax adam over the stacked layers under
    lax.scan, jax.checkpoint per layer, model and optimizer state donated."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    width, depth = 1024, 12
    stack = eqx.filter_eval_shape(lambda: eqx.filter_vmap(lambda k: eqx.nn.Linear(width, width, key=k))(
        jax.random.split(jax.random.key(0), depth)))
    params, static = eqx.partition(stack, _is_abstract_array)
    opt = optax.adam(1e-3)

    def step(params, opt_state, x):
        def loss(params):
            @jax.checkpoint
            def layer(h, p):
                return jax.nn.gelu(jax.vmap(eqx.combine(p, static))(h)), None
            h, _ = jax.lax.scan(layer, x, params)
            return jnp.mean((h - x) ** 2)

        grads = jax.grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return (jax.jit(step, donate_argnums=(0, 1)),
            [params, jax.eval_shape(opt.init, params), jax.ShapeDtypeStruct((512, width), jnp.float32)])


def build_linen_scanned_sharded_lm(mesh):
    """A linen decoder whose layers are nn.scan(nn.remat(Block)) with logical partitioning over
    a 2-D (data, model) mesh: an AdamW step, state sharded and donated."""
    import flax.linen as nn

    rules = (("batch", "data"), ("embed", None), ("mlp", "model"), ("vocab", "model"), ("layers", None))
    init = nn.initializers.lecun_normal()

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            h = nn.RMSNorm()(x)
            h = nn.Dense(1024, use_bias=False, kernel_init=nn.with_logical_partitioning(init, ("embed", "mlp")))(h)
            h = nn.Dense(256, use_bias=False, kernel_init=nn.with_logical_partitioning(init, ("mlp", "embed")))(nn.gelu(h))
            return x + h, None

    class LM(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            embed = nn.Embed(8192, 256, embedding_init=nn.with_logical_partitioning(nn.initializers.normal(), ("vocab", "embed")))
            layers = nn.scan(nn.remat(Block), variable_axes={"params": 0}, split_rngs={"params": True}, length=6,
                             metadata_params={nn.PARTITION_NAME: "layers"})
            x, _ = layers()(embed(tokens), None)
            return embed.attend(nn.RMSNorm()(x))

    return _sharded_lm_step(LM(), rules, mesh, batch=8, seq=1024)


def build_nnx_optimizer_step(mesh):
    """flax NNX's own training step: nnx.Optimizer over a CNN with batch norm, nnx.value_and_grad,
    optimizer.update, written functionally (nnx.merge / nnx.split around it) and donated."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    class CNN(nnx.Module):
        def __init__(self, rngs):
            self.conv1, self.bn1 = nnx.Conv(3, 64, (3, 3), rngs=rngs), nnx.BatchNorm(64, rngs=rngs)
            self.conv2, self.bn2 = nnx.Conv(64, 128, (3, 3), rngs=rngs), nnx.BatchNorm(128, rngs=rngs)
            self.head = nnx.Linear(128, 100, rngs=rngs)

        def __call__(self, x):
            x = nnx.max_pool(nnx.relu(self.bn1(self.conv1(x))), (2, 2), (2, 2))
            x = nnx.relu(self.bn2(self.conv2(x)))
            return self.head(jnp.mean(x, axis=(1, 2)))

    def make():
        model = CNN(nnx.Rngs(0))
        return model, nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)

    graphdef, state = nnx.split(nnx.eval_shape(make))

    def step(state, x, y):
        model, optimizer = nnx.merge(graphdef, state)

        def loss(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        value, grads = nnx.value_and_grad(loss)(model)
        optimizer.update(model, grads)
        return nnx.split((model, optimizer))[1], value

    return (jax.jit(step, donate_argnums=0),
            [state, jax.ShapeDtypeStruct((64, 32, 32, 3), jnp.float32), jax.ShapeDtypeStruct((64,), jnp.int32)])


def build_greedy_decode(mesh):
    """Greedy decoding as users write it: a lax.while_loop that runs until every row has
    emitted an end token (or 256 steps), a KV cache written with dynamic_update_slice, one
    attention layer over the cache."""
    import jax
    import jax.numpy as jnp

    vocab, width, steps, batch = 4096, 256, 256, 16

    def decode(embed, wq, wk, wv, wo, prompt):
        cache_k = jnp.zeros((batch, steps, width))
        cache_v = jnp.zeros((batch, steps, width))

        def cond(carry):
            i, _, _, _, done, _ = carry
            return (i < steps) & ~jnp.all(done)

        def body(carry):
            i, token, k_cache, v_cache, done, out = carry
            x = embed[token]
            k_cache = jax.lax.dynamic_update_slice(k_cache, (x @ wk)[:, None], (0, i, 0))
            v_cache = jax.lax.dynamic_update_slice(v_cache, (x @ wv)[:, None], (0, i, 0))
            scores = jnp.einsum("bd,btd->bt", x @ wq, k_cache) / jnp.sqrt(width)
            scores = jnp.where(jnp.arange(steps) <= i, scores, -jnp.inf)
            h = jnp.einsum("bt,btd->bd", jax.nn.softmax(scores), v_cache) @ wo
            token = jnp.argmax(h @ embed.T, axis=-1)
            out = jax.lax.dynamic_update_slice(out, token[:, None], (0, i))
            return i + 1, token, k_cache, v_cache, done | (token == 0), out

        init = (0, prompt, cache_k, cache_v, jnp.zeros((batch,), bool), jnp.zeros((batch, steps), jnp.int32))
        return jax.lax.while_loop(cond, body, init)[-1]

    square = jax.ShapeDtypeStruct((width, width), jnp.float32)
    return decode, [jax.ShapeDtypeStruct((vocab, width), jnp.float32), square, square, square, square,
                    jax.ShapeDtypeStruct((batch,), jnp.int32)]

# --- held out ----------------------------------------------------------------------------------

def build_equinox_mlp_adamw(mesh):
    """An unrolled equinox MLP (eqx.nn.MLP, 6 layers of 1024) with an optax AdamW step through
    eqx.filter_value_and_grad, model and optimizer state donated."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    model = eqx.filter_eval_shape(lambda: eqx.nn.MLP(784, 10, 1024, 6, key=jax.random.key(0)))
    params, static = eqx.partition(model, _is_abstract_array)
    opt = optax.adamw(1e-3)

    def step(params, opt_state, x, y):
        def loss(params):
            logits = jax.vmap(eqx.combine(params, static))(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return (jax.jit(step, donate_argnums=(0, 1)),
            [params, jax.eval_shape(opt.init, params), jax.ShapeDtypeStruct((512, 784), jnp.float32),
             jax.ShapeDtypeStruct((512,), jnp.int32)])


def build_optimizer_only(mesh):
    """Optimizer alone: optax.chain(clip_by_global_norm, adamw with a warmup-cosine schedule)
    over a transformer-shaped pytree of 24 tensors (about 50M parameters), state donated."""
    import jax
    import jax.numpy as jnp
    import optax

    schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-4, 100, 10_000)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.1))
    params = {f"layer{i}": {"attn": jax.ShapeDtypeStruct((512, 1536), jnp.float32),
                            "out": jax.ShapeDtypeStruct((512, 512), jnp.float32),
                            "up": jax.ShapeDtypeStruct((512, 2048), jnp.float32),
                            "down": jax.ShapeDtypeStruct((2048, 512), jnp.float32),
                            "norm": jax.ShapeDtypeStruct((512,), jnp.float32)} for i in range(6)}

    def update(params, opt_state, grads):
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.jit(update, donate_argnums=(0, 1)), [params, jax.eval_shape(opt.init, params), params]


def build_mixed_precision(mesh):
    """Mixed precision as written by hand: float32 master weights, a flax linen MLP-mixer-like
    model run in bfloat16 (dtype=bfloat16, param_dtype=float32), a static loss scale, the
    gradient unscaled in float32 and applied with optax adam; state donated."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    class Mixer(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(4):
                y = nn.LayerNorm(dtype=jnp.bfloat16)(x)
                y = jnp.swapaxes(nn.Dense(256, dtype=jnp.bfloat16)(jnp.swapaxes(y, 1, 2)), 1, 2)
                x = x + y
                y = nn.LayerNorm(dtype=jnp.bfloat16)(x)
                x = x + nn.Dense(384, dtype=jnp.bfloat16)(nn.gelu(nn.Dense(1536, dtype=jnp.bfloat16)(y)))
            return nn.Dense(100, dtype=jnp.float32)(jnp.mean(x, axis=1))

    model, opt, scale = Mixer(), optax.adam(1e-3), 2.0 ** 12
    x = jax.ShapeDtypeStruct((64, 256, 384), jnp.bfloat16)
    y = jax.ShapeDtypeStruct((64,), jnp.int32)
    params = jax.eval_shape(lambda k: model.init(k, jnp.zeros(x.shape, x.dtype)), jax.random.key(0))

    def step(params, opt_state, x, y):
        def loss(params):
            logits = model.apply(params, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() * scale

        grads = jax.tree.map(lambda g: g.astype(jnp.float32) / scale, jax.grad(loss)(params))
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.jit(step, donate_argnums=(0, 1)), [params, jax.eval_shape(opt.init, params), x, y]


def build_shard_map_tensor_parallel(mesh):
    """Megatron-style tensor parallelism by hand under jax.shard_map over 4 devices: column- then
    row-parallel MLP blocks with a psum after each, 4 blocks, gradient wrt the sharded weights."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    @partial(jax.shard_map, mesh=mesh, in_specs=(P(None, None, "x"), P(None, "x", None), P()), out_specs=P())
    def mlp(up, down, x):
        for layer in range(up.shape[0]):
            x = x + jax.lax.psum(jax.nn.gelu(x @ up[layer]) @ down[layer], "x")
        return jnp.mean(x ** 2, keepdims=True)[0]

    up = jax.ShapeDtypeStruct((4, 512, 2048), jnp.float32, sharding=NamedSharding(mesh, P(None, None, "x")))
    down = jax.ShapeDtypeStruct((4, 2048, 512), jnp.float32, sharding=NamedSharding(mesh, P(None, "x", None)))
    x = jax.ShapeDtypeStruct((1024, 512), jnp.float32, sharding=NamedSharding(mesh, P()))
    return jax.grad(lambda up, down, x: mlp(up, down, x).sum(), argnums=(0, 1)), [up, down, x]


def build_haiku_transformer(mesh):
    """A haiku decoder (hk.MultiHeadAttention with a causal mask, hk.LayerNorm, 4 layers, each
    under hk.remat), gradient of the next-token loss wrt the params."""
    import haiku as hk
    import jax
    import jax.numpy as jnp
    import optax

    def forward(tokens):
        x = hk.Embed(4096, 256)(tokens)
        mask = jnp.tril(jnp.ones((1, 1, tokens.shape[1], tokens.shape[1]), bool))
        for _ in range(4):
            def block(x):
                h = hk.LayerNorm(-1, True, True)(x)
                x = x + hk.MultiHeadAttention(4, 64, w_init=hk.initializers.VarianceScaling())(h, h, h, mask=mask)
                h = hk.LayerNorm(-1, True, True)(x)
                return x + hk.nets.MLP([1024, 256])(h)
            x = hk.remat(block)(x)
        return hk.Linear(4096)(hk.LayerNorm(-1, True, True)(x))

    model = hk.without_apply_rng(hk.transform(forward))
    tokens = jax.ShapeDtypeStruct((8, 513), jnp.int32)

    def loss(params, tokens):
        logits = model.apply(params, tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    params = jax.eval_shape(lambda k: model.init(k, jnp.zeros((8, 512), jnp.int32)), jax.random.key(0))
    return jax.grad(loss), [params, tokens]



# Added to the held-out set after the first ten had compiled, before any of these three had.

def build_equinox_cnn(mesh):
    """An equinox CNN (eqx.nn.Conv2d, eqx.nn.MaxPool2d, eqx.nn.Linear) on 28 x 28 images with an
    optax AdamW step, model and optimizer state donated."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    class CNN(eqx.Module):
        layers: list

        def __init__(self, key):
            k = jax.random.split(key, 4)
            self.layers = [eqx.nn.Conv2d(1, 32, 3, padding=1, key=k[0]), jax.nn.relu, eqx.nn.MaxPool2d(2, 2),
                           eqx.nn.Conv2d(32, 64, 3, padding=1, key=k[1]), jax.nn.relu, eqx.nn.MaxPool2d(2, 2),
                           jnp.ravel, eqx.nn.Linear(64 * 7 * 7, 512, key=k[2]), jax.nn.relu,
                           eqx.nn.Linear(512, 10, key=k[3])]

        def __call__(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    model = eqx.filter_eval_shape(CNN, jax.random.key(0))
    params, static = eqx.partition(model, _is_abstract_array)
    opt = optax.adamw(1e-3)

    def step(params, opt_state, x, y):
        def loss(params):
            logits = jax.vmap(eqx.combine(params, static))(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return (jax.jit(step, donate_argnums=(0, 1)),
            [params, jax.eval_shape(opt.init, params), jax.ShapeDtypeStruct((128, 1, 28, 28), jnp.float32),
             jax.ShapeDtypeStruct((128,), jnp.int32)])


def build_switch_in_scan(mesh):
    """lax.switch inside lax.scan: each of 12 steps routes the state through one of three
    differently shaped expert MLPs chosen by a data-dependent index; gradient wrt all experts."""
    import jax
    import jax.numpy as jnp

    widths = (512, 1024, 2048)

    def run(experts, x):
        def expert(k):
            def apply(h):
                up, down = experts[k]
                return h + jnp.tanh(h @ up) @ down
            return apply

        def step(h, _):
            index = jnp.argmax(jnp.sum(h, axis=0)[:3])
            return jax.lax.switch(index, [expert(k) for k in range(3)], h), None

        h, _ = jax.lax.scan(step, x, None, length=12)
        return jnp.mean(h ** 2)

    experts = [(jax.ShapeDtypeStruct((256, w), jnp.float32), jax.ShapeDtypeStruct((w, 256), jnp.float32))
               for w in widths]
    return jax.grad(run), [experts, jax.ShapeDtypeStruct((512, 256), jnp.float32)]


def build_accumulated_sharded_mlp(mesh):
    """Gradient accumulation as users write it: lax.scan over 4 microbatches of a 2-D-sharded
    MLP (jax.sharding over data x model, with_sharding_constraint on the activations), then one
    AdamW update; params and state donated, 8 devices."""
    import jax
    import jax.numpy as jnp
    import optax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    opt = optax.adamw(1e-3)
    specs = {"up": P(None, "model"), "down": P("model", None)}
    params = {k: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=NamedSharding(mesh, specs[k]))
              for k, shape in (("up", (1024, 4096)), ("down", (4096, 1024)))}
    batches = jax.ShapeDtypeStruct((4, 64, 1024), jnp.float32, sharding=NamedSharding(mesh, P(None, "data")))

    def loss(params, x):
        h = jax.lax.with_sharding_constraint(jax.nn.gelu(x @ params["up"]), NamedSharding(mesh, P("data", "model")))
        return jnp.mean((h @ params["down"] - x) ** 2)

    def step(params, opt_state, batches):
        def micro(total, x):
            return jax.tree.map(jnp.add, total, jax.grad(loss)(params, x)), None

        grads, _ = jax.lax.scan(micro, jax.tree.map(jnp.zeros_like, params), batches)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    state = jax.eval_shape(opt.init, params)
    state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(
        mesh, specs["up"] if a.shape == (1024, 4096) else specs["down"] if a.shape == (4096, 1024) else P())), state)
    return jax.jit(step, donate_argnums=(0, 1)), [params, state, batches]

_SELF = os.path.abspath(__file__)
# name -> (program for hloscope.profile, devices, mesh, options)
DEVELOPMENT: dict[str, tuple[str, int, dict | None, dict]] = {
    "equinox MLP under lax.scan (filter_vmap stack), grad": (f"{_SELF}:build_equinox_scanned_mlp", 1, None, {}),
    "haiku ResNet-50 (batch norm), SGD step": (f"{_SELF}:build_haiku_resnet50", 1, None, {}),
    "flax NNX CNN (batch norm), AdamW step": (f"{_SELF}:build_nnx_cnn", 1, None, {}),
    "sharded linen LM (logical axes, 2x2 mesh), AdamW step": (
        f"{_SELF}:build_linen_sharded_lm", 4, {"data": 2, "model": 2}, {}),
    "data-dependent while_loop (power iteration)": (f"{_SELF}:build_while_loop", 1, None, {}),
    # Added after the first ten had compiled: the same kinds as users' training steps write them.
    "equinox scanned MLP (jax.checkpoint per layer), adam step": (f"{_SELF}:build_equinox_scanned_mlp_step", 1, None, {}),
    "linen LM (nn.scan of nn.remat, logical axes, 2x2 mesh), AdamW step": (
        f"{_SELF}:build_linen_scanned_sharded_lm", 4, {"data": 2, "model": 2}, {}),
    "flax NNX CNN (nnx.Optimizer, batch norm), step": (f"{_SELF}:build_nnx_optimizer_step", 1, None, {}),
    "greedy decoding (while_loop until end tokens, KV cache)": (f"{_SELF}:build_greedy_decode", 1, None, {}),
}
HELD_OUT: dict[str, tuple[str, int, dict | None, dict]] = {
    "equinox MLP (unrolled), AdamW step": (f"{_SELF}:build_equinox_mlp_adamw", 1, None, {}),
    "optax chain (clip + AdamW, schedule), optimizer only": (f"{_SELF}:build_optimizer_only", 1, None, {}),
    "mixed precision linen mixer (bf16 compute, loss scale), adam step": (f"{_SELF}:build_mixed_precision", 1, None, {}),
    "shard_map tensor-parallel MLP (4 devices, psum), grad": (
        f"{_SELF}:build_shard_map_tensor_parallel", 4, {"x": 4}, {}),
    "haiku decoder (hk.MultiHeadAttention, hk.remat), grad": (f"{_SELF}:build_haiku_transformer", 1, None, {}),
    "equinox CNN (Conv2d, MaxPool2d), AdamW step": (f"{_SELF}:build_equinox_cnn", 1, None, {}),
    "lax.switch in lax.scan (three expert MLPs), grad": (f"{_SELF}:build_switch_in_scan", 1, None, {}),
    "gradient accumulation (lax.scan over microbatches, 2x4 mesh), AdamW step": (
        f"{_SELF}:build_accumulated_sharded_mlp", 8, {"data": 2, "model": 4}, {}),
}
