"""`python -m reftrain.run --phase N`: train one MegaBeam phase in a run directory.

A phase that has checkpoints resumes from its latest; otherwise it starts from `--init-from` (a
Hugging Face Mistral directory or an orbax checkpoint directory), else from phase N-1's final
checkpoint in the same run directory, else from a random initialisation, and says which in one
line on stderr. An unfinished phase N-1 is chained only with `--chain-unfinished`. `--plan
plan.json` (from `hloscope search`) sets the mesh and the execution (every setting of
reftrain.execution.Execution); without it the preset's default plan is used through the same
path, `reftrain.setup.resolve`, which hloscope's train-step program compiles too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from reftrain.argparse_one_line import OneLineParser
from reftrain.platform_choice import cpu_unless_a_gpu_is_here, native_noise_filtered

EPILOG = """examples:
  python -m reftrain.run --phase 1                      # tiny preset, 8 virtual CPU devices, runs/tiny
  python -m reftrain.run --phase 3 --dry-run            # show what would run
  python -m reftrain.run --phase 1 --set rope_theta=1e8 --set learning_rate=1e-4
  python -m reftrain.run --preset mistral-7b --phase 1 --init-from ./Mistral-7B-Instruct-v0.2 --plan plan.json
"""


def _parser() -> OneLineParser:
    p = OneLineParser(prog="python -m reftrain.run", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="run.toml: options and a [set] table (reftrain/run_config.py); "
                   "the command line overrides it")
    p.add_argument("--phase", type=int, choices=(0, 1, 2, 3, 4),
                   help="MegaBeam phase (section 3; 0: the small and tiny presets' base stage); required here or in --config")
    p.add_argument("--preset", default="tiny",
                   help="model preset: tiny (CPU-sized), small (57M, the recipe in miniature on one GPU) or mistral-7b")
    p.add_argument("--run-dir", type=Path, help="run directory (default runs/<preset>)")
    p.add_argument("--plan", type=Path, help="plan.json from hloscope search")
    p.add_argument("--init-from", help="Hugging Face Mistral directory, orbax checkpoint directory or phase directory")
    p.add_argument("--chain-unfinished", action="store_true",
                   help="start from the previous phase's latest checkpoint even if that phase is unfinished "
                   "(default: an unfinished previous phase is not chained; the phase starts from a random initialisation)")
    p.add_argument("--data-spec", type=Path, help="data spec file (default: the built-in 70/10/15/5 corpora)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a phase field (learning_rate, warmup_steps, stages=LENxCOUNT[xBATCH],...) "
                   "or a model field (rope_theta, rope_dtype, q_chunk, hidden_size, ...)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (resume continues)")
    p.add_argument("--max-seconds", type=float,
                   help="stop at the first step after this many seconds of training, with a checkpoint (a job's time limit)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default: the phase's)")
    p.add_argument("--save-every", type=int, default=10)
    p.add_argument("--no-checkpoints", action="store_true",
                   help="write no checkpoint, not even at the end (a measurement: the run cannot resume or chain)")
    p.add_argument("--keep", type=int, default=2, help="checkpoints kept per phase")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peak-tflops", type=float, help="per-device peak for MFU where the device is not in the table")
    p.add_argument("--cpu-devices", type=int, default=8, help="virtual devices when running on CPU")
    p.add_argument("--coordinator", help="multi-host: coordinator address host:port (else cluster env vars)")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    p.add_argument("--tensorboard", type=Path, metavar="DIR",
                   help="also write the step scalars as TensorBoard events into DIR (extra: tensorboard)")
    p.add_argument("--dry-run", action="store_true", help="print the effective phase, model and plan, then exit")
    p.add_argument("--no-progress", action="store_true")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line over `--config`'s options; `args.settings` is the file's [set] then --set."""
    from reftrain.run_config import RunConfigError, load_run_config

    p = _parser()
    args = p.parse_args(argv)
    file_settings: list = []
    if args.config is not None:
        try:
            options, file_settings = load_run_config(args.config)
        except RunConfigError as e:
            p.exit(2, f"error: {e}\n")
        if options.get("phase") not in (None, 0, 1, 2, 3, 4):
            p.exit(2, f"error: --config {args.config}: phase must be 0-4, got {options['phase']}\n")
        p.set_defaults(**options)
        args = p.parse_args(argv)
    if args.phase is None:
        p.error("--phase is required (on the command line or in --config)")
    for name in ("max_steps", "max_seconds", "grad_accum", "save_every", "keep", "cpu_devices", "peak_tflops"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    args.settings = [*file_settings, *(_split_setting(s) for s in args.set)]
    return args


def _split_setting(setting: str) -> tuple[str, str]:
    key, sep, text = setting.partition("=")
    return (key, text) if sep else (setting, None)


def _distributed(args) -> None:
    import jax

    if args.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("SLURM_JOB_ID"):
        if jax.config.jax_platforms in (None, "", "cpu") and args.coordinator:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cpu_unless_a_gpu_is_here()
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.cpu_devices}".strip()
    from reftrain.memory import describe, grant_memory
    from reftrain.plan import PlanError, load_plan

    try:  # read before jax starts: its margin sizes XLA's pool
        plan_file = load_plan(args.plan) if args.plan else None
    except PlanError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cpu = os.environ.get("JAX_PLATFORMS") == "cpu"
    grant = grant_memory(None if plan_file is None else plan_file.target.get("margin"), cpu=cpu)
    with native_noise_filtered():
        import jax

        try:  # before any backend starts; the backends then start here, inside the filter
            _distributed(args)
            jax.devices()
        except (ValueError, RuntimeError) as e:
            print(f"error: {str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__}", file=sys.stderr)
            return 2

    from reftrain.data import DEFAULT_SPEC, DataError, load_spec
    from reftrain.setup import resolve
    from reftrain.train.loop import device_bytes_limit
    from reftrain.train.out_of_memory import OutOfMemoryError
    from reftrain.sharding import make_mesh
    from reftrain.train import PhaseRun, TrainingError, train_phase
    from reftrain.train import tensorboard
    from reftrain.train.start import StartError, resolve_start

    try:
        resolved = resolve(args.preset, args.phase, args.settings, devices=jax.device_count(),
                           platform=jax.default_backend(), plan=plan_file, grad_accum=args.grad_accum)
        phase, config, plan = resolved.phase, resolved.config, resolved.plan
        if resolved.capped_from is not None:
            print(f"phase {phase.number}: its stages longer than the plan's {plan.seq_len:,} tokens (up to "
                  f"{resolved.capped_from:,}) run at {plan.seq_len:,}, in as many more sequences as keep their tokens",
                  file=sys.stderr)
        mesh = make_mesh(**plan.mesh)
        spec = load_spec(args.data_spec) if args.data_spec else DEFAULT_SPEC
        run = PhaseRun(
            run_dir=args.run_dir or Path("runs") / args.preset, phase=phase, config=config, plan=plan, mesh=mesh,
            data_spec=spec, seed=args.seed, grad_accum=phase.grad_accum, keep=args.keep,
            save_every=0 if args.no_checkpoints else args.save_every,
            max_steps=args.max_steps, max_seconds=args.max_seconds, init_from=args.init_from,
            chain_unfinished=args.chain_unfinished,
            peak_tflops=args.peak_tflops, progress=not args.no_progress, tensorboard=args.tensorboard,
            run_config=args.config, memory=grant,
        )
        if jax.process_index() == 0 and grant.chosen_by != "cpu":  # CPU devices have no pool to tell of
            print(describe(grant, device_bytes_limit(mesh), mesh.devices.flat[0].device_kind,
                           plan.predicted.get("xla_total")), file=sys.stderr, flush=True)
            predicted_with = plan.versions.get("jax")
            if plan.predicted.get("xla_total") and predicted_with and predicted_with != jax.__version__:
                print(f"warning: the plan's memory was predicted with jax {predicted_with}, this run has jax "
                      f"{jax.__version__}: XLA versions lay a step out differently (-3.1% to +6.4% on an H100, "
                      "docs/figures.md); each step's own compile is checked against the pool", file=sys.stderr)
        if args.tensorboard is not None and not tensorboard.available():
            raise ValueError(tensorboard.INSTALL_HINT)
        if args.dry_run:
            start = resolve_start(run.phase_dir, phase.number, init_from=args.init_from, seed=args.seed,
                                  chain_unfinished=args.chain_unfinished, total=phase.steps())
            shown = run.effective_config() | {"steps": phase.steps(), "tokens": phase.tokens, "start": start.to_dict()}
            print(json.dumps(shown, indent=2, default=str))
            return 0
        summary = train_phase(run)
    except OutOfMemoryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (KeyError, ValueError, PlanError, DataError, TrainingError, StartError, FileNotFoundError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {message}", file=sys.stderr)
        return 2
    if jax.process_index() == 0:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
