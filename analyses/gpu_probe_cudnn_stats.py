"""Probe (GPU): the layout of cuDNN's softmax statistics in packed-sequence mode, against our
XLA kernel's per-token log-sum-exp. Decides whether ring attention can merge packed shards.

    JAX_PLATFORMS=cuda python analyses/gpu_probe_cudnn_stats.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from reftrain.attention import AttentionSpec, shard_kernel  # noqa: E402

docs = [300, 500, 224]
T, H, D, M = sum(docs), 2, 128, 4
keys = jax.random.split(jax.random.key(0), 3)
q = jax.random.normal(keys[0], (1, T, H, D), jnp.bfloat16)
k = jax.random.normal(keys[1], (1, T, H, D), jnp.bfloat16)
v = jax.random.normal(keys[2], (1, T, H, D), jnp.bfloat16)
ids = jnp.asarray(np.repeat(np.arange(1, len(docs) + 1), docs)[None], jnp.int32)
_, stats = shard_kernel(AttentionSpec(kernel="cudnn", max_documents=M)).forward(q, k, v, True, D ** -0.5, ids)
_, lse = shard_kernel(AttentionSpec(128, 128, kernel="xla")).forward(q, k, v, True, D ** -0.5, ids)
stats, lse = np.asarray(stats), np.asarray(lse)[0]  # lse [T, H]
print("stats shape", stats.shape, "finite", np.isfinite(stats).sum(), "nonzero", (stats != 0).sum())
starts = np.concatenate([[0], np.cumsum(docs)[:-1]])
flat = stats.reshape(-1)
hyp = {}
# H1: stats[m, h, i] = lse[start_m + i, h]
hyp["relative"] = max(float(np.abs(stats[m, :, :n] - lse[s:s + n].T).max()) for m, (s, n) in enumerate(zip(starts, docs)))
# H2: stats[m, h, t] = lse[t, h] for t in document m
hyp["absolute"] = max(float(np.abs(stats[m, :, s:s + n] - lse[s:s + n].T).max()) for m, (s, n) in enumerate(zip(starts, docs)))
# H3: ragged by token, then head: flat[t * H + h]
hyp["ragged_token_head"] = float(np.abs(flat[: T * H].reshape(T, H) - lse).max())
# H4: per-sequence [B, H, T] in the first slab
hyp["first_slab_bht"] = float(np.abs(stats[0] - lse.T).max())
for name, err in hyp.items():
    print(f"{name}: max |stats - lse| = {err:.3e}")
