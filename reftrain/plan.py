"""The plan file: how to run a model at one length on one machine, an execution
(reftrain.execution.Execution: kernel, chunks, layout, documents, remat, dtypes) and the mesh.

hloscope's search writes it (schema below, also in docs/plan.md) with the execution of the very
step it compiled; reftrain reads it with `load_plan`, or uses `default_plan` for a preset,
through the same `apply_plan` path. Plans of the first schema (execution fields at the top
level) are read too.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reftrain.config import ModelConfig
from reftrain.execution import EXECUTION_FIELDS, Execution
from reftrain.fields import check_field_types
from reftrain.files import write_json

SCHEMA = "hloscope.plan/2"
_SCHEMA_1 = "hloscope.plan/1"  # q_chunk, kv_chunk, remat_policy, sequence_layout, document_block at the top
MESH_AXES = ("dp", "fsdp", "tp", "sp")


class PlanError(ValueError):
    """A plan that cannot be used here; the message is one line for the user."""


@dataclass(frozen=True)
class Plan:
    """What to run: model preset (cut to `layers`), sequence length, mesh, execution settings, and
    what was predicted."""

    model: str
    seq_len: int
    mesh: dict[str, int]
    execution: dict[str, Any]  # any of Execution's fields; the rest stay the preset's
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


def default_plan(config: ModelConfig, seq_len: int, devices: int, mesh: dict[str, int] | None = None) -> Plan:
    """The plan used without `--plan`: `mesh`, else all devices on sp (the paper: SP over TP for
    long sequences), and the config's execution with its chunks fitted to the local length."""
    mesh = mesh or {"dp": 1, "fsdp": 1, "tp": 1, "sp": devices}
    execution = config.execution.fitted(max(seq_len // mesh["sp"], 1))
    return Plan(model=config.name, seq_len=seq_len, mesh=dict(mesh), execution=execution.to_dict())


def plan_from_dict(raw: dict[str, Any]) -> Plan:
    if not isinstance(raw, dict):
        raise PlanError("plan file must hold a JSON object")
    if raw.get("schema") == _SCHEMA_1:  # the first schema: execution fields at the top level
        raw = {**{k: v for k, v in raw.items() if k not in EXECUTION_FIELDS}, "schema": SCHEMA,
               "execution": {k: v for k, v in raw.items() if k in EXECUTION_FIELDS}}
    if raw.get("schema") != SCHEMA:
        raise PlanError(f"unknown plan schema {raw.get('schema')!r}; this reftrain reads {SCHEMA!r} and {_SCHEMA_1!r}")
    unknown = set(raw) - set(Plan.__dataclass_fields__)
    if unknown:
        raise PlanError(f"plan has unknown fields {sorted(unknown)} (execution settings go under 'execution')")
    try:
        plan = Plan(**raw)
    except TypeError as e:
        raise PlanError(f"plan file is missing fields: {e}") from None
    check_field_types(plan, "plan", PlanError)
    if plan.seq_len < 1:
        raise PlanError(f"plan seq_len must be positive, got {plan.seq_len}")
    if set(plan.mesh) != set(MESH_AXES) or not all(isinstance(v, int) and v >= 1 for v in plan.mesh.values()):
        raise PlanError(f"plan mesh must give positive integer sizes for {', '.join(MESH_AXES)}, got {plan.mesh}")
    if plan.layers is not None and plan.layers < 1:
        raise PlanError(f"plan layers must be a positive integer or null, got {plan.layers!r}")
    margin = plan.target.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1):
        raise PlanError(f"plan target.margin must be a number in [0, 1), got {margin!r}")
    try:  # the execution's own checks: names, types and ranges of each setting
        Execution().replace(**plan.execution)
    except (TypeError, ValueError) as e:
        raise PlanError(f"plan execution: {str(e).removeprefix('execution ')}") from None
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
    """Returns `config` run as the plan says (its execution settings and layers); refuses a plan
    for another model or a mesh this machine cannot build."""
    if plan.model != config.name:
        raise PlanError(f"plan was made for model {plan.model!r}, this run trains {config.name!r}")
    if plan.devices > available_devices:
        raise PlanError(f"plan mesh {plan.mesh} needs {plan.devices} devices, this machine has {available_devices}")
    return config.with_execution(plan.execution).replace(num_layers=plan.layers or config.num_layers)


def write_plan(plan: Plan, path: str | Path) -> None:
    """Writes the plan atomically (temporary file, then rename)."""
    write_json(path, plan.to_dict(), indent=2)
