"""`layer` and `train-step`: reftrain's real decoder layer and optimizer step, abstract inputs only.

Both are built through `reftrain.setup.resolve`, the function `python -m reftrain.run` trains
with, so they compile the step reftrain runs: the preset's own execution
(reftrain.execution.Execution), or a plan's (`plan=plan.json`), with the execution settings
named in the options over it, the phase's RoPE, optimizer and schedule, and the platform's
compute dtype. `attention="paper"` swaps in the paper-faithful ring attention inside the same
program, to see Appendix A's buffer inside a whole training step. Each build says what it made
(the third element of its return, recorded in the profile as `source.built`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hloscope.programs.paper_attention import paper_ring_attention
from reftrain.config import PRESETS, ModelConfig
from reftrain.execution import EXECUTION_FIELDS
from reftrain.layers import DecoderLayer, register_attention
from reftrain.plan import MESH_AXES, Plan, PlanError, load_plan
from reftrain.remat import remat_policy
from reftrain.rope import rope_tables
from reftrain.setup import Resolved, resolve
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

#: hloscope's short flags for execution settings (`--remat`, `--kernel`, `--layout`).
FLAG_NAMES = {"remat": "remat_policy", "kernel": "attention_kernel", "layout": "sequence_layout"}


@dataclass(frozen=True)
class ModelStepShape:
    """A model program: preset, phase, length, batch, mesh, and how it runs.

    `execution` holds only the settings named (reftrain.execution.Execution's field names);
    the rest are the plan's, else the preset's own. Mesh axes left None are the plan's, else
    dp, fsdp and tp 1 and sp the remaining devices.
    """

    model: str = "mistral-7b"
    seq: int = 524_288  # with a plan and no seq named: the plan's
    batch: int = 1
    phase: int = 3  # the MegaBeam phase whose theta, optimizer and schedule the step uses
    layers: int | None = None  # None: the plan's, else the preset's; fewer to fit one GPU
    attention: str = "ours"  # or "paper"
    plan: str | None = None  # a plan.json (hloscope search): its mesh, execution and layers
    dp: int | None = None
    fsdp: int | None = None
    tp: int | None = None
    sp: int | None = None
    execution: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_options(cls, **options) -> ModelStepShape:
        """From a builder's options: this class's fields, and execution settings by their
        Execution names or hloscope's flags (`remat`, `kernel`, `layout`). ValueError names an
        option that is neither."""
        own = {f.name for f in dataclasses.fields(cls)} - {"execution"}
        execution = dict(options.pop("execution", None) or {})
        for name, value in options.items():
            key = FLAG_NAMES.get(name, name)
            if name in own:
                continue
            if key not in EXECUTION_FIELDS:
                raise ValueError(f"unknown option {name!r} for reftrain's model programs; they take "
                                 f"{', '.join(sorted(own))} and execution settings ({', '.join(EXECUTION_FIELDS)})")
            if value is not None:
                execution[key] = value
        given = {k: v for k, v in options.items() if k in own and v is not None}
        if given.get("plan") is not None and "seq" not in given:  # the plan's length unless one is named
            given["seq"] = load_plan(given["plan"]).seq_len
        return cls(**given, execution=execution)

    def with_execution(self, **settings) -> ModelStepShape:
        return dataclasses.replace(self, execution={**self.execution, **settings})

    def read_plan(self) -> Plan | None:
        if self.plan is None:
            return None
        plan = load_plan(self.plan)
        if plan.model != self.model:
            raise PlanError(f"plan {self.plan} was made for model {plan.model!r}, not {self.model!r}")
        return plan

    def mesh_sizes(self, devices: int, plan: Plan | None = None) -> dict[str, int]:
        """{dp, fsdp, tp, sp}: the axes given, then the plan's, then 1 (sp: the rest)."""
        given = {axis: getattr(self, axis) for axis in MESH_AXES if getattr(self, axis) is not None}
        if plan is not None:
            return {**plan.mesh, **given}
        sizes = {"dp": 1, "fsdp": 1, "tp": 1, **given}
        sizes.setdefault("sp", max(devices // math.prod(sizes[axis] for axis in ("dp", "fsdp", "tp")), 1))
        return {axis: sizes[axis] for axis in MESH_AXES}

    def resolve(self, devices: int, platform: str) -> tuple[Resolved, dict[str, int]]:
        """(what `reftrain.run` runs for this shape on `devices` of `platform`, the mesh).
        Raises ValueError, KeyError or PlanError naming what does not fit."""
        if self.model not in PRESETS:
            raise ValueError(f"--model {self.model!r} is not a preset; known: {', '.join(sorted(PRESETS))}")
        if self.attention not in ("ours", "paper"):
            raise ValueError(f"--attention must be 'ours' or 'paper', got {self.attention!r}")
        plan = self.read_plan()
        sizes = self.mesh_sizes(devices, plan)
        if math.prod(sizes.values()) != devices:
            raise ValueError(f"mesh {sizes} does not use exactly --devices {devices}")
        if self.seq <= 0 or self.seq % sizes["sp"]:
            raise ValueError(f"--seq {self.seq} is not divisible by sp={sizes['sp']}")
        if self.batch % (sizes["dp"] * sizes["fsdp"]):
            raise ValueError(f"--batch {self.batch} is not divisible by dp x fsdp = {sizes['dp'] * sizes['fsdp']}")
        # The settings a user would give `reftrain.run --set`, in the order it applies them.
        settings = [*self.execution.items()]
        settings += [("num_layers", self.layers)] if self.layers is not None else []
        settings += [("attention_impl", "paper")] if self.attention == "paper" else []
        # The plan's mesh where one is given and no axis is named over it; else this mesh.
        if plan is not None and sizes != plan.mesh:
            plan = dataclasses.replace(plan, mesh=sizes)
        resolved = resolve(self.model, self.phase, settings, devices=devices, platform=platform, plan=plan,
                           mesh=sizes, seq_len=self.seq)
        return resolved, sizes

    def config(self, devices: int, platform: str) -> ModelConfig:
        return self.resolve(devices, platform)[0].config

    def validate(self, devices: int, platform: str = "cuda") -> Resolved:
        """What reftrain runs for this shape (`resolve`); ValueError naming the numbers when it
        cannot run on `devices` devices."""
        try:
            return self.resolve(devices, platform)[0]
        except (KeyError, PlanError) as error:
            raise ValueError(error.args[0] if error.args else str(error)) from None


def model_mesh(devices: int, **options) -> dict[str, int]:
    """The model programs' default mesh: the options' axes, else the plan's, else sp the rest."""
    shape = ModelStepShape.from_options(**options)
    return shape.mesh_sizes(devices, shape.read_plan())


def _shape(mesh: Mesh, options: dict) -> tuple[ModelStepShape, Resolved]:
    """The options on `mesh` (reftrain's axes, in order), checked and resolved."""
    if tuple(mesh.axis_names) != AXES:
        raise ValueError(f"the model programs need reftrain's mesh axes {AXES}, got {tuple(mesh.axis_names)}")
    sizes = dict(mesh.shape)
    shape = dataclasses.replace(ModelStepShape.from_options(**options), **{axis: sizes[axis] for axis in MESH_AXES})
    return shape, shape.validate(mesh.size, mesh.devices.flat[0].platform)


def _built(shape: ModelStepShape, resolved: Resolved, mesh: Mesh) -> dict[str, Any]:
    """What was compiled, for the profile: the model, phase and mesh, and the execution in effect."""
    config = resolved.config
    return {"model": config.name, "layers": config.num_layers, "phase": resolved.phase.number,
            "rope_theta": config.rope_theta, "seq": shape.seq, "batch": shape.batch, "mesh": dict(mesh.shape),
            "plan": shape.plan, "execution": config.execution.to_dict()}


def _tokens(mesh: Mesh, shape: ModelStepShape, leading: tuple[int, ...] = ()) -> jax.ShapeDtypeStruct:
    spec = P(*(None,) * len(leading), *batch_spec())
    return jax.ShapeDtypeStruct((*leading, shape.batch, shape.seq), jnp.int32, sharding=NamedSharding(mesh, spec))


def build_train_step(mesh: Mesh, **options):
    """Returns (reftrain's jitted train step, abstract train state and batch, what was built)."""
    shape, resolved = _shape(mesh, options)
    config, phase = resolved.config, resolved.phase
    optimizer, schedule = make_optimizer(phase, total_steps=phase.steps())  # as reftrain.run builds them
    state = abstract_state(config, optimizer, mesh)
    token = _tokens(mesh, shape, leading=(phase.grad_accum,))
    mask = jax.ShapeDtypeStruct(token.shape, jnp.float32, sharding=token.sharding)
    batch = {"tokens": token, "targets": token, "positions": token, "segment_ids": token, "loss_mask": mask}
    assert set(batch) == set(batch_shardings(mesh))
    return make_train_step(config, optimizer, schedule, mesh), [state, batch], _built(shape, resolved, mesh)


def build_layer(mesh: Mesh, **options):
    """Returns (grad of one decoder layer wrt its params and input, abstract params, x, positions,
    ids, what was built)."""
    shape, resolved = _shape(mesh, options)
    config = resolved.config
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
    return jax.jit(jax.grad(step, argnums=(0, 1))), [params, x, tokens, tokens], _built(shape, resolved, mesh)
