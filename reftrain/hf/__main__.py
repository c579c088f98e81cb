"""`python -m reftrain.hf info DIR` and `python -m reftrain.hf export CHECKPOINT OUT_DIR`.

info: the imported config and parameter count of a Hugging Face checkpoint directory; reads
config.json and the safetensors headers only (no tensor data).
export: a reftrain checkpoint (a phase directory `<run>/phase<N>`, its latest step, or one step
`<run>/phase<N>/checkpoints/<step>`) as a Hugging Face Mistral directory that
`MistralForCausalLM.from_pretrained` loads.

Exit 2 with one line on stderr for anything we cannot read or write; an export that fails
leaves no output directory behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from reftrain.argparse_one_line import OneLineParser
from reftrain.files import is_phase_dir
from reftrain.hf._config import CheckpointError
from reftrain.hf._load import inspect_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m reftrain.hf", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="print the imported ModelConfig and parameter count of DIR")
    info.add_argument("dir", help="checkpoint directory (config.json + *.safetensors)")
    info.add_argument(
        "--allow-sliding-window", action="store_true", help="import a sliding-window config as full attention"
    )
    export = commands.add_parser("export", help="write a reftrain checkpoint as a Hugging Face directory")
    export.add_argument("checkpoint", type=Path, help="<run>/phase<N> (latest step) or <run>/phase<N>/checkpoints/<step>")
    export.add_argument("out_dir", type=Path, help="output directory (must not exist or be empty)")
    export.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="tensor dtype (default bfloat16)")
    args = parser.parse_args(argv)
    if args.command == "export":
        return _export(args)
    try:
        result = inspect_checkpoint(args.dir, allow_sliding_window=args.allow_sliding_window)
    except (CheckpointError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    files = sorted(set(result.weight_map.values()))
    dtypes = ", ".join(f"{code} x{n}" for code, n in sorted(result.dtypes.items()))
    print(f"checkpoint        {args.dir}")
    print(f"files             {len(files)} ({files[0]}{' ...' if len(files) > 1 else ''})")
    print(f"tensors           {sum(result.dtypes.values())} ({dtypes}), {result.total_bytes:,} bytes")
    print(f"parameters        {result.parameter_count:,}")
    for field in dataclasses.fields(result.config):
        print(f"{field.name:<17} {getattr(result.config, field.name)}")
    return 0


def phase_checkpoint(path: Path) -> tuple[Path, int | None]:
    """(phase directory, step or None for the latest) of `path`; raises CheckpointError."""
    if path.is_dir() and path.name.isdigit() and path.parent.name == "checkpoints":
        return path.parent.parent, int(path.name)
    if is_phase_dir(path):
        return path, None
    raise CheckpointError(f"{path} is neither a reftrain phase directory (config.json + checkpoints/) "
                          "nor one of its steps (<phase>/checkpoints/<step>)")


def _export(args: argparse.Namespace) -> int:
    from reftrain.hf._save import save_checkpoint
    from reftrain.train.checkpoint import load_phase_params

    try:
        phase_dir, step = phase_checkpoint(args.checkpoint)
        if args.out_dir.exists() and (not args.out_dir.is_dir() or any(args.out_dir.iterdir())):
            raise CheckpointError(f"{args.out_dir} exists and is not an empty directory")
        config, params = load_phase_params(phase_dir, step=step)
        path = save_checkpoint(config, params, args.out_dir, dtype=args.dtype)
    except (CheckpointError, OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} ({config.name}, {args.dtype}) to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
