"""analyses/appendix_a.py: the int32 buffer's shape and bytes against the closed form, at --quick."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "analyses"))

import appendix_a  # noqa: E402

GIB = 2**30


def test_closed_form_at_the_papers_size():
    # Appendix A: tensor<8x1x64x32x524288xi32>, "32 GB"; ours puts the batch of 1 fourth.
    assert appendix_a.stacked_shape(524_288, 8, 1024, 2048) == (8, 64, 32, 1, 524_288)
    assert appendix_a.stacked_bytes(524_288, 8, 1024, 2048) == 32 * GIB == 4 * 8 * 64 * 32 * 524_288
    assert appendix_a.stacked_bytes(524_288, 8, 2048, 4096) == 8 * GIB
    assert appendix_a.grid(524_288, 8) == [512, 1024, 2048, 4096]
    assert appendix_a.dims_of("s32[8,64,32,1,524288]") == (8, 64, 32, 1, 524_288)


def test_quick_run_finds_the_buffer_and_none_with_our_attention(analysis):
    data, stdout = analysis("appendix_a")
    assert "Appendix A's int32 buffer" in stdout and "Buffer bytes over the chunk grid" in stdout
    seq, devices = data["inputs"]["seq"], data["inputs"]["devices"]
    local = seq // devices
    assert (seq, devices) == (65_536, 8)
    # Compiled cells: the buffer hloscope finds, before and after optimisation, is the closed form.
    assert {(c["q_chunk"], c["kv_chunk"]) for c in data["compiled"]} == {(1024, 2048), (2048, 4096)}
    for cell in data["compiled"]:
        q, kv = cell["q_chunk"], cell["kv_chunk"]
        shape = (devices, local // q, local // kv, 1, seq)  # [ring, L/q, L/kv, batch, S]
        for ir in ("hlo", "stablehlo"):
            buffer = cell[ir]["buffer"]
            assert buffer["shape"] == "s32[" + ",".join(map(str, shape)) + "]"
            assert buffer["bytes"] == 4 * math.prod(shape)
            assert buffer["loops"] == [devices, local // q, local // kv]
            assert buffer["loop_invariant"] is True and buffer["context"] == "forward"
            # One ring step's slab: the paper's update operand tensor<1x1x64x32x524288xi32>.
            assert cell[ir]["slab"]["bytes"] == 4 * math.prod(shape[1:])
        assert cell["matches_formula"]
    # The whole grid: 16 cells, bytes from the formula, the compiled ones marked.
    grid = {(c["q_chunk"], c["kv_chunk"]): c for c in data["grid"]}
    assert set(grid) == {(q, kv) for q in (512, 1024, 2048, 4096) for kv in (512, 1024, 2048, 4096)}
    for (q, kv), cell in grid.items():
        assert cell["bytes"] == 4 * devices * (local // q) * (local // kv) * seq
        assert cell["compiled"] == ((q, kv) in {(1024, 2048), (2048, 4096)})
    # Doubling both chunks quarters the buffer: the paper's workaround.
    assert grid[(1024, 2048)]["bytes"] == 4 * grid[(2048, 4096)]["bytes"]
    # Our attention: no int32 stack in either IR, although the paper structure's is 64 MiB here.
    assert data["ours"] and all(not o["int32_stacks_hlo"] and not o["int32_stacks_stablehlo"] for o in data["ours"])
    claims = {c["name"]: c for c in data["claims"]}
    ours = next(c for name, c in claims.items() if name.startswith("int32 loop-stacked buffers with our attention"))
    assert ours["ours"] == 0
    found = next(c for name, c in claims.items() if name.startswith("Appendix A buffer, StableHLO"))
    assert found["paper"] == 32 and found["ours"] == 4 * devices * (local // 1024) * (local // 2048) * seq / GIB


def test_bad_flags_exit_2_with_one_line(capsys, tmp_path):
    # In-process (no subprocess, no compile): every flag is checked before anything is compiled.
    for flags in (["--seq", "16384"], ["--devices", "-1"], ["--target", "no-such-gpu"]):
        assert appendix_a.main(["--quick", "--out-dir", str(tmp_path), *flags]) == 2, flags
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("appendix_a: "), (flags, err)
    assert not list(tmp_path.iterdir()), "nothing is written on a user error"


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([1, 2, 4, 8, 16]), st.integers(12, 20), st.integers(6, 12), st.integers(6, 12))
def test_closed_form_scales_as_the_loops(devices, log_local, log_q, log_kv):
    local, q, kv = 2**log_local, 2**min(log_q, log_local), 2**min(log_kv, log_local)
    seq = devices * local
    size = appendix_a.stacked_bytes(seq, devices, q, kv)
    assert size == 4 * math.prod(appendix_a.stacked_shape(seq, devices, q, kv))
    if 2 * q <= local:  # twice the Q chunk: half the Q loop's trips, half the buffer
        assert appendix_a.stacked_bytes(seq, devices, 2 * q, kv) * 2 == size
    if 2 * kv <= local:
        assert appendix_a.stacked_bytes(seq, devices, q, 2 * kv) * 2 == size
    # Twice the devices at the same tokens per device: 2x ring steps and 2x the full-length ids.
    assert appendix_a.stacked_bytes(2 * seq, 2 * devices, q, kv) == 4 * size
    assert all(local % c == 0 for c in appendix_a.grid(seq, devices))
