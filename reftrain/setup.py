"""The one path from a preset, a phase, a plan and settings to the step that runs.

`resolve` is what `python -m reftrain.run` trains and what hloscope's `train-step` and `layer`
programs compile (hloscope.programs.model_step), so the two cannot drift: the preset's own
execution (reftrain.execution.Execution), or the plan's, then the settings the user names
(`--set`, which win), the phase's RoPE, and the platform's compute dtype.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from reftrain.config import ModelConfig, get_config
from reftrain.phases import Phase, get_phase
from reftrain.plan import Plan, apply_plan, default_plan

__all__ = ["Resolved", "apply_settings", "parse_stages", "resolve"]


@dataclass(frozen=True)
class Resolved:
    """What one phase runs: its phase (stages capped at the plan's length), model config and plan;
    `capped_from` is the phase's longest stage where the plan is shorter (None otherwise)."""

    phase: Phase
    config: ModelConfig
    plan: Plan
    capped_from: int | None = None


def resolve(preset: str, phase_number: int, settings: list[tuple[str, object]], *, devices: int, platform: str,
            plan: Plan | None = None, mesh: dict[str, int] | None = None, seq_len: int | None = None,
            grad_accum: int | None = None) -> Resolved:
    """The phase, config and plan that `python -m reftrain.run --preset PRESET --phase N` runs
    on `devices` devices of `platform` with `settings` (`--set`, in order) and `plan` (`--plan`;
    None: the default plan at `seq_len` tokens, the phase's longest stage unless given, on
    `mesh`, all devices on sp unless given). Raises ValueError, KeyError or PlanError."""
    phase, config = apply_settings(get_phase(preset, phase_number), get_config(preset), settings)
    longest = max(stage.seq_len for stage in phase.stages)
    plan = plan or default_plan(config, seq_len or longest, devices, mesh)
    # The plan's execution and layers, then the model fields the user names over it (they win).
    named = {key for key, _ in settings} & {f.name for f in dataclasses.fields(ModelConfig)} - {"rope_theta", "rope_dtype"}
    named |= {key for key, _ in settings} & set(config.execution.to_dict())
    config = apply_plan(plan, config, devices).replace(**{key: getattr(config, key) for key in named})
    capped_from = None
    if longest > plan.seq_len:  # its memory was predicted for plan.seq_len tokens, not more
        phase, capped_from = phase.capped_at(plan.seq_len), longest
    if platform == "cpu" and "compute_dtype" not in named:
        # XLA:CPU has no bfloat16 matmul units: a tiny step in bfloat16 took 8.7 s, in float32
        # 4.1 s (2 shared cores), with the same losses to 1e-3. `--set compute_dtype=` still wins.
        config = config.replace(compute_dtype="float32")
    if grad_accum is not None:  # one value for the step count and the data feed
        phase = phase.replace(grad_accum=grad_accum)
    config = config.replace(rope_theta=phase.rope_theta, rope_dtype=phase.rope_dtype)
    return Resolved(phase, config, plan, capped_from)


def _parse_text(hint, text: str, key: str):
    """A `--set` value read as the field's annotated type (int, float, bool or str)."""
    from reftrain.fields import describe

    try:
        if hint is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        if hint is int:
            number = float(text)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if hint is float:
            return float(text)
    except (ValueError, OverflowError):
        raise ValueError(f"--set {key}: expected {describe(hint)}, got {text!r}") from None
    return text


def parse_stages(text: str):
    """Parses `LENxCOUNT[xBATCH],...` (e.g. `128x8x2,256x4`) into phase stages."""
    from reftrain.phases import Stage

    stages = []
    for item in str(text).split(","):
        parts = item.lower().split("x")
        if len(parts) not in (2, 3) or not all(part.isdigit() and int(part) > 0 for part in parts):
            raise ValueError(f"stages: expected LENxCOUNT[xBATCH] with positive integers, got {item!r}")
        stages.append(Stage(*map(int, parts)))
    return tuple(stages)


def _settable(phase, config) -> dict[str, tuple[str, object]]:
    """{key: ("phase" | "model", annotation)} of every field `--set` may change; a key that is
    both (rope_theta, rope_dtype) is the phase's, which sets the model's."""
    import typing

    keys = {}
    for target, obj, skip in (("model", config.execution, set()), ("model", config, {"yarn", "execution"}),
                              ("phase", phase, {"number", "stages", "paper"})):
        hints = typing.get_type_hints(type(obj))
        keys |= {f.name: (target, hints[f.name]) for f in dataclasses.fields(obj) if f.name not in skip}
    return keys


def apply_settings(phase, config, settings: list[tuple[str, object]], origin: str = "--set"):
    """Returns (phase, config) with (key, value) settings applied in order. A str value is read
    as the field's type (`--set`); any other value must already have it (a TOML file)."""
    from reftrain.fields import describe, matches

    fields = _settable(phase, config)
    for key, value in settings:
        if value is None:
            raise ValueError(f"--set needs KEY=VALUE, got {key!r}")
        if key == "stages":
            phase = phase.replace(stages=parse_stages(value))
            continue
        if key not in fields:
            raise ValueError(f"{origin} {key}: not a phase or model field")
        target, hint = fields[key]
        if isinstance(value, str):
            value = _parse_text(hint, value, key)
        elif not matches(value, hint):
            raise ValueError(f"{origin} {key} must be {describe(hint)}, got {value!r}")
        if target == "phase":
            phase = phase.replace(**{key: value})
        else:
            config = config.replace(**{key: value})
    return phase, config


