"""The whole Mistral-7B training step at 524,288 tokens on 8 x A100-80GB, compiled deviceless:
our attention at the plan `hloscope search` chose vs the paper-faithful one at the paper's two
chunk configurations.

    python analyses/train_step_memory.py [--target a100-80gb] [--document-block 16384] [--out analyses/results/train_step_memory.json]

"Ours" is compiled as the plan runs it (README, docs/search.md): reftrain's default kernel for
the target (cuDNN's fused ring on a GPU target) with packed documents in `--document-block`
token blocks. Prints a table (per-device xla_total, the largest finding) with the paper's
figures beside ours and writes JSON. Needs the gpu-aot extra for GPU targets.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_json  # noqa: E402

from hloscope.profiling import profile_program  # noqa: E402
from hloscope.programs.model_step import ModelStepShape  # noqa: E402

CASES = (
    ("ours", 2048, 2048, "the plan hloscope search chose (README, docs/search.md)"),
    ("paper", 1024, 2048, "paper: 32 GB int32 buffer (Appendix A); did not fit, 256K was the limit"),
    ("paper", 2048, 4096, "paper: fits 512K on 8 x A100-80GB (section 4.4)"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="a100-80gb")
    parser.add_argument("--seq", type=int, default=524_288)
    parser.add_argument("--document-block", type=int, default=16384,
                        help="ours on a GPU target: cuDNN runs a shard with itself in blocks of this many tokens (the plan's)")
    parser.add_argument("--out", type=Path, default=Path("analyses/results/train_step_memory.json"))
    args = parser.parse_args(argv)
    rows = []
    gpu = args.target != "cpu"
    for attention, q, kv, paper in CASES:
        document_block = args.document_block if attention == "ours" and gpu else 0
        shape = ModelStepShape(model="mistral-7b", seq=args.seq, attention=attention).with_execution(
            q_chunk=q, kv_chunk=kv, document_block=document_block)
        started = time.perf_counter()
        profile = profile_program("train-step", shape, target=args.target, devices=8)
        print(f"compiled {attention} {q}/{kv}: {time.perf_counter() - started:.0f} s", flush=True)
        top = profile["findings"][0] if profile["findings"] else None
        rows.append({
            "attention": attention, "q_chunk": q, "kv_chunk": kv, "document_block": document_block, "paper": paper,
            "xla_total": profile["figures"]["xla_total"], "live_peak": profile["figures"]["live_peak"],
            "top_finding": None if top is None else {k: top.get(k) for k in ("kind", "shape", "bytes", "origin")},
        })
    table = Table(title=f"Mistral-7B train step, {args.seq:,} tokens, 8 x {args.target} (per device)")
    for column in ("attention", "q / kv", "xla_total", "top finding", "paper"):
        table.add_column(column)
    for r in rows:
        top = r["top_finding"]
        table.add_row(r["attention"], f"{r['q_chunk']} / {r['kv_chunk']}", f"{r['xla_total'] / 2**30:.2f} GiB",
                      "-" if top is None else f"{top['shape']} {top['bytes'] / 2**30:.2f} GiB", r["paper"])
    Console(width=160).print(table)
    write_json(args.out, {"seq": args.seq, "target": args.target, "versions": profile["versions"], "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
