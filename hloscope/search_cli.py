"""`hloscope search`: the command line around hloscope.search (flags, progress, table, plan file).

Its flags are those of reftrain's train-step space (hloscope.programs.train_step_search, which
reads them and is imported only when a search runs: `hloscope --help` loads no trainer).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.table import Table

from hloscope.errors import UserError
from hloscope.report import make_console
from hloscope.targets import DEFAULT_MARGIN, TARGETS, check_gpu_aot, get_target
from hloscope.units import gib, parse_size


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
    p.add_argument("--remat", help="reftrain.remat policies to try (default: full, save_attention, "
                   "save_dots_attention; docs/model.md)")
    p.add_argument("--mesh", default="", help="fixed axes, e.g. fsdp=2 (sp takes the remaining devices)")
    p.add_argument("--tp", default="1", help="tensor-parallel sizes to try (sp takes the rest), e.g. 1,2,4,8; the speed "
                   "model does not price communication, so tp is searched only when asked")
    p.add_argument("--layouts", default="contiguous,zigzag", help="ring layouts to try where sp > 1")
    p.add_argument("--document-blocks",
                   help="GPU targets: cuDNN runs a shard with itself under documents in blocks of these many "
                        "tokens (default: reftrain's document block and 0, one call: faster and larger; docs/gpu.md)")
    p.add_argument("--documents", type=int, default=0,
                   help="documents per sequence in your data, to rank candidates by (0: one document a row)")
    p.add_argument("--max-seq", action="store_true", help="also binary-search the longest sequence that fits")
    p.add_argument("--max-seq-out", type=Path, help="with --max-seq: write the plan for that longest length here")
    p.add_argument("--max-seq-limit", type=int, help="upper end of that search (default 4 x --seq)")
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="compiles at once")
    p.add_argument("--timeout", type=float, default=600, help="per-candidate compile limit, seconds")
    p.add_argument("--no-cache", action="store_true")
    p.set_defaults(run=run)


def _table(outcomes: list, chosen, budget: int | None, margin: float, overhead: int) -> Table:
    runtime = f" less {gib(overhead)} runtime" if overhead else ""
    usable = f"{gib(budget * (1 - margin))}{runtime} usable of {gib(budget)}" if budget else "no budget"
    table = Table(title=f"train-step candidates (xla_total per device; {usable})")
    settings = list(outcomes[0].candidate.columns()) if outcomes else []
    numeric = ("q", "kv", "block", "tp", "xla_total", "temp", "host", "headroom", "pred. step")
    for column in (*settings, "status", "xla_total", "temp", "host", "fits", "headroom", "pred. step", "remat warnings", ""):
        table.add_column(column, justify="right" if column in numeric else "left")
    for o in sorted(outcomes, key=lambda o: (not o.fits, o.status in ("skipped", "pruned"), o.predicted_s or 1e30)):
        table.add_row(
            *o.candidate.columns().values(), o.status + (" (cached)" if o.cached else ""),
            gib(o.figures.get("xla_total")), gib(o.figures.get("temp_size_in_bytes")), gib(o.figures.get("host_total")),
            "yes" if o.fits else ("-" if o.status in ("skipped", "pruned") else "no"), gib(o.headroom_bytes),
            f"{o.predicted_s:.2f} s" if o.predicted_s else "-", str(len(o.remat_warnings)), "<- chosen" if o is chosen else "",
        )
    return table


def run(args: argparse.Namespace) -> int:
    from hloscope._quiet import native_noise_filtered

    # The train-step space loads reftrain and jax, so it is imported when a search runs, not for
    # --help; jax's CUDA plugin writes to fd 2 as it loads.
    with native_noise_filtered():
        from hloscope.programs.train_step_search import space_from_flags
        from hloscope.search import choose, run_search

    try:
        target = get_target(args.target)
        budget = _memory_budget(args.memory) if args.memory else target.memory_bytes
        host_budget = _memory_budget(args.host_memory, "--host-memory") if args.host_memory else None
        if not 0 <= args.margin < 1:
            raise ValueError(f"--margin must be in [0, 1), got {args.margin}")
        searched = space_from_flags(args, target)
    except (KeyError, ValueError) as error:
        raise UserError(str(error.args[0] if error.args else error)) from None
    for out in (args.out, args.max_seq_out):
        if out is not None and not out.parent.exists():
            raise UserError(f"cannot write {out}: folder {out.parent} does not exist")
    if args.max_seq_out is not None and not args.max_seq:
        raise UserError("--max-seq-out needs --max-seq")
    if target.platform == "cuda":
        check_gpu_aot()

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    space = searched.space
    budgets = dict(budget=budget, margin=args.margin, jobs=args.jobs, timeout_s=args.timeout, use_cache=not args.no_cache,
                   host_budget=host_budget)
    console = make_console()
    columns = (TextColumn("search"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[last]}"))
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("search", total=len(space.candidates()), last="")

        def done(o) -> None:
            progress.update(task, advance=1, last=" ".join(o.candidate.columns().values()) + f": {o.status}")

        outcomes = run_search(space, target, args.devices, on_done=done, order=space.order, **budgets)
    chosen = choose(outcomes)
    console.print(_table(outcomes, chosen, budget, args.margin, target.runtime_overhead_bytes))
    fitting = [(args.seq, o) for o in outcomes if o.fits]  # the plan's alternatives (reftrain's next plan down)
    plan_target = {"name": target.name, "device_kind": target.device_kind, "count": args.devices, "memory_bytes": budget,
                   "margin": args.margin, "host_memory_bytes": host_budget,
                   "runtime_overhead_bytes": target.runtime_overhead_bytes}
    if chosen is None:
        console.print(f"no candidate fits {args.model} at {args.seq:,} tokens on {args.devices} x {args.target}")
    else:
        settings = " ".join(f"{k}={v}" for k, v in chosen.candidate.settings)
        console.print(f"chosen: {settings} mesh={space.mesh(chosen.candidate)}: xla_total {gib(chosen.figures['xla_total'])} "
                      f"per device, headroom {gib(chosen.headroom_bytes)}, predicted step {chosen.predicted_s:.2f} s")
    if args.max_seq:
        _max_seq(args, console, searched, chosen, target, budgets, plan_target, fitting)
    if chosen is None:
        return 1
    if args.out is not None:
        space.write_plan(chosen, args.seq, plan_target, fitting, args.out)
        console.print(f"wrote {args.out}")
    return 0


def _max_seq(args, console, searched, chosen, target, budgets: dict, plan_target: dict, fitting: list) -> None:
    """--max-seq: the longest length that fits, by binary search; its plan to --max-seq-out."""
    from hloscope.search import longest_fitting

    space = searched.space
    # Fitting is monotone in length; on the chosen mesh (the first candidate's when none fits
    # at --seq, whose longest is then below it) the lightest --remat policy and the smallest
    # document block need the least memory, so they reach furthest.
    c = chosen.candidate if chosen is not None else space.candidates()[0]
    step = space.mesh(c)["sp"] * max(c.q_chunk, c.kv_chunk)
    upper = args.max_seq_limit or (4 * args.seq if chosen is not None else args.seq - step)
    lightest = space.lightest(c, searched.remats, searched.blocks)

    def probed(seq: int, outcome) -> None:
        console.print(f"  {seq:>10,} tokens: " + ("fits" if outcome else "does not fit"))
        if outcome is not None:
            fitting.append((seq, outcome))

    seq, best = longest_fitting(lambda seq: space.only(lightest).at_length(seq), target, args.devices,
                                step=step, upper=upper, on_probe=probed, **budgets)
    if seq:
        beyond = f"{seq + step:,} is predicted not to fit" if seq + step <= upper else "the --max-seq-limit"
        console.print(f"longest that fits (multiples of {step:,}, up to {upper:,}): {seq:,} tokens, "
                      f"{best.candidate.remat_policy}, xla_total {gib(best.figures['xla_total'])}; {beyond}")
        if args.max_seq_out is not None:
            space.write_plan(best, seq, plan_target, fitting, args.max_seq_out)
            console.print(f"wrote {args.max_seq_out} (the plan for {seq:,} tokens)")
    else:
        console.print(f"nothing fits at {step:,} tokens with {lightest.remat_policy}")
