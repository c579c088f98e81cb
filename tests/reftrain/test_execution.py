"""One Execution: its defaults reach every entry point, the chunk rule is the largest divisor,
and a config reads, replaces and serialises its execution through one object."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hloscope.programs.attention_shape import AttentionShape
from reftrain.attention import AttentionSpec, ring_attention
from reftrain.config import ModelConfig, get_config
from reftrain.execution import EXECUTION_FIELDS, REMAT, Execution, fit_chunk
from reftrain.plan import default_plan
from reftrain.remat import POLICIES


@given(chunk=st.integers(1, 5000), length=st.integers(1, 5000))
def test_fit_chunk_is_the_largest_divisor_not_above_the_chunk(chunk, length):
    fitted = fit_chunk(chunk, length)
    assert length % fitted == 0 and fitted <= chunk
    assert not any(length % d == 0 for d in range(fitted + 1, min(chunk, length) + 1))


def test_the_document_block_of_38400_tokens_is_a_divisor_near_the_block():
    assert fit_chunk(16384, 38_400) == 12_800  # math.gcd gave 512: 75 small calls instead of 3


execution_values = st.fixed_dictionaries({
    "remat_policy": st.sampled_from(tuple(REMAT)), "q_chunk": st.integers(1, 8192), "kv_chunk": st.integers(1, 8192),
    "document_block": st.integers(0, 65536), "max_documents": st.integers(1, 64),
    "sequence_layout": st.sampled_from(("contiguous", "zigzag")), "attention_kernel": st.sampled_from(("xla", "cudnn"))})


@given(values=execution_values, local=st.sampled_from([256, 1000, 4096, 38_400]))
def test_attention_spec_is_the_execution_fitted_to_the_shard(values, local):
    execution = Execution(**values)
    spec = AttentionSpec.of(execution, local, axis_name="sp")
    assert (spec.q_chunk, spec.kv_chunk) == (fit_chunk(execution.q_chunk, local), fit_chunk(execution.kv_chunk, local))
    assert (spec.kernel, spec.layout, spec.max_documents, spec.document_block) == (
        execution.attention_kernel, execution.sequence_layout, execution.max_documents, execution.document_block)
    assert AttentionSpec.of(execution, local).layout == "contiguous"  # one device has no ring to lay out


@given(values=execution_values)
def test_a_config_replaces_and_serialises_its_execution(values):
    config = get_config("small").replace(**values)
    assert config.execution == get_config("small").execution.replace(**values)
    assert all(getattr(config, name) == getattr(config.execution, name) for name in EXECUTION_FIELDS)
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert ModelConfig.from_dict(dataclasses.asdict(config)) == config  # the nested form reads too


def test_execution_defaults_are_written_once():
    default = Execution()
    assert AttentionSpec().document_block == AttentionShape().document_block == default.document_block
    assert AttentionSpec().max_documents == default.max_documents
    keywords = {name: p.default for name, p in __import__("inspect").signature(ring_attention).parameters.items()}
    assert (keywords["document_block"], keywords["max_documents"], keywords["layout"]) == (
        default.document_block, default.max_documents, default.sequence_layout)
    assert get_config("mistral-7b").execution == default
    plan = default_plan(get_config("mistral-7b"), 524_288, 8)  # a plan carries the model's execution
    assert plan.execution == default.fitted(65_536).to_dict()


def test_one_remat_registry():
    assert tuple(POLICIES) == tuple(REMAT)
    with pytest.raises(ValueError, match="remat_policy must be one of"):
        Execution(remat_policy="most")
