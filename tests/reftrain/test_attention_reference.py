"""dense_attention against a per-query numpy loop that shares no code with the package.

Every other attention test uses dense_attention as its oracle, so the oracle itself is
checked here against the definition: each query's softmax over the keys it may see.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, strategies as st

from reftrain.attention import dense_attention
from tests.reftrain.strategies import Problem, problems


def numpy_attention(q, k, v, segment_ids, causal):
    """Returns float64 `[batch, len, q_heads, head_dim]` from first principles."""
    batch, length, q_heads, head_dim = q.shape
    group = q_heads // k.shape[2]
    if segment_ids is None:
        segment_ids = np.ones((batch, length), np.int32)
    out = np.zeros(q.shape, np.float64)
    for b in range(batch):
        for i in range(length):
            if segment_ids[b, i] == 0:
                continue
            keys = [j for j in range(length)
                    if segment_ids[b, j] == segment_ids[b, i] and (not causal or j <= i)]
            for h in range(q_heads):
                kv_head = h // group
                scores = np.array([q[b, i, h] @ k[b, j, kv_head] for j in keys]) / np.sqrt(head_dim)
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                out[b, i, h] = weights @ v[b, keys, kv_head]
    return out


@given(problems(max_local=16), st.integers(0, 2**16))
def test_dense_matches_the_definition(problem: Problem, seed: int):
    rng = np.random.default_rng(seed)
    b, n, d = problem.batch, problem.length, problem.head_dim
    q = rng.standard_normal((b, n, problem.q_heads, d)).astype(np.float32)
    k = rng.standard_normal((b, n, problem.kv_heads, d)).astype(np.float32)
    v = rng.standard_normal((b, n, problem.kv_heads, d)).astype(np.float32)
    expected = numpy_attention(q, k, v, problem.segment_ids, problem.causal)
    out = dense_attention(q, k, v, segment_ids=problem.segment_ids, causal=problem.causal)
    np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5, rtol=1e-4)
