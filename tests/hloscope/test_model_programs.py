"""`layer` and `train-step`: reftrain's real code compiled from abstract inputs, with the paper's
attention swapped in to show Appendix A's buffer inside a whole training step."""

from __future__ import annotations

import jax
import pytest

from hloscope.profiling import profile_program
from hloscope.programs.model_step import ModelStepShape
from reftrain import model
from reftrain.sharding import make_mesh

TINY = dict(model="tiny", seq=2048, q_chunk=32, kv_chunk=64)


def test_paper_attention_inside_the_train_step_stacks_the_segment_ids():
    profile = profile_program("train-step", ModelStepShape(**TINY, attention="paper"), target="cpu", devices=8)
    stacked = [f for f in profile["findings"] if f["kind"] == "loop_stacked_residual" and f["shape"].startswith("s32")]
    # Appendix A's shape, scaled: [ring 8, q chunks 256/32, kv chunks 256/64, batch, full sequence].
    assert stacked and stacked[0]["shape"] == "s32[8,8,4,1,2048]", profile["findings"][:3]
    assert stacked[0]["bytes"] == 8 * 8 * 4 * 2048 * 4


def test_train_step_holds_at_least_params_and_adam_moments():
    profile = profile_program("train-step", ModelStepShape(**TINY), target="cpu", devices=8)
    config = ModelStepShape(**TINY).config()
    per_device = model.parameter_report(config, make_mesh(sp=8, devices=jax.devices())).bytes_per_device
    assert profile["figures"]["xla_total"] >= 3 * per_device  # float32 params, mu and nu
    # Under the scan over layers, no attention block may be saved per loop iteration (a lax.cond
    # in the attention's forward once made XLA keep every block's scores: 3.8 TB at 7B/512K).
    stacked = [f for f in profile["findings"] if f["kind"] == "loop_stacked_residual"]
    assert stacked == [], stacked[:2]


def test_layer_program_compiles_without_findings():
    profile = profile_program("layer", ModelStepShape(**TINY), target="cpu", devices=8)
    assert profile["figures"]["xla_total"] > 0
    assert profile["findings"] == []


@pytest.mark.parametrize(
    "shape, message",
    [
        (ModelStepShape(model="nope"), "is not a preset"),
        (ModelStepShape(model="tiny", seq=2048, q_chunk=48), "--q-chunk 48 does not divide the local length 256"),
        (ModelStepShape(model="tiny", seq=2048, fsdp=3), "does not use exactly --devices 8"),
        (ModelStepShape(model="tiny", seq=2048, q_chunk=32, attention="flash"), "--attention must be"),
    ],
)
def test_bad_shapes_are_named(shape, message):
    with pytest.raises(ValueError, match=message):
        shape.validate(8)
