"""hloscope's public API and `hloscope check` on a program written the way users write them
(examples/flax_decoder.py: linen nn.scan + remat, optax AdamW, NamedSharding over a 2-D mesh,
donated state), for the host CPU and deviceless GPU targets, and on builders that misbehave."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import pytest

import hloscope
import hloscope.testing
from hloscope._lower import lower
from hloscope.targets import MissingGpuAotError, check_gpu_aot

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = f"{ROOT / 'examples' / 'flax_decoder.py'}:build"
MISBEHAVING = "tests.hloscope.programs.misbehaving"
# Small enough for 2 cores; the mesh and the sharding are the example's real ones.
SMALL = dict(batch=4, seq=128, d_model=128, heads=4, layers=2, vocab=1024)
MESH = {"data": 2, "model": 4}


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hloscope", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _gpu_aot_or_skip() -> None:
    try:
        check_gpu_aot()
    except MissingGpuAotError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def cpu_profile() -> hloscope.Profile:
    return hloscope.profile(EXAMPLE, target="cpu", devices=8, mesh=MESH, **SMALL)


def test_xla_total_is_xla_memory_analysis_of_the_same_program(cpu_profile):
    stats = lower(jax.devices()[:8], EXAMPLE, SMALL, MESH).compile().memory_analysis()
    expected = (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
                - stats.alias_size_in_bytes)
    assert cpu_profile.xla_total == expected
    # The state is donated: XLA aliases it into the output, and xla_total counts it once.
    assert stats.alias_size_in_bytes > 0
    assert cpu_profile.live_at_peak and all(b["bytes"] > 0 for b in cpu_profile.live_at_peak)
    assert cpu_profile.figure == ("xla_total", expected)


def test_profile_round_trips_through_json_and_html(cpu_profile, tmp_path):
    cpu_profile.write_json(tmp_path / "p.json")
    again = hloscope.Profile.load(tmp_path / "p.json")
    assert again.xla_total == cpu_profile.xla_total and again.findings == cpu_profile.findings
    cpu_profile.write_html(tmp_path / "p.html", budget="1GiB")
    page = (tmp_path / "p.html").read_text()
    assert "<title>hloscope: " in page and "flax_decoder.py:build" in page
    assert "Buffers live at the peak" in page and "budget" in page


def test_fits_is_judged_by_xla_total(cpu_profile):
    total = cpu_profile.xla_total
    assert cpu_profile.fits(int(total * 1.01)) and not cpu_profile.fits(int(total * 0.99))
    assert cpu_profile.fits(f"{total * 1.01 / 2**30:.6f}GiB")


def test_check_passes_one_percent_above_and_fails_one_percent_below(cpu_profile):
    total = cpu_profile.xla_total
    assert hloscope.testing.assert_fits(EXAMPLE, target="cpu", devices=8, mesh=MESH, budget=int(total * 1.01),
                                        **SMALL).xla_total == total
    below = int(total * 0.99)
    result = _cli("check", "--program", EXAMPLE, "--devices", "8", "--mesh", "data=2,model=4",
                  *[f"--set={k}={v}" for k, v in SMALL.items() if k != "seq"], "--seq", str(SMALL["seq"]),
                  "--budget", str(below))
    assert result.returncode == 1, result.stderr
    assert "DOES NOT FIT: xla_total" in result.stdout and f"{total:,} B" in result.stdout
    assert result.stderr == ""


def test_budget_exceeded_reads_like_a_report(cpu_profile):
    error = hloscope.BudgetExceeded(cpu_profile, cpu_profile.xla_total // 2)
    text = str(error)
    assert text.splitlines()[0].startswith(cpu_profile.label)
    assert "exceeds the budget" in text and "Largest buffers" in text and "xla_total" in text


@pytest.mark.parametrize("target", ["a100-80gb", "h100-80gb", "h200-141gb", "b200-180gb"])
def test_the_example_profiles_for_gpu_targets_without_a_gpu(target):
    _gpu_aot_or_skip()
    profile = hloscope.profile(EXAMPLE, target=target, devices=8, mesh=MESH, **SMALL)
    assert profile.xla_total > 0 and profile.peak_memory_in_bytes
    assert profile.data["target"]["name"] == target
    assert profile.fits("80GB")


def test_cli_profiles_the_example_for_a100_with_clean_stderr(tmp_path):
    _gpu_aot_or_skip()
    result = _cli("profile", "--program", EXAMPLE, "--target", "a100-80gb", "--devices", "8", "--mesh", "data=2,model=4",
                  *[f"--set={k}={v}" for k, v in SMALL.items()], "--json", str(tmp_path / "p.json"))
    assert result.returncode == 0, result.stderr
    # Neither absl's nor the CUDA stub's start-up lines: hloscope printed nothing on stderr.
    assert result.stderr == ""
    assert json.loads((tmp_path / "p.json").read_text())["figures"]["peak_memory_in_bytes"] > 0


@pytest.mark.parametrize(
    "program, code, message",
    [
        (f"{MISBEHAVING}:raises", 2, "raised ValueError: seq must be a multiple of 128, got 100"),
        (f"{MISBEHAVING}:segfaults", 2, "worker crashed with SIGSEGV"),
        (f"{MISBEHAVING}:returns_nothing_useful", 2, "must return (function, arguments), got int"),
        (f"{MISBEHAVING}:runs_out_of_memory", 1, "ran out of memory"),
        ("no_such_package.models:build", 2, "cannot import no_such_package.models:build: ModuleNotFoundError"),
        (f"{MISBEHAVING}:no_such_function", 2, "has no attribute 'no_such_function'"),
        ("train_step", 2, "unknown program 'train_step'"),
    ],
)
def test_a_misbehaving_builder_is_one_line(program, code, message):
    result = _cli("profile", "--program", program, "--devices", "2", timeout=120)
    assert result.returncode == code, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_builder_that_never_returns_is_stopped_by_the_timeout():
    result = _cli("profile", "--program", f"{MISBEHAVING}:hangs", "--devices", "2", "--timeout", "8", timeout=120)
    assert result.returncode == 2 and "ran past timeout_s=8" in result.stderr
    assert result.stderr.count("\n") == 1


def test_the_api_takes_the_builder_itself_and_raises_program_failed_with_the_status():
    from tests.hloscope.programs.misbehaving import raises

    with pytest.raises(hloscope.ProgramFailed) as caught:
        hloscope.profile(raises, devices=2)
    assert caught.value.status == "error" and "seq must be a multiple of 128" in str(caught.value)


def test_builders_are_checked_before_any_compile():
    def local_builder(mesh):
        return None

    with pytest.raises(ValueError, match="top-level function"):
        hloscope.profile(local_builder)
    with pytest.raises(ValueError, match="mesh must be a dict"):
        hloscope.profile(EXAMPLE, mesh=[2, 4])
    with pytest.raises(ValueError, match="size '70 parsecs'"):
        hloscope.check(EXAMPLE, target="cpu", devices=1, budget="70 parsecs")
    with pytest.raises(hloscope.UnknownTargetError):
        hloscope.profile(EXAMPLE, target="tpu-v9")


def test_a_budget_without_xla_numbers_is_judged_by_layout_total():
    """Text alone (`--hlo FILE`): layout_total, hloscope's model of XLA's total; without a
    schedule (StableHLO) only live_peak is left."""
    from hloscope.api import Profile

    both = Profile({"label": "t", "figures": {"xla_total": None, "layout_total": 100, "live_peak": 90}})
    assert both.figure == ("layout_total", 100) and not both.fits(99) and both.fits(100)
    assert Profile({"label": "t", "figures": {"xla_total": None, "layout_total": None,
                                               "live_peak": 90}}).figure == ("live_peak", 90)
    assert Profile({"label": "t", "figures": {"xla_total": 120, "layout_total": 100,
                                               "live_peak": 90}}).figure == ("xla_total", 120)
