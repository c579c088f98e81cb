"""`hloscope search`: the command line around hloscope.search (table, progress, plan file)."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, replace
from pathlib import Path

from rich.table import Table

from hloscope.report import make_console
from hloscope.units import gib, parse_size
from hloscope.errors import UserError
from hloscope.targets import DEFAULT_MARGIN, TARGETS, check_gpu_aot, get_target
from hloscope.versions import toolchain_versions

# Full remat; save_attention, which skips attention's recompute for 8 KiB a token and layer; and
# save_dots_attention, which skips all but elementwise work (the fastest on an H200:
# analyses/results/speed_vs_anchor.md). --remat may name any of reftrain.config.REMAT_POLICIES
# (imported when a search runs: `hloscope --help` loads no trainer).
REMAT_OPTIONS = ("full", "save_attention", "save_dots_attention")
# The model's document block (tests/test_document_defaults.py holds them equal) and one call.
DOCUMENT_BLOCKS = (16384, 0)


def _memory_budget(text: str, flag: str = "--memory") -> int:
    try:
        return parse_size(text)
    except ValueError as error:
        raise ValueError(f"{flag}: {error}") from None


def add_parser(commands) -> None:
    p = commands.add_parser("search", help="search remat, document block, mesh split and layout (and Q/KV chunks "
                                           "where our XLA kernel runs) for reftrain's train step; write plan.json")
    p.add_argument("--model", default="mistral-7b", help="reftrain preset")
    p.add_argument("--layers", type=int, help="decoder layers (default: the preset's), e.g. to fit one GPU")
    p.add_argument("--phase", type=int, default=3, help="the MegaBeam phase whose theta, optimizer and schedule "
                   "the compiled step uses, as reftrain.run builds them")
    p.add_argument("--seq", type=int, default=524_288, help="global sequence length (tokens)")
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--target", default="a100-80gb", help=f"one of: {', '.join(sorted(TARGETS))}")
    p.add_argument("--out", type=Path, help="write the chosen plan here")
    p.add_argument("--memory", help="device memory budget (default: the target's; required for cpu), e.g. 80GiB")
    p.add_argument("--host-memory", help="host memory budget per device for offloaded residuals (default: unchecked)")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="fraction of memory kept free (docs/search.md)")
    p.add_argument("--q-chunks", default="512,1024,2048,4096,8192", help="only where our XLA kernel runs attention "
                   "(cpu targets, --kernel xla); under cuDNN the chunks do not change the step")
    p.add_argument("--kv-chunks", default="512,1024,2048,4096,8192")
    p.add_argument("--kernel", default="auto", choices=("auto", "xla", "cudnn"), help="reftrain's attention_kernel")
    p.add_argument("--remat", default=",".join(REMAT_OPTIONS), help="reftrain.remat policies to try (docs/model.md)")
    p.add_argument("--mesh", default="", help="fixed axes, e.g. fsdp=2 (sp takes the remaining devices)")
    p.add_argument("--tp", default="1", help="tensor-parallel sizes to try (sp takes the rest), e.g. 1,2,4,8; the speed "
                   "model does not price communication, so tp is searched only when asked")
    p.add_argument("--layouts", default="contiguous,zigzag", help="ring layouts to try where sp > 1")
    p.add_argument("--document-blocks", default=",".join(map(str, DOCUMENT_BLOCKS)),
                   help="GPU targets: cuDNN runs a shard with itself under documents in blocks of these many "
                        "tokens (0: one call, faster and larger; docs/gpu.md)")
    p.add_argument("--documents", type=int, default=0,
                   help="documents per sequence in your data, to rank candidates by (0: one document a row)")
    p.add_argument("--max-seq", action="store_true", help="also binary-search the longest sequence that fits")
    p.add_argument("--max-seq-out", type=Path, help="with --max-seq: write the plan for that longest length here")
    p.add_argument("--max-seq-limit", type=int, help="upper end of that search (default 4 x --seq)")
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="compiles at once")
    p.add_argument("--timeout", type=float, default=600, help="per-candidate compile limit, seconds")
    p.add_argument("--no-cache", action="store_true")
    p.set_defaults(run=run)


def _ints(text: str, flag: str, smallest: int = 1) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated integers") from None
    if not values or min(values) < smallest:
        raise ValueError(f"{flag} {text!r}: expected integers >= {smallest}")
    return values


def _layouts(text: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values or not set(values) <= {"contiguous", "zigzag"}:
        raise ValueError(f"--layouts {text!r}: expected comma-separated layouts of contiguous, zigzag")
    return values


def _remats(text: str) -> tuple[str, ...]:
    from reftrain.config import REMAT_POLICIES

    values = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [v for v in values if v not in REMAT_POLICIES]
    if not values or unknown:
        raise ValueError(f"--remat {text!r}: expected comma-separated policies of {', '.join(REMAT_POLICIES)}")
    return values


def _mesh(text: str) -> dict[str, int]:
    sizes = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in ("dp", "fsdp", "tp") or not value.isdigit() or int(value) < 1:
            raise ValueError(f"--mesh {text!r}: expected dp=N,fsdp=N,tp=N (sp takes the rest)")
        sizes[key] = int(value)
    return sizes


def _table(outcomes: list, chosen, budget: int | None, margin: float, overhead: int) -> Table:
    runtime = f" less {gib(overhead)} runtime" if overhead else ""
    usable = f"{gib(budget * (1 - margin))}{runtime} usable of {gib(budget)}" if budget else "no budget"
    table = Table(title=f"train-step candidates (xla_total per device; {usable})")
    numeric = ("q", "kv", "block", "tp", "xla_total", "temp", "host", "headroom", "pred. step")
    for column in ("q", "kv", "remat", "block", "tp", "layout", "status", "xla_total", "temp", "host", "fits", "headroom",
                   "pred. step", "remat warnings", ""):
        table.add_column(column, justify="right" if column in numeric else "left")
    for o in sorted(outcomes, key=lambda o: (not o.fits, o.status in ("skipped", "pruned"), o.predicted_s or 1e30)):
        c = o.candidate
        table.add_row(
            str(c.q_chunk), str(c.kv_chunk), c.remat, str(c.document_block), str(c.tp), c.layout,
            o.status + (" (cached)" if o.cached else ""),
            gib(o.figures.get("xla_total")), gib(o.figures.get("temp_size_in_bytes")), gib(o.figures.get("host_total")),
            "yes" if o.fits else ("-" if o.status in ("skipped", "pruned") else "no"), gib(o.headroom_bytes),
            f"{o.predicted_s:.2f} s" if o.predicted_s else "-", str(len(o.remat_warnings)), "<- chosen" if o is chosen else "",
        )
    return table


def run(args: argparse.Namespace) -> int:
    from hloscope._quiet import native_noise_filtered

    # hloscope.search loads reftrain and jax, so it is imported when a search runs, not for --help;
    # jax's CUDA plugin writes to fd 2 as it loads.
    with native_noise_filtered():
        from hloscope.programs.model_step import ModelStepShape
        from hloscope.search import MEMORY_ORDER, candidates, choose, longest_fitting, run_search

    try:
        target = get_target(args.target)
        budget = _memory_budget(args.memory) if args.memory else target.memory_bytes
        host_budget = _memory_budget(args.host_memory, "--host-memory") if args.host_memory else None
        fixed = _mesh(args.mesh)
        tps = (fixed.pop("tp"),) if "tp" in fixed else _ints(args.tp, "--tp")
        if args.layers is not None and args.layers < 1:
            raise ValueError(f"--layers must be positive, got {args.layers}")
        if args.documents < 0:
            raise ValueError(f"--documents must be >= 0, got {args.documents}")
        base = ModelStepShape(model=args.model, seq=args.seq, layers=args.layers, kernel=args.kernel, phase=args.phase, **fixed)
        local_by_tp = {}
        for tp in tps:
            sizes = ModelStepShape(**{**asdict(base), "tp": tp}).mesh_sizes(args.devices)
            if sizes["sp"] < 1 or args.seq % sizes["sp"]:
                raise ValueError(f"--tp {tp}: the mesh {sizes} does not split --seq {args.seq} over --devices {args.devices}")
            local_by_tp[tp] = args.seq // sizes["sp"]
        layouts = _layouts(args.layouts) if any(args.seq // n > 1 for n in local_by_tp.values()) else ("contiguous",)
        from reftrain.attention import resolve_kernel

        cudnn = resolve_kernel(args.kernel, target.platform) == "cudnn"
        blocks = _ints(args.document_blocks, "--document-blocks", 0) if cudnn else (base.document_block,)
        cands = candidates(local_by_tp, _remats(args.remat), _ints(args.q_chunks, "--q-chunks"),
                           _ints(args.kv_chunks, "--kv-chunks"), blocks=blocks, layouts=layouts, cudnn=cudnn)
        if not cands:
            lengths = ", ".join(f"{n} (= {args.seq} on tp={tp})" for tp, n in local_by_tp.items())
            raise ValueError(f"no chunk pair divides the local length {lengths}")
        for c in {(c.tp, c.q_chunk, c.kv_chunk): c for c in cands}.values():
            c.shape(base).validate(args.devices)
        if not 0 <= args.margin < 1:
            raise ValueError(f"--margin must be in [0, 1), got {args.margin}")
    except ValueError as error:
        raise UserError(str(error)) from None
    for out in (args.out, args.max_seq_out):
        if out is not None and not out.parent.exists():
            raise UserError(f"cannot write {out}: folder {out.parent} does not exist")
    if args.max_seq_out is not None and not args.max_seq:
        raise UserError("--max-seq-out needs --max-seq")
    if target.platform == "cuda":
        check_gpu_aot()

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = make_console()
    columns = (TextColumn("search"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[last]}"))
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("search", total=len(cands), last="")

        def done(o) -> None:
            progress.update(task, advance=1, last=f"q={o.candidate.q_chunk} kv={o.candidate.kv_chunk} {o.candidate.remat}: {o.status}")

        outcomes = run_search(base, args.target, args.devices, cands, budget=budget, margin=args.margin, jobs=args.jobs,
                              timeout_s=args.timeout, use_cache=not args.no_cache, on_done=done,
                              documents=args.documents, host_budget=host_budget)
    chosen = choose(outcomes)
    console.print(_table(outcomes, chosen, budget, args.margin, target.runtime_overhead_bytes))
    fitting = [(args.seq, o) for o in outcomes if o.fits]  # the plan's alternatives (reftrain's next plan down)
    if chosen is None:
        console.print(f"no candidate fits {args.model} at {args.seq:,} tokens on {args.devices} x {args.target}")
    else:
        c = chosen.candidate
        console.print(
            f"chosen: remat={c.remat} document_block={c.document_block} mesh={c.shape(base).mesh_sizes(args.devices)} "
            f"layout={c.layout} q_chunk={c.q_chunk} kv_chunk={c.kv_chunk}: xla_total {gib(chosen.figures['xla_total'])} "
            f"per device, headroom {gib(chosen.headroom_bytes)}, predicted step {chosen.predicted_s:.2f} s"
        )
    if args.max_seq:
        # Fitting is monotone in length; on the chosen mesh (the first candidate's when none fits
        # at --seq, whose longest is then below it) the lightest --remat policy (MEMORY_ORDER) and
        # the smallest document block need the least memory, so they reach furthest.
        c = chosen.candidate if chosen is not None else cands[0]
        step = c.shape(base).mesh_sizes(args.devices)["sp"] * max(c.q_chunk, c.kv_chunk)
        upper = args.max_seq_limit or (4 * args.seq if chosen is not None else args.seq - step)
        remat = min(_remats(args.remat), key=MEMORY_ORDER.index)

        def probed(seq: int, outcome) -> None:
            console.print(f"  {seq:>10,} tokens: " + ("fits" if outcome else "does not fit"))
            if outcome is not None:
                fitting.append((seq, outcome))

        lightest = [replace(c, remat=remat, document_block=min((b for b in blocks if b), default=0))]
        seq, best = longest_fitting(
            base, args.target, args.devices, lightest, budget=budget, margin=args.margin, step=step, upper=upper,
            jobs=args.jobs, timeout_s=args.timeout, use_cache=not args.no_cache, documents=args.documents,
            host_budget=host_budget,
            on_probe=probed,
        )
        if seq:
            beyond = f"{seq + step:,} is predicted not to fit" if seq + step <= upper else "the --max-seq-limit"
            console.print(f"longest that fits (multiples of {step:,}, up to {upper:,}): {seq:,} tokens, "
                          f"{best.candidate.remat}, xla_total {gib(best.figures['xla_total'])}; {beyond}")
            if args.max_seq_out is not None:
                _write_plan(args, target, base, seq, best, budget, host_budget, args.max_seq_out, fitting)
                console.print(f"wrote {args.max_seq_out} (the plan for {seq:,} tokens)")
        else:
            console.print(f"nothing fits at {step:,} tokens with {lightest[0].remat}")
    if chosen is None:
        return 1
    if args.out is not None:
        _write_plan(args, target, base, args.seq, chosen, budget, host_budget, args.out, fitting)
        console.print(f"wrote {args.out}")
    return 0


def _alternatives(base, seq: int, outcome, fitting: list) -> list[dict]:
    """The candidates that fit with less memory than the plan's (shorter lengths, lighter remat),
    most memory first: where reftrain, out of memory on a smaller card, finds the next plan down."""
    found = {}
    for at, o in fitting:
        if o.figures["xla_total"] < outcome.figures["xla_total"]:
            execution = replace(o.candidate.shape(base), seq=at).config().execution()
            found[(at, json.dumps(execution, sort_keys=True))] = {
                "seq_len": at, "execution": execution, "xla_total": o.figures["xla_total"]}
    return sorted(found.values(), key=lambda a: -a["xla_total"])[:8]


def _write_plan(args, target, base, seq: int, outcome, budget, host_budget, path: Path, fitting: list) -> None:
    from reftrain.plan import Plan, write_plan

    c = outcome.candidate
    shape = replace(c.shape(base), seq=seq)
    versions = toolchain_versions()
    plan = Plan(
        # The execution of the very step that was compiled (hloscope.programs.model_step).
        model=args.model, seq_len=seq, mesh=shape.mesh_sizes(args.devices), execution=shape.config().execution(),
        layers=args.layers,
        target={"name": target.name, "device_kind": target.device_kind, "count": args.devices, "memory_bytes": budget,
                "margin": args.margin, "host_memory_bytes": host_budget,
                "runtime_overhead_bytes": target.runtime_overhead_bytes},
        predicted={"xla_total": outcome.figures["xla_total"], "host_total": outcome.figures.get("host_total"),
                   "headroom_bytes": outcome.headroom_bytes, "step_seconds": outcome.predicted_s,
                   "documents": args.documents, "alternatives": _alternatives(base, seq, outcome, fitting)},
        versions={"jax": versions.get("jax"), "jaxlib": versions.get("jaxlib")}, source="hloscope search",
    )
    write_plan(plan, path)
