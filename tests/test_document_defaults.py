"""The cuDNN document settings (slots per call, block) have one default everywhere a user can
meet them: the trainer's config, a plan, the attention API and hloscope's programs."""

from __future__ import annotations

import dataclasses

from hloscope.programs.attention_shape import AttentionShape
from hloscope.programs.model_step import ModelStepShape
from reftrain.attention import AttentionSpec
from reftrain.config import ModelConfig
from reftrain.plan import Plan


def _default(cls, name):
    if hasattr(cls, "_field_defaults"):  # NamedTuple
        return cls._field_defaults[name]
    return {f.name: f.default for f in dataclasses.fields(cls)}[name]


def test_document_defaults_agree():
    block = {_default(cls, "document_block") for cls in (AttentionSpec, ModelConfig, Plan, AttentionShape, ModelStepShape)}
    slots = {_default(cls, "max_documents") for cls in (AttentionSpec, ModelConfig)}
    assert block == {16384} and slots == {4}
