"""The `niah` command behind `python -m reftrain.eval`: checks, loading, runs, reports.

Everything a user can get wrong (grid, haystack file, tokenizer, output path, checkpoint
directory, device count) is checked before the checkpoint is loaded, and raised as CLIError.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reftrain.eval._haystack import BOOKS, HELD_OUT, NIAHError
from reftrain.files import is_hf_checkpoint_dir, is_phase_dir


class CLIError(ValueError):
    """A user error of the CLI: printed as one line, exit 2."""


def checkpoint_kind(path: Path) -> str:
    """Returns "phase" (reftrain <run>/phaseN) or "hf" (config.json + *.safetensors)."""
    if not path.exists():
        raise CLIError(f"checkpoint {path} does not exist")
    if not path.is_dir():
        raise CLIError(f"checkpoint {path} is not a directory")
    if is_phase_dir(path):
        return "phase"
    if is_hf_checkpoint_dir(path):
        return "hf"
    raise CLIError(f"checkpoint {path} is neither a reftrain phase directory (config.json + checkpoints/) "
                   "nor a Hugging Face directory (config.json + *.safetensors)")


def _tokenizer(args: argparse.Namespace, kind: str):
    from reftrain.data import DataError, load_tokenizer

    path = args.tokenizer
    if path is None and kind == "hf" and (args.checkpoint / "tokenizer.model").is_file():
        path = args.checkpoint / "tokenizer.model"
    try:
        return load_tokenizer(path)
    except DataError as error:
        raise CLIError(str(error)) from None


def _haystack(args: argparse.Namespace, tokenizer):
    from reftrain.eval._haystack import load_haystack

    if args.haystack in (BOOKS, HELD_OUT):
        return load_haystack(tokenizer, label=args.haystack)
    path = Path(args.haystack)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CLIError(f"--haystack {path}: cannot read a UTF-8 text file ({error.__class__.__name__})") from None
    return load_haystack(tokenizer, text, str(path))


def _load(args: argparse.Namespace, kind: str, mesh):
    """Returns (config, params) placed on `mesh`; any failure becomes one CLIError line."""
    try:
        if kind == "phase":
            from reftrain.train.checkpoint import load_phase_params

            return load_phase_params(args.checkpoint, mesh=mesh, step=args.step)
        if args.step is not None:
            raise CLIError("--step applies to a reftrain phase directory, not a Hugging Face one")
        from reftrain.hf import load_checkpoint

        return load_checkpoint(args.checkpoint, mesh=mesh)
    except CLIError:
        raise
    except Exception as error:  # orbax, safetensors, JSON: all mean "not a loadable checkpoint"
        first = (str(error).strip().splitlines() or [""])[0][:300]
        raise CLIError(f"cannot load checkpoint {args.checkpoint}: {error.__class__.__name__}: {first}") from None


def _progress(record: dict) -> None:
    print(f"niah rope_dtype={record['rope_dtype']} length={record['length']} depth={record['depth']:g}%: "
          f"{record['correct']}/{len(record['trials'])} correct ({record['seconds']:.1f} s)", file=sys.stderr)


def run_cli(args: argparse.Namespace) -> int:
    """Runs `niah` for parsed `args`; returns the exit code. Raises CLIError for user errors."""
    try:
        return _run(args)
    except NIAHError as error:
        raise CLIError(str(error)) from None


def _run(args: argparse.Namespace) -> int:
    from reftrain.eval._report import SCHEMA, print_tables, write_outputs
    from reftrain.eval.niah import build_cells, run_niah

    from reftrain.eval._ruler import MAX_NEW_TOKENS

    if args.max_new_tokens is None:
        args.max_new_tokens = MAX_NEW_TOKENS[args.kind]
    for name in ("trials", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise CLIError(f"--out {args.out} exists and is not a directory")
    kind = checkpoint_kind(args.checkpoint)
    tokenizer = _tokenizer(args, kind)
    haystack = _haystack(args, tokenizer)
    grid = dict(lengths=args.lengths, depths=args.depths, trials=args.trials, seed=args.seed, kind=args.kind)
    build_cells(tokenizer, haystack=haystack, **grid)  # every length and depth checked before loading

    from reftrain.sharding import make_mesh

    try:
        mesh = make_mesh(sp=args.sp)
    except ValueError as error:
        raise CLIError(f"--sp {args.sp}: {error}") from None
    config, params = _load(args, kind, mesh)
    if args.compare_rope_dtypes:
        rope_dtypes = ["float32", "bfloat16"]
    else:
        rope_dtypes = [args.rope_dtype or config.rope_dtype]
    results = [run_niah(config.replace(rope_dtype=dtype), params, tokenizer, haystack_text=haystack, mesh=mesh,
                        max_new_tokens=args.max_new_tokens, on_cell=_progress, **grid) for dtype in rope_dtypes]
    print_tables(results)
    if args.out is not None:
        payload = {
            "schema": SCHEMA,
            "checkpoint": str(args.checkpoint),
            "checkpoint_kind": kind,
            "model": config.to_dict(),
            "settings": grid | {"max_new_tokens": args.max_new_tokens, "haystack": haystack.label,
                                "tokenizer": str(tokenizer.path), "sp": args.sp, "step": args.step},
            "runs": results,
        }
        json_path, html_path = write_outputs(args.out, payload, results)
        print(f"wrote {json_path} and {html_path}" if html_path else f"wrote {json_path} (no heatmap: plotly is not "
              "installed)", file=sys.stderr)
    return 0
