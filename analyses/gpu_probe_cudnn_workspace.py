"""Probe (GPU, compile only): the workspace XLA gives each cuDNN attention call, against its
shape. A deviceless compile cannot ask cuDNN and records 0 bytes, so hloscope models it from
this table (`hloscope/cudnn_workspace.py`).

    JAX_PLATFORMS=cuda python analyses/gpu_probe_cudnn_workspace.py --out-dir analyses/results
"""

import argparse
import itertools
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from reftrain.attention import AttentionSpec, shard_kernel  # noqa: E402

_CALL = re.compile(r"custom-call\(.*custom_call_target=\"(__cudnn\$fmha[^\"]*)\"")
_WORKSPACE = re.compile(r"u8\[(\d+)\]")


def workspaces(batch, length, q_heads, kv_heads, dim, documents, causal):
    """[(target, workspace bytes)] of the forward and backward cuDNN calls of one shard pair."""
    kernel = shard_kernel(AttentionSpec(kernel="cudnn", max_documents=max(documents, 1)))
    ids = jnp.ones((batch, length), jnp.int32) if documents else None

    def loss(q, k, v):
        segments = None if ids is None else (ids, ids)
        out, lse = kernel.forward(q, k, v, causal, dim ** -0.5, segments)
        return out, lse

    def step(q, k, v, g):
        out, lse = loss(q, k, v)
        segments = None if ids is None else (ids, ids)
        return kernel.backward(q, k, v, out, lse, g, causal, dim ** -0.5, segments)

    q = jax.ShapeDtypeStruct((batch, length, q_heads, dim), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((batch, length, kv_heads, dim), jnp.bfloat16)
    text = jax.jit(step).lower(q, kv, kv, q).compile().as_text()
    found = []
    for line in text.splitlines():
        call = _CALL.search(line)
        if call:
            head = line.split("custom-call(")[0]
            sizes = _WORKSPACE.findall(head)
            found.append((call.group(1), int(sizes[-1]) if sizes else None))
    return found


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", type=Path, default=Path("analyses/results"))
    args = parser.parse_args()
    rows = []
    variants = [(0, True), (0, False), (2, False), (4, True), (16, True)]  # (documents, causal)
    grid = [(1, t, h, 128, *var) for t, h, var in itertools.product([4096, 16384], [(32, 8), (32, 32), (8, 8)], variants)]
    grid += [(2, 4096, (32, 8), 128, *var) for var in variants] + [(1, 4096, (32, 8), 64, *var) for var in variants]
    for batch, length, (hq, hkv), dim, documents, causal in grid:
        case = dict(batch=batch, length=length, q_heads=hq, kv_heads=hkv, dim=dim, documents=documents, causal=causal)
        try:
            case["calls"] = workspaces(batch, length, hq, hkv, dim, documents, causal)
        except Exception as exc:  # noqa: BLE001 - a probe records what failed and goes on
            case["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        print(json.dumps(case), flush=True)
        rows.append(case)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "cudnn_workspace_h100.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
