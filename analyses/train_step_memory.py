"""The whole Mistral-7B training step at 524,288 tokens on 8 x A100-80GB, compiled deviceless:
our attention vs the paper-faithful one at the paper's two chunk configurations.

    python analyses/train_step_memory.py [--target a100-80gb] [--out analyses/results/train_step_memory.json]

Prints a table (per-device xla_total, the largest finding) with the paper's figures beside
ours and writes JSON. Needs the gpu-aot extra for GPU targets.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hloscope.profiling import profile_program
from hloscope.programs.model_step import ModelStepShape

CASES = (
    ("ours", 2048, 2048, "the plan hloscope search chose"),
    ("paper", 1024, 2048, "paper: 32 GB int32 buffer (Appendix A); did not fit, 256K was the limit"),
    ("paper", 2048, 4096, "paper: fits 512K on 8 x A100-80GB (section 4.4)"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="a100-80gb")
    parser.add_argument("--seq", type=int, default=524_288)
    parser.add_argument("--out", type=Path, default=Path("analyses/results/train_step_memory.json"))
    args = parser.parse_args(argv)
    rows = []
    for attention, q, kv, paper in CASES:
        shape = ModelStepShape(model="mistral-7b", seq=args.seq, q_chunk=q, kv_chunk=kv, attention=attention)
        profile = profile_program("train-step", shape, target=args.target, devices=8)
        top = profile["findings"][0] if profile["findings"] else None
        rows.append({
            "attention": attention, "q_chunk": q, "kv_chunk": kv, "paper": paper,
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"seq": args.seq, "target": args.target, "rows": rows}, indent=1))
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
