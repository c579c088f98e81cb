"""Checks blockwise and ring attention against dense on whatever backend jax finds (GPU or CPU).

Prints a table of relative errors (outputs and q/k/v gradients) and writes JSON beside it:
    python analyses/attention_agreement.py --out analyses/results/attention_agreement.json
The ring runs over every local device (a ring of one on a single GPU). The dense float32
reference holds several `[heads, len, len]` float32 arrays: 4,096 tokens fit an 80 GB GPU,
8,192 do not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from reftrain.attention import blockwise_attention, dense_attention, ring_attention


def _segments(batch: int, length: int) -> np.ndarray:
    """Returns packed documents of varied lengths with a padding tail, numbered from 1."""
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(batch):
        row, doc, start = np.zeros(length, np.int32), 0, 0
        while start < length * 7 // 8:
            size = int(rng.integers(1, length // 3))
            doc += 1
            row[start:start + size] = doc
            start += size
        rows.append(row)
    return np.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=Path("analyses/results/attention_agreement.json"))
    args = parser.parse_args()

    batch, q_heads, kv_heads, head_dim = 1, 32, 8, 128
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    dtype = jnp.bfloat16
    q = jax.random.normal(keys[0], (batch, args.length, q_heads, head_dim)).astype(dtype)
    k = jax.random.normal(keys[1], (batch, args.length, kv_heads, head_dim)).astype(dtype)
    v = jax.random.normal(keys[2], (batch, args.length, kv_heads, head_dim)).astype(dtype)
    cotangent = jax.random.normal(keys[3], q.shape).astype(dtype)
    segment_ids = jnp.asarray(_segments(batch, args.length))

    devices = jax.devices()
    mesh = Mesh(np.array(devices), ("sp",))
    spec = P(None, "sp")
    local = args.length // len(devices)
    chunk = min(512, local)
    ring = jax.shard_map(
        lambda q, k, v, s: ring_attention(q, k, v, segment_ids=s, q_chunk=chunk, kv_chunk=chunk, axis_name="sp"),
        mesh=mesh, in_specs=(spec,) * 4, out_specs=spec,
    )
    implementations = {
        "dense_f32": lambda q, k, v: dense_attention(*(x.astype(jnp.float32) for x in (q, k, v)), segment_ids=segment_ids),
        "blockwise": lambda q, k, v: blockwise_attention(q, k, v, segment_ids=segment_ids, q_chunk=chunk, kv_chunk=2 * chunk),
        "ring": lambda q, k, v: ring(q, k, v, segment_ids),
    }

    def value_and_grads(attention):
        def loss(q, k, v):
            out = attention(q, k, v)
            return jnp.sum(out.astype(jnp.float32) * cotangent.astype(jnp.float32)), out
        (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
        return [np.asarray(x, np.float32) for x in (out, *grads)]

    reference = value_and_grads(implementations.pop("dense_f32"))
    rows = []
    for name, attention in implementations.items():
        results = value_and_grads(attention)
        errors = {
            part: float(np.abs(got - want).max() / max(1.0, np.abs(want).max()))
            for part, got, want in zip(("out", "dq", "dk", "dv"), results, reference)
        }
        finite = all(np.isfinite(x).all() for x in results)
        rows.append({"implementation": name, "finite": finite, **errors})

    print(f"backend {jax.default_backend()} ({devices[0].device_kind} x {len(devices)}), jax {jax.__version__}, "
          f"bf16 inputs, {args.length} tokens, reference dense float32")
    print(f"{'implementation':<14} {'finite':<7} {'out':>9} {'dq':>9} {'dk':>9} {'dv':>9}")
    for row in rows:
        print(f"{row['implementation']:<14} {str(row['finite']):<7} " + " ".join(f"{row[p]:9.2e}" for p in ("out", "dq", "dk", "dv")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"backend": jax.default_backend(), "device_kind": devices[0].device_kind, "devices": len(devices),
               "jax": jax.__version__, "length": args.length, "rows": rows}
    args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
