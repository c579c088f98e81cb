"""reftrain/flops.py, the one parameter and FLOPs formula: parameter counts against the model's
own tree, attention within documents against a brute-force count of the mask."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reftrain import flops, model
from reftrain.config import get_config
from reftrain.train import metrics


@pytest.mark.parametrize("tie", [False, True])
def test_parameter_count_is_the_model_trees(tie):
    config = get_config("tiny", hidden_size=64, intermediate_size=96, num_q_heads=4, num_kv_heads=2, head_dim=16,
                        num_layers=3, tie_embeddings=tie)
    tree = model.abstract_params(config)
    assert flops.parameter_count(config) == sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
    assert flops.parameter_count(get_config("mistral-7b")) == 7_241_732_096


@given(st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=24), min_size=1, max_size=3).filter(
    lambda rows: len({len(r) for r in rows}) == 1))
@settings(max_examples=40, deadline=None)
def test_attended_length_counts_the_causal_document_mask(rows):
    """Oracle: per row, 2 x (query, key) pairs of the causal same-document mask, less the
    diagonal, over the row length, is sum(n^2) / length; padding (0) attends nothing."""
    ids = np.array(rows)
    expected = []
    for row in ids:
        # Documents are runs: the same id later in the row is another document.
        run = np.cumsum(np.diff(row, prepend=row[0] - 1) != 0)
        q, k = np.meshgrid(np.arange(row.size), np.arange(row.size), indexing="ij")
        allowed = (run[q] == run[k]) & (q >= k) & (row[q] != 0)
        expected.append((2 * allowed.sum() - np.count_nonzero(row)) / row.size)
    assert flops.attended_length(ids) == pytest.approx(np.mean(expected))


def test_one_document_a_row_counts_causal_attention_over_the_row():
    config = get_config("mistral-7b")
    assert flops.attended_length(np.ones((2, 4096), np.int32)) == 4096
    assert flops.train_flops_per_token(config, 4096) == 6 * flops.matmul_parameters(config) + 6 * 32 * 32 * 128 * 4096


def test_mfu_counts_attention_within_documents():
    """Eight 4K documents in a 32K row do 1/8 of the attention of one 32K document."""
    config = get_config("mistral-7b")
    packed = np.repeat(np.arange(1, 9), 4096)[None]
    assert flops.attended_length(packed) == 4096
    whole = metrics.mfu(config, 32768, 1e4, 1, 989e12)
    assert metrics.mfu(config, flops.attended_length(packed), 1e4, 1, 989e12) < whole
    assert metrics.mfu(config, 4096, 1e4, 1, None) is None


def test_memory_warning_above_five_percent_only():
    assert metrics.memory_warning(None, 100) is None and metrics.memory_warning(105, None) is None
    assert metrics.memory_warning(105 * 2**20, 100 * 2**20) is None
    line = metrics.memory_warning(106 * 2**30, 100 * 2**30)
    assert "106.00 GiB exceeds the plan's predicted 100.00 GiB by 6.0%" in line and "\n" not in line
