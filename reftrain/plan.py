"""The plan file: chunk sizes, mesh and remat policy chosen for a model, length and machine.

hloscope's search writes it (schema below, also in docs/plan.md); reftrain reads it with
`load_plan`, or uses `default_plan` for a preset, through the same `apply_plan` path.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reftrain.config import REMAT_POLICIES, SEQUENCE_LAYOUTS, ModelConfig
from reftrain.fields import check_field_types
from reftrain.files import atomic_write_bytes

SCHEMA = "hloscope.plan/1"
MESH_AXES = ("dp", "fsdp", "tp", "sp")


class PlanError(ValueError):
    """A plan that cannot be used here; the message is one line for the user."""


@dataclass(frozen=True)
class Plan:
    """What to run: model preset, sequence length, mesh, chunks, remat, and what was predicted."""

    model: str
    seq_len: int
    mesh: dict[str, int]
    q_chunk: int
    kv_chunk: int
    remat_policy: str
    sequence_layout: str = "contiguous"  # "zigzag" balances causal ring attention (sp > 1)
    document_block: int = 16384  # cuDNN with documents: blocks of a shard with itself (0: one call)
    layers: int | None = None  # decoder layers when fewer than the preset's (a model cut to fit one GPU)
    target: dict[str, Any] = field(default_factory=dict)  # device kind, count, memory budget
    predicted: dict[str, Any] = field(default_factory=dict)  # figure name -> bytes per device
    versions: dict[str, str] = field(default_factory=dict)
    schema: str = SCHEMA
    source: str = "default"

    @property
    def devices(self) -> int:
        return math.prod(self.mesh.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_plan(config: ModelConfig, seq_len: int, devices: int) -> Plan:
    """The plan used without `--plan`: all devices on sp (the paper: SP over TP for long
    sequences), the preset's chunks clipped to the local length, full remat."""
    local = seq_len // devices
    return Plan(
        model=config.name,
        seq_len=seq_len,
        mesh={"dp": 1, "fsdp": 1, "tp": 1, "sp": devices},
        q_chunk=min(config.q_chunk, local),
        kv_chunk=min(config.kv_chunk, local),
        remat_policy=config.remat_policy,
        sequence_layout=config.sequence_layout,
        document_block=config.document_block,
    )


def plan_from_dict(raw: dict[str, Any]) -> Plan:
    if not isinstance(raw, dict):
        raise PlanError("plan file must hold a JSON object")
    if raw.get("schema") != SCHEMA:
        raise PlanError(f"unknown plan schema {raw.get('schema')!r}; this reftrain reads {SCHEMA!r}")
    try:
        plan = Plan(**{key: raw[key] for key in raw if key in Plan.__dataclass_fields__})
    except TypeError as e:
        raise PlanError(f"plan file is missing fields: {e}") from None
    check_field_types(plan, "plan", PlanError)
    for name in ("seq_len", "q_chunk", "kv_chunk"):
        if getattr(plan, name) < 1:
            raise PlanError(f"plan {name} must be positive, got {getattr(plan, name)}")
    if plan.remat_policy not in REMAT_POLICIES:
        raise PlanError(f"plan remat_policy must be one of {', '.join(REMAT_POLICIES)}, got {plan.remat_policy!r}")
    if set(plan.mesh) != set(MESH_AXES) or not all(isinstance(v, int) and v >= 1 for v in plan.mesh.values()):
        raise PlanError(f"plan mesh must give positive integer sizes for {', '.join(MESH_AXES)}, got {plan.mesh}")
    if plan.sequence_layout not in SEQUENCE_LAYOUTS:
        raise PlanError(f"plan sequence_layout must be one of {', '.join(SEQUENCE_LAYOUTS)}, got {plan.sequence_layout!r}")
    if plan.document_block < 0:
        raise PlanError(f"plan document_block must be an integer >= 0, got {plan.document_block!r}")
    if plan.layers is not None and plan.layers < 1:
        raise PlanError(f"plan layers must be a positive integer or null, got {plan.layers!r}")
    return plan


def load_plan(path: str | Path) -> Plan:
    """Reads a plan file; raises PlanError with one line on anything unusable."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PlanError(f"plan file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise PlanError(f"plan file {path} is not JSON: {e}") from None
    return plan_from_dict(raw)


def apply_plan(plan: Plan, config: ModelConfig, available_devices: int) -> ModelConfig:
    """Returns `config` with the plan's chunks and remat; refuses a plan for another model or
    a mesh this machine cannot build."""
    if plan.model != config.name:
        raise PlanError(f"plan was made for model {plan.model!r}, this run trains {config.name!r}")
    if plan.devices > available_devices:
        raise PlanError(f"plan mesh {plan.mesh} needs {plan.devices} devices, this machine has {available_devices}")
    return config.replace(q_chunk=plan.q_chunk, kv_chunk=plan.kv_chunk, remat_policy=plan.remat_policy,
                          sequence_layout=plan.sequence_layout, document_block=plan.document_block,
                          num_layers=plan.layers or config.num_layers)


def write_plan(plan: Plan, path: str | Path) -> None:
    """Writes the plan atomically (temporary file, then rename)."""
    atomic_write_bytes(Path(path), (json.dumps(plan.to_dict(), indent=2) + "\n").encode())
