"""Fig. 2 of the MegaBeam paper: XLA's accumulated memory pre-allocation over the HLO graph, for
Q/KV chunks (1024, 2048) vs (2048, 4096), and its "peak memory reduction of 186GB" (section 4.4).

    python analyses/fig2_prealloc.py            # Mistral-7B train step, 524,288 tokens, 8 x A100-80GB
    python analyses/fig2_prealloc.py --quick    # the tiny preset's decoder layer at 65,536 tokens

Compiles (deviceless, XLA:GPU) the whole training step four times: the paper-faithful ring
attention (`attention="paper"`, the codebase's structure that makes Appendix A's int32 table)
and ours (`attention="ours"`, custom VJP), each at both chunk configurations, and draws
hloscope's `prealloc_accumulated` curve (docs/figures.md) of each: the running sum, in XLA's
schedule order, of the bytes every instruction's output takes. The peak of that curve is its
last value; the paper's reduction is the difference of the two peaks.

The paper's "GB" is binary: its 32 GB int32 buffer is 8x1x64x32x524288 x 4 bytes = 2^35 bytes
exactly, so 186 GB is read as 186 GiB. Every byte count here is per device.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import asdict

import numpy as np
import plotly.graph_objects as go

from _common import Claim, compile_all, parse_args, print_claims, print_table, save_figure, write_json

from hloscope.compile import CompileRequest, compile_in_worker
from hloscope.hlo import parse_module
from hloscope.profiling import analyse
from hloscope.programs.model_step import ModelStepShape
from hloscope.targets import UnknownTargetError, get_target
from hloscope.trace import prealloc_bytes, walk_schedule

NAME = "fig2_prealloc"
GIB = 2**30
PAPER_REDUCTION_GIB = 186  # Fig. 2 caption and section 4.4
PAPER_NODES = 6000  # "especially significant in the later stages of the HLO graph (nodes 4000-6000)"
PAPER_INT32_GIB = 32  # section 4.4: the dynamic_update_slice whose int32 output reaches 32 GB
SMALL, LARGE = (1024, 2048), (2048, 4096)  # the paper's two (q_chunk, kv_chunk) configurations
CASES = [("paper", *SMALL), ("paper", *LARGE), ("ours", *SMALL), ("ours", *LARGE)]
FULL = {"seq": 524_288, "model": "mistral-7b", "program": "train-step"}
QUICK = {"seq": 131_072, "model": "tiny", "program": "layer"}  # ~8 s a compile instead of ~18 s


def configure(parser) -> None:
    parser.add_argument("--seq", type=int, help=f"global tokens (default {FULL['seq']:,}; --quick {QUICK['seq']:,})")
    parser.add_argument("--model", help="reftrain preset (default mistral-7b; --quick tiny)")
    parser.add_argument("--program", choices=["train-step", "layer"],
                        help="the whole train step, or one decoder layer's gradient (default train-step; --quick layer)")
    parser.add_argument("--target", default="a100-80gb", help="hloscope target (default a100-80gb)")
    parser.add_argument("--devices", type=int, default=8, help="devices on the sequence-parallel axis (default 8)")


def category(inst, ring: int, q_chunks: int, kv_chunks: int) -> str:
    """Which part of the step an instruction's pre-allocation belongs to (for the breakdown).

    int32: integer buffers (the segment-id tables of Appendix A, and their stacks). chunk stacks:
    float buffers with the chunk loops' trip counts as consecutive dimensions (the K/V, Q and
    accumulator chunks that the paper structure stacks once per ring step, Q chunk and KV chunk).
    """
    shape = inst.shape.elements[0] if inst.shape.is_tuple and inst.shape.elements else inst.shape
    if shape.dtype.startswith(("s", "u")) and shape.dtype != "token":
        return "int32 tables"
    dims = tuple(shape.dims)
    pattern = (q_chunks, kv_chunks)
    if any(dims[i:i + 2] == pattern for i in range(len(dims) - 1)):
        return "float chunk stacks"
    return "rest of the step"


def full_curve(module) -> tuple[list[int], list[tuple]]:
    """The undownsampled prealloc_accumulated curve and the (instruction, bytes) steps behind it."""
    total, curve, steps = 0, [], []
    for inst, _ in walk_schedule(module):
        size = prealloc_bytes(module, inst)
        total += size
        curve.append(total)
        steps.append((inst, size))
    return curve, steps


def profile_case(attention: str, q: int, kv: int, args) -> dict:
    """Compiles one case and returns hloscope's profile dict plus the breakdown and StableHLO walk.

    This is what `profile_program("train-step", shape, ...)` does (same worker, same `analyse`),
    done by hand so the parsed modules are kept for the breakdown and the StableHLO curve.
    """
    # kernel xla: our chunked XLA ring, the attention the paper's chunk sizes describe (on a GPU
    # target "auto" would run cuDNN's fused ring, where the chunks do not apply: docs/gpu.md).
    shape = ModelStepShape(model=args.model, seq=args.seq, attention=attention).with_execution(
        q_chunk=q, kv_chunk=kv, attention_kernel="xla")
    started = time.perf_counter()
    result = compile_in_worker(CompileRequest("hloscope._lower:lower", {"program": args.program, "options": asdict(shape)},
                                              args.target, args.devices))
    if not result.ok:
        raise RuntimeError(f"compile of {attention} q={q} kv={kv} {result.status}: {result.error}")
    module = parse_module(result.hlo_text)
    profile = analyse(module, memory=result.memory, buffer_assignment=result.dumps.get("buffer_assignment"),
                      target=get_target(args.target))
    curve, steps = full_curve(module)
    assert curve[-1] == profile["figures"]["prealloc_accumulated"], "our walk must be hloscope's curve"
    local = args.seq // args.devices
    breakdown = Counter()
    for inst, size in steps:
        breakdown[category(inst, args.devices, local // q, local // kv)] += size
    stablehlo = parse_module(result.stablehlo_text)
    stable_curve, _ = full_curve(stablehlo)
    int32 = [f for f in profile["findings"] if f["kind"] == "loop_stacked_residual" and f["dtype"] == "s32"]
    return {
        "attention": attention, "q_chunk": q, "kv_chunk": kv,
        "peak_bytes": max(b for _, b in profile["curve"]["prealloc_accumulated"]),
        "figures": profile["figures"],
        "instructions": profile["curve"]["instructions"],
        "curve": profile["curve"]["prealloc_accumulated"],
        "full_curve": curve,  # dropped from the JSON; used for the index-by-index comparison
        "breakdown": dict(breakdown),
        "stablehlo": {"instructions": len(stable_curve), "prealloc_total": stable_curve[-1] if stable_curve else 0},
        "largest_int32_stack": int32[0] if int32 else None,
        "findings": profile["findings"][:5],
        "top_buffers": profile["top_buffers"],
        "versions": result.versions,
        "compile_wall_s": round(time.perf_counter() - started, 1),
    }


def fraction_below(lower: list[int], upper: list[int]) -> float:
    """Share of the common instruction indices where `lower` <= `upper` (the two curves are of
    different modules, so index i is "the i-th instruction of each", as the paper plots them)."""
    n = min(len(lower), len(upper))
    return float(np.mean(np.asarray(lower[:n]) <= np.asarray(upper[:n])))


def reduction_why(small: dict, large: dict, faithful_config: bool, args) -> str:
    """A concrete account of our reduction, from the breakdown of the two curves."""
    parts = {k: (small["breakdown"].get(k, 0) - large["breakdown"].get(k, 0)) / GIB
             for k in ("int32 tables", "float chunk stacks", "rest of the step")}
    text = (f"of our {(small['peak_bytes'] - large['peak_bytes']) / GIB:,.1f} GiB, int32 tables give "
            f"{parts['int32 tables']:,.1f}, float chunk stacks {parts['float chunk stacks']:,.1f}, the rest "
            f"{parts['rest of the step']:,.1f}. In JAX 0.10.2 the causal-skip lax.cond makes autodiff stack not only "
            "the int32 segment ids (Appendix A) but also every bf16/f32 K/V, Q and accumulator chunk the "
            "checkpointed body receives, once per (ring step, Q chunk, KV chunk): ring x L/q x L x heads x 128 "
            "elements each, halved by doubling the Q chunk; the paper's Appendix A names only the int32 update, "
            "so its XLA/JAX (or codebase) did not stack the float chunks. The metric also counts each stack "
            "at least twice (the zeros that start it and each in-place dynamic-update-slice output, whole)")
    if not faithful_config:
        text = (f"not the paper's configuration ({args.model}, {args.program}, {args.seq:,} tokens, "
                f"{args.devices} devices); ") + text
    return text


def build_figure(cases: list[dict], title: str) -> go.Figure:
    figure = go.Figure()
    colours = {SMALL: "#1f77b4", LARGE: "#ff7f0e"}  # the paper's blue (smaller) and orange (larger)
    for case in cases:
        chunks = (case["q_chunk"], case["kv_chunk"])
        x, y = zip(*case["curve"])
        label = "paper-faithful" if case["attention"] == "paper" else "ours"
        figure.add_trace(go.Scatter(
            x=x, y=[b / GIB for b in y], mode="lines",
            name=f"{label} attention, Q/KV {chunks[0]}/{chunks[1]} (peak {case['peak_bytes'] / GIB:,.0f} GiB)",
            line={"color": colours[chunks], "dash": "solid" if case["attention"] == "paper" else "dash"},
        ))
    figure.update_layout(title=title, xaxis_title="HLO instruction (XLA schedule order)",
                         yaxis_title="accumulated pre-allocation, GiB per device (log)",
                         legend={"x": 0.99, "y": 0.02, "xanchor": "right", "yanchor": "bottom",
                                 "bgcolor": "rgba(255,255,255,0.8)"})
    # Log scale: ours peaks ~20x lower than the paper structure. The first few instructions
    # (scalars, small tables) are below the range: the curves start at the first large buffer.
    top = max(c["peak_bytes"] for c in cases) / GIB
    figure.update_yaxes(type="log", range=[np.log10(top) - 4, np.log10(top * 1.6)])
    return figure


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, configure, argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        get_target(args.target)
        if args.devices < 1:
            raise ValueError(f"--devices must be at least 1, got {args.devices}")
        for attention, q, kv in CASES:
            ModelStepShape(model=args.model, seq=args.seq, attention=attention).with_execution(
                q_chunk=q, kv_chunk=kv).validate(args.devices, get_target(args.target).platform)
            # The figure compares these chunk sizes: a length they do not divide would run fitted ones.
            local = args.seq // args.devices
            if local % q or local % kv:
                raise ValueError(f"--seq {args.seq}: chunks {q}/{kv} do not divide the local length {local}")
    except (ValueError, UnknownTargetError) as error:
        print(f"{NAME}: {error}", file=sys.stderr)
        return 2

    started = time.perf_counter()
    case = lambda attention, q, kv: lambda: profile_case(attention, q, kv, args)
    cases = compile_all(NAME, [(f"{attention} {q}/{kv}", case(attention, q, kv)) for attention, q, kv in CASES], (RuntimeError,))
    if isinstance(cases, int):
        return cases
    wall = time.perf_counter() - started
    by = {(c["attention"], c["q_chunk"], c["kv_chunk"]): c for c in cases}
    p_small, p_large = by[("paper", *SMALL)], by[("paper", *LARGE)]
    o_small, o_large = by[("ours", *SMALL)], by[("ours", *LARGE)]
    reduction = (p_small["peak_bytes"] - p_large["peak_bytes"]) / GIB
    ours_reduction = (o_small["peak_bytes"] - o_large["peak_bytes"]) / GIB
    stable_reduction = (p_small["stablehlo"]["prealloc_total"] - p_large["stablehlo"]["prealloc_total"]) / GIB
    faithful = args.seq == FULL["seq"] and args.model == FULL["model"] and args.program == FULL["program"] \
        and args.devices == 8
    config_note = "" if faithful else f"not the paper's configuration ({args.model}, {args.program}, {args.seq:,} tokens); "
    below = fraction_below(p_large["full_curve"], p_small["full_curve"])
    int32 = p_small["largest_int32_stack"]
    claims = [
        Claim("peak reduction, paper-faithful attention, Q/KV 1024/2048 -> 2048/4096", PAPER_REDUCTION_GIB,
              round(reduction, 2), "GiB", reduction_why(p_small, p_large, faithful, args)),
        Claim("the same reduction over the StableHLO before optimisation (textual order)", PAPER_REDUCTION_GIB,
              round(stable_reduction, 2), "GiB",
              config_note + "the same stacks as above; and outside the shard_map StableHLO shapes are global, "
              "not per device (e.g. the bf16[32,1,524288,4096] saved layer inputs of all 8 devices)"),
        Claim("peak, paper-faithful attention, Q/KV 1024/2048 (the paper gives no y values)", None,
              round(p_small["peak_bytes"] / GIB, 2), "GiB"),
        Claim("peak, paper-faithful attention, Q/KV 2048/4096", None, round(p_large["peak_bytes"] / GIB, 2), "GiB"),
        Claim("share of HLO indices where the larger chunks' curve is not above the smaller's", 100,
              round(100 * below, 2), "%",
              "" if below >= 0.9 else config_note + "the two programs schedule differently, so index i is a different "
              "instruction in each curve; the curves cross where one schedule reaches a big buffer earlier"),
        Claim("HLO graph nodes, optimized HLO (paper's x-axis reaches ~6,000: 'nodes 4000-6000')", PAPER_NODES,
              p_small["instructions"], "instructions",
              config_note + "XLA fuses elementwise chains into fusions, counted once each (the walk does not enter "
              "fusions); the StableHLO before optimisation, the form Appendix A quotes, is the row below"),
        Claim("HLO graph nodes, StableHLO before optimisation (textual order)", PAPER_NODES,
              p_small["stablehlo"]["instructions"], "ops",
              config_note + "a smaller model or program than the paper's 7B train step" if not faithful else ""),
        Claim("largest int32 loop-stacked buffer, paper-faithful 1024/2048 (section 4.4: 32 GB)", PAPER_INT32_GIB,
              round((int32["bytes"] if int32 else 0) / GIB, 4), "GiB",
              "" if faithful else config_note + "the buffer is 4 x ring x (L/q) x (L/kv) x seq bytes (appendix_a.py)"),
        Claim("peak reduction, our attention, same chunks (the paper had no such run)", None,
              round(ours_reduction, 2), "GiB"),
    ]
    title = (f"Fig. 2: accumulated pre-allocation, {args.model} {args.program}, {args.seq:,} tokens, "
             f"{args.devices} x {args.target}")
    print_claims(title, claims)
    print_table("Where the pre-allocation goes (GiB per device, optimized HLO)",
                ["attention", "q / kv", "peak", "int32 tables", "float chunk stacks", "rest", "instructions",
                 "StableHLO ops", "StableHLO total", "compile s"],
                [[c["attention"], f"{c['q_chunk']} / {c['kv_chunk']}", round(c["peak_bytes"] / GIB, 2),
                  *(round(c["breakdown"].get(k, 0) / GIB, 2) for k in ("int32 tables", "float chunk stacks",
                                                                        "rest of the step")),
                  c["instructions"], c["stablehlo"]["instructions"],
                  round(c["stablehlo"]["prealloc_total"] / GIB, 2), c["compile_wall_s"]] for c in cases])
    print(f"4 compiles and analyses: {wall:.1f} s")

    payload = {
        "analysis": NAME,
        "inputs": {"seq": args.seq, "model": args.model, "program": args.program, "target": args.target,
                   "devices": args.devices, "quick": args.quick, "cases": CASES,
                   "paper_gb_is_gib": "32 GB = 8x1x64x32x524288 x 4 bytes = 2^35 bytes"},
        "versions": cases[0]["versions"],
        "claims": [c.to_dict() for c in claims],
        "reduction_gib": reduction,
        "ours_reduction_gib": ours_reduction,
        "stablehlo_reduction_gib": stable_reduction,
        "cases": [{k: v for k, v in c.items() if k != "full_curve"} for c in cases],
        "wall_s": round(wall, 1),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_json(args.out_dir / f"{NAME}.json", payload)
    save_figure(build_figure(cases, title), args.out_dir, NAME)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
