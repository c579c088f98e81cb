"""Issue 17, item 2: hloscope's live_peak against XLA's memory_analysis total on real programs.

    nice -n 10 python analyses/hlo_real_programs.py [--target cpu]

Builds programs from public libraries (a flax linen decoder with nn.scan + nn.remat, a conv
net, a shard_map ring over 4 host devices, an optax Adam loop under lax.fori_loop, a donated
train step), compiles each for CPU, parses the optimized HLO and prints live_peak /
xla_total (argument + output + temp - alias). Writes analyses/results/hlo_real_programs.json.
GPU (deviceless H100) is not run here: it needs the gpu-aot compile of hloscope.compile on a
machine the lead runs it on.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from functools import partial  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from hloscope.hlo import parse_module  # noqa: E402
from hloscope.trace import trace_module  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))


class _Block(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x, _):
        h = nn.LayerNorm()(x)
        h = nn.Dense(4 * self.width)(h)
        h = nn.Dense(self.width)(nn.gelu(h))
        return x + h, None


class _Decoder(nn.Module):
    width: int = 256
    layers: int = 6

    @nn.compact
    def __call__(self, x):
        block = nn.scan(nn.remat(_Block), variable_axes={"params": 0}, split_rngs={"params": True},
                        length=self.layers)
        x, _ = block(self.width)(x, None)
        return jnp.mean(x ** 2)


class _ConvNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        for features in (32, 64, 128):
            x = nn.relu(nn.Conv(features, (3, 3))(x))
            x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        return jnp.mean(nn.Dense(10)(x.reshape(x.shape[0], -1)) ** 2)


def _grad_step(model, x):
    params = model.init(jax.random.PRNGKey(0), x)
    return jax.jit(jax.grad(lambda p, x: model.apply(p, x))).lower(params, x)


def linen_decoder():
    return _grad_step(_Decoder(), jnp.ones((8, 128, 256)))


def conv_net():
    return _grad_step(_ConvNet(), jnp.ones((16, 64, 64, 3)))


def shard_map_ring():
    mesh = jax.make_mesh((4,), ("x",))

    @partial(jax.shard_map, mesh=mesh, in_specs=(P("x"), P("x")), out_specs=P("x"))
    def ring(q, kv):
        def body(i, carry):
            acc, kv = carry
            acc = acc + jnp.tanh(q @ kv.T) @ kv
            return acc, jax.lax.ppermute(kv, "x", [(j, (j + 1) % 4) for j in range(4)])
        return jax.lax.fori_loop(0, 4, body, (jnp.zeros_like(q), kv))[0]

    sharded = NamedSharding(mesh, P("x"))
    q = jax.device_put(jnp.ones((2048, 128)), sharded)
    return jax.jit(jax.grad(lambda q, kv: ring(q, kv).sum())).lower(q, q)


def optax_loop():
    opt = optax.adam(1e-3)
    w = {"a": jnp.ones((512, 512)), "b": jnp.ones((512,))}

    def run(w, x):
        def step(_, carry):
            w, state = carry
            g = jax.grad(lambda w: jnp.mean(jnp.tanh(x @ w["a"] + w["b"]) ** 2))(w)
            updates, state = opt.update(g, state)
            return optax.apply_updates(w, updates), state
        return jax.lax.fori_loop(0, 10, step, (w, opt.init(w)))[0]

    return jax.jit(run).lower(w, jnp.ones((64, 512)))


def donated_step():
    opt = optax.adam(1e-3)
    w = {"a": jnp.ones((1024, 1024))}

    def step(w, state, x):
        g = jax.grad(lambda w: jnp.mean(jnp.tanh(x @ w["a"]) ** 2))(w)
        updates, state = opt.update(g, state)
        return optax.apply_updates(w, updates), state

    return jax.jit(step, donate_argnums=(0, 1)).lower(w, opt.init(w), jnp.ones((64, 1024)))


PROGRAMS = {"linen decoder (scan + remat), grad": linen_decoder, "conv net, grad": conv_net,
            "shard_map ring (4 devices), grad": shard_map_ring, "optax adam fori_loop": optax_loop,
            "donated optax step": donated_step}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    rows = []
    for name, build in PROGRAMS.items():
        compiled = build().compile()
        ma = compiled.memory_analysis()
        xla_total = (ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
                     - ma.alias_size_in_bytes)
        trace = trace_module(parse_module(compiled.as_text()))
        rows.append({"program": name, "target": "cpu", "xla_total": xla_total, "live_peak": trace.live_peak,
                     "ratio": trace.live_peak / xla_total, "alias_bytes": ma.alias_size_in_bytes})
    print("| program | target | xla_total | live_peak | live_peak / xla_total | within 5% |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['program']} | {r['target']} | {r['xla_total']:,} | {r['live_peak']:,} | {r['ratio']:.3f} | "
              f"{'yes' if abs(r['ratio'] - 1) <= 0.05 else 'no'} |")
    os.makedirs(os.path.join(_HERE, "results"), exist_ok=True)
    with open(os.path.join(_HERE, "results", "hlo_real_programs.json"), "w") as f:
        json.dump({"jax": jax.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
