"""`python -m reftrain.eval niah`: Needle-in-a-Haystack accuracy of a checkpoint (docs/niah.md).

Prints a depth x length accuracy table per RoPE dtype; with --out DIR writes DIR/niah.json
(settings, model config, per-cell accuracy, every trial's prediction) and DIR/niah.html (a
plotly heatmap, one panel per RoPE dtype). A user error prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from reftrain.argparse_one_line import OneLineParser
from reftrain.platform_choice import cpu_unless_a_gpu_is_here, import_jax_quietly

EPILOG = """examples:
  python -m reftrain.eval niah --checkpoint runs/tiny/phase1 --lengths 256,512 --depths 0,50,100 --trials 2 --out niah
  python -m reftrain.eval niah --checkpoint runs/tiny/phase1 --lengths 1024 --compare-rope-dtypes --out niah-bf16
  python -m reftrain.eval niah --checkpoint runs/tiny/phase1 --lengths 512 --kind multikey --out niah-multikey
  python -m reftrain.eval niah --checkpoint ./Mistral-7B-Instruct-v0.2 --lengths 32768 --sp 8 --out niah-7b
"""


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m reftrain.eval", description="Evaluations of reftrain checkpoints.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    p = sub.add_parser("niah", help="needle-in-a-haystack accuracy over context lengths x depths",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="a reftrain phase directory (<run>/phaseN) or a Hugging Face Mistral directory")
    p.add_argument("--lengths", required=True, type=_int_list, help="prompt lengths in tokens, e.g. 256,512")
    p.add_argument("--depths", type=_float_list, default=[0.0, 25.0, 50.0, 75.0, 100.0],
                   help="needle depths in percent, 0 = start, 100 = end (default 0,25,50,75,100)")
    p.add_argument("--trials", type=int, default=4, help="prompts per cell, different cities and numbers (4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--haystack", default="held-out:docutils-docs",
                   help="filler text: held-out:docutils-docs (read by no training stream; the default), "
                        "builtin:books (Gutenberg Shakespeare, Milton: the training corpus's) or a UTF-8 text file")
    p.add_argument("--kind", default="niah", choices=("niah", "multikey", "multivalue", "multiquery"),
                   help="the needle: one (niah), or a RULER variant (docs/niah.md)")
    p.add_argument("--tokenizer", help="SentencePiece .model (default: the HF directory's, else Mistral's)")
    dtypes = p.add_mutually_exclusive_group()
    dtypes.add_argument("--rope-dtype", choices=("float32", "bfloat16"),
                        help="override the checkpoint's RoPE dtype (bfloat16 = the paper's failure)")
    dtypes.add_argument("--compare-rope-dtypes", action="store_true",
                        help="evaluate with float32 and with bfloat16 RoPE, side by side")
    p.add_argument("--max-new-tokens", type=int, help="greedy decoding steps (10; 40 for multivalue, multiquery)")
    p.add_argument("--sp", type=int, default=1, help="split the sequence over N devices (ring attention)")
    p.add_argument("--step", type=int, help="checkpoint step of a phase directory (default: the latest)")
    p.add_argument("--out", type=Path, help="write niah.json and niah.html into this folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.sp < 1:
        print(f"error: --sp must be >= 1, got {args.sp}", file=sys.stderr)
        return 2
    cpu_unless_a_gpu_is_here()
    flags = os.environ.get("XLA_FLAGS", "")
    if args.sp > 1 and "xla_force_host_platform_device_count" not in flags:
        # Only the CPU platform reads this: --sp N runs on N virtual devices there.
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.sp}".strip()
    from reftrain.memory import grant_memory

    grant_memory(None, cpu=os.environ.get("JAX_PLATFORMS") == "cpu")  # preallocated, as reftrain.run's default
    import_jax_quietly()
    from reftrain.eval._cli import CLIError, run_cli

    try:
        return run_cli(args)
    except CLIError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
