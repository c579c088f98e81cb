"""What reftrain tells XLA's allocator before jax starts (reftrain.memory), and the one line a
step that does not fit ends in (reftrain.train.out_of_memory)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hloscope.targets import DEFAULT_MARGIN as SEARCH_MARGIN
from reftrain import run as run_cli
from reftrain.memory import DEFAULT_MARGIN, MAX_FRACTION, USER_VARIABLES, describe, grant_memory
from reftrain.plan import Plan
from reftrain.train import loop
from reftrain.train.out_of_memory import failed_allocation, is_out_of_memory, message, next_plan_down

from tests.reftrain.test_train import SMALL

GIB = 2**30


def test_the_default_margin_is_the_searchs():
    """"fits" in hloscope search means "runs" in reftrain: one margin for both."""
    assert DEFAULT_MARGIN == SEARCH_MARGIN


@pytest.mark.parametrize("margin, fraction, chosen_by", [(None, 0.9, "default"), (0.15, 0.85, "plan"), (0.0, MAX_FRACTION, "plan")])
def test_a_run_preallocates_one_minus_the_plans_margin(margin, fraction, chosen_by):
    environ: dict[str, str] = {}
    grant = grant_memory(margin, cpu=False, environ=environ)
    assert environ == {"XLA_PYTHON_CLIENT_PREALLOCATE": "true", "XLA_PYTHON_CLIENT_MEM_FRACTION": str(fraction)}
    assert (grant.fraction, grant.preallocate, grant.chosen_by) == (fraction, True, chosen_by)
    assert "margin" in grant.why and "\n" not in grant.why


@pytest.mark.parametrize("mine, fraction, preallocate", [
    ({"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.8"}, 0.8, True),
    ({"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}, None, False),
    ({"XLA_PYTHON_CLIENT_ALLOCATOR": "platform"}, 0.75, True),
])
def test_the_users_own_setting_wins_and_is_named(mine, fraction, preallocate):
    environ = dict(mine)
    grant = grant_memory(0.1, cpu=False, environ=environ)
    assert environ == mine, "nothing of the user's is changed or added"
    assert (grant.fraction, grant.preallocate, grant.chosen_by) == (fraction, preallocate, "user")
    assert all(f"{k}={v}" in grant.why for k, v in mine.items())
    if not preallocate:
        assert "fragments" in grant.why


def test_cpu_devices_get_no_setting():
    environ: dict[str, str] = {}
    assert grant_memory(0.1, cpu=True, environ=environ).chosen_by == "cpu" and environ == {}


def test_the_line_says_what_xla_has_and_the_plans_share_of_it():
    grant = grant_memory(0.1, cpu=False, environ={})
    line = describe(grant, int(71.28 * GIB), "NVIDIA H100 80GB HBM3", int(70.77 * GIB))
    assert "90% of each NVIDIA H100 80GB HBM3 (71.3 GiB of 79.2 GiB)" in line
    assert "the plan predicts 70.77 GiB per device, 99.3% of it" in line and "\n" not in line


def test_dry_run_records_what_xla_is_given_from_the_plan(tmp_path, capsys, monkeypatch):
    for name in USER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu,cuda")  # not "cpu": the run sizes a GPU pool (jax has started already)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    plan = {"schema": "hloscope.plan/2", "model": "tiny", "seq_len": 2048, "mesh": {"dp": 1, "fsdp": 1, "tp": 1, "sp": 8},
            "execution": {}, "target": {"margin": 0.15}}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert run_cli.main(["--phase", "1", "--run-dir", str(tmp_path / "run"), "--plan", str(tmp_path / "plan.json"), "--dry-run"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["memory"]["fraction"] == 0.85 and shown["memory"]["chosen_by"] == "plan"
    import os

    assert os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.85" and os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "true"


ALTERNATIVE = st.fixed_dictionaries({"seq_len": st.integers(1, 10**6), "xla_total": st.integers(0, 100 * GIB),
                                     "execution": st.just({"remat_policy": "full"})})


@given(alternatives=st.lists(ALTERNATIVE, max_size=8), limit=st.integers(0, 100 * GIB), overhead=st.integers(0, GIB))
def test_the_next_plan_down_is_the_largest_alternative_that_fits(alternatives, limit, overhead):
    plan = Plan(model="m", seq_len=1, mesh={}, execution={}, target={"runtime_overhead_bytes": overhead},
                predicted={"alternatives": alternatives})
    down = next_plan_down(plan, limit)
    fitting = [a for a in alternatives if a["xla_total"] + overhead <= limit]
    if not fitting:
        assert down is None
    else:
        assert down in fitting and down["xla_total"] == max(a["xla_total"] for a in fitting)


def test_xlas_out_of_memory_messages_are_read():
    error = RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 37580963840 bytes.")
    assert is_out_of_memory(error) and failed_allocation(error) == 37580963840
    assert failed_allocation(RuntimeError("Out of memory while trying to allocate 34.87GiB.")) == int(34.87 * GIB)
    assert not is_out_of_memory(RuntimeError("INVALID_ARGUMENT: shapes differ"))


def test_the_out_of_memory_line_names_both_figures_the_card_and_the_next_plan_down():
    plan = Plan(model="mistral-7b", seq_len=368_640, mesh={"dp": 1, "fsdp": 1, "tp": 1, "sp": 1},
                execution={"remat_policy": "full"}, layers=8, source="hloscope search",
                target={"name": "h100-80gb", "count": 1, "runtime_overhead_bytes": 2**28},
                predicted={"xla_total": int(83.5 * GIB), "alternatives": [
                    {"seq_len": 278_528, "xla_total": int(70.77 * GIB), "execution": {"remat_policy": "full"}},
                    {"seq_len": 262_144, "xla_total": int(68.46 * GIB), "execution": {"remat_policy": "full"}}]})
    grant = grant_memory(0.1, cpu=False, environ={})
    line = message(plan, grant, phase=1, seq_len=368_640, needed=int(83.6 * GIB), bytes_limit=int(71.28 * GIB),
                   device_kind="NVIDIA H100 80GB HBM3", checkpoint="nothing written")
    assert "\n" not in line
    for part in ("368,640 tokens needs 83.60 GiB per device", "the plan predicted 83.50 GiB", "XLA was given 71.28 GiB",
                 "79.20 GiB NVIDIA H100 80GB HBM3", "278,528 tokens, remat full",
                 "hloscope search --target h100-80gb --devices 1 --model mistral-7b --layers 8 --seq 278528 --remat full"):
        assert part in line, part


def test_a_step_over_the_pool_ends_in_one_line_and_keeps_the_checkpoint(tmp_path, capsys, monkeypatch):
    """The whole path on CPU devices, with the pool made small: the compile of the step is refused
    before it runs (exit 1, one line), and the phase's checkpoint from before stays."""
    args = ["--phase", "1", "--run-dir", str(tmp_path), "--save-every", "1", "--no-progress", *SMALL]
    assert run_cli.main([*args, "--max-steps", "1"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(loop, "device_bytes_limit", lambda mesh: 4096)
    assert run_cli.main([*args, "--max-steps", "2"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "out of memory: phase 1's step" in err[0] and "XLA was given 0.00 GiB" in err[0]
    assert "the latest checkpoint, step 1" in err[0] and "is intact" in err[0]
    assert [p.name for p in (tmp_path / "phase1" / "checkpoints").iterdir() if p.name.isdigit()] == ["1"]
