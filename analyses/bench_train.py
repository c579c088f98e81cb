"""Training-step throughput on one GPU: tokens/s and MFU of a Mistral-shaped model.

    python analyses/bench_train.py [--layers 8] [--lengths 32768 65536] \
        [--remat full save_attention ...] [--anchor ../shared/bench/anchor_train.py]

With --anchor, the plain-JAX step runs in the same invocation with each of its policies
(REMAT=full, dots, none) at each length, and every row is given against the fastest that fit:
the yardstick is what a careful JAX user would pick, not the anchor's worst setting.

The model is Mistral-7B's width (hidden 4096, 32/8 heads, MLP 14336, vocabulary 32,000) with
fewer layers so that parameters, gradients and AdamW state fit one GPU. Each (length, remat,
documents) case runs in its own process: a jitted, donated step (reftrain.model.loss_fn, its
gradient, AdamW) on a one-device mesh, so attention is reftrain's `blockwise_attention` with
the kernel `auto` picks (cuDNN on a GPU). MFU counts model FLOPs (matmuls plus causal
attention, within each document where there are documents; no rematerialisation:
reftrain/flops.py) against the device's bf16 dense peak
(989 TFLOP/s for an H100 SXM). Where the rest goes: the AdamW update is also timed alone,
and attention's share of the model FLOPs is reported beside each step.
Writes <out-dir>/bench_train.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _documents import document_lengths  # noqa: E402  (this folder is first on sys.path)
from _isolated import run_isolated  # noqa: E402


# The anchor's policies (../shared/bench/anchor_train.py's REMAT): each layer rematerialised, every
# matmul output without batch dimensions saved (jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
# the usual careful choice), nothing rematerialised.
ANCHOR_POLICIES = ("full", "dots", "none")


def anchor_yardsticks(rows: list[dict]) -> dict[int, float]:
    """The fastest anchor policy that fit, per length: tokens/s of its successful runs' best."""
    best: dict[int, float] = {}
    for r in rows:
        if r.get("anchor") and "error" not in r:
            best[r["length"]] = max(best.get(r["length"], 0.0), r["tokens_per_s"])
    return best


def _timed(fn, *args, runs: int = 5):
    import jax
    import numpy as np

    out = fn(*args)
    jax.block_until_ready(out)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        out = fn(*args)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - started)
    return float(np.median(times)), out


def _config(case: dict):
    from reftrain.config import get_config

    config = get_config("mistral-7b").replace(
        num_layers=case["layers"], remat_policy=case["remat"], attention_kernel=case["kernel"], rope_theta=75e6
    )
    # Rows saved before --document-block ran the model's default, which they record as absent.
    return config if case.get("document_block") is None else config.replace(document_block=case["document_block"])


def _document_lengths(length: int, rng) -> list[int]:
    """Packed documents of 2K-16K tokens filling `length` (drawn after the tokens, seed 0)."""
    lengths, left = [], length
    while left:
        lengths.append(min(left, int(rng.integers(1, 9)) * 2048))
        left -= lengths[-1]
    return lengths


def _case_inputs(case: dict, vocab_size: int):
    """(tokens [1, length], document lengths or None): what the case trains on, reproducibly.
    `documents`: 0 (or False) one sequence; 1 (or True) documents of 2K-16K tokens; N > 1, N
    documents of random lengths (`_documents.document_lengths`), from a few to one per 128 tokens."""
    import numpy as np

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab_size, (1, case["length"]))
    count = int(case["documents"])
    if count <= 1:
        return tokens, (_document_lengths(case["length"], rng) if count else None)
    return tokens, document_lengths(case["length"], count)


def _derived(case: dict, step_s: float, peak_flops: float | None) -> dict:
    """Throughput figures of a measured step. Attention FLOPs are those of the mask the step
    ran: causal over the whole row, or causal within each document (sum of n^2 / length keys
    per token on average, the work cuDNN's packed mode does), so MFU never counts skipped work."""
    from reftrain import flops

    config = _config(case)
    _, documents = _case_inputs(case, config.vocab_size)
    attended = flops.documents_attended_length(documents or [case["length"]], case["length"])
    per_token = flops.train_flops_per_token(config, attended)
    tokens_per_s = case["length"] / step_s
    attention = flops.attention_flops_per_token(config, attended)
    return {
        "step_s": step_s, "tokens_per_s": tokens_per_s, "attention_length": attended,
        "mfu": per_token * tokens_per_s / peak_flops if peak_flops else None,
        "model_tflops_per_s": per_token * tokens_per_s / 1e12, "attention_flops_share": attention / per_token,
    }


def _run_one(case: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from reftrain import model
    from reftrain.sharding import make_mesh
    from reftrain.train import metrics

    length = case["length"]
    config = _config(case)
    mesh = make_mesh(devices=jax.devices()[:1])
    params = model.init_params(config, jax.random.key(0), mesh=mesh)
    optimizer = optax.adamw(1e-5, b1=0.9, b2=0.95)
    opt_state = jax.jit(optimizer.init)(params)
    tokens, lengths = _case_inputs(case, config.vocab_size)
    batch = {
        "tokens": jnp.asarray(tokens, jnp.int32),
        "targets": jnp.asarray(np.roll(tokens, -1, axis=1), jnp.int32),
        "loss_mask": jnp.ones((1, length), jnp.float32),
    }
    if lengths:  # packed documents, positions restarting per document
        batch["segment_ids"] = jnp.asarray(np.repeat(np.arange(1, len(lengths) + 1), lengths)[None], jnp.int32)
        batch["positions"] = jnp.asarray(np.concatenate([np.arange(n) for n in lengths])[None], jnp.int32)
        # The model's own document settings (max_documents slots per call, document_block),
        # whatever the row holds: a benchmark tailored to each row's count once hid a NaN.
        case["documents_in_row"] = len(lengths)

    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(lambda p: model.loss_fn(config, p, batch, mesh=mesh)[0])(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    train = jax.jit(step, donate_argnums=(0, 1))
    state = [params, opt_state]

    def run(batch):
        state[0], state[1], loss = train(state[0], state[1], batch)
        return loss

    seconds, loss = _timed(run, batch, runs=case["steps"])
    peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    update = jax.jit(lambda p, s: optimizer.update(jax.tree.map(jnp.zeros_like, p), s, p)[0])
    update_s, _ = _timed(update, state[0], state[1])
    return {
        **case, **_derived(case, seconds, metrics.peak_flops(jax.devices()[0])), "loss": float(loss),
        "adamw_update_s": update_s, "peak_bytes": peak, "parameters": int(sum(x.size for x in jax.tree.leaves(state[0]))),
        "device": jax.devices()[0].device_kind, "jax": jax.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32768, 65536])
    parser.add_argument("--remat", nargs="+", default=["full", "save_attention", "save_dots_attention", "none"],
                        help="reftrain.remat policies")
    parser.add_argument("--anchor", type=Path, help="also run this plain-JAX step (../shared/bench/anchor_train.py) "
                        "with REMAT=full, dots and none at each length, in the same run, and give tokens/s against the fastest that fit")
    parser.add_argument("--documents", nargs="+", type=int, default=[0, 1],
                        help="0: one sequence; 1: packed documents of 2K-16K tokens; N > 1: N documents of random lengths")
    parser.add_argument("--kernel", default="auto", choices=["auto", "xla", "cudnn"])
    parser.add_argument("--document-block", type=int, help="cuDNN with documents: blocks of a shard with itself "
                        "(0: one call; default: the model's)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--name", default="bench_train")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--rescore", type=Path, help="recompute FLOP-derived columns of a saved <name>.json")
    args = parser.parse_args(argv)
    if args.rescore:
        return _rescore(args.rescore)
    if args.one:
        print(json.dumps(_run_one(json.loads(args.one))))
        return 0
    # The allocator users run: preallocated as reftrain.run preallocates (peak_bytes_in_use counts
    # bytes in use, not the pool; growth mode fragments and failed 54-58 GB steps on an H100).
    from reftrain.memory import grant_memory

    grant_memory(None, cpu=False)
    if any(n < 0 or n * 128 > min(args.lengths) for n in args.documents):
        print(f"bad --documents {args.documents}: each from 0 to the shortest length / 128", file=sys.stderr)
        return 2
    from reftrain.files import write_json

    rows = []
    for length in args.lengths:
        for remat in ANCHOR_POLICIES if args.anchor else ():
            case = {"anchor": True, "length": length, "layers": args.layers, "remat": remat, "documents": False}
            row = run_isolated([str(args.anchor), str(args.layers), str(length), str(args.steps)], case,
                               timeout=args.timeout, env=dict(os.environ, REMAT=remat))
            rows.append({**case, **row})
            print(json.dumps(rows[-1]), flush=True)
        for remat in args.remat:
            for documents in args.documents:
                case = {"length": length, "layers": args.layers, "remat": remat, "documents": documents,
                        "kernel": args.kernel, "steps": args.steps, "document_block": args.document_block}
                row = run_isolated([__file__, "--one", json.dumps(case)], case, timeout=args.timeout)
                rows.append(row)
                print(json.dumps(row), flush=True)
                write_json(args.out_dir / f"{args.name}.partial.json", {"rows": rows}, indent=None)
    _write(rows, args.out_dir, args.name)
    (args.out_dir / f"{args.name}.partial.json").unlink(missing_ok=True)
    return 0


def _rescore(path: Path) -> int:
    """Recomputes the derived columns of saved rows from their measured step times (after a
    change to how FLOPs are counted; nothing is re-measured)."""
    from reftrain.flops import peak_flops_of_kind

    rows = json.loads(path.read_text())["rows"]
    for row in rows:
        if "step_s" in row and not row.get("anchor"):
            peak = peak_flops_of_kind(row["device"])
            case = {k: row[k] for k in ("length", "layers", "remat", "documents", "kernel")}
            row.update(_derived(case, row["step_s"], peak))
    _write(rows, path.parent, path.stem)
    return 0


def _write(rows: list[dict], out_dir: Path, name: str) -> None:
    from reftrain.files import atomic_write_bytes, write_json

    anchors = anchor_yardsticks(rows)
    lines = ["| step | tokens | layers | remat | documents | step s | tokens/s | vs fastest anchor | MFU | "
             "attention FLOPs | AdamW s | peak GiB |",
             "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        who = "anchor" if r.get("anchor") else "reftrain"
        if "error" in r:
            lines.append(f"| {who} | {r['length']:,} | {r['layers']} | {r['remat']} | {r['documents']} | "
                         f"failed: {r['error'][:90]} | | | | | | |")
            continue
        ratio = f"{r['tokens_per_s'] / anchors[r['length']]:.3f}x" if r["length"] in anchors else "-"
        if r.get("anchor"):
            lines.append(f"| anchor | {r['length']:,} | {r['layers']} | {r['remat']} | False | {r['step_s']:.3f} | "
                         f"{r['tokens_per_s']:,.0f} | {ratio} | {r['mfu_989']:.1%} | - | - | {r['peak_bytes'] / 2**30:.1f} |")
            continue
        lines.append(f"| reftrain | {r['length']:,} | {r['layers']} | {r['remat']} | {r['documents']} | {r['step_s']:.3f} | "
                     f"{r['tokens_per_s']:,.0f} | {ratio} | {r['mfu']:.1%} | {r['attention_flops_share']:.0%} | "
                     f"{r['adamw_update_s']:.3f} | {r['peak_bytes'] / 2**30:.1f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    write_json(out_dir / f"{name}.json", {"rows": rows}, indent=1)
    atomic_write_bytes(out_dir / f"{name}.md", table.encode())


if __name__ == "__main__":
    raise SystemExit(main())
