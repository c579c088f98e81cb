"""The cuDNN document settings (slots per call, block) have one default everywhere a user can
meet them: the trainer's config, a plan, the attention API and hloscope's programs."""

from __future__ import annotations

import dataclasses

from hloscope.programs.attention_shape import AttentionShape
from hloscope.programs.model_step import ModelStepShape
from reftrain.attention import AttentionSpec
from reftrain.config import ModelConfig
from hloscope.search import Candidate
from hloscope.search_cli import DOCUMENT_BLOCKS
from reftrain.config import get_config
from reftrain.plan import default_plan


def _default(cls, name):
    if hasattr(cls, "_field_defaults"):  # NamedTuple
        return cls._field_defaults[name]
    return {f.name: f.default for f in dataclasses.fields(cls)}[name]


def test_document_defaults_agree():
    block = {_default(cls, "document_block") for cls in (AttentionSpec, ModelConfig, Candidate, AttentionShape, ModelStepShape)}
    slots = {_default(cls, "max_documents") for cls in (AttentionSpec, ModelConfig)}
    assert block == {16384} and slots == {4} and DOCUMENT_BLOCKS[0] == 16384
    plan = default_plan(get_config("mistral-7b"), 524_288, 8)  # a plan carries the model's execution
    assert plan.execution["document_block"] == 16384 and plan.execution["max_documents"] == 4
