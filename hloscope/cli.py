"""The `hloscope` command line: profile a program or HLO text, check it against a budget, diff
two profiles, search reftrain's train-step settings (writing plan.json), print versions.

Exit codes: 0 done (and, for `check`, fits; with `--largest`, some value fits); 1 does not fit
the budget, or the compile ran out of memory; 2 a user error (bad flag or value, unreadable or
malformed file, unknown target, missing gpu-aot extra, a program that does not import, raises,
crashes or hangs), printed as one line on stderr with nothing written.

This module imports neither jax nor reftrain: programs compile in a worker process.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hloscope.errors import OneLineParser, UserError
from hloscope.targets import TARGETS, MissingGpuAotError, UnknownTargetError, check_gpu_aot, get_target
from hloscope.units import human_bytes, parse_size

# The built-in programs' options that have flags of their own; any program receives those given.
_OPTION_FLAGS = {
    "seq": (int, "global sequence length (tokens)"),
    "q_chunk": (int, "attention Q chunk"),
    "kv_chunk": (int, "attention KV chunk (default: twice --q-chunk)"),
    "batch": (int, "batch size"),
    "q_heads": (int, "attention programs: query heads"),
    "kv_heads": (int, "attention programs: key/value heads"),
    "head_dim": (int, "attention programs: head dimension"),
    "dtype": (str, "attention programs: bfloat16, float16 or float32"),
    "kernel": (str, "reftrain's attention kernel: auto (cuDNN for GPU targets), xla or cudnn"),
    "document_block": (int, "GPU targets: cuDNN runs a shard with itself under documents in blocks of this many tokens (0: one call)"),
    "model": (str, "layer/train-step: reftrain preset (default mistral-7b)"),
    "remat": (str, "layer/train-step: a reftrain.remat policy such as full (default), save_attention, "
                   "save_dots_attention or none (docs/model.md)"),
    "attention": (str, "layer/train-step: ours or paper (default ours)"),
    "layers": (int, "layer/train-step: number of layers (default: the plan's, else the preset's)"),
    "phase": (int, "layer/train-step: the phase whose RoPE, optimizer and schedule the step uses (default 3)"),
    "plan": (str, "layer/train-step: a plan.json from hloscope search; the step it makes reftrain run (its mesh, "
                  "execution and length; flags and --set name settings over it)"),
}


def _parse_value(text: str) -> Any:
    """A --set value: a JSON literal (42, 1.5, true, null, [1, 2], "x") or else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _settings(items: list[str]) -> dict[str, Any]:
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UserError(f"--set {item!r}: expected key=value with a Python identifier as key")
        settings[key.strip()] = _parse_value(value.strip())
    return settings


def parse_mesh(text: str | None) -> dict[str, int] | None:
    """`data=2,model=4` -> {"data": 2, "model": 4}; None for no --mesh."""
    if not text:
        return None
    mesh = {}
    for item in text.split(","):
        axis, sep, size = item.partition("=")
        if not sep or not axis.strip().isidentifier() or not size.strip().isdigit() or int(size) < 1:
            raise UserError(f"--mesh {text!r}: expected axis=size pairs such as data=2,model=4")
        if axis.strip() in mesh:
            raise UserError(f"--mesh {text!r}: axis {axis.strip()!r} given twice")
        mesh[axis.strip()] = int(size)
    return mesh


def _budget(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_size(text)
    except ValueError as error:
        raise UserError(f"--budget: {error}") from None


def _check_output(path: Path | None) -> None:
    if path is not None and not path.parent.exists():
        raise UserError(f"cannot write {path}: folder {path.parent} does not exist")


def _read_hlo(path: Path, module: str | None) -> dict[str, Any]:
    from hloscope.hlo import ParseError
    from hloscope.hlo_input import HloInputError
    from hloscope.profiling import profile_text

    if not path.exists():
        raise UserError(f"cannot read --hlo {path}: no such file or folder")
    try:
        return profile_text(path, module)
    except HloInputError as error:
        raise UserError(f"--hlo {error}") from None
    except ParseError as error:
        raise UserError(f"--hlo {path}: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read --hlo {path}: {error}") from None


def _program_options(args: argparse.Namespace) -> dict[str, Any]:
    """The builder's options: the flags given, then --set; checks the target's toolchain."""
    options = {name: getattr(args, name) for name in _OPTION_FLAGS if getattr(args, name) is not None}
    options.update(_settings(args.set))
    if get_target(args.target).platform == "cuda":
        check_gpu_aot()
    return options


def _failed(args: argparse.Namespace, status: str, error: str) -> None:
    """Prints a compile that ran out of memory (the caller exits 1); raises UserError otherwise."""
    from hloscope.programs import builder_spec

    named = error if builder_spec(args.program) in error else f"{args.program}: {error}"  # a crash does not name it
    if status != "oom":
        raise UserError(named)
    print(f"hloscope: ran out of memory: {named}", file=sys.stderr)


def _compile(args: argparse.Namespace) -> dict[str, Any] | None:
    """The profile of --program for the target; None after printing why the compile ran out of memory."""
    from hloscope.profiling import CompileFailed, profile_program

    options, mesh = _program_options(args), parse_mesh(args.mesh)
    try:
        return profile_program(args.program, options, target=args.target, devices=args.devices, mesh=mesh,
                               timeout_s=args.timeout)
    except ValueError as error:
        raise UserError(str(error)) from None
    except CompileFailed as failure:
        _failed(args, failure.status, failure.error)
        return None


def _largest(args: argparse.Namespace, budget: int) -> int:
    """`check --largest OPTION`: the largest multiple of --step up to --up-to that fits."""
    from hloscope import report
    from hloscope.api import ProgramFailed, largest

    if args.hlo is not None:
        raise UserError("--largest compiles --program at each value; it cannot read --hlo")
    if args.up_to is None:
        raise UserError(f"--largest {args.largest} needs --up-to, the largest value to try")
    options, mesh = _program_options(args), parse_mesh(args.mesh)

    def show(value: int, profile) -> None:
        name, size = profile.figure
        verdict = "fits" if profile.fits(budget) else "does not fit"
        print(f"{args.largest}={value:,}: {name} {human_bytes(size)}{profile.runtime_note} per device, {verdict}", flush=True)

    try:
        found = largest(args.program, args.largest, target=args.target, devices=args.devices, budget=budget,
                        up_to=args.up_to, step=args.step, mesh=mesh, timeout=args.timeout, on_probe=show, **options)
    except ValueError as error:
        raise UserError(str(error)) from None
    except ProgramFailed as failure:
        _failed(args, failure.status, failure.error)
        return 1
    if found.profile is None:
        print(f"NOTHING FITS: {args.largest}={args.step:,} does not fit {human_bytes(budget)} per device")
        return 1
    above = min((value for value, _, _, fits in found.probes if not fits and value > found.value), default=None)
    beyond = f"; {above:,} does not fit" if above is not None else f" (the largest tried, --up-to {args.up_to:,})"
    report.print_profile(found.profile.data, top=args.top, budget=budget)
    _write_outputs(args, found.profile.data, budget)
    name, size = found.profile.figure
    print(f"largest {args.largest} that fits {human_bytes(budget)} per device: {found.value:,} "
          f"({name} {human_bytes(size)}){beyond}")
    return 0


def _write_outputs(args: argparse.Namespace, profile: dict[str, Any], budget: int | None) -> None:
    if args.json:
        from hloscope._files import write_json

        write_json(args.json, profile)
    if args.html:
        from hloscope.html_report import write_report

        write_report([profile], args.html, budget=budget)


def _profile(args: argparse.Namespace) -> int:
    from hloscope import report

    for path in (args.json, args.html):
        _check_output(path)
    budget = _budget(args.budget)
    if args.command == "check" and budget is None:
        raise UserError("check needs --budget, e.g. --budget 70GiB")
    if getattr(args, "largest", None):
        return _largest(args, budget)
    profile = _read_hlo(args.hlo, args.module) if args.hlo is not None else _compile(args)
    if profile is None:
        return 1
    report.print_profile(profile, top=args.top, budget=budget)
    _write_outputs(args, profile, budget)
    if budget is None:
        return 0
    from hloscope.api import Profile

    judged = Profile(profile)
    name, size = judged.figure
    fits = judged.fits(budget)
    print(f"{'fits' if fits else 'DOES NOT FIT'}: {name} {human_bytes(size)}{judged.runtime_note} per device, "
          f"budget {human_bytes(budget)}")
    if name == "layout_total":   # no XLA numbers: the verdict rests on hloscope's model of them
        from hloscope.text_model import measured_band

        band = measured_band()
        print("note: the verdict rests on a model"
              + (f": {band.verdict_note(judged.needed, budget)}" if band else " of XLA's total"))
    return 0 if fits or args.command == "profile" else 1


def _load_profile(path: Path) -> dict[str, Any]:
    from hloscope.api import Profile

    try:
        return Profile.load(path).data
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {path}: {error}") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not JSON: {error}") from None
    except ValueError as error:
        raise UserError(str(error)) from None


def _diff(args: argparse.Namespace) -> int:
    from hloscope import report
    from hloscope.html_report import write_report

    _check_output(args.html)
    a, b = _load_profile(args.a), _load_profile(args.b)
    report.print_diff(a, b)
    if args.html:
        write_report([a, b], args.html)
    return 0


def _versions(_: argparse.Namespace) -> int:
    from hloscope.versions import toolchain_versions

    for name, version in toolchain_versions().items():
        print(f"{name:<24} {version or 'not installed'}")
    return 0


def _add_program_arguments(parser: argparse.ArgumentParser) -> None:
    from hloscope.programs import BUILTIN_PROGRAMS

    builtins = "; ".join(f"{name}: {program.description}" for name, program in BUILTIN_PROGRAMS.items())
    parser.add_argument("--program", default="attention",
                        help=f"a built-in program ({builtins}) or your builder as package.module:function or "
                             "path/to/file.py:function, called as build(mesh, **options) -> (fn, args)")
    parser.add_argument("--hlo", type=Path, help="profile HLO or StableHLO text instead of compiling: a file, or an "
                                                 "--xla_dump_to folder (its buffer assignment fills xla_total)")
    parser.add_argument("--module", help="--hlo DIR: the module whose file name contains this (default: the last compiled)")
    parser.add_argument("--target", default="cpu", help=f"one of: {', '.join(sorted(TARGETS))}")
    parser.add_argument("--devices", type=int, default=8, help="devices of the target to compile for")
    parser.add_argument("--mesh", help="mesh axes and sizes, e.g. data=2,model=4 (product = --devices; "
                                       "default: the built-in program's, or one axis 'data')")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an option for the builder (repeatable; VALUE is a JSON literal or a string)")
    for name, (kind, text) in _OPTION_FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=kind, help=text)
    parser.add_argument("--json", type=Path, help="write the profile here (schema: docs/profile_json.md)")
    parser.add_argument("--html", type=Path, help="write the HTML report here")
    parser.add_argument("--top", type=int, default=5, help="findings and buffers to print")
    parser.add_argument("--timeout", type=float, default=600, help="build and compile time limit in seconds")


def _parser() -> argparse.ArgumentParser:
    from hloscope import search_cli

    parser = OneLineParser(prog="hloscope", description="Per-device memory of JAX programs, from XLA's HLO.")
    commands = parser.add_subparsers(dest="command", required=True)

    profile = commands.add_parser("profile", help="compile a program (or read HLO text) and explain its memory")
    _add_program_arguments(profile)
    profile.add_argument("--budget", help="also judge against this budget per device, e.g. 70GiB (exit stays 0)")
    profile.set_defaults(run=_profile)

    check = commands.add_parser("check", help="profile, then exit 1 if the program does not fit --budget")
    _add_program_arguments(check)
    check.add_argument("--budget", required=True, help="bytes per device, or a number with a unit: 70GiB, 80GB")
    check.add_argument("--largest", metavar="OPTION",
                       help="instead, find the largest value of this integer option (seq, batch, layers, ...) that "
                            "fits: a binary search over multiples of --step up to --up-to, one compile each")
    check.add_argument("--up-to", type=int, help="with --largest: the largest value to try")
    check.add_argument("--step", type=int, default=1, help="with --largest: try multiples of this (default 1)")
    check.set_defaults(run=_profile)

    diff = commands.add_parser("diff", help="compare two profiles written with --json")
    diff.add_argument("a", type=Path)
    diff.add_argument("b", type=Path)
    diff.add_argument("--html", type=Path, help="write both profiles' report, curves overlaid, here")
    diff.set_defaults(run=_diff)

    search_cli.add_parser(commands)

    commands.add_parser("versions", help="print the toolchain versions memory figures depend on").set_defaults(run=_versions)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit code (2 for a user error)."""
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except (UserError, UnknownTargetError, MissingGpuAotError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"hloscope: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
