"""The cuDNN workspace model: it reproduces every workspace XLA gave on an H100, and a
deviceless compile places it (XLA's own buffer assignment then counts it)."""

import json
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from hloscope.cudnn_workspace import BACKWARD, FORWARD, backward_bytes, forward_bytes, modelled_bytes
from hloscope.profiling import profile_program

PROBE = Path(__file__).resolve().parents[2] / "analyses" / "results" / "cudnn_workspace_h100.json"


def test_model_matches_every_probed_call():
    rows = json.loads(PROBE.read_text())
    assert len(rows) >= 40 and all("calls" in r for r in rows)
    for r in rows:
        sequences = r["batch"] * (r["documents"] or 1)
        for call, measured in r["calls"]:
            if call == BACKWARD:
                modelled = backward_bytes(sequences, r["length"], r["q_heads"], r["dim"], r["q_heads"] != r["kv_heads"])
            else:
                modelled = forward_bytes(r["batch"], sequences)
            assert abs(modelled - measured) <= 8192, (r, call, measured, modelled)


@given(batch=st.integers(1, 4), documents=st.sampled_from([0, 2, 16]), length=st.sampled_from([128, 4096]),
       heads=st.sampled_from([(32, 8), (8, 8)]), dim=st.sampled_from([64, 128]))
def test_model_reads_the_call_shapes(batch, documents, length, heads, dim):
    """From HLO shapes (BTNH q/k/v, statistics [S, Hq, T]) to the closed form."""
    sequences = batch * (documents or 1)
    q, k = [batch, length, heads[0], dim], [batch, length, heads[1], dim]
    stats = [sequences, heads[0], length]
    backward = modelled_bytes(BACKWARD, [q, k, k, [sequences], stats, q, q], [q, k, k, [0]])
    assert backward == backward_bytes(sequences, length, heads[0], dim, heads[0] != heads[1])
    forward = modelled_bytes(FORWARD, [q, k, k], [[batch, heads[0], length, dim], stats, [0]])
    assert forward == forward_bytes(batch, sequences) == (256 if not documents else 17_152)


@pytest.mark.usefixtures("gpu_aot")
def test_deviceless_compile_places_the_modelled_workspace():
    options = dict(seq=4096, q_chunk=1024, kv_chunk=1024)
    profile = profile_program("attention", options, target="h100-80gb", devices=1)
    calls = {(c["call"], c["bytes"]) for c in profile["cudnn_workspace"]}
    packed = {backward_bytes(4, 4096, 32, 128, gqa=True)}  # documents: the default 4 slots of 4096 (one block)
    assert {b for c, b in calls if c == BACKWARD} == packed
    assert {b for c, b in calls if c == FORWARD} == {forward_bytes(1, 16)}
    largest = max(packed)
    # XLA's own temp now holds it: above the workspace, where the placeholder gave 0 bytes.
    assert profile["memory_analysis"]["temp_size_in_bytes"] > largest
    assert any(f"u8[{largest}]" in b["shape"] for b in profile["top_buffers"])


@pytest.mark.usefixtures("gpu_aot")
def test_deviceless_ring_with_documents_models_both_pair_kinds():
    """On a ring of 2 (sp=2) a shard with itself packs 4 document slots (the default) and an
    earlier shard the 2 slots of their shared document: both modelled."""
    options = dict(seq=4096, q_chunk=1024, kv_chunk=1024)
    profile = profile_program("attention", options, target="h100-80gb", devices=2)
    backward = sorted(c["bytes"] for c in profile["cudnn_workspace"] if c["call"] == BACKWARD)
    assert set(backward) == {backward_bytes(n, 2048, 32, 128, gqa=True) for n in (4, 2)}


@pytest.mark.usefixtures("gpu_aot")
def test_document_block_bounds_the_modelled_workspace():
    """With document_block, a shard with itself runs in blocks: 4 slots of the block, plus the
    2 slots of a block with an earlier one; the program's total falls with them."""
    whole = profile_program("attention", dict(seq=4096, q_chunk=1024, kv_chunk=1024,
                                                         document_block=0), target="h100-80gb", devices=1)
    cut = profile_program("attention", dict(seq=4096, q_chunk=1024, kv_chunk=1024,
                                                       document_block=1024), target="h100-80gb", devices=1)
    backward = {c["bytes"] for c in cut["cudnn_workspace"] if c["call"] == BACKWARD}
    assert backward == {backward_bytes(n, 1024, 32, 128, gqa=True) for n in (4, 2)}
    assert cut["figures"]["xla_total"] < whole["figures"]["xla_total"] - 2 * max(backward)  # 1.07 GB of slots -> 0.27
