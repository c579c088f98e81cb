"""`python -m reftrain.run --phase N`: train one MegaBeam phase in a run directory.

Phases chain: phase N starts from phase N-1's final checkpoint in the same run directory (or
from `--init-from`, a Hugging Face Mistral directory or an orbax checkpoint directory); a phase
that has checkpoints resumes from its latest. `--plan plan.json` (from `hloscope search`) sets
chunks, mesh and remat; without it the preset's default plan is used through the same path.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

EPILOG = """examples:
  python -m reftrain.run --phase 1                      # tiny preset, 8 virtual CPU devices, runs/tiny
  python -m reftrain.run --phase 3 --dry-run            # show what would run
  python -m reftrain.run --phase 1 --set rope_theta=1e8 --set learning_rate=1e-4
  python -m reftrain.run --preset mistral-7b --phase 1 --init-from ./Mistral-7B-Instruct-v0.2 --plan plan.json
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse's default adds the usage)
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="python -m reftrain.run", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phase", type=int, required=True, choices=(1, 2, 3, 4), help="MegaBeam phase (section 3)")
    p.add_argument("--preset", default="tiny", help="model preset: tiny (CPU-sized) or mistral-7b")
    p.add_argument("--run-dir", type=Path, help="run directory (default runs/<preset>)")
    p.add_argument("--plan", type=Path, help="plan.json from hloscope search")
    p.add_argument("--init-from", help="Hugging Face Mistral directory or orbax checkpoint directory")
    p.add_argument("--data-spec", type=Path, help="data spec file (default: the built-in 70/10/15/5 corpora)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a phase field (learning_rate, warmup_steps, stages=LENxCOUNT[xBATCH],...) "
                   "or a model field (rope_theta, rope_dtype, q_chunk, hidden_size, ...)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (resume continues)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default: the phase's)")
    p.add_argument("--save-every", type=int, default=10)
    p.add_argument("--keep", type=int, default=2, help="checkpoints kept per phase")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peak-tflops", type=float, help="per-device peak for MFU where the device is not in the table")
    p.add_argument("--cpu-devices", type=int, default=8, help="virtual devices when running on CPU")
    p.add_argument("--coordinator", help="multi-host: coordinator address host:port (else cluster env vars)")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    p.add_argument("--dry-run", action="store_true", help="print the effective phase, model and plan, then exit")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def _parse_value(current, text: str):
    if isinstance(current, bool):
        if text.lower() not in ("true", "false"):
            raise ValueError(f"expected true or false, got {text!r}")
        return text.lower() == "true"
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        return type(current)(float(text)) if isinstance(current, int) and float(text).is_integer() else float(text)
    return text


def parse_stages(text: str):
    """Parses `LENxCOUNT[xBATCH],...` (e.g. `128x8x2,256x4`) into phase stages."""
    from reftrain.phases import Stage

    stages = []
    for item in text.split(","):
        parts = item.lower().split("x")
        if len(parts) not in (2, 3) or not all(part.isdigit() and int(part) > 0 for part in parts):
            raise ValueError(f"stages: expected LENxCOUNT[xBATCH] with positive integers, got {item!r}")
        stages.append(Stage(*map(int, parts)))
    return tuple(stages)


def apply_overrides(phase, config, settings: list[str]):
    """Returns (phase, config) with `KEY=VALUE` settings applied; phase fields win over model fields."""
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep:
            raise ValueError(f"--set needs KEY=VALUE, got {setting!r}")
        if key == "stages":
            phase = phase.replace(stages=parse_stages(text))
        elif key in ("rope_theta", "rope_dtype"):  # both a phase and a model field: the phase sets the model
            phase = phase.replace(**{key: _parse_value(getattr(phase, key), text)})
        elif key in {f.name for f in dataclasses.fields(phase)} and key not in ("number", "stages", "paper"):
            phase = phase.replace(**{key: _parse_value(getattr(phase, key), text)})
        elif key in {f.name for f in dataclasses.fields(config)} and key != "yarn":
            config = config.replace(**{key: _parse_value(getattr(config, key), text)})
        else:
            raise ValueError(f"--set {key}: not a phase or model field")
    return phase, config


def _distributed(args) -> None:
    import jax

    if args.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("SLURM_JOB_ID"):
        if jax.config.jax_platforms in (None, "", "cpu") and args.coordinator:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.cpu_devices}".strip()
    import jax

    from reftrain.config import get_config
    from reftrain.data import DEFAULT_SPEC, DataError, load_spec
    from reftrain.phases import get_phase
    from reftrain.plan import PlanError, apply_plan, default_plan, load_plan
    from reftrain.sharding import make_mesh
    from reftrain.train import PhaseRun, TrainingError, train_phase

    try:
        _distributed(args)
        config = get_config(args.preset)
        phase = get_phase(args.preset, args.phase)
        phase, config = apply_overrides(phase, config, args.set)
        if args.grad_accum is not None:  # one value for the step count and the data feed
            if args.grad_accum < 1:
                raise ValueError(f"--grad-accum must be >= 1, got {args.grad_accum}")
            phase = dataclasses.replace(phase, grad_accum=args.grad_accum)
        config = config.replace(rope_theta=phase.rope_theta, rope_dtype=phase.rope_dtype)
        longest = max(stage.seq_len for stage in phase.stages)
        plan = load_plan(args.plan) if args.plan else default_plan(config, longest, jax.device_count())
        config = apply_plan(plan, config, jax.device_count())
        mesh = make_mesh(**plan.mesh)
        spec = load_spec(args.data_spec) if args.data_spec else DEFAULT_SPEC
        run = PhaseRun(
            run_dir=args.run_dir or Path("runs") / args.preset, phase=phase, config=config, plan=plan, mesh=mesh,
            data_spec=spec, seed=args.seed, grad_accum=phase.grad_accum, save_every=args.save_every, keep=args.keep,
            max_steps=args.max_steps, init_from=args.init_from, peak_tflops=args.peak_tflops, progress=not args.no_progress,
        )
        if args.dry_run:
            print(json.dumps(run.effective_config() | {"steps": phase.steps(), "tokens": phase.tokens}, indent=2, default=str))
            return 0
        summary = train_phase(run)
    except (KeyError, ValueError, PlanError, DataError, TrainingError, FileNotFoundError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {message}", file=sys.stderr)
        return 2
    if jax.process_index() == 0:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
