"""analyses/ring_vs_ulysses.py: the analytic model against hand-computed cases and its
properties, and the --quick run (three deviceless compiles) against the model's tolerances."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "analyses"))

import ring_vs_ulysses as rvu  # noqa: E402

# A small GQA model whose numbers are easy by hand: 4 query heads, 2 KV heads of 2.
SMALL = rvu.Model(q_heads=4, kv_heads=2, head_dim=2, hidden=8, intermediate=16, layers=2, vocab=10, params=1000)
CHUNKS = rvu.Chunks(4, 4)


def test_comm_hand_computed():
    # 16 tokens on 2 devices: 8 local tokens; k is 8 x 2 x 2 = 32 elements, q 64, ids 32 bytes.
    assert rvu.comm_bytes("ring", SMALL, 16, 2) == {"forward": 160, "backward": 160 + 256 + 128, "per_hop": 160}
    ulysses = rvu.comm_bytes("ulysses", SMALL, 16, 2)
    assert ulysses["forward"] == 0.5 * (128 + 64) * 2 + 32 and ulysses["backward"] == 192
    # 4 devices, 4 local tokens: k is 16 elements; 3 hops of 80 bytes, the way home in bf16.
    assert rvu.comm_bytes("ring", SMALL, 16, 4) == {"forward": 240, "backward": 3 * (80 + 128) + 64, "per_hop": 80}
    # Replication to 4 KV heads: k moves as 4 x 4 x 2 = 32 elements, like q.
    replicated = rvu.comm_bytes("ulysses+kv-replication", SMALL, 16, 4)
    assert replicated["forward"] == 0.75 * (64 + 64) * 2 + 3 * 16 and replicated["backward"] == 192


def test_attention_memory_hand_computed():
    parts = rvu.attention_memory("ring", SMALL, 16, 2, CHUNKS)
    assert parts == {"inputs q,k,v,ids": 288, "d_out": 128, "f32 dq,dk,dv": 512, "KV shard in flight": 160,
                     "block": 4 * 4 * 4 * 12, "lse, delta": 256}
    parts = rvu.attention_memory("ulysses", SMALL, 16, 2, CHUNKS)
    # Head layout: q keeps its size (8 tokens x 4 heads = 16 tokens x 2 heads), k and v are one
    # whole KV head over all 16 tokens.
    assert parts["head-layout q,k,v"] == (64 + 2 * 16 * 1 * 2) * 2 and parts["full segment ids"] == 64
    assert parts["block"] == 2 * 4 * 4 * 12


def test_mistral_numbers():
    m = rvu.MISTRAL
    assert rvu.max_degree("ulysses", m, 524_288, rvu.Chunks()) == 8
    assert rvu.max_degree("ulysses+kv-replication", m, 524_288, rvu.Chunks()) == 32
    assert rvu.max_degree("ring", m, 524_288, rvu.Chunks()) == 256
    assert rvu.max_degree("ring", m, 1_048_576, rvu.Chunks()) == 512
    # 512K over 8: k and v of one device, 65,536 x 8 x 128 bf16 each, plus 65,536 int32 ids.
    assert rvu.comm_bytes("ring", m, 524_288, 8)["per_hop"] == 2 * 65_536 * 1024 * 2 + 65_536 * 4
    assert m.layer_params * 32 + 2 * 32000 * 4096 + 4096 == m.params


@settings(max_examples=60, deadline=None)
@given(local_chunks=st.integers(1, 64), n=st.integers(2, 128))
def test_ring_hop_depends_only_on_local_length(local_chunks, n):
    # Per hop a device sends its KV shard: fixed local length, any ring size, same bytes; the
    # layer's total is then linear in the devices (N-1 hops), not constant.
    local = 2048 * local_chunks
    comm = rvu.comm_bytes("ring", rvu.MISTRAL, local * n, n)
    assert comm["per_hop"] == rvu.comm_bytes("ring", rvu.MISTRAL, local * 2, 2)["per_hop"]
    assert comm["forward"] == (n - 1) * comm["per_hop"]


@settings(max_examples=60, deadline=None)
@given(log_seq=st.integers(14, 22), log_n=st.integers(1, 6))
def test_fixed_sequence_ring_grows_to_a_bound_ulysses_shrinks(log_seq, log_n):
    seq, n, m = 2**log_seq, 2**log_n, rvu.MISTRAL
    ring, ring_more = rvu.comm_bytes("ring", m, seq, n), rvu.comm_bytes("ring", m, seq, 2 * n)
    assert ring["forward"] < ring_more["forward"] < seq * (2 * m.kv_heads * m.head_dim * 2 + 4)
    uly, uly_more = rvu.comm_bytes("ulysses", m, seq, n), rvu.comm_bytes("ulysses", m, seq, 2 * n)
    assert uly_more["backward"] <= uly["backward"]
    # Forward ratio, ids aside: N x Hkv / (Hq + Hkv); ring sends more from N = 5 devices on.
    ratio = (ring["forward"] - (n - 1) * seq // n * 4) / (uly["forward"] - (n - 1) * seq // n * 4)
    assert ratio == pytest.approx(n * m.kv_heads / (m.q_heads + m.kv_heads))


@settings(max_examples=80, deadline=None)
@given(kv_heads=st.sampled_from([1, 2, 4, 8, 16]), groups=st.sampled_from([1, 2, 4]), n=st.integers(1, 64))
def test_ulysses_needs_whole_kv_heads(kv_heads, groups, n):
    model = rvu.Model(q_heads=kv_heads * groups, kv_heads=kv_heads)
    seq = 2048 * 64 * 3 * 5 * 7  # divisible by every n tried that matters here
    plain = rvu.infeasible_reason("ulysses", model, seq, n, rvu.Chunks())
    if n > kv_heads:
        assert plain is not None
    assert (plain is None) == (seq % n == 0 and kv_heads % n == 0)
    replicated = rvu.infeasible_reason("ulysses+kv-replication", model, seq, n, rvu.Chunks())
    if n > model.q_heads:
        assert replicated is not None
    if replicated is None and n > kv_heads:
        # Replication multiplies the KV part of the traffic by n / kv_heads.
        q = seq // n * model.q_heads * model.head_dim * 2 * 2 * (n - 1) / n
        ids = (n - 1) * seq // n * 4
        kv_rep = rvu.comm_bytes("ulysses+kv-replication", model, seq, n)["forward"] - q - ids
        kv_plain = rvu.comm_bytes("ulysses", model, seq, n)["forward"] - q - ids
        assert kv_rep == pytest.approx(kv_plain * n / kv_heads)


@settings(max_examples=40, deadline=None)
@given(log_n=st.integers(0, 5), method=st.sampled_from(rvu.METHODS), seq=st.sampled_from([524_288, 1_048_576]))
def test_step_memory_shrinks_with_devices(log_n, method, seq):
    n = 2**log_n
    chunks = rvu.Chunks()
    if rvu.infeasible_reason(method, rvu.MISTRAL, seq, 2 * n, chunks) or rvu.infeasible_reason(method, rvu.MISTRAL, seq, n, chunks):
        return
    one, two = rvu.step_memory(method, rvu.MISTRAL, seq, n, chunks), rvu.step_memory(method, rvu.MISTRAL, seq, 2 * n, chunks)
    assert sum(two.values()) < sum(one.values())
    assert two["saved layer inputs"] * 2 == one["saved layer inputs"]


def test_quick_run(analysis):
    data, stdout = analysis("ring_vs_ulysses")
    assert "Paper (section 4.3) vs ours" in stdout
    # Every model-vs-compile check passed, the collectives to the byte.
    assert data["checks"] and all(c["ok"] for c in data["checks"])
    for check in data["checks"]:
        if "bytes sent" in check["quantity"] or "hop" in check["quantity"] or "after the" in check["quantity"]:
            assert check["compiled"] == check["model"]
    # The compiled ring at 65,536 / 8: 7 forward hops of k, v (8,192 x 8 x 128 bf16) and ids.
    ring = next(c for c in data["compiled"] if c["method"] == "ring")
    assert ring["collectives"]["forward"] == 7 * (2 * 8192 * 1024 * 2 + 8192 * 4)
    # The table: Ulysses runs on 8 devices, not on 16 or 64; with replication up to 32.
    rows = {(r["method"], r["seq"], r["devices"]): r for r in data["rows"]}
    assert rows[("ulysses", 524_288, 8)]["feasible"] and not rows[("ulysses", 524_288, 16)]["feasible"]
    assert rows[("ulysses+kv-replication", 524_288, 16)]["feasible"]
    assert not rows[("ulysses+kv-replication", 1_048_576, 64)]["feasible"] and rows[("ring", 1_048_576, 64)]["feasible"]
    # Independent oracle for one table cell: ring backward at 1M on 16 devices.
    local = 1_048_576 // 16
    kv = local * 8 * 128
    assert rows[("ring", 1_048_576, 16)]["comm"]["backward"] == 15 * (2 * kv * 2 + local * 4 + 2 * kv * 4) + 2 * kv * 2
    claims = {c["name"]: c for c in data["claims"]}
    dosp = next(c for name, c in claims.items() if name.startswith("Ulysses' largest DoSP for"))
    assert dosp["paper"] == dosp["ours"] == 8


def test_bad_flag_exits_2():
    done = subprocess.run([sys.executable, str(REPO / "analyses" / "ring_vs_ulysses.py"), "--q-chunk", "0"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr and done.stderr.strip().count("\n") == 0
