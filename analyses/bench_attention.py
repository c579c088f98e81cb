"""Causal attention forward + backward on one GPU: ours vs cuDNN vs our pure-XLA blockwise path.

    XLA_PYTHON_CLIENT_PREALLOCATE=false python analyses/bench_attention.py [--lengths 16384 65536 131072]

For each per-device length, kv-head count (32 q heads, head_dim 128, bfloat16) and with or
without document masks (segment ids), each implementation runs in its own process, so that
`peak_bytes_in_use` is that implementation's alone:

* ours: `blockwise_attention(kernel="auto")`, what reftrain runs (on a GPU: one cuDNN fused
  call per shard pair through our ring driver; with segment ids, cuDNN's packed mode compiled
  for `max_documents` = the row's document count, as the cuDNN baseline is);
* cudnn: `jax.nn.dot_product_attention(implementation="cudnn", is_causal=True)`; with segment
  ids, cuDNN's packed-sequence mode (jax's cuDNN API with q/kv offsets);
* xla: `blockwise_attention(kernel="xla")`, our chunked loops at q/kv chunks 2048/4096.

FLOPs are counted as FlashAttention does (causal forward 2*S^2*H*D, summed over documents when
there are segment ids; backward 2.5x forward). Writes <out-dir>/bench_attention.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _isolated import run_isolated  # noqa: E402  (this folder is first on sys.path)

Q_HEADS, HEAD_DIM = 32, 128
IMPLS = ("ours", "cudnn", "xla")


def document_lengths(length: int, seed: int = 0) -> list[int]:
    """Deterministic document lengths (multiples of 256, mean about length/8) summing to length."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths, left = [], length
    while left > 0:
        take = int(min(left, max(256, round(rng.exponential(length / 8) / 256) * 256)))
        lengths.append(take)
        left -= take
    return lengths


def attention_flops(length: int, documents: list[int] | None) -> float:
    """Forward + backward FLOPs of causal attention (FlashAttention's count)."""
    squares = sum(d * d for d in documents) if documents else length * length
    forward = 2.0 * squares * Q_HEADS * HEAD_DIM
    return forward * 3.5


def _run_one(case: dict) -> dict:
    """Runs one (implementation, shape) in this process; returns its timings and peak memory."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from reftrain.attention import blockwise_attention

    length, kv_heads, impl = case["length"], case["kv_heads"], case["impl"]
    docs = document_lengths(length) if case["segments"] else None
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (1, length, Q_HEADS, HEAD_DIM), jnp.bfloat16)
    k = jax.random.normal(keys[1], (1, length, kv_heads, HEAD_DIM), jnp.bfloat16)
    v = jax.random.normal(keys[2], (1, length, kv_heads, HEAD_DIM), jnp.bfloat16)
    g = jax.random.normal(keys[3], q.shape, jnp.bfloat16)
    segment_ids = None if docs is None else jnp.asarray(np.repeat(np.arange(1, len(docs) + 1), docs)[None], jnp.int32)

    if impl == "cudnn":
        attention = _cudnn_baseline(docs)
    else:
        kernel = "auto" if impl == "ours" else "xla"
        attention = lambda q, k, v: blockwise_attention(
            q, k, v, segment_ids=segment_ids, q_chunk=2048, kv_chunk=4096, kernel=kernel,
            max_documents=len(docs) if docs else 16,
        )

    def loss(q, k, v):
        return jnp.sum(attention(q, k, v).astype(jnp.float32) * g.astype(jnp.float32))

    step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    started = time.perf_counter()
    jax.block_until_ready(step(q, k, v))
    compile_and_first = time.perf_counter() - started
    times = []
    least = 2 if compile_and_first > 20 else 3  # the slowest cases: fewer repeats
    while len(times) < least or (sum(times) < 2.0 and len(times) < 20):
        started = time.perf_counter()
        jax.block_until_ready(step(q, k, v))
        times.append(time.perf_counter() - started)
    stats = jax.devices()[0].memory_stats() or {}
    seconds = float(np.median(times))
    flops = attention_flops(length, docs)
    return {**case, "seconds": seconds, "tflops": flops / seconds / 1e12, "flops": flops,
            "peak_bytes": stats.get("peak_bytes_in_use"), "runs": len(times),
            "first_call_s": compile_and_first, "documents": len(docs) if docs else 1,
            "device": jax.devices()[0].device_kind, "jax": jax.__version__}


def _cudnn_baseline(docs):
    import jax
    import jax.numpy as jnp
    import numpy as np

    if docs is None:
        return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
    from jax._src.cudnn import fused_attention_stablehlo as fa

    # Packed sequences: each document is its own causal sequence (cuDNN's THD "ragged" mode).
    lengths = jnp.asarray([docs], jnp.int32)
    offsets = jnp.asarray([np.concatenate([[0], np.cumsum(docs)[:-1], [-1]])], jnp.int32)

    def attention(q, k, v):
        return fa.dot_product_attention(
            q, k, v, q_seqlen=lengths, kv_seqlen=lengths, q_offsets=offsets, kv_offsets=offsets,
            scale=HEAD_DIM ** -0.5, mask_type=fa.MaskType.PADDING_CAUSAL, qkv_layout="BTNH",
        )

    return attention


def _markdown(rows: list[dict]) -> str:
    lines = ["| length | kv heads | documents | impl | ms | TFLOP/s | peak GiB | x cuDNN speed | x cuDNN memory |",
             "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['length']:,} | {r['kv_heads']} | {'yes' if r['segments'] else 'no'} | {r['impl']} | "
                         f"failed: {r['error'][:80]} | | | | |")
            continue
        peak = r["peak_bytes"] / 2**30 if r.get("peak_bytes") else float("nan")
        speed = r.get("speed_vs_cudnn")
        memory = r.get("memory_vs_cudnn")
        lines.append(
            f"| {r['length']:,} | {r['kv_heads']} | {r['documents']} | {r['impl']} | {r['seconds'] * 1e3:,.1f} | "
            f"{r['tflops']:.0f} | {peak:.2f} | {'-' if speed is None else f'{speed:.2f}'} | "
            f"{'-' if memory is None else f'{memory:.2f}'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16384, 65536, 131072])
    parser.add_argument("--kv-heads", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--segments", nargs="+", type=int, default=[0, 1], choices=[0, 1],
                        help="0: one document per row, 1: packed documents (segment ids)")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--name", default="bench_attention")
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a JSON case: run it in this process
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(_run_one(json.loads(args.one))))
        return 0
    if os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE") != "false":
        print("set XLA_PYTHON_CLIENT_PREALLOCATE=false: peak memory is meaningless with a preallocated pool",
              file=sys.stderr)
        return 2

    from reftrain.files import atomic_write_bytes

    rows = []
    for length in args.lengths:
        for kv_heads in args.kv_heads:
            for segments in (bool(s) for s in args.segments):
                for impl in args.impls:
                    case = {"length": length, "kv_heads": kv_heads, "segments": segments, "impl": impl}
                    row = run_isolated([__file__, "--one", json.dumps(case)], case, timeout=args.timeout)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    # Each case as it finishes: a run cut short keeps what it measured.
                    atomic_write_bytes(args.out_dir / f"{args.name}.partial.json", json.dumps({"rows": rows}).encode())
    by_key = {(r["length"], r["kv_heads"], r["segments"], r["impl"]): r for r in rows}
    for r in rows:
        base = by_key.get((r["length"], r["kv_heads"], r["segments"], "cudnn"))
        if "error" in r or base is None or "error" in base:
            continue
        r["speed_vs_cudnn"] = r["tflops"] / base["tflops"]
        if r.get("peak_bytes") and base.get("peak_bytes"):
            r["memory_vs_cudnn"] = r["peak_bytes"] / base["peak_bytes"]
    table = _markdown(rows)
    print(table)
    atomic_write_bytes(args.out_dir / f"{args.name}.json", (json.dumps({"rows": rows}, indent=1) + "\n").encode())
    atomic_write_bytes(args.out_dir / f"{args.name}.md", table.encode())
    (args.out_dir / f"{args.name}.partial.json").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
