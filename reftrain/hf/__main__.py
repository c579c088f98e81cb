"""`python -m reftrain.hf info DIR`: the imported config and parameter count of a checkpoint.

Reads config.json and the safetensors headers only (no tensor data). Exit 2 with one line on
stderr for a directory we cannot import.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from reftrain.hf._config import CheckpointError
from reftrain.hf._load import inspect_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reftrain.hf", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="print the imported ModelConfig and parameter count of DIR")
    info.add_argument("dir", help="checkpoint directory (config.json + *.safetensors)")
    info.add_argument(
        "--allow-sliding-window", action="store_true", help="import a sliding-window config as full attention"
    )
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
