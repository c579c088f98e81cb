"""find_offenders on the paper's pathological structure (Appendix A), built small, and a control.

`paper_like` is the structure of the paper's ring attention, from the point of view of the
last device of a ring of `ring_steps` devices (one device; the KV block a ring step delivers is
sliced from the full-length k and v): a scan over ring steps, inside it a scan over Q chunks,
inside that a scan over KV chunks whose body is `jax.checkpoint`-ed, skipped above the causal
diagonal with `lax.cond` (as the paper's codebase does), and slices the full-length segment ids,
closed over, by global chunk offset. Autodiff saves those segment ids once per (ring step,
Q chunk, KV chunk): an s32[ring_steps, q_chunks, kv_chunks, batch, seq_len] buffer.

The builders at the top are imported by compile_in_worker's worker as
`tests.hloscope.test_findings:<name>`.
"""

from __future__ import annotations

import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hloscope.findings import Finding, find_offenders
from hloscope.hlo import parse_module

RING, BATCH, LOCAL, HEADS, HEAD_DIM, Q_CHUNK, KV_CHUNK = 2, 1, 256, 1, 4, 32, 64
SEQ = RING * LOCAL
Q_CHUNKS, KV_CHUNKS = LOCAL // Q_CHUNK, LOCAL // KV_CHUNK
STACKED_ELEMENTS = RING * Q_CHUNKS * KV_CHUNKS * SEQ * BATCH


def paper_like(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *,
               ring_steps: int, q_chunk: int, kv_chunk: int) -> jax.Array:
    """Returns causal document-masked attention `[batch, local, heads, head_dim]` of the last
    ring device's queries q `[batch, local, heads, head_dim]` over k, v `[batch, ring_steps *
    local, heads, head_dim]`, with int32 segment_ids `[batch, ring_steps * local]`."""
    b, local, h, d = q.shape
    nq, nkv = local // q_chunk, local // kv_chunk
    q_block = ring_steps - 1
    q_chunks = jnp.moveaxis(q.reshape(b, nq, q_chunk, h, d), 1, 0)

    def ring_step(out, step):
        kv_block = (q_block - step) % ring_steps
        k_chunks, v_chunks = (jnp.moveaxis(lax.dynamic_slice_in_dim(x, kv_block * local, local, 1)
                                           .reshape(b, nkv, kv_chunk, h, d), 1, 0) for x in (k, v))

        def q_step(_, xs):
            q_c, qi = xs
            q_start = q_block * local + qi * q_chunk

            @jax.checkpoint
            def kv_step(carry, xs):
                k_c, v_c, ki = xs
                o, m, l = carry
                k_start = kv_block * local + ki * kv_chunk
                q_seg = lax.dynamic_slice_in_dim(segment_ids, q_start, q_chunk, 1)
                k_seg = lax.dynamic_slice_in_dim(segment_ids, k_start, kv_chunk, 1)
                q_pos, k_pos = q_start + jnp.arange(q_chunk), k_start + jnp.arange(kv_chunk)
                mask = (q_seg[:, :, None] == k_seg[:, None, :]) & (q_pos[:, None] >= k_pos[None, :])
                s = jnp.einsum("bqhd,bkhd->bhqk", q_c, k_c, preferred_element_type=jnp.float32) * d ** -0.5
                s = jnp.where(mask[:, None], s, -1e30)
                m_new = jnp.maximum(m, s.max(-1))
                p = jnp.exp(s - m_new[..., None])
                scale = jnp.exp(m - m_new)
                return (o * scale[..., None] + jnp.einsum("bhqk,bkhd->bhqd", p, v_c),
                        m_new, l * scale + p.sum(-1)), None

            def causal_skip(carry, xs):
                below = kv_block * local + xs[2] * kv_chunk <= q_start + q_chunk - 1
                return lax.cond(below, kv_step, lambda c, _: (c, None), carry, xs)

            stats = (b, h, q_chunk)
            init = (jnp.zeros((*stats, d)), jnp.full(stats, -1e30), jnp.zeros(stats))
            (o, m, l), _ = lax.scan(causal_skip, init, (k_chunks, v_chunks, jnp.arange(nkv)))
            return None, (o, m, l)

        _, (o, m, l) = lax.scan(q_step, None, (q_chunks, jnp.arange(nq)))
        o_acc, m_acc, l_acc = out
        m_new = jnp.maximum(m_acc, m)
        a, c = jnp.exp(m_acc - m_new), jnp.exp(m - m_new)
        return (o_acc * a[..., None] + o * c[..., None], m_new, l_acc * a + l * c), None

    stats = (nq, b, h, q_chunk)
    init = (jnp.zeros((*stats, d)), jnp.full(stats, -1e30), jnp.zeros(stats))
    (o, _, l), _ = lax.scan(ring_step, init, jnp.arange(ring_steps))
    o = o / jnp.maximum(l, 1e-30)[..., None]  # [nq, b, h, q_chunk, d]
    return jnp.moveaxis(o, 0, 1).transpose(0, 1, 3, 2, 4).reshape(b, local, h, d)


def _shapes(sharding=None) -> list[jax.ShapeDtypeStruct]:
    f32 = partial(jax.ShapeDtypeStruct, dtype=jnp.float32, sharding=sharding)
    return [f32((BATCH, LOCAL, HEADS, HEAD_DIM)), f32((BATCH, SEQ, HEADS, HEAD_DIM)),
            f32((BATCH, SEQ, HEADS, HEAD_DIM)),
            jax.ShapeDtypeStruct((BATCH, SEQ), jnp.int32, sharding=sharding)]


def paper_like_grad() -> jax.stages.Wrapped:
    """jit(grad of sum(paper_like) wrt q, k, v)."""
    def loss(q, k, v, seg):
        return paper_like(q, k, v, seg, ring_steps=RING, q_chunk=Q_CHUNK, kv_chunk=KV_CHUNK).sum()

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def paper_like_lowered(devices: list) -> jax.stages.Lowered:
    """Builder for compile_in_worker: the gradient program on the target's first device."""
    sharding = NamedSharding(Mesh(np.array(devices[:1]), ("x",)), P())
    return paper_like_grad().lower(*_shapes(sharding))


def control_grad() -> jax.stages.Wrapped:
    """The same attention through reftrain's blockwise_attention, whose custom VJP saves only
    its inputs: no residual is stacked per iteration."""
    from reftrain.attention import blockwise_attention

    def loss(q, k, v, seg):
        q_full = jnp.concatenate([jnp.zeros_like(q)] * (RING - 1) + [q], axis=1)
        out = blockwise_attention(q_full, k, v, segment_ids=seg, causal=True,
                                  q_chunk=Q_CHUNK, kv_chunk=KV_CHUNK)
        return out[:, -LOCAL:].sum()

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


@pytest.fixture(scope="module")
def paper_lowered() -> jax.stages.Lowered:
    return paper_like_grad().lower(*_shapes())


@pytest.fixture(scope="module")
def paper_hlo(paper_lowered) -> str:
    return paper_lowered.compile().as_text()


def _assert_paper_finding(top: Finding) -> None:
    assert top.kind == "loop_stacked_residual", top
    assert top.dtype == "s32"
    assert top.bytes == STACKED_ELEMENTS * 4
    assert int(np.prod([int(x) for x in top.shape[4:-1].split(",")])) == STACKED_ELEMENTS
    assert top.loops == [RING, Q_CHUNKS, KV_CHUNKS]
    assert top.loop_invariant is True
    assert f"{RING} x {Q_CHUNKS} x {KV_CHUNKS}" in top.cause
    assert top.remedy


def test_paper_like_matches_dense_attention() -> None:
    """The reproduction is real attention: it equals a dense causal document-masked softmax."""
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (BATCH, LOCAL, HEADS, HEAD_DIM))
    k, v = (jax.random.normal(key, (BATCH, SEQ, HEADS, HEAD_DIM)) for key in keys[1:])
    seg = jnp.cumsum(jax.random.bernoulli(keys[0], 0.01, (BATCH, SEQ)), axis=1).astype(jnp.int32) + 1
    out = jax.jit(partial(paper_like, ring_steps=RING, q_chunk=Q_CHUNK, kv_chunk=KV_CHUNK))(q, k, v, seg)
    q_pos, k_pos = jnp.arange(SEQ - LOCAL, SEQ), jnp.arange(SEQ)
    mask = (seg[:, -LOCAL:, None] == seg[:, None, :]) & (q_pos[:, None] >= k_pos[None, :])
    s = jnp.where(mask[:, None], jnp.einsum("bqhd,bkhd->bhqk", q, k) * HEAD_DIM ** -0.5, -1e30)
    ref = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, -1), v)
    np.testing.assert_allclose(out, ref, atol=2e-5)


def test_optimized_hlo_top_finding_is_the_stacked_segment_ids(paper_hlo: str) -> None:
    findings = find_offenders(parse_module(paper_hlo), min_bytes=1024)
    top = findings[0]
    _assert_paper_finding(top)
    assert top.context == "forward"  # saved by the forward pass (jvp), read by transpose(jvp)
    assert top.op_name and "jvp(" in top.op_name and "transpose(" not in top.op_name
    assert top.source and top.source.split(":")[0].endswith("test_findings.py")
    assert top.cause.startswith("a loop-invariant s32[1,512] value")
    json.dumps([f.to_dict() for f in findings])  # JSON-ready
    # One finding per buffer; the zeros that start the stacked buffer are that same buffer.
    assert len({(f.computation, f.instruction) for f in findings}) == len(findings)
    assert not [f for f in findings if f.kind == "large_integer_table" and f.bytes == top.bytes]


def test_stablehlo_finds_it_before_optimization(paper_lowered) -> None:
    findings = find_offenders(parse_module(paper_lowered.as_text()), min_bytes=1024)
    s32 = [f for f in findings if f.kind == "loop_stacked_residual" and f.dtype == "s32"]
    _assert_paper_finding(s32[0])
    assert s32[0] is findings[0]
    with_locations = find_offenders(parse_module(paper_lowered.as_text(debug_info=True)), min_bytes=1024)
    assert with_locations[0].context == "forward"
    assert with_locations[0].source and "test_findings.py" in with_locations[0].source


def test_kinds_thresholds_and_budget(paper_hlo: str) -> None:
    module = parse_module(paper_hlo)
    assert find_offenders(module) == []  # nothing here reaches the 1 MiB default
    tables = find_offenders(module, min_bytes=1024)
    assert all(f.bytes >= 1024 for f in tables)
    budget = 2 * STACKED_ELEMENTS * 4  # the stacked buffer is half of it
    ranked = find_offenders(module, budget_bytes=budget, budget_share=0.2, min_bytes=1 << 30)
    assert ranked and all(f.kind == "large_buffer" for f in ranked)
    assert ranked[0].bytes == STACKED_ELEMENTS * 4 and "50.0%" in ranked[0].cause
    assert [f.bytes for f in ranked] == sorted((f.bytes for f in ranked), reverse=True)
    with pytest.raises(ValueError, match="budget_share"):
        find_offenders(module, budget_bytes=budget, budget_share=0)


def test_control_with_custom_vjp_stacks_no_integers() -> None:
    hlo = control_grad().lower(*_shapes()).compile().as_text()
    findings = find_offenders(parse_module(hlo), min_bytes=1)
    assert not [f for f in findings if f.kind == "loop_stacked_residual" and f.dtype == "s32"]
    assert not [f for f in findings if f.dtype == "s32" and f.bytes >= STACKED_ELEMENTS * 4]


def test_deviceless_a100_compile() -> None:
    from hloscope.compile import CompileRequest, compile_in_worker
    from hloscope.targets import MissingGpuAotError

    request = CompileRequest(builder=f"{__name__}:paper_like_lowered", kwargs={}, target="a100-80gb",
                             devices=1, timeout_s=300)
    try:
        result = compile_in_worker(request)
    except MissingGpuAotError as e:
        pytest.skip(str(e))
    assert result.ok, (result.status, result.error, result.log[-2000:])
    top = find_offenders(parse_module(result.hlo_text), min_bytes=1024)[0]
    _assert_paper_finding(top)
    assert top.context == "forward"


HANDWRITTEN = """HloModule stacks, is_scheduled=true

cond {
  p = (s32[], s32[1024], s32[8,1024], f32[8,1024]) parameter(0)
  i = s32[] get-tuple-element(p), index=0
  n = s32[] constant(8)
  ROOT lt = pred[] compare(i, n), direction=LT
}

body {
  p = (s32[], s32[1024], s32[8,1024], f32[8,1024]) parameter(0)
  i = s32[] get-tuple-element(p), index=0
  ids = s32[1024] get-tuple-element(p), index=1
  buf = s32[8,1024] get-tuple-element(p), index=2
  fbuf = f32[8,1024] get-tuple-element(p), index=3
  one = s32[] constant(1)
  i2 = s32[] add(i, one)
  zero = s32[] constant(0)
  upd = s32[1,1024] bitcast(ids)
  buf2 = s32[8,1024] dynamic-update-slice(buf, upd, i, zero), metadata={op_name="jit(f)/jvp(f)/while/body/dynamic_update_slice" source_file="f.py" source_line=3}
  conv = f32[1024] convert(ids)
  iv = f32[] convert(i)
  ivb = f32[1024] broadcast(iv), dimensions={}
  vary = f32[1024] multiply(conv, ivb)
  fupd = f32[1,1024] bitcast(vary)
  fbuf2 = f32[8,1024] dynamic-update-slice(fbuf, fupd, i, zero), metadata={op_name="jit(f)/transpose(jvp(f))/while/body/dynamic_update_slice" source_file="f.py" source_line=7}
  ROOT out = (s32[], s32[1024], s32[8,1024], f32[8,1024]) tuple(i2, ids, buf2, fbuf2)
}

ENTRY main {
  ids = s32[1024] parameter(0)
  z = s32[] constant(0)
  sb = s32[8,1024] broadcast(z), dimensions={}
  zf = f32[] constant(0)
  fb = f32[8,1024] broadcast(zf), dimensions={}
  init = (s32[], s32[1024], s32[8,1024], f32[8,1024]) tuple(z, ids, sb, fb)
  w = (s32[], s32[1024], s32[8,1024], f32[8,1024]) while(init), condition=cond, body=body
  s = s32[8,1024] get-tuple-element(w), index=2
  f = f32[8,1024] get-tuple-element(w), index=3
  big = f32[8,1024] negate(f)
  ROOT o = (s32[8,1024], f32[8,1024]) tuple(s, big)
}
"""


def test_handwritten_invariance_context_and_kinds() -> None:
    findings = find_offenders(parse_module(HANDWRITTEN), budget_bytes=65536, budget_share=0.25,
                              min_bytes=1024)
    by_name = {f.instruction: f for f in findings}
    ids_stack, varying = by_name["buf2"], by_name["fbuf2"]
    assert (ids_stack.kind, ids_stack.loops, ids_stack.loop_invariant, ids_stack.context) == \
        ("loop_stacked_residual", [8], True, "forward")
    assert ids_stack.source == "f.py:3" and ids_stack.bytes == 8 * 1024 * 4
    assert (varying.kind, varying.loops, varying.loop_invariant, varying.context) == \
        ("loop_stacked_residual", [8], False, "backward")
    assert "ids" not in by_name  # an argument is data handed in, not an integer table XLA built
    assert by_name["big"].kind == "large_buffer" and "50.0%" in by_name["big"].cause
    # The zeros that start each stack are the stacked buffers themselves: no second finding.
    assert "sb" not in by_name and "fb" not in by_name
    # Loop-invariant stacks first (pure waste), then the rest; each group largest first.
    ranks = [(not f.loop_invariant, -f.bytes) for f in findings]
    assert ranks == sorted(ranks)


def test_a_trip_count_that_does_not_match_is_no_stack() -> None:
    module = parse_module(HANDWRITTEN.replace("n = s32[] constant(8)", "n = s32[] constant(4)"))
    findings = find_offenders(module, min_bytes=1024)
    assert not [f for f in findings if f.kind == "loop_stacked_residual"]
    assert "sb" in {f.instruction for f in findings}  # now just an integer table


def test_larger_chunks_shrink_the_stacked_buffer(paper_lowered) -> None:
    """The paper's workaround: doubling both chunk sizes quarters the stacked segment ids."""
    loss = lambda q, k, v, seg: paper_like(q, k, v, seg, ring_steps=RING, q_chunk=2 * Q_CHUNK,
                                           kv_chunk=2 * KV_CHUNK).sum()
    bigger = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*_shapes()).as_text()
    def stacked_ids(text: str) -> Finding:
        return next(f for f in find_offenders(parse_module(text), min_bytes=1024)
                    if f.kind == "loop_stacked_residual" and f.dtype == "s32")

    small, large = stacked_ids(paper_lowered.as_text()), stacked_ids(bigger)
    assert large.loops == [RING, Q_CHUNKS // 2, KV_CHUNKS // 2] and large.loop_invariant
    assert large.bytes * 4 == small.bytes


def test_stablehlo_finds_it_inside_shard_map() -> None:
    """The ring under jax.shard_map (hloscope's paper-attention program): in StableHLO its loops
    are in an sdy.manual_computation region, whose arguments are the op's operands and whose
    sdy.return gives its results, and the stacking updates are func.call'd helpers. The region
    is walked like a call's callee, so the stacked segment ids are found there too."""
    from hloscope._lower import lower

    devices, seq, q_chunk, kv_chunk = jax.devices()[:8], 1024, 32, 64
    q_chunks, kv_chunks = seq // len(devices) // q_chunk, seq // len(devices) // kv_chunk
    lowered = lower(devices, "paper-attention", dict(seq=seq, q_chunk=q_chunk, kv_chunk=kv_chunk, q_heads=2, kv_heads=1,
                                                     head_dim=8))
    text = lowered.as_text()
    assert "sdy.manual_computation" in text
    for with_locations in (False, True):
        text = lowered.as_text(debug_info=with_locations)
        top = find_offenders(parse_module(text), min_bytes=1024)[0]
        assert (top.kind, top.dtype, top.loop_invariant) == ("loop_stacked_residual", "s32", True), top
        assert top.loops == [len(devices), q_chunks, kv_chunks]
        elements = len(devices) * q_chunks * kv_chunks * seq
        assert int(np.prod([int(x) for x in top.shape[4:-1].split(",")])) == elements
        assert top.bytes == elements * 4
        assert "/manual_computation." in top.computation
        if with_locations:
            assert top.context == "forward"
            assert top.op_name and top.source and "paper_attention.py" in top.source


def test_an_integer_argument_is_not_a_table_but_can_be_a_large_buffer() -> None:
    text = """HloModule m, entry_computation_layout={(s32[1048576]{0})->s32[1048576]{0}}

ENTRY %main (ids: s32[1048576]) -> s32[1048576] {
  %ids = s32[1048576]{0} parameter(0)
  ROOT %doubled = s32[1048576]{0} add(s32[1048576]{0} %ids, s32[1048576]{0} %ids)
}
"""
    findings = find_offenders(parse_module(text), budget_bytes=8 << 20, budget_share=0.25, min_bytes=1 << 20)
    kinds = {f.instruction: f.kind for f in findings}
    assert kinds == {"doubled": "large_integer_table", "ids": "large_buffer"}
