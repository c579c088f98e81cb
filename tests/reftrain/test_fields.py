"""Every plan, model, phase and `--set` field is type-checked: one line naming the field, exit 2,
nothing written (a plan with "q_chunk": "abc" used to end in a TypeError traceback)."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reftrain import run as run_cli
from reftrain.config import ModelConfig, get_config
from reftrain.fields import matches
from reftrain.phases import Stage, get_phase
from reftrain.plan import PlanError, plan_from_dict

PLAN = {"schema": "hloscope.plan/2", "model": "tiny", "seq_len": 128, "mesh": {"dp": 1, "fsdp": 1, "tp": 1, "sp": 8},
        "execution": {"q_chunk": 16, "kv_chunk": 16, "remat_policy": "full"}}


def _execution(**change):
    return {"execution": PLAN["execution"] | change}


@pytest.mark.parametrize(
    "change, message",
    [
        (_execution(q_chunk="abc"), "plan execution: q_chunk must be an integer, got 'abc'"),
        (_execution(kv_chunk=16.5), "plan execution: kv_chunk must be an integer, got 16.5"),
        ({"seq_len": True}, "plan seq_len must be an integer, got True"),
        ({"model": 7}, "plan model must be a string, got 7"),
        ({"mesh": {"dp": 1, "fsdp": 1, "tp": 1, "sp": "8"}}, "plan mesh must be a mapping of a string to an integer"),
        ({"predicted": [1, 2]}, "plan predicted must be a mapping"),
        (_execution(remat_policy="most"), "plan execution: remat_policy must be one of ('offload_layer_inputs', 'full'"),
        (_execution(q_chunk=0), "plan execution: q_chunk must be positive"),
        (_execution(document_block="4096"), "plan execution: document_block must be an integer"),
        (_execution(rope_theta=1e6), "plan execution: not execution settings: ['rope_theta']"),
        ({"execution": [16]}, "plan execution must be a mapping"),
        ({"layers": 0}, "plan layers must be a positive integer or null, got 0"),
        ({"q_chunk": 16}, "plan has unknown fields ['q_chunk'] (execution settings go under 'execution')"),
    ],
)
def test_plan_fields_are_type_checked(change, message):
    with pytest.raises(PlanError) as error:
        plan_from_dict(PLAN | change)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_good_plan_passes():
    assert plan_from_dict(PLAN).execution["q_chunk"] == 16


def test_a_plan_of_the_first_schema_still_loads():
    first = {k: v for k, v in PLAN.items() if k != "execution"} | PLAN["execution"] | {
        "schema": "hloscope.plan/1", "document_block": 0, "sequence_layout": "zigzag"}
    plan = plan_from_dict(first)
    assert plan.schema == "hloscope.plan/2" and plan.execution == PLAN["execution"] | {"document_block": 0, "sequence_layout": "zigzag"}
    with pytest.raises(PlanError, match="plan execution: q_chunk must be an integer"):
        plan_from_dict(first | {"q_chunk": "abc"})


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_layers": "2"}, "model num_layers must be an integer, got '2'"),
        ({"rope_theta": "1e6"}, "model rope_theta must be a number, got '1e6'"),
        ({"tie_embeddings": 1}, "model tie_embeddings must be true or false, got 1"),
        ({"hidden_size": 0}, "hidden_size must be positive"),
        ({"yarn": {"factor": 2.0}}, "model yarn must be YarnConfig or null"),
    ],
)
def test_model_fields_are_type_checked(change, message):
    with pytest.raises(ValueError, match=message):
        get_config("tiny").replace(**change)


def test_saved_configs_still_load():
    config = get_config("tiny")
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_phase_and_stage_fields_are_type_checked():
    with pytest.raises(ValueError, match="phase learning_rate must be a number, got 'fast'"):
        get_phase("tiny", 1).replace(learning_rate="fast")
    with pytest.raises(ValueError, match="stage seq_len must be an integer"):
        Stage("128", 4)
    with pytest.raises(ValueError, match="stage sequences must be positive"):
        Stage(128, 0)


@given(st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=3), st.booleans(), st.none()))
@settings(max_examples=40, deadline=None)
def test_matches_agrees_with_isinstance_for_scalars(value):
    """Oracle: isinstance, except that bool is never an int or a float and an int is a float."""
    number = not isinstance(value, bool)
    assert matches(value, int) == (isinstance(value, int) and number)
    assert matches(value, float) == (isinstance(value, (int, float)) and number)
    assert matches(value, str) == isinstance(value, str)
    assert matches(value, bool) == isinstance(value, bool)
    assert matches(value, int | None) == (value is None or (isinstance(value, int) and number))


@pytest.mark.parametrize(
    "setting, message",
    [
        ("num_layers=x", "--set num_layers: expected an integer, got 'x'"),
        ("num_layers=1.5", "--set num_layers: expected an integer, got '1.5'"),
        ("learning_rate=fast", "--set learning_rate: expected a number, got 'fast'"),
        ("tie_embeddings=yes", "--set tie_embeddings: expected true or false, got 'yes'"),
        ("remat_policy=most", "remat_policy must be one of"),
        ("stages=128x0", "stages: expected LENxCOUNT[xBATCH]"),
        ("nonsense=1", "--set nonsense: not a phase or model field"),
        ("q_chunk", "--set needs KEY=VALUE"),
    ],
)
def test_bad_set_values_get_one_line_and_write_nothing(tmp_path, capsys, setting, message):
    assert run_cli.main(["--phase", "1", "--run-dir", str(tmp_path / "run"), "--set", setting, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()


def test_a_plan_with_a_mistyped_field_exits_2_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "plan.json").write_text(json.dumps(PLAN | _execution(q_chunk="abc")))
    assert run_cli.main(["--phase", "1", "--run-dir", str(tmp_path / "run"), "--plan", str(tmp_path / "plan.json"),
                         "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == "error: plan execution: q_chunk must be an integer, got 'abc'\n"
    assert not (tmp_path / "run").exists()
