"""Reads what a user hands to ``hloscope profile --hlo``: one HLO/StableHLO text file, or an
``--xla_dump_to`` folder (its after-optimizations text and buffer-assignment dump). No jax here.

    hlo = read_hlo_input("dump/")                 # or "step.hlo", "step.mlir"
    trace = trace_module(hlo.module, memory=hlo.memory, buffer_assignment=hlo.buffer_assignment)
    for line in hlo.notes: print(line)           # which files were read, what is missing
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from hloscope.buffer_assignment import parse_buffer_assignment
from hloscope.hlo import HloModule, ParseError, parse_module

_AFTER = "after_optimizations.txt"
_BEFORE = "before_optimizations.txt"
_BUFFER_ASSIGNMENT = "after_optimizations-buffer-assignment.txt"
_MODULE_NUMBER = re.compile(r"module_(\d+)\.")


class HloInputError(ValueError):
    """The path cannot be read as HLO input (missing, empty folder, unreadable file); one line."""


@dataclass
class HloInput:
    """A parsed module and what came with it.

    ``buffer_assignment``: the text of XLA's ``*-buffer-assignment.txt`` (None for a single
    file); ``memory``: ``{'xla_total': ..., 'source': ...}`` computed from that dump (argument
    + output + temp allocations, which equals memory_analysis' argument + output + temp -
    alias), for ``trace_module(memory=...)``, else None; ``files``: the files read, in order;
    ``notes``: one-line remarks for the user (which module of several was picked, why
    ``xla_total`` is empty).
    """

    module: HloModule
    buffer_assignment: str | None
    memory: dict | None
    files: list[str]
    notes: list[str] = field(default_factory=list)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="strict") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise HloInputError(f"{path}: not UTF-8 text (byte {e.start}); expected HLO or StableHLO text") from None
    except OSError as e:
        raise HloInputError(f"{path}: cannot read ({e.strerror or e})") from None


def _parse(path: str) -> HloModule:
    try:
        return parse_module(_read(path))
    except ParseError as e:
        raise ParseError(e.expected, e.lineno, e.line, e.column, path=os.path.basename(path)) from None


def read_hlo_input(path: str, module: str | None = None) -> HloInput:
    """Reads ``path``: a text file (HLO or StableHLO) or an ``--xla_dump_to`` folder.

    For a folder, the module's ``*after_optimizations.txt`` (``module`` picks among several
    by a part of the file name; otherwise the last compiled, the highest module number: jax
    compiles its helpers and a model's init before the step that runs them; measured on a flax
    dump the largest text was the init, not the step) and its ``*-buffer-assignment.txt``; a folder with
    only ``*before_optimizations.txt`` is read with a note that sizes are unoptimized.
    Raises HloInputError (path problems) or ParseError (bad text), both one line.
    """
    if os.path.isdir(path):
        return _read_dump(path, module)
    if not os.path.exists(path):
        raise HloInputError(f"{path}: no such file or folder")
    parsed = _parse(path)
    note = ("xla_total needs XLA's numbers: pass the --xla_dump_to folder (its *-buffer-assignment.txt) "
            "or compile the program; this single text gives hloscope's own figures only")
    if parsed.dialect == "hlo" and parsed.is_scheduled:
        note += ", layout_total being its model of xla_total"
    return HloInput(parsed, None, None, [path], [note])


def _number(name: str) -> int:
    """XLA's module number in a dump file name (module_0022.jit_f...), -1 if none."""
    found = _MODULE_NUMBER.match(name)
    return int(found.group(1)) if found else -1


def _read_dump(folder: str, wanted: str | None) -> HloInput:
    names = sorted(os.listdir(folder))
    texts = [n for n in names if n.endswith(_AFTER)] or [n for n in names if n.endswith(_BEFORE)]
    if wanted is not None:
        texts = [n for n in texts if wanted in n]
    if not texts:
        which = f" matching {wanted!r}" if wanted is not None else ""
        raise HloInputError(f"{folder}: no *{_AFTER} (or *{_BEFORE}) file{which}; "
                            "expected a folder written by XLA_FLAGS=--xla_dump_to=DIR")
    notes: list[str] = []
    chosen = max(texts, key=lambda n: (_number(n), os.path.getsize(os.path.join(folder, n))))
    if len(texts) > 1:
        others = ", ".join(n for n in texts if n != chosen)
        notes.append(f"picked the last module compiled, {chosen}, of {len(texts)} (others: {others}); "
                     "choose another with its name")
    path = os.path.join(folder, chosen)
    parsed = _parse(path)
    files = [path]
    assignment = memory = None
    if chosen.endswith(_BEFORE):
        notes.append("only the before-optimizations text is in the folder: sizes are of the unoptimized, "
                     "unscheduled module and xla_total is not known")
    else:
        ba_path = path[:-len(".txt")] + "-buffer-assignment.txt"
        if os.path.exists(ba_path):
            assignment = _read(ba_path)
            try:
                figures = parse_buffer_assignment(assignment)
            except ParseError as e:
                raise ParseError(e.expected, e.lineno, e.line, e.column, path=os.path.basename(ba_path)) from None
            files.append(ba_path)
            memory = {
                "xla_total": figures.argument_bytes + figures.output_bytes + figures.temp_bytes,
                "source": "XLA buffer assignment dump (argument + output + temp allocations)",
            }
        else:
            notes.append(f"no {os.path.basename(ba_path)} beside the text: xla_total is not known "
                         "(XLA writes it with --xla_dump_to)")
    return HloInput(parsed, assignment, memory, files, notes)
