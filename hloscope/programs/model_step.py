"""`layer` and `train-step`: reftrain's real decoder layer and optimizer step, abstract inputs only.

Both are built from reftrain's own code for any preset, mesh, length, chunks and remat policy;
`--attention paper` swaps in the paper-faithful ring attention inside the same program, to see
Appendix A's buffer inside a whole training step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hloscope.programs.paper_attention import paper_ring_attention
from reftrain.config import PRESETS, REMAT_POLICIES, ModelConfig
from reftrain.layers import DecoderLayer, register_attention
from reftrain.phases import get_phase
from reftrain.remat import remat_policy
from reftrain.rope import rope_tables
from reftrain.sharding import AXES, activation_spec, batch_spec, param_shardings
from reftrain.train.optim import make_optimizer
from reftrain.train.state import abstract_state
from reftrain.train.step import batch_shardings, make_train_step


def _paper_attention(q, k, v, segment_ids, *, q_chunk, kv_chunk, axis_name):
    # The paper's codebase repeated Mistral's 8 KV heads to 32 before its ring attention.
    groups = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    return paper_ring_attention(q, k, v, segment_ids, q_chunk=q_chunk, kv_chunk=kv_chunk, axis_name=axis_name)


register_attention("paper", _paper_attention, full_segment_ids=True)


@dataclass(frozen=True)
class ModelStepShape:
    """A model program's size: preset, length, chunks, remat, attention and mesh (sp: the rest)."""

    model: str = "mistral-7b"
    seq: int = 524_288
    q_chunk: int = 2048
    kv_chunk: int | None = None
    batch: int = 1
    remat: str = "full"
    attention: str = "ours"  # or "paper"
    dp: int = 1
    fsdp: int = 1
    tp: int = 1
    sp: int | None = None  # None: devices / (dp * fsdp * tp)
    layers: int | None = None  # None: the preset's; fewer to fit one GPU (analyses/hloscope_vs_gpu.py)
    document_block: int = 16384  # cuDNN with documents: blocks of a shard with itself (0: one call)
    kernel: str = "auto"  # reftrain's attention_kernel
    layout: str = "contiguous"  # reftrain's sequence_layout ("zigzag" balances the causal ring)
    phase: int = 3  # the MegaBeam phase whose theta, optimizer and schedule the step uses

    def resolved(self) -> ModelStepShape:
        return replace(self, kv_chunk=2 * self.q_chunk if self.kv_chunk is None else self.kv_chunk)

    def mesh_sizes(self, devices: int) -> dict[str, int]:
        rest = self.dp * self.fsdp * self.tp
        sp = self.sp if self.sp is not None else max(devices // rest, 1)
        return {"dp": self.dp, "fsdp": self.fsdp, "tp": self.tp, "sp": sp}

    def validate(self, devices: int) -> None:
        """Raises ValueError naming the numbers when this cannot run on `devices` devices."""
        shape = self.resolved()
        if shape.model not in PRESETS:
            raise ValueError(f"--model {shape.model!r} is not a preset; known: {', '.join(sorted(PRESETS))}")
        if shape.remat not in REMAT_POLICIES:
            raise ValueError(f"--remat {shape.remat!r} is not one of {', '.join(REMAT_POLICIES)}")
        if shape.phase not in (1, 2, 3, 4):
            raise ValueError(f"--phase must be 1-4 (MegaBeam's phases), got {shape.phase}")
        if shape.attention not in ("ours", "paper"):
            raise ValueError(f"--attention must be 'ours' or 'paper', got {shape.attention!r}")
        sizes = shape.mesh_sizes(devices)
        if math.prod(sizes.values()) != devices:
            raise ValueError(f"mesh {sizes} does not use exactly --devices {devices}")
        if shape.seq <= 0 or shape.seq % sizes["sp"]:
            raise ValueError(f"--seq {shape.seq} is not divisible by sp={sizes['sp']}")
        shape.config()  # the model config's own checks (kernel, document_block)
        local = shape.seq // sizes["sp"]
        for flag, chunk in (("--q-chunk", shape.q_chunk), ("--kv-chunk", shape.kv_chunk)):
            if chunk <= 0 or local % chunk:
                raise ValueError(f"{flag} {chunk} does not divide the local length {local} (= {shape.seq} / sp={sizes['sp']})")
        if shape.batch % (sizes["dp"] * sizes["fsdp"]):
            raise ValueError(f"--batch {shape.batch} is not divisible by dp x fsdp = {sizes['dp'] * sizes['fsdp']}")

    def config(self) -> ModelConfig:
        shape = self.resolved()
        phase = get_phase(shape.model, shape.phase)
        return PRESETS[shape.model].replace(
            rope_theta=phase.rope_theta, rope_dtype=phase.rope_dtype,
            num_layers=shape.layers or PRESETS[shape.model].num_layers,
        ).with_execution(dict(
            q_chunk=shape.q_chunk, kv_chunk=shape.kv_chunk, remat_policy=shape.remat,
            attention_impl="paper" if shape.attention == "paper" else "auto",
            document_block=shape.document_block, attention_kernel=shape.kernel, sequence_layout=shape.layout,
        ))



def _tokens(mesh: Mesh, shape: ModelStepShape, leading: tuple[int, ...] = ()) -> jax.ShapeDtypeStruct:
    spec = P(*(None,) * len(leading), *batch_spec())
    return jax.ShapeDtypeStruct((*leading, shape.batch, shape.seq), jnp.int32, sharding=NamedSharding(mesh, spec))


def model_mesh(devices: int, **options) -> dict[str, int]:
    """The model programs' default mesh: dp, fsdp, tp as the options say, sp the remaining devices."""
    return ModelStepShape(**options).mesh_sizes(devices)


def model_shape(mesh: Mesh, options: dict) -> ModelStepShape:
    """Returns the options for `mesh` (reftrain's axes, in order), checked."""
    if tuple(mesh.axis_names) != AXES:
        raise ValueError(f"the model programs need reftrain's mesh axes {AXES}, got {tuple(mesh.axis_names)}")
    sizes = dict(mesh.shape)
    shape = ModelStepShape(**{**options, **{axis: sizes[axis] for axis in ("dp", "fsdp", "tp", "sp")}}).resolved()
    shape.validate(mesh.size)
    return shape


def build_train_step(mesh: Mesh, **options):
    """Returns (reftrain's jitted train step, abstract train state and batch)."""
    shape = model_shape(mesh, options)
    config = shape.config()
    phase = get_phase(shape.model, shape.phase)  # the optimizer and schedule reftrain.run builds for it
    optimizer, schedule = make_optimizer(phase, total_steps=phase.steps())
    state = abstract_state(config, optimizer, mesh)
    token = _tokens(mesh, shape, leading=(1,))
    mask = jax.ShapeDtypeStruct(token.shape, jnp.float32, sharding=token.sharding)
    batch = {"tokens": token, "targets": token, "positions": token, "segment_ids": token, "loss_mask": mask}
    assert set(batch) == set(batch_shardings(mesh))
    return make_train_step(config, optimizer, schedule, mesh), [state, batch]


def build_layer(mesh: Mesh, **options):
    """Returns (grad of one decoder layer wrt its params and input, abstract params, x, positions, ids)."""
    shape = model_shape(mesh, options)
    config = shape.config()
    dtype = jnp.dtype(config.compute_dtype)
    layer = DecoderLayer(config, mesh)
    x = jax.ShapeDtypeStruct((shape.batch, shape.seq, config.hidden_size), dtype, sharding=NamedSharding(mesh, activation_spec()))
    tokens = _tokens(mesh, shape)

    def init(x, positions, segment_ids):
        cos, sin = rope_tables(positions, config)
        return layer.init(jax.random.key(0), x, cos, sin, segment_ids)["params"]

    abstract = jax.eval_shape(init, x, tokens, tokens)
    shardings = param_shardings(abstract, mesh)
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)

    def loss(params, x, positions, segment_ids):
        cos, sin = rope_tables(positions, config)
        out, _ = layer.apply({"params": params}, x, cos, sin, segment_ids)
        return jnp.sum(out.astype(jnp.float32))

    step = loss if config.remat_policy == "none" else jax.checkpoint(loss, policy=remat_policy(config.remat_policy))
    return jax.jit(jax.grad(step, argnums=(0, 1))), [params, x, tokens, tokens]

