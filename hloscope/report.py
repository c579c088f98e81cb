"""Terminal summaries of profiles and diffs (rich tables)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from hloscope.hlo.frames import entry_source
from hloscope.units import human_bytes

FIGURES = ("xla_total", "layout_total", "live_peak", "prealloc_accumulated")
# The paper's Fig. 2 peak reduction for its whole model, (1024, 2048) -> (2048, 4096) chunks.
PAPER_FIG2_REDUCTION_BYTES = 186e9
PAPER_FIG2_CHUNKS = ((1024, 2048), (2048, 4096))  # (q_chunk, kv_chunk) of A, then of B


def make_console() -> Console:
    """Returns a console; a pipe or file gets 160 columns instead of rich's 80, so tables stay readable."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def _print_findings(console: Console, findings: list[dict[str, Any]], top: int, title: str) -> None:
    """Prints a table of findings, then each one's cause and remedy as a sentence."""
    table = Table(title=title)
    for column in ("#", "kind", "bytes", "shape", "loops", "invariant", "context", "source"):
        table.add_column(column, overflow="fold")
    for rank, finding in enumerate(findings[:top], 1):
        loops = " x ".join(str(n) for n in finding.get("loops") or []) or "-"
        invariant = {True: "yes", False: "no"}.get(finding.get("loop_invariant"), "-")
        table.add_row(
            str(rank), finding["kind"], human_bytes(finding["bytes"]), finding["shape"], loops, invariant,
            finding.get("context") or "-", entry_source(finding) or finding.get("op_name") or "-",
        )
    console.print(table)
    for rank, finding in enumerate(findings[:top], 1):
        console.print(f"  #{rank} cause: {finding['cause']}\n     fix: {finding['remedy']}", highlight=False)


def print_profile(profile: dict[str, Any], *, top: int = 5, console: Console | None = None,
                  budget: int | None = None) -> None:
    """Prints the three figures (with their sources), the top findings and the top buffers;
    `budget` (bytes per device) is printed beside them, else the target's memory."""
    console = console or make_console()
    console.print(f"[bold]{profile['label']}[/bold]  ({profile['dialect']}, {profile['curve']['instructions']:,} instructions)")
    for note in profile.get("notes") or []:
        console.print(f"note: {note}", highlight=False)
    globally = profile.get("sizes_are_global")
    figures = Table(title=f"Memory of the whole program, not per device: {globally}" if globally else "Per-device memory")
    for column in ("figure", "bytes", "source"):
        figures.add_column(column)
    for name in (*FIGURES, "peak_memory_in_bytes", "buffer_assignment_temp", "buffer_assignment_total"):
        if profile["figures"].get(name) is not None or name in FIGURES:
            figures.add_row(name, human_bytes(profile["figures"].get(name)), profile["figure_sources"].get(name, "-"))
    target = profile.get("target") or {}
    if budget is not None:
        figures.add_row("budget", human_bytes(budget), "given")
    elif target.get("memory_bytes"):
        figures.add_row("device memory", human_bytes(target["memory_bytes"]), target["device_kind"])
    console.print(figures)
    if profile["findings"]:
        kind = "optimized HLO" if profile.get("dialect") == "hlo" else profile.get("dialect", "module")
        _print_findings(console, profile["findings"], top, f"Findings ({kind})")
    else:
        console.print("No findings.")
    if profile.get("stablehlo_findings"):
        _print_findings(console, profile["stablehlo_findings"], min(top, 3), "Findings (StableHLO before optimization)")
    buffers = Table(title="Largest buffers")
    for column in ("instruction", "opcode", "shape", "bytes", "source"):
        buffers.add_column(column, overflow="fold")
    for buffer in profile["top_buffers"][:top]:
        buffers.add_row(buffer["instruction"], buffer["opcode"], buffer["shape"], human_bytes(buffer["bytes"]),
                        entry_source(buffer) or "-")
    console.print(buffers)


def _finding_key(finding: dict[str, Any]) -> tuple:
    """Identifies 'the same' offender across chunk sizes: its shape and trip counts may differ."""
    return (finding["kind"], finding["dtype"], len(finding.get("loops") or ()), finding.get("loop_invariant"),
            finding.get("source") or finding.get("op_name"))


def _paper_chunks(profile: dict[str, Any]) -> tuple[Any, Any] | None:
    """(q_chunk, kv_chunk) of a profile of the paper-faithful attention (alone, or inside the
    train step with `--attention paper`); None for any other profile."""
    source = profile.get("source") or {}
    options = source.get("options") or {}
    paper = source.get("program") == "paper-attention" or (
        source.get("program") == "train-step" and options.get("attention") == "paper")
    return (options.get("q_chunk"), options.get("kv_chunk")) if paper else None


def is_paper_fig2_pair(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """True only for the comparison the paper's Fig. 2 made: the paper-faithful attention at
    chunks (1024, 2048) as A and (2048, 4096) as B; beside any other pair its 186 GB would read
    as a prediction for programs it says nothing about."""
    return (_paper_chunks(a), _paper_chunks(b)) == PAPER_FIG2_CHUNKS


def print_diff(a: dict[str, Any], b: dict[str, Any], *, console: Console | None = None) -> None:
    """Prints both profiles' figures side by side with the reduction, and unmatched findings."""
    console = console or make_console()
    table = Table(title=f"A = {a['label']}\nB = {b['label']}")
    for column in ("figure", "A", "B", "reduction A - B"):
        table.add_column(column)
    for name in FIGURES:
        fa, fb = a["figures"].get(name), b["figures"].get(name)  # layout_total: absent from older profiles
        reduction = None if fa is None or fb is None else fa - fb
        table.add_row(name, human_bytes(fa), human_bytes(fb), human_bytes(reduction))
    console.print(table)
    if is_paper_fig2_pair(a, b):
        console.print(
            f"Paper (Fig. 2): {PAPER_FIG2_REDUCTION_BYTES / 1e9:.0f} GB peak reduction from (1024, 2048) to "
            "(2048, 4096) chunks, for its whole Mistral-7B training step under its own jax/XLA; the figures above "
            "cover only the programs profiled here, compiled by the versions they record.",
            highlight=False,
        )
    keys_a = {_finding_key(f): f for f in a["findings"]}
    keys_b = {_finding_key(f): f for f in b["findings"]}
    for label, mine, other in (("A", keys_a, keys_b), ("B", keys_b, keys_a)):
        only = [f for key, f in mine.items() if key not in other]
        if only:
            _print_findings(console, only, len(only), f"Findings only in {label}")
    matched = [(keys_a[k], keys_b[k]) for k in keys_a if k in keys_b]
    if matched:
        both = Table(title="Findings in both")
        for column in ("kind", "invariant", "A shape", "A bytes", "B shape", "B bytes", "reduction A - B"):
            both.add_column(column, overflow="fold")
        for fa, fb in matched:
            invariant = {True: "yes", False: "no"}.get(fa.get("loop_invariant"), "-")
            both.add_row(fa["kind"], invariant, fa["shape"], human_bytes(fa["bytes"]), fb["shape"],
                         human_bytes(fb["bytes"]), human_bytes(fa["bytes"] - fb["bytes"]))
        console.print(both)
