"""`hloscope profile` and `hloscope diff` as a user runs them: findings, outputs, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from hloscope import cli
from hloscope.targets import MissingGpuAotError, check_gpu_aot

# Small enough for 2 cores: 8 devices, 4,096 tokens, local shards of 512.
SMALL = ["--seq", "4096", "--devices", "8", "--q-heads", "4", "--kv-heads", "2", "--head-dim", "16"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hloscope.cli", *args], capture_output=True, text=True, timeout=600)


def _gpu_aot_or_skip() -> None:
    try:
        check_gpu_aot()
    except MissingGpuAotError as error:
        pytest.skip(str(error))


def _top_int_residual(profile: dict) -> dict:
    finding = profile["findings"][0]
    assert finding["kind"] == "loop_stacked_residual", finding
    assert finding["dtype"] == "s32", finding
    return finding


@pytest.mark.parametrize("target", ["cpu", "a100-80gb"])
def test_paper_attention_top_finding_is_the_stacked_segment_ids(tmp_path, target):
    if target != "cpu":
        _gpu_aot_or_skip()
    profiles = {}
    for q_chunk, kv_chunk in ((64, 128), (128, 256)):
        out = tmp_path / f"paper_{q_chunk}.json"
        result = _run("profile", "--program", "paper-attention", *SMALL, "--q-chunk", str(q_chunk),
                      "--kv-chunk", str(kv_chunk), "--target", target, "--json", str(out))
        assert result.returncode == 0, result.stderr
        profiles[q_chunk] = json.loads(out.read_text())
    # 8 ring steps x (512 / q_chunk) x (512 / kv_chunk) copies of the 4,096 int32 segment ids.
    for q_chunk, kv_chunk in ((64, 128), (128, 256)):
        finding = _top_int_residual(profiles[q_chunk])
        loops = (8, 512 // q_chunk, 512 // kv_chunk)
        assert tuple(finding["loops"]) == loops
        assert finding["bytes"] == 8 * loops[1] * loops[2] * 4096 * 4
        assert finding["loop_invariant"] is True
        assert "'segment_ids'" in finding["origin"] and "'segment_ids'" in finding["cause"]

    html = tmp_path / "diff.html"
    result = _run("diff", str(tmp_path / "paper_64.json"), str(tmp_path / "paper_128.json"), "--html", str(html))
    assert result.returncode == 0, result.stderr
    assert "prealloc_accumulated" in result.stdout
    # Fig. 2's 186 GB belongs to chunks (1024, 2048) -> (2048, 4096) only (tests/hloscope/test_report.py).
    assert "186 GB" not in result.stdout
    assert html.read_text().count("scatter") >= 2


def test_our_attention_has_no_integer_table(tmp_path):
    out = tmp_path / "ours.json"
    result = _run("profile", *SMALL, "--q-chunk", "64", "--json", str(out))
    assert result.returncode == 0, result.stderr
    profile = json.loads(out.read_text())
    assert not [f for f in profile["findings"] if f["dtype"].startswith(("s", "u"))], profile["findings"]
    figures = profile["figures"]
    # The dump's allocations and memory_analysis describe the same compile.
    assert abs(figures["buffer_assignment_total"] - figures["xla_total"]) <= 0.01 * figures["xla_total"]
    assert 0.8 * figures["xla_total"] <= figures["live_peak"] <= 1.2 * figures["xla_total"]


def _grad_program():
    def loss(x):
        def body(carry, row):
            return carry + jnp.tanh(row), carry
        return jax.lax.scan(body, jnp.zeros(16), x)[1].sum()
    return jax.jit(jax.grad(loss)).lower(jax.ShapeDtypeStruct((32, 16), jnp.float32))


@pytest.mark.parametrize("kind", ["hlo", "stablehlo"])
def test_profile_reads_foreign_text(tmp_path, kind):
    lowered = _grad_program()
    text = lowered.compile().as_text() if kind == "hlo" else lowered.as_text()
    path = tmp_path / f"program.{kind}.txt"
    path.write_text(text)
    out = tmp_path / "profile.json"
    assert cli.main(["profile", "--hlo", str(path), "--json", str(out)]) == 0
    profile = json.loads(out.read_text())
    assert profile["dialect"] == kind
    assert profile["figures"]["prealloc_accumulated"] > 0
    assert profile["figures"]["xla_total"] is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seq", "1001", "--devices", "8"], "--seq 1001 is not divisible by --devices 8"),
        (["--seq", "4096", "--q-chunk", "96"], "--q-chunk 96 does not divide the local length 512"),
        (["--seq", "4096", "--q-chunk", "64", "--kv-chunk", "100"], "--kv-chunk 100 does not divide"),
        (["--target", "tpu-v9"], "unknown target 'tpu-v9'"),
        (["--hlo", "/no/such/file.txt"], "cannot read --hlo /no/such/file.txt"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, capsys):
    assert cli.main(["profile", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_malformed_hlo_is_one_line_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "broken.txt"
    path.write_text("HloModule m, entry_computation_layout={()->f32[]}\n\nENTRY %main () -> f32[] {\n  %x = f32[ constant(\n")
    out = tmp_path / "out.json"
    assert cli.main(["profile", "--hlo", str(path), "--json", str(out)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not out.exists()


def test_missing_gpu_aot_names_the_install_command(monkeypatch, capsys):
    def missing():
        raise MissingGpuAotError('jax-cuda12-plugin is not installed; install with: pip install -e ".[gpu-aot]"')

    monkeypatch.setattr(cli, "check_gpu_aot", missing)
    assert cli.main(["profile", "--target", "a100-80gb", "--seq", "4096", "--q-chunk", "64"]) == 2
    assert 'pip install -e ".[gpu-aot]"' in capsys.readouterr().err


def test_diff_refuses_a_file_that_is_not_a_profile(tmp_path, capsys):
    bogus = tmp_path / "plan.json"
    bogus.write_text(json.dumps({"schema": "plan/1"}))
    assert cli.main(["diff", str(bogus), str(bogus)]) == 2
    assert "is not a hloscope profile (schema 'plan/1')" in capsys.readouterr().err


def test_our_attention_has_no_integer_table_before_optimization_either():
    # The block masks compare broadcast segment ids; before fusion those broadcasts are lazy.
    import os

    from hloscope.findings import find_offenders
    from hloscope.hlo import parse_module
    from hloscope._lower import lower

    assert os.environ["JAX_PLATFORMS"] == "cpu"
    lowered = lower(jax.devices(), "attention", dict(seq=8192, q_chunk=256, kv_chunk=512, q_heads=4, kv_heads=2, head_dim=16))
    for text in (lowered.as_text(), lowered.compile().as_text()):
        findings = find_offenders(parse_module(text), min_bytes=1 << 16)
        assert not [f for f in findings if f.dtype.startswith(("s", "u"))], findings


def test_profile_reads_an_xla_dump_folder_and_fills_xla_total(tmp_path, capsys):
    def step(w, x):
        return jnp.tanh(x @ w) @ w.T

    w, x = jnp.ones((256, 512), jnp.float32), jnp.ones((128, 256), jnp.float32)
    compiled = jax.jit(step).lower(w, x).compile(
        compiler_options={"xla_dump_to": str(tmp_path / "dump"), "xla_dump_hlo_as_text": True})
    stats = compiled.memory_analysis()
    expected = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes
    out = tmp_path / "p.json"
    assert cli.main(["profile", "--hlo", str(tmp_path / "dump"), "--json", str(out)]) == 0
    profile = json.loads(out.read_text())
    assert profile["figures"]["xla_total"] == expected
    assert any(path.endswith("buffer-assignment.txt") for path in profile["source"]["files_read"])
    assert "xla_total" in capsys.readouterr().out


@pytest.mark.parametrize("args", [("profile", "--seq", "abc"), ("frobnicate",), ("check",)])
def test_a_usage_mistake_is_one_line_and_exit_2(args):
    done = _run(*args)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("hloscope: error: ")
