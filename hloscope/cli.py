"""The `hloscope` command line: profile a program or HLO text, diff two profiles, search chunk
sizes and remat for reftrain's train step (writing plan.json), print versions.

A user error (bad flag value, unreadable or malformed file, unknown target, missing gpu-aot
extra) prints one line on stderr and exits 2, writing nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hloscope import search_cli
from hloscope.hlo import ParseError
from hloscope.programs import PROGRAMS, AttentionShape, program_options
from hloscope.targets import TARGETS, MissingGpuAotError, UnknownTargetError, check_gpu_aot, get_target
from hloscope.versions import toolchain_versions


class UserError(Exception):
    """A mistake in the command line or its inputs: one line, exit code 2."""


def _write_json(data: dict[str, Any], path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1))
    partial.replace(path)


def _check_output(path: Path | None) -> None:
    if path is not None and not path.parent.exists():
        raise UserError(f"cannot write {path}: folder {path.parent} does not exist")


def _profile(args: argparse.Namespace) -> int:
    from hloscope import plots, report
    from hloscope.profile import CompileFailed, profile_program, profile_text

    for path in (args.json, args.html):
        _check_output(path)
    if args.hlo is not None:
        if not args.hlo.is_file():
            raise UserError(f"cannot read --hlo {args.hlo}: no such file")
        try:
            profile = profile_text(args.hlo)
        except ParseError as error:
            raise UserError(f"--hlo {args.hlo}: {error}") from None
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"cannot read --hlo {args.hlo}: {error}") from None
    else:
        values = dict(
            seq=args.seq, q_chunk=args.q_chunk, kv_chunk=args.kv_chunk, batch=args.batch, q_heads=args.q_heads,
            kv_heads=args.kv_heads, head_dim=args.head_dim, dtype=args.dtype, model=args.model, remat=args.remat,
            attention=args.attention, document_block=args.document_block, kernel=args.kernel,
        )
        try:
            shape = program_options(args.program, **values)
            shape.validate(args.devices)
        except (ValueError, TypeError) as error:
            raise UserError(str(error)) from None
        target = get_target(args.target)
        if target.platform == "cuda":
            check_gpu_aot()
        try:
            profile = profile_program(args.program, shape, target=args.target, devices=args.devices, timeout_s=args.timeout)
        except CompileFailed as error:
            print(f"hloscope: {error}", file=sys.stderr)
            return 1
    report.print_profile(profile, top=args.top)
    if args.json:
        _write_json(profile, args.json)
    if args.html:
        plots.write_html([profile], args.html)
    return 0


def _load_profile(path: Path) -> dict[str, Any]:
    from hloscope.profile import SCHEMA

    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {path}: {error}") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not JSON: {error}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else None
        raise UserError(f"{path} is not a profile of schema {SCHEMA} (found {found!r})")
    return data


def _diff(args: argparse.Namespace) -> int:
    from hloscope import plots, report

    _check_output(args.html)
    a, b = _load_profile(args.a), _load_profile(args.b)
    report.print_diff(a, b)
    if args.html:
        plots.write_html([a, b], args.html)
    return 0


def _versions(_: argparse.Namespace) -> int:
    for name, version in toolchain_versions().items():
        print(f"{name:<24} {version or 'not installed'}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hloscope", description="Per-device memory of JAX programs, from XLA's HLO.")
    commands = parser.add_subparsers(dest="command", required=True)

    defaults = AttentionShape()
    profile = commands.add_parser("profile", help="compile a program (or read HLO text) and explain its memory")
    profile.add_argument("--program", default="attention", choices=sorted(PROGRAMS))
    profile.add_argument("--hlo", type=Path, help="profile this HLO or StableHLO text file instead of compiling")
    profile.add_argument("--seq", type=int, default=defaults.seq, help="global sequence length (tokens)")
    profile.add_argument("--devices", type=int, default=8, help="devices on the sp axis")
    profile.add_argument("--q-chunk", type=int, default=defaults.q_chunk)
    profile.add_argument("--kv-chunk", type=int, default=None, help="default: twice --q-chunk")
    profile.add_argument("--batch", type=int, default=defaults.batch)
    profile.add_argument("--q-heads", type=int, default=defaults.q_heads)
    profile.add_argument("--kv-heads", type=int, default=defaults.kv_heads)
    profile.add_argument("--head-dim", type=int, default=defaults.head_dim)
    profile.add_argument("--dtype", default=defaults.dtype, choices=["bfloat16", "float16", "float32"])
    profile.add_argument("--kernel", default="auto", help="reftrain's attention kernel: auto (cuDNN for GPU targets), xla or cudnn")
    profile.add_argument("--document-block", type=int, default=0,
                         help="GPU targets: cuDNN runs a shard with itself under documents in blocks of this many tokens (0: one call)")
    profile.add_argument("--model", help="layer/train-step: reftrain preset (default mistral-7b)")
    profile.add_argument("--remat", help="layer/train-step: full, save_dots or none (default full)")
    profile.add_argument("--attention", help="layer/train-step: ours or paper (default ours)")
    profile.add_argument("--target", default="cpu", help=f"one of: {', '.join(sorted(TARGETS))}")
    profile.add_argument("--json", type=Path, help="write the profile here (schema: docs/profile_json.md)")
    profile.add_argument("--html", type=Path, help="write the accumulated curve here (plotly)")
    profile.add_argument("--top", type=int, default=5, help="findings and buffers to print")
    profile.add_argument("--timeout", type=float, default=600, help="compile time limit in seconds")
    profile.set_defaults(run=_profile)

    diff = commands.add_parser("diff", help="compare two profiles written with --json")
    diff.add_argument("a", type=Path)
    diff.add_argument("b", type=Path)
    diff.add_argument("--html", type=Path, help="write both curves overlaid here")
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
