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
    profile = profile_program("train-step", ModelStepShape.from_options(**TINY, attention="paper"), target="cpu", devices=8)
    stacked = [f for f in profile["findings"] if f["kind"] == "loop_stacked_residual" and f["shape"].startswith("s32")]
    # Appendix A's shape, scaled: [ring 8, q chunks 256/32, kv chunks 256/64, batch, full sequence].
    assert stacked and stacked[0]["shape"] == "s32[8,8,4,1,2048]", profile["findings"][:3]
    assert stacked[0]["bytes"] == 8 * 8 * 4 * 2048 * 4


def test_train_step_holds_at_least_params_and_adam_moments():
    profile = profile_program("train-step", ModelStepShape.from_options(**TINY), target="cpu", devices=8)
    config = ModelStepShape.from_options(**TINY).config(8, "cpu")
    per_device = model.parameter_report(config, make_mesh(sp=8, devices=jax.devices())).bytes_per_device
    assert profile["figures"]["xla_total"] >= 3 * per_device  # float32 params, mu and nu
    # Under the scan over layers, no attention block may be saved per loop iteration (a lax.cond
    # in the attention's forward once made XLA keep every block's scores: 3.8 TB at 7B/512K).
    stacked = [f for f in profile["findings"] if f["kind"] == "loop_stacked_residual"]
    assert stacked == [], stacked[:2]


def test_layer_program_compiles_without_findings():
    profile = profile_program("layer", ModelStepShape.from_options(**TINY), target="cpu", devices=8)
    assert profile["figures"]["xla_total"] > 0
    assert profile["findings"] == []


@pytest.mark.parametrize(
    "shape, message",
    [
        (ModelStepShape(model="nope"), "is not a preset"),
        (ModelStepShape(model="tiny", seq=2048, phase=7), "phase must be 0-4 for preset 'tiny', got 7"),
        (ModelStepShape(model="tiny", seq=2048, fsdp=3), "does not use exactly --devices 8"),
        (ModelStepShape(model="tiny", seq=2048, attention="flash"), "--attention must be"),
        (ModelStepShape(model="tiny", seq=2048, execution={"q_chunk": 0}), "q_chunk must be positive"),
        (ModelStepShape(model="tiny", seq=2004), "--seq 2004 is not divisible by sp=8"),
    ],
)
def test_bad_shapes_are_named(shape, message):
    with pytest.raises(ValueError, match=message):
        shape.validate(8)


def test_unknown_options_are_named():
    with pytest.raises(ValueError, match="unknown option 'q_chunks'"):
        ModelStepShape.from_options(model="tiny", q_chunks=64)


@pytest.mark.parametrize("planned", [False, True], ids=["preset", "plan"])
def test_train_step_compiles_the_step_reftrain_runs(tmp_path, capsys, planned):
    """What `reftrain.run --dry-run` would train (the `small` preset's own execution, or a plan's)
    is what hloscope's train-step program compiles, field by field."""
    import json

    from reftrain import run as reftrain_run
    from reftrain.execution import EXECUTION_FIELDS
    from reftrain.plan import Plan, write_plan

    run_args = ["--preset", "small", "--phase", "1", "--run-dir", str(tmp_path / "run"), "--dry-run",
                "--set", "stages=2048x1x1"]
    options = {"model": "small", "phase": 1}
    if planned:
        plan = tmp_path / "plan.json"
        write_plan(Plan(model="small", seq_len=2048, mesh={"dp": 1, "fsdp": 1, "tp": 2, "sp": 4}, layers=2,
                        execution={"q_chunk": 128, "kv_chunk": 256, "remat_policy": "save_attention",
                                   "sequence_layout": "zigzag", "max_documents": 8}), plan)
        run_args += ["--plan", str(plan)]
        options["plan"] = str(plan)
    else:
        run_args += ["--set", "num_layers=2"]
        options |= {"seq": 2048, "layers": 2}
    assert reftrain_run.main(run_args) == 0
    shown = json.loads(capsys.readouterr().out)
    if planned:  # as a user would: `hloscope profile --program train-step --plan plan.json`
        from hloscope import cli

        out = tmp_path / "profile.json"
        assert cli.main(["profile", "--program", "train-step", "--model", "small", "--phase", "1", "--plan", str(plan),
                         "--json", str(out)]) == 0
        built = json.loads(out.read_text())["source"]["built"]
    else:
        built = profile_program("train-step", options, target="cpu", devices=8)["source"]["built"]
    assert built["execution"] == {name: shown["model"][name] for name in EXECUTION_FIELDS}
    assert (built["layers"], built["rope_theta"], built["mesh"]) == (
        shown["model"]["num_layers"], shown["model"]["rope_theta"], shown["mesh"])
    if planned:  # the plan's settings, over the preset's own (one cuDNN call a shard)
        assert built["execution"]["remat_policy"] == "save_attention" and built["execution"]["max_documents"] == 8
        assert built["execution"]["document_block"] == 0
        assert built["mesh"]["tp"] == 2 and built["seq"] == 2048
    else:  # the preset's own execution, its chunks fitted to the 256 tokens a device holds
        assert (built["execution"]["document_block"], built["execution"]["q_chunk"]) == (0, 256)
