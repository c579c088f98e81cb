"""Issue 17, item 2: hloscope's live_peak against XLA's memory_analysis total on real programs.

    pip install -e ".[gpu-aot,analyses]"   # haiku and equinox for the other libraries' programs
    nice -n 10 python analyses/hlo_real_programs.py [--targets cpu,h100-80gb] [--only NAME] [--sets ...]

Compiles programs written with public libraries (flax linen, optax) and reftrain's own train
step, each for XLA:CPU and for a deviceless H100 (the gpu-aot extra compiles for the GPU on this
CPU host), through hloscope's public API (`hloscope.profile`: a worker compiles, hloscope parses
the optimized HLO and simulates its liveness), and prints layout_total / xla_total and
live_peak / xla_total per program and target, xla_total being XLA's own argument + output +
temp - alias, and per set the band of layout_total / xla_total: `fitted` (the programs below,
on which the rules were written), `development` and `held out` (analyses/_other_libraries.py:
other libraries' idioms, written after the rules; the held-out half is never tuned on). Both are the text model (docs/figures.md): neither reads XLA's buffer
assignment; live_peak is the most bytes live at once, layout_total adds the gaps that placing
the temporaries at offsets leaves, as XLA's heap does. Writes
analyses/results/hlo_real_programs.{md,json}.

The programs are builders `build(mesh, **options) -> (fn, args)` defined here; the worker
imports this file by path to call them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_HERE, ".."))
sys.path.insert(0, _HERE)


# --- builders (run in the compile worker) ------------------------------------------------------

def _grad_builder(model, x):
    """(grad of the model's mean output wrt its params, abstract params and input)."""
    import jax
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    return jax.grad(lambda p, x: model.apply(p, x)), [params, x]


def build_linen_decoder(mesh):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    class Block(nn.Module):
        width: int

        @nn.compact
        def __call__(self, x, _):
            h = nn.LayerNorm()(x)
            h = nn.Dense(4 * self.width)(h)
            h = nn.Dense(self.width)(nn.gelu(h))
            return x + h, None

    class Decoder(nn.Module):
        @nn.compact
        def __call__(self, x):
            block = nn.scan(nn.remat(Block), variable_axes={"params": 0}, split_rngs={"params": True}, length=6)
            x, _ = block(256)(x, None)
            return jnp.mean(x ** 2)

    return _grad_builder(Decoder(), jax.ShapeDtypeStruct((8, 128, 256), jnp.float32))


def build_conv_net(mesh):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    class ConvNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            for features in (32, 64, 128):
                x = nn.relu(nn.Conv(features, (3, 3))(x))
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
            return jnp.mean(nn.Dense(10)(x.reshape(x.shape[0], -1)) ** 2)

    return _grad_builder(ConvNet(), jax.ShapeDtypeStruct((16, 64, 64, 3), jnp.float32))


def build_resnet(mesh):
    """A small ResNet (linen, batch norm in training mode, 3 stages of 2 residual blocks): one
    SGD-with-momentum step updating params and batch statistics, state donated."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    class Residual(nn.Module):
        features: int
        strides: int

        @nn.compact
        def __call__(self, x):
            y = nn.Conv(self.features, (3, 3), (self.strides, self.strides), use_bias=False)(x)
            y = nn.relu(nn.BatchNorm(use_running_average=False)(y))
            y = nn.Conv(self.features, (3, 3), use_bias=False)(y)
            y = nn.BatchNorm(use_running_average=False, scale_init=nn.initializers.zeros)(y)
            if x.shape != y.shape:
                x = nn.Conv(self.features, (1, 1), (self.strides, self.strides), use_bias=False)(x)
                x = nn.BatchNorm(use_running_average=False)(x)
            return nn.relu(x + y)

    class ResNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.BatchNorm(use_running_average=False)(nn.Conv(32, (3, 3), use_bias=False)(x)))
            for stage, features in enumerate((32, 64, 128)):
                for block in range(2):
                    x = Residual(features, 2 if stage and not block else 1)(x)
            return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))

    model, opt = ResNet(), optax.sgd(0.1, momentum=0.9)
    images = jax.ShapeDtypeStruct((32, 32, 32, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((32,), jnp.int32)

    def init(key):
        variables = model.init(key, jnp.zeros(images.shape))
        return {"variables": variables, "opt": opt.init(variables["params"])}

    def step(state, x, y):
        def loss(params):
            logits, updates = model.apply({"params": params, "batch_stats": state["variables"]["batch_stats"]},
                                          x, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

        grads, updates = jax.grad(loss, has_aux=True)(state["variables"]["params"])
        changes, opt_state = opt.update(grads, state["opt"])
        params = optax.apply_updates(state["variables"]["params"], changes)
        return {"variables": {"params": params, "batch_stats": updates["batch_stats"]}, "opt": opt_state}

    return jax.jit(step, donate_argnums=0), [jax.eval_shape(init, jax.random.key(0)), images, labels]


def build_lstm(mesh):
    """A two-layer LSTM language model over 256 steps under lax.scan (flax's LSTMCell via
    nn.scan), gradient of the next-token loss wrt the params."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    class LSTM(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            x = nn.Embed(1024, 128)(tokens)
            for _ in range(2):
                cell = nn.scan(nn.OptimizedLSTMCell, variable_broadcast="params", split_rngs={"params": False},
                               in_axes=1, out_axes=1)(256)
                carry = cell.initialize_carry(jax.random.key(0), x[:, 0].shape[:-1] + (256,))
                _, x = cell(carry, x)
            return nn.Dense(1024)(x)

    model = LSTM()
    tokens = jax.ShapeDtypeStruct((16, 257), jnp.int32)

    def loss(params, tokens):
        logits = model.apply(params, tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    params = jax.eval_shape(lambda k: model.init(k, jnp.zeros((16, 256), jnp.int32)), jax.random.key(0))
    return jax.grad(loss), [params, tokens]


def build_shard_map_ring(mesh):
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    n = mesh.shape["x"]

    @partial(jax.shard_map, mesh=mesh, in_specs=(P("x"), P("x")), out_specs=P("x"))
    def ring(q, kv):
        def body(i, carry):
            acc, kv = carry
            acc = acc + jnp.tanh(q @ kv.T) @ kv
            return acc, jax.lax.ppermute(kv, "x", [(j, (j + 1) % n) for j in range(n)])
        return jax.lax.fori_loop(0, n, body, (jnp.zeros_like(q), kv))[0]

    q = jax.ShapeDtypeStruct((2048, 128), jnp.float32, sharding=NamedSharding(mesh, P("x")))
    return jax.grad(lambda q, kv: ring(q, kv).sum()), [q, q]


def build_optax_loop(mesh):
    import jax
    import jax.numpy as jnp
    import optax

    opt = optax.adam(1e-3)

    def run(w, x):
        def step(_, carry):
            w, state = carry
            g = jax.grad(lambda w: jnp.mean(jnp.tanh(x @ w["a"] + w["b"]) ** 2))(w)
            updates, state = opt.update(g, state)
            return optax.apply_updates(w, updates), state
        return jax.lax.fori_loop(0, 10, step, (w, opt.init(w)))[0]

    w = {"a": jax.ShapeDtypeStruct((512, 512), jnp.float32), "b": jax.ShapeDtypeStruct((512,), jnp.float32)}
    return run, [w, jax.ShapeDtypeStruct((64, 512), jnp.float32)]


def build_donated_step(mesh):
    import jax
    import jax.numpy as jnp
    import optax

    opt = optax.adam(1e-3)
    w = {"a": jax.ShapeDtypeStruct((1024, 1024), jnp.float32)}

    def step(w, state, x):
        g = jax.grad(lambda w: jnp.mean(jnp.tanh(x @ w["a"]) ** 2))(w)
        updates, state = opt.update(g, state)
        return optax.apply_updates(w, updates), state

    return (jax.jit(step, donate_argnums=(0, 1)),
            [w, jax.eval_shape(opt.init, w), jax.ShapeDtypeStruct((64, 1024), jnp.float32)])


def build_nnx_transformer(mesh):
    """Flax NNX, written the NNX way (modules as objects, nnx.split/merge around a jitted optax
    AdamW step that donates its state), attention through jax.nn.dot_product_attention."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    class Block(nnx.Module):
        def __init__(self, width, heads, rngs):
            self.heads = heads
            self.qkv = nnx.Linear(width, 3 * width, use_bias=False, rngs=rngs)
            self.out = nnx.Linear(width, width, use_bias=False, rngs=rngs)
            self.up, self.down = nnx.Linear(width, 4 * width, rngs=rngs), nnx.Linear(4 * width, width, rngs=rngs)
            self.norm1, self.norm2 = nnx.RMSNorm(width, rngs=rngs), nnx.RMSNorm(width, rngs=rngs)

        def __call__(self, x):
            b, t, d = x.shape
            q, k, v = (z.reshape(b, t, self.heads, d // self.heads) for z in jnp.split(self.qkv(self.norm1(x)), 3, -1))
            x = x + self.out(jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(b, t, d))
            return x + self.down(nnx.gelu(self.up(self.norm2(x))))

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(4096, 256, rngs=rngs)
            self.blocks = nnx.List([Block(256, 4, rngs) for _ in range(2)])

        def __call__(self, tokens):
            x = self.embed(tokens)
            for block in self.blocks:
                x = nnx.remat(lambda block, x: block(x))(block, x)
            return self.embed.attend(x)

    graphdef, params = nnx.split(nnx.eval_shape(lambda: Model(nnx.Rngs(0))))
    opt = optax.adamw(1e-3)

    def step(params, state, tokens):
        def loss(p):
            logits = nnx.merge(graphdef, p)(tokens)
            return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()
        grads = jax.grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return (jax.jit(step, donate_argnums=(0, 1)),
            [params, jax.eval_shape(opt.init, params), jax.ShapeDtypeStruct((4, 512), jnp.int32)])


_SELF = os.path.abspath(__file__)
# name -> (program for hloscope.profile, devices, mesh, options)
PROGRAMS: dict[str, tuple[str, int, dict | None, dict]] = {
    "linen decoder (scan + remat), grad": (f"{_SELF}:build_linen_decoder", 1, None, {}),
    "conv net, grad": (f"{_SELF}:build_conv_net", 1, None, {}),
    "ResNet (batch norm), SGD step": (f"{_SELF}:build_resnet", 1, None, {}),
    "LSTM (2 layers, lax.scan over 256 steps), grad": (f"{_SELF}:build_lstm", 1, None, {}),
    "shard_map ring (4 devices), grad": (f"{_SELF}:build_shard_map_ring", 4, {"x": 4}, {}),
    "optax adam fori_loop": (f"{_SELF}:build_optax_loop", 1, None, {}),
    "donated optax step": (f"{_SELF}:build_donated_step", 1, None, {}),
    "sharded flax decoder (examples/flax_decoder.py, 2x2 mesh), AdamW step": (
        os.path.join(_HERE, "..", "examples", "flax_decoder.py") + ":build", 4, {"data": 2, "model": 2},
        {"batch": 4, "seq": 256, "d_model": 256, "heads": 4, "layers": 2, "vocab": 4096}),
    "reftrain train step (tiny, seq 1024)": ("train-step", 1, None, {"model": "tiny", "seq": 1024, "q_chunk": 256}),
    "flax NNX transformer (nnx.remat, jax.nn.dot_product_attention), donated AdamW step": (
        f"{_SELF}:build_nnx_transformer", 1, None, {}),
    # Larger programs with async collectives, added after the model was fitted on the rows above.
    "reftrain ring attention (524,288 tokens over 8 devices), grad": ("attention", 8, None, {"seq": 524288}),
    "MegaBeam paper's ring attention (nested checkpointed scans, 65,536 tokens over 8), grad": (
        "paper-attention", 8, None, {"seq": 65536}),
    "reftrain train step (Mistral-7B, 2 layers, seq 16384)": (
        "train-step", 1, None, {"model": "mistral-7b", "layers": 2, "seq": 16384}),
}


def _sets() -> dict[str, dict]:
    """The programs by set: those the rules were written on, those written after them that the
    rules may be tuned on, and those they are never tuned on (analyses/_other_libraries.py)."""
    from _other_libraries import DEVELOPMENT, HELD_OUT

    return {"fitted": PROGRAMS, "development": DEVELOPMENT, "held out": HELD_OUT}


SETS = ("fitted", "development", "held out")


def band_by_set(rows: list[dict]) -> dict[str, dict]:
    """Per set: how many compiles, the lowest and highest layout_total / xla_total, how many
    within 3%, and how many failed to compile."""
    bands = {}
    for group in SETS:
        ratios = [r["layout_ratio"] for r in rows if r["set"] == group and "error" not in r]
        failed = sum(1 for r in rows if r["set"] == group and "error" in r)
        if ratios or failed:
            bands[group] = {"compiles": len(ratios), "low": min(ratios, default=None), "high": max(ratios, default=None),
                            "within_3_percent": sum(abs(x - 1) <= 0.03 for x in ratios), "failed": failed}
    return bands


def sets_option(text: str) -> list[str]:
    """--sets: comma-separated set names, each one of SETS (argparse type: a bad name is a usage error)."""
    chosen = [name.strip() for name in text.split(",")]
    unknown = [name for name in chosen if name not in SETS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown set {', '.join(map(repr, unknown))}; the sets are {', '.join(SETS)}")
    return chosen


def band_table(bands: dict[str, dict]) -> str:
    """band_by_set's result as a markdown table, a row per set."""
    lines = ["| set | compiles | layout_total / xla_total | within 3% | failed |", "| --- | ---: | --- | ---: | ---: |"]
    for group, band in bands.items():
        spread = f"{band['low']:.4f} to {band['high']:.4f}" if band["compiles"] else "-"
        lines.append(f"| {group} | {band['compiles']} | {spread} | {band['within_3_percent']} | {band['failed']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="cpu,h100-80gb")
    parser.add_argument("--only", default=None, help="run only programs whose name contains this")
    parser.add_argument("--sets", type=sets_option, default=list(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    args = parser.parse_args()
    import jax

    import hloscope

    rows = []
    chosen = [(group, name, spec) for group, programs in _sets().items() if group in args.sets
              for name, spec in programs.items()]
    for group, name, (program, devices, mesh, options) in chosen:
        if args.only and args.only not in name:
            continue
        for target in args.targets.split(","):
            started = time.perf_counter()
            try:
                report = hloscope.profile(program, target=target, devices=devices, mesh=mesh, **options)
            except Exception as error:  # noqa: BLE001 - a failed program is a row, not the end of the table
                rows.append({"set": group, "program": name, "target": target, "devices": devices, "error": f"{type(error).__name__}: {error}"[:300]})
                print(f"{name} / {target}: {rows[-1]['error']}", file=sys.stderr)
                continue
            figures = report.data["figures"]
            xla_total, live_peak, layout = figures["xla_total"], figures["live_peak"], figures["layout_total"]
            rows.append({"set": group, "program": name, "target": target, "devices": devices, "xla_total": xla_total,
                         "layout_total": layout, "layout_ratio": layout / xla_total,
                         "live_peak": live_peak, "ratio": live_peak / xla_total,
                         "buffer_assignment_total": figures.get("buffer_assignment_total"),
                         "peak_memory_in_bytes": figures.get("peak_memory_in_bytes"),
                         "alias_bytes": (report.data.get("memory_analysis") or {}).get("alias_size_in_bytes"),
                         "seconds": round(time.perf_counter() - started, 1)})
            print(f"{name} / {target}: {rows[-1]['layout_ratio']:.3f} ({rows[-1]['ratio']:.3f})", file=sys.stderr)
    summary = band_by_set(rows)
    lines = ["| set | program | target | devices | xla_total | layout_total | layout_total / xla_total | within 3% "
             "| live_peak | live_peak / xla_total |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['set']} | {r['program']} | {r['target']} | {r['devices']} | - | - | "
                         f"failed: {r['error'][:80]} | - | - | - |")
            continue
        lines.append(f"| {r['set']} | {r['program']} | {r['target']} | {r['devices']} | {r['xla_total']:,} | "
                     f"{r['layout_total']:,} | {r['layout_ratio']:.4f} | {'yes' if abs(r['layout_ratio'] - 1) <= 0.03 else 'no'} | "
                     f"{r['live_peak']:,} | {r['ratio']:.3f} |")
    table = "\n".join(lines) + "\n\n" + band_table(summary)
    print(table)
    from hloscope._files import atomic_write_text, write_json

    suffix = "" if not args.only and args.targets == "cpu,h100-80gb" and args.sets == list(SETS) else "_partial"
    out = os.path.join(_HERE, "results", f"hlo_real_programs{suffix}")
    write_json(out + ".json", {"jax": jax.__version__, "bands": summary, "rows": rows})
    if not suffix:
        # The band hloscope states beside a verdict judged on layout_total (hloscope.text_model).
        from hloscope.text_model import BAND_PATH, MeasuredBand, band_of

        ok = [r for r in rows if "error" not in r]
        held_out = [r["layout_ratio"] for r in ok if r["set"] == "held out"]
        write_json(BAND_PATH, MeasuredBand(band_of(held_out), band_of([r["layout_ratio"] for r in ok]),
                                           jax.__version__).to_dict())
    atomic_write_text(out + ".md", (
        f"layout_total and live_peak (hloscope's text model of the optimized HLO: the temporaries laid out "
        f"at offsets, and the most bytes live at once) against XLA's total (argument + output + temp - alias), "
        f"jax {jax.__version__}, XLA:CPU and a deviceless H100. Sets: `fitted`, the programs the rules were "
        f"written on; `development`, written after them in other libraries' idioms, which the rules may be "
        f"tuned on; `held out`, never tuned on (analyses/_other_libraries.py). "
        f"`nice -n 10 python analyses/hlo_real_programs.py`\n\n" + table + "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
