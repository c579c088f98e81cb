"""Causal attention forward + backward on one GPU, with documents: our cuDNN ring kernel over a
sweep of (document slots, document block) against cuDNN's single call.

    python analyses/bench_attention.py \\
        [--lengths 65536 131072] [--documents 0 3 16 64] [--variants 16/0 16/4096 8/8192 4/16384 2/32768]

Every variant compiles for 15-30 s on an H200: the full default does not fit 8 minutes; the
measured runs (docs/gpu.md) took one length at a time with two or three variants.

Mistral-7B's heads (32 q, 8 kv, head_dim 128, bfloat16), batch 1. For each per-device length
and document count (0: one sequence, no segment ids) one process runs, in turn:

* cudnn: cuDNN's single call, `jax.nn.dot_product_attention(implementation="cudnn")`, or with
  documents its packed-sequence mode with exactly the row's documents as slots (jax's cuDNN
  API with q/kv offsets): the baseline;
* ours M/B: `blockwise_attention(kernel="cudnn", max_documents=M, document_block=B)`, what
  reftrain runs (B = 0: a shard with itself in one call; M slots per call, more documents
  taking more calls). Without documents the variants are all the same call: one runs;
* xla (`--xla`): our chunked loops, q/kv chunks 2048/4096.

Memory is XLA's compiled figure on the GPU (arguments + outputs + temporaries, cuDNN's
workspace included: XLA asks cuDNN for it), so every variant gets its own number in one
process; `peak_bytes_in_use` after the first (the baseline) checks it against the allocator.
Throughput counts attended FLOPs (FlashAttention's causal count, 2*S^2*H*D forward, summed over
documents; backward 2.5x forward), the same work for every variant. Writes
<out-dir>/<name>.json and .md; a case that fails (out of memory) is a row with its error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _documents import document_lengths  # noqa: E402  (this folder is first on sys.path)
from _isolated import run_isolated  # noqa: E402

Q_HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
VARIANTS = ("16/0", "16/4096", "8/8192", "4/16384", "2/32768")


def attention_flops(length: int, documents: list[int] | None) -> float:
    """Executed FLOPs of one causal attention (forward and backward; reftrain.flops' formula)."""
    from reftrain.flops import BACKWARD_OVER_FORWARD
    from reftrain.flops import attention_flops as flops

    squares = sum(d * d for d in documents) if documents else length * length
    return flops(squares / 2, Q_HEADS, HEAD_DIM, passes=1 + BACKWARD_OVER_FORWARD)


def _cudnn_baseline(docs):
    import jax
    import jax.numpy as jnp
    import numpy as np

    if docs is None:
        return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
    from jax._src.cudnn import fused_attention_stablehlo as fa

    lengths = jnp.asarray([docs], jnp.int32)
    offsets = jnp.asarray([np.concatenate([[0], np.cumsum(docs)[:-1], [-1]])], jnp.int32)
    return lambda q, k, v: fa.dot_product_attention(
        q, k, v, q_seqlen=lengths, kv_seqlen=lengths, q_offsets=offsets, kv_offsets=offsets,
        scale=HEAD_DIM ** -0.5, mask_type=fa.MaskType.PADDING_CAUSAL, qkv_layout="BTNH")


def _measure(step, args) -> dict:
    import jax
    import numpy as np

    started = time.perf_counter()
    compiled = jax.jit(step).lower(*args).compile()
    compile_s = time.perf_counter() - started
    memory = compiled.memory_analysis()
    compiled_bytes = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
                      - memory.alias_size_in_bytes)
    jax.block_until_ready(compiled(*args))
    times = []
    while len(times) < 3 or (sum(times) < 1.0 and len(times) < 10):
        started = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - started)
    return {"seconds": float(np.median(times)), "compiled_bytes": compiled_bytes, "compile_s": compile_s,
            "runs": len(times)}


def _run_group(case: dict) -> dict:
    """Every variant of one (length, documents) case in this process; returns {"rows": [...]}."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from reftrain.attention import blockwise_attention

    length, count = case["length"], case["documents"]
    docs = document_lengths(length, count) if count else None
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (1, length, Q_HEADS, HEAD_DIM), jnp.bfloat16)
    k = jax.random.normal(keys[1], (1, length, KV_HEADS, HEAD_DIM), jnp.bfloat16)
    v = jax.random.normal(keys[2], (1, length, KV_HEADS, HEAD_DIM), jnp.bfloat16)
    g = jax.random.normal(keys[3], q.shape, jnp.bfloat16)
    ids = None if docs is None else jnp.asarray(np.repeat(np.arange(1, count + 1), docs)[None], jnp.int32)
    flops = attention_flops(length, docs)

    def ours(slots, block, kernel="cudnn"):
        return lambda q, k, v: blockwise_attention(q, k, v, segment_ids=ids, q_chunk=2048, kv_chunk=4096,
                                                   kernel=kernel, max_documents=slots, document_block=block)

    variants = [("cudnn", _cudnn_baseline(docs))]
    for name in case["variants"] if docs else case["variants"][:1]:
        slots, block = (int(x) for x in name.split("/"))
        variants.append((f"ours {name}" if docs else "ours", ours(slots, block)))
    if case["xla"]:
        variants.append(("xla", ours(16, 0, "xla")))
    rows = []
    for name, attention in variants:
        def step(q, k, v):
            return jax.grad(lambda q, k, v: jnp.sum(attention(q, k, v).astype(jnp.float32) * g), argnums=(0, 1, 2))(q, k, v)

        row = {"length": length, "documents": count, "impl": name, "flops": flops}
        try:
            row.update(_measure(step, (q, k, v)))
            row["tflops"] = flops / row["seconds"] / 1e12
        except Exception as error:  # noqa: BLE001  (out of memory, a shape cuDNN rejects: a row)
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        if not rows:
            row["peak_bytes_in_use"] = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return {"rows": rows, "device": jax.devices()[0].device_kind, "jax": jax.__version__}


def _ratios(rows: list[dict]) -> None:
    base = {(r["length"], r["documents"]): r for r in rows if r["impl"] == "cudnn" and "error" not in r}
    plain = {r["length"]: r for r in rows if r["impl"] == "cudnn" and r["documents"] == 0 and "error" not in r}
    for r in rows:
        if "error" in r:
            continue
        if (r["length"], r["documents"]) in base:
            b = base[(r["length"], r["documents"])]
            r["speed_vs_cudnn"] = r["tflops"] / b["tflops"]
            r["memory_vs_cudnn"] = r["compiled_bytes"] / b["compiled_bytes"]
        if r["length"] in plain:
            r["memory_vs_cudnn_no_documents"] = r["compiled_bytes"] / plain[r["length"]]["compiled_bytes"]


def _markdown(rows: list[dict]) -> str:
    lines = ["| length | documents | impl | ms | TFLOP/s | GiB | x cuDNN speed | x cuDNN memory | x cuDNN memory without documents |",
             "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    fmt = lambda x: "-" if x is None else f"{x:.2f}"
    for r in rows:
        head = f"| {r['length']:,} | {r['documents']} | {r['impl']} |"
        if "error" in r:
            lines.append(f"{head} failed: {r['error'][:90]} | | | | | |")
            continue
        lines.append(f"{head} {r['seconds'] * 1e3:,.1f} | {r['tflops']:.0f} | {r['compiled_bytes'] / 2**30:.2f} | "
                     f"{fmt(r.get('speed_vs_cudnn'))} | {fmt(r.get('memory_vs_cudnn'))} | "
                     f"{fmt(r.get('memory_vs_cudnn_no_documents'))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[65536, 131072])
    parser.add_argument("--documents", type=int, nargs="+", default=[0, 3, 16, 64])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help="SLOTS/BLOCK of our kernel")
    parser.add_argument("--xla", action="store_true", help="also our XLA loops (slow)")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--name", default="bench_attention_documents")
    parser.add_argument("--timeout", type=float, default=150, help="seconds per (length, documents) process")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a JSON case: run it in this process
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(_run_group(json.loads(args.one))))
        return 0
    bad = [v for v in args.variants if len(v.split("/")) != 2 or not all(x.isdigit() for x in v.split("/"))
           or int(v.split("/")[0]) < 1]
    if bad or any(n < 0 or n * 128 > min(args.lengths) for n in args.documents):
        print(f"bad --variants {bad} (SLOTS/BLOCK, SLOTS >= 1) or --documents (0 to length/128)", file=sys.stderr)
        return 2
    # The allocator users run: preallocated as reftrain.run preallocates (peak_bytes_in_use counts
    # bytes in use, not the pool; growth mode fragments and failed 54-58 GB steps on an H100).
    from reftrain.memory import grant_memory

    grant_memory(None, cpu=False)

    from reftrain.files import atomic_write_bytes, write_json

    rows, meta = [], {}
    for length in args.lengths:
        for count in args.documents:
            case = {"length": length, "documents": count, "variants": args.variants, "xla": args.xla}
            result = run_isolated([__file__, "--one", json.dumps(case)], case, timeout=args.timeout)
            if "error" in result:
                rows.append({"length": length, "documents": count, "impl": "all", "error": result["error"]})
            else:
                rows.extend(result["rows"])
                meta = {"device": result["device"], "jax": result["jax"]}
            # Each case as it finishes: a run cut short keeps what it measured.
            write_json(args.out_dir / f"{args.name}.partial.json", {"rows": rows}, indent=None)
    _ratios(rows)
    table = _markdown(rows)
    print(table)
    command = "python analyses/bench_attention.py " + " ".join(argv or sys.argv[1:])
    report = {"command": command.strip(), **meta, "rows": rows}
    write_json(args.out_dir / f"{args.name}.json", report, indent=1)
    atomic_write_bytes(args.out_dir / f"{args.name}.md", f"`{command.strip()}` on {meta.get('device')}\n\n{table}".encode())
    (args.out_dir / f"{args.name}.partial.json").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
