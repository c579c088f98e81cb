"""Appendix A of the MegaBeam paper: the int32 `dynamic_update_slice` whose output,
tensor<8x1x64x32x524288xi32>, is 32 GB per device at 524,288 tokens on 8 devices with Q/KV
chunks 1024/2048 (section 4.4), found before and after XLA's optimisations, sized over the chunk
grid, checked against its closed form, and shown absent with our attention.

    python analyses/appendix_a.py            # 524,288 tokens, 8 x A100-80GB, grid q, kv in {512..4096}
    python analyses/appendix_a.py --quick    # 65,536 tokens: two grid cells compiled, the rest from the formula

Compiles (deviceless XLA:GPU) hloscope's `paper-attention` program: the gradient of the paper
codebase's ring attention (a ring scan over devices, a scan over Q chunks, a scan over KV chunks
whose `jax.checkpoint`-ed body, behind the causal-skip `lax.cond`, slices the full-length int32
segment ids `[B, S]`). Autodiff saves that closed-over `[B, S]` as a residual of every KV step;
coming out of the cond it is not provably loop-invariant, so each enclosing scan stacks one copy
per iteration, prepending its trip count:

    [B, S] -> [L/kv, B, S] -> [L/q, L/kv, B, S] -> [ring, L/q, L/kv, B, S]
    bytes = 4 x ring x (L/q) x (L/kv) x B x S        (L = S / ring, the tokens per device)

At 524,288 / 8 with 1024/2048: 4 x 8 x 64 x 32 x 1 x 524,288 = 2^35 bytes = 32 GiB, the paper's
"32 GB" (so the paper's GB is GiB). Every compiled cell is asserted to equal the formula; the
cells not compiled are filled from it and marked so. Our attention (program `attention`, custom
VJP, segment ids rotating with K/V) is compiled at a few cells and must show no int32 stack.
"""

from __future__ import annotations

import math
import re
import sys
import time

import numpy as np
import plotly.graph_objects as go

from _common import Claim, compile_all, parse_args, print_claims, print_table, save_figure, write_json

from hloscope.profiling import CompileFailed, profile_program
from hloscope.programs.attention_shape import AttentionShape
from hloscope.targets import UnknownTargetError, get_target

NAME = "appendix_a"
GIB = 2**30
PAPER = {"seq": 524_288, "devices": 8, "q_chunk": 1024, "kv_chunk": 2048}
PAPER_SHAPE = (8, 1, 64, 32, 524_288)  # tensor<8x1x64x32x524288xi32>, the buffer operand
PAPER_UPDATE = (1, 1, 64, 32, 524_288)  # tensor<1x1x64x32x524288xi32>, the update operand
PAPER_BYTES = 32 * GIB  # "the output tensor size reaching 32 GB"
CHUNKS = (512, 1024, 2048, 4096)  # the search grid of q_chunk and kv_chunk
FIX = (2048, 4096)  # section 4.4's workaround


def configure(parser) -> None:
    parser.add_argument("--seq", type=int, help="global tokens (default 524,288; --quick 65,536)")
    parser.add_argument("--devices", type=int, default=8, help="ring size (default 8)")
    parser.add_argument("--target", default="a100-80gb", help="hloscope target (default a100-80gb)")
    parser.add_argument("--compile", choices=["all", "paper"], dest="compile_cells",
                        help="grid cells to compile: all, or only the paper's two configurations (default all; "
                             "--quick paper); the others come from the verified closed form")


def stacked_shape(seq: int, devices: int, q_chunk: int, kv_chunk: int, batch: int = 1) -> tuple[int, ...]:
    """The paper structure's stacked segment ids: [ring, L/q, L/kv, B, S] (see the docstring)."""
    local = seq // devices
    return (devices, local // q_chunk, local // kv_chunk, batch, seq)


def stacked_bytes(seq: int, devices: int, q_chunk: int, kv_chunk: int, batch: int = 1) -> int:
    return 4 * math.prod(stacked_shape(seq, devices, q_chunk, kv_chunk, batch))


def grid(seq: int, devices: int) -> list[int]:
    """The chunk sizes of the search grid that divide the tokens per device."""
    return [c for c in CHUNKS if (seq // devices) % c == 0]


def dims_of(shape: str) -> tuple[int, ...]:
    """'s32[8,64,32,1,524288]' -> (8, 64, 32, 1, 524288)."""
    inside = re.search(r"\[([\d,]*)\]", shape)
    return tuple(int(d) for d in inside.group(1).split(",") if d) if inside else ()


def int32_stacks(findings: list[dict]) -> list[dict]:
    """The int32 buffers that loops stack (hloscope's loop_stacked_residual of dtype s32), largest first."""
    found = [f for f in findings if f["kind"] == "loop_stacked_residual" and f["dtype"] in ("s32", "i32")]
    return sorted(found, key=lambda f: -f["bytes"])


def summary(finding: dict | None) -> dict | None:
    keys = ("shape", "bytes", "loops", "loop_invariant", "context", "instruction", "opcode", "origin", "source")
    return None if finding is None else {k: finding.get(k) for k in keys}


def paper_cell(seq: int, devices: int, target: str, q: int, kv: int) -> dict:
    """Compiles the paper structure at one cell and returns the Appendix A buffer as both IRs see it."""
    started = time.perf_counter()
    profile = profile_program("paper-attention", AttentionShape(seq=seq, q_chunk=q, kv_chunk=kv),
                              target=target, devices=devices)
    cell = {"q_chunk": q, "kv_chunk": kv, "compiled": True, "compile_wall_s": round(time.perf_counter() - started, 1),
            "formula_shape": list(stacked_shape(seq, devices, q, kv)), "formula_bytes": stacked_bytes(seq, devices, q, kv),
            "versions": profile["versions"]}
    for key, findings in (("hlo", profile["findings"]), ("stablehlo", profile.get("stablehlo_findings", []))):
        stacks = int32_stacks(findings)
        # The Appendix A buffer is the one the three loops stack (ring, Q chunks, KV chunks);
        # the one two loops stack is a single ring step's slab (the paper's update operand).
        full = [f for f in stacks if len(f["loops"] or []) == 3]
        slab = [f for f in stacks if len(f["loops"] or []) == 2]
        cell[key] = {"buffer": summary(full[0] if full else None), "slab": summary(slab[0] if slab else None),
                     "int32_stacks": len(stacks)}
    cell["matches_formula"] = all(
        cell[k]["buffer"] is not None and dims_of(cell[k]["buffer"]["shape"]) == tuple(cell["formula_shape"])
        and cell[k]["buffer"]["bytes"] == cell["formula_bytes"] for k in ("hlo", "stablehlo"))
    return cell


def ours_cell(seq: int, devices: int, target: str, q: int, kv: int) -> dict:
    """Compiles our attention at one cell and lists any int32 buffer hloscope flags."""
    started = time.perf_counter()
    profile = profile_program("attention", AttentionShape(seq=seq, q_chunk=q, kv_chunk=kv), target=target,
                              devices=devices)
    is_int = lambda f: f["dtype"] in ("s32", "i32", "u32", "s64", "u64")  # noqa: E731
    return {
        "q_chunk": q, "kv_chunk": kv, "compile_wall_s": round(time.perf_counter() - started, 1),
        "int32_stacks_hlo": [summary(f) for f in int32_stacks(profile["findings"])],
        "int32_stacks_stablehlo": [summary(f) for f in int32_stacks(profile.get("stablehlo_findings", []))],
        "integer_findings": [summary(f) | {"kind": f["kind"]} for f in profile["findings"] if is_int(f)],
        "top_finding": summary(profile["findings"][0]) if profile["findings"] else None,
        "xla_total": profile["figures"]["xla_total"],
    }


def build_figure(table: dict, chunks: list[int], title: str) -> go.Figure:
    """Heatmap of the buffer's GiB over (kv_chunk, q_chunk); compiled cells say so."""
    z, text = [], []
    for q in chunks:
        row_z, row_t = [], []
        for kv in chunks:
            cell = table[(q, kv)]
            gib = cell["bytes"] / GIB
            row_z.append(math.log2(gib))
            mark = {(PAPER["q_chunk"], PAPER["kv_chunk"]): "<br>Appendix A", FIX: "<br>the paper's fix"}.get((q, kv), "")
            row_t.append(f"{gib:,.4g} GiB<br>{'compiled' if cell['compiled'] else 'formula'}{mark}")
        z.append(row_z)
        text.append(row_t)
    ticks = list(range(math.floor(np.min(z)), math.ceil(np.max(z)) + 1))
    figure = go.Figure(go.Heatmap(
        x=[str(c) for c in chunks], y=[str(c) for c in chunks], z=z, text=text, texttemplate="%{text}",
        colorscale="Viridis", colorbar={"title": "GiB", "tickvals": ticks, "ticktext": [f"{2**t:g}" for t in ticks]},
        hovertemplate="q_chunk %{y}, kv_chunk %{x}<br>%{text}<extra></extra>",
    ))
    figure.update_layout(title=title, xaxis_title="kv_chunk (tokens)", yaxis_title="q_chunk (tokens)")
    return figure


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, configure, argv)
    args.seq = args.seq if args.seq is not None else (65_536 if args.quick else PAPER["seq"])
    args.compile_cells = args.compile_cells or ("paper" if args.quick else "all")
    try:
        get_target(args.target)
        if args.devices < 1:
            raise ValueError(f"--devices must be at least 1, got {args.devices}")
        if args.seq <= 0 or args.seq % args.devices:
            raise ValueError(f"--seq {args.seq} is not a positive multiple of --devices {args.devices}")
        chunks = grid(args.seq, args.devices)
        if not {PAPER["q_chunk"], PAPER["kv_chunk"], *FIX} <= set(chunks):
            raise ValueError(f"--seq {args.seq} / --devices {args.devices} = {args.seq // args.devices} tokens per "
                             f"device is not divisible by the paper's chunks 1024, 2048 and 4096")
    except (ValueError, UnknownTargetError) as error:
        print(f"{NAME}: {error}", file=sys.stderr)
        return 2
    local = args.seq // args.devices
    paper_cells = [(q, kv) for q in chunks for kv in chunks] if args.compile_cells == "all" else \
        [(PAPER["q_chunk"], PAPER["kv_chunk"]), FIX]
    ours_cells = [(PAPER["q_chunk"], PAPER["kv_chunk"])] if args.quick else \
        [(chunks[0], chunks[0]), (PAPER["q_chunk"], PAPER["kv_chunk"]), FIX, (chunks[-1], chunks[-1])]

    started = time.perf_counter()
    cell = lambda build, q, kv: lambda: build(args.seq, args.devices, args.target, q, kv)
    results = compile_all(NAME, [(f"paper-attention {q}/{kv}", cell(paper_cell, q, kv)) for q, kv in paper_cells]
                          + [(f"attention (ours) {q}/{kv}", cell(ours_cell, q, kv)) for q, kv in ours_cells], (CompileFailed,))
    if isinstance(results, int):
        return results
    compiled, ours = dict(zip(paper_cells, results[:len(paper_cells)])), results[len(paper_cells):]
    wall = time.perf_counter() - started
    mismatched = [cell for cell in compiled.values() if not cell["matches_formula"]]
    if mismatched:  # the formula is what fills the cells we did not compile: it must hold where we did
        for cell in mismatched:
            print(f"{NAME}: q/kv {cell['q_chunk']}/{cell['kv_chunk']}: compiled "
                  f"{cell['hlo']['buffer']} / {cell['stablehlo']['buffer']} != formula {cell['formula_shape']}",
                  file=sys.stderr)
        return 1

    table = {}
    for q in chunks:
        for kv in chunks:
            table[(q, kv)] = {"q_chunk": q, "kv_chunk": kv, "bytes": stacked_bytes(args.seq, args.devices, q, kv),
                              "shape": list(stacked_shape(args.seq, args.devices, q, kv)), "compiled": (q, kv) in compiled}
    main_cell = compiled[(PAPER["q_chunk"], PAPER["kv_chunk"])]
    fix_cell = compiled[FIX]
    at_paper_size = args.seq == PAPER["seq"] and args.devices == PAPER["devices"]
    size_note = "" if at_paper_size else (
        f"--seq {args.seq:,} on {args.devices} devices, not the paper's 524,288 on 8: the closed form gives "
        f"{stacked_bytes(PAPER['seq'], 8, 1024, 2048) / GIB:g} GiB, "
        f"{'x'.join(map(str, stacked_shape(PAPER['seq'], 8, 1024, 2048)))} there")
    ours_int32 = sum(len(o["int32_stacks_hlo"]) + len(o["int32_stacks_stablehlo"]) for o in ours)
    buffer_hlo, buffer_sh = main_cell["hlo"]["buffer"], main_cell["stablehlo"]["buffer"]
    slab = main_cell["stablehlo"]["slab"]
    claims = [
        Claim("Appendix A buffer, StableHLO before optimisation (q/kv 1024/2048)", PAPER_BYTES / GIB,
              buffer_sh["bytes"] / GIB, "GiB", size_note),
        Claim("Appendix A buffer, optimised HLO (q/kv 1024/2048)", PAPER_BYTES / GIB, buffer_hlo["bytes"] / GIB,
              "GiB", size_note),
        Claim("elements of the buffer (paper: 8x1x64x32x524288)", math.prod(PAPER_SHAPE),
              math.prod(dims_of(buffer_sh["shape"])), "int32", size_note),
        Claim("per-ring-step update slab (paper: tensor<1x1x64x32x524288xi32>)", 4 * math.prod(PAPER_UPDATE) / GIB,
              (slab["bytes"] if slab else 0) / GIB, "GiB", size_note),
        Claim("ring steps stacking it (paper: leading 8)", PAPER_SHAPE[0], buffer_sh["loops"][0], "",
              size_note if args.devices != 8 else ""),
        Claim("Q chunks per device (paper: 65,536 / 1,024)", PAPER_SHAPE[2], buffer_sh["loops"][1], "",
              size_note),
        Claim("KV chunks per device (paper: 65,536 / 2,048)", PAPER_SHAPE[3], buffer_sh["loops"][2], "",
              size_note),
        Claim("tokens per device (paper: 65,536)", 65_536, local, "", size_note),
        Claim("buffer with the paper's fix, q/kv 2048/4096 (paper gives no size)", None,
              fix_cell["stablehlo"]["buffer"]["bytes"] / GIB, "GiB"),
        Claim(f"int32 loop-stacked buffers with our attention ({len(ours)} compiled cells; hloscope reports "
              f"from 1 MiB, the paper structure's buffer is {main_cell['formula_bytes'] / 2**20:,.0f} MiB here)", None,
              ours_int32, "buffers"),
    ]
    title = f"Appendix A's int32 buffer: {args.seq:,} tokens on {args.devices} x {args.target}"
    print_claims(title, claims)
    print_table("The buffer's shape, dimension by dimension",
                ["", "buffer", "dim 0", "dim 1", "dim 2", "dim 3", "dim 4"],
                [["paper (MHLO)", "tensor<8x1x64x32x524288xi32>", "8 ring steps", "1 (batch)", "64 Q chunks",
                  "32 KV chunks", "524,288 tokens"],
                 ["ours (StableHLO)", buffer_sh["shape"], "ring steps", "Q chunks", "KV chunks", "1 (batch)", "tokens"],
                 ["ours (optimised HLO)", buffer_hlo["shape"],
                  *(["same as StableHLO"] * 5 if buffer_hlo["shape"] == buffer_sh["shape"] else [""] * 5)]])
    print_table(f"Buffer bytes over the chunk grid (GiB per device; tokens per device {local:,})",
                ["q_chunk \\ kv_chunk", *map(str, chunks)],
                [[str(q), *(f"{table[(q, kv)]['bytes'] / GIB:,.4g}{'' if table[(q, kv)]['compiled'] else ' (formula)'}"
                            for kv in chunks)] for q in chunks])
    print_table("Our attention at the same sizes", ["q / kv", "int32 stacks (HLO / StableHLO)",
                                                     "integer findings", "largest finding", "xla_total GiB"],
                [[f"{o['q_chunk']} / {o['kv_chunk']}", f"{len(o['int32_stacks_hlo'])} / {len(o['int32_stacks_stablehlo'])}",
                  str(len(o["integer_findings"])),
                  "-" if o["top_finding"] is None else f"{o['top_finding']['shape']} {o['top_finding']['bytes'] / GIB:.3g} GiB",
                  round(o["xla_total"] / GIB, 2)] for o in ours])
    print(f"{len(compiled)} paper-attention and {len(ours)} attention compiles: {wall:.1f} s")

    payload = {
        "analysis": NAME,
        "inputs": {"seq": args.seq, "devices": args.devices, "target": args.target, "quick": args.quick,
                   "chunks": chunks, "compiled_cells": [list(c) for c in paper_cells],
                   "ours_cells": [list(c) for c in ours_cells]},
        "versions": main_cell["versions"],
        "claims": [c.to_dict() for c in claims],
        "formula": "bytes = 4 x ring x (L/q_chunk) x (L/kv_chunk) x batch x seq, shape [ring, L/q, L/kv, batch, seq]",
        "paper": {"shape": list(PAPER_SHAPE), "update": list(PAPER_UPDATE), "bytes": PAPER_BYTES},
        "dimension_order": "the paper's 5 dims and ours are the same numbers; only the size-1 batch dim sits elsewhere "
                           "(second in the paper's MHLO, fourth in ours): a unit dim changes neither bytes nor layout",
        "grid": [{k: v for k, v in cell.items()} for cell in table.values()],
        "compiled": [{k: v for k, v in cell.items() if k != "versions"} for cell in compiled.values()],
        "ours": ours,
        "wall_s": round(wall, 1),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_json(args.out_dir / f"{NAME}.json", payload)
    save_figure(build_figure(table, chunks, title + " (bytes = 4 x ring x L/q x L/kv x seq)"), args.out_dir, NAME,
                width=900, height=700)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
