"""XLA's buffer-assignment dump (`*-buffer-assignment.txt`): allocations and the values in them.

The format, as jaxlib 0.10.2 writes it for XLA:CPU and XLA:GPU (same layout for both)::

    BufferAssignment:
    allocation 0: size 16384, maybe-live-out:
     value: <1508 wrapped_add.10 @0> (size=16384,offset=0): f32[8,1,32,2,8]{4,3,2,1,0}
     value: <2054 while.192{1} (phi) @0> (size=16384,offset=0): f32[8,1,32,2,8]{4,3,2,1,0}
    allocation 3: size 16384, parameter 1, shape |f32[1,256,2,8]| at ShapeIndex {}:
    allocation 7: size 4, thread-local:
    allocation 19: size 24, output shape is |(f32[1,256,2,8], ...)|, maybe-live-out:
    allocation 33: size 4, constant:
    allocation 34: size 5040576, preallocated-temp:
     value: <108 custom-call.2{1} @0> (size=4194304,offset=2304): s8[4194304]{0}

An allocation is a slab of device memory; its flags say what it is: `parameter N` (an entry
argument), `output shape is |..|` (the output tuple's index table), `maybe-live-out` (a buffer
that may be part of the output), `constant`, `thread-local` (a scalar of a parallel CPU loop,
not device memory) or `preallocated-temp` (all temporaries, packed by XLA's heap simulator:
values whose lifetimes do not overlap share offsets). Each `value:` line is one logical buffer:
`<id instruction{shape index} (phi) @position>`, its size and offset in the allocation and its
shape. This version prints no peak or total line in this file (the memory-usage-report dump has
`Total bytes: N`, which equals `total_bytes` here); any `key: number` line outside the
allocations is kept in `BufferAssignment.totals` for versions that do.

XLA's memory_analysis temp_size_in_bytes equals the preallocated-temp size, and
argument/output sizes equal the parameter and (maybe-live-out + output) allocations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hloscope.hlo import ParseError

_ALLOCATION = re.compile(r"^allocation (\d+): size (\d+)(.*):\s*$")
_VALUE = re.compile(
    r"^\s+value: <(\d+) ([^\s{>]+)(\{[\d,]*\})?( \(phi\))? @(\d+)> \(size=(\d+),offset=(\d+)\): (.*)$")
_SHAPE_PART = re.compile(r"(output )?shape is \|.*?\||shape \|.*?\|")
_TOTAL = re.compile(r"^([A-Za-z][A-Za-z _-]*?):\s*(\d+)\b")
_PARAMETER = re.compile(r"^parameter (\d+)")


@dataclass
class LogicalBuffer:
    """One value in an allocation: the output (or tuple element `index`) of `instruction`."""

    id: int
    instruction: str
    index: tuple[int, ...]
    phi: bool
    size: int
    offset: int
    shape: str


@dataclass
class Allocation:
    """One allocation of the dump with its flags and the logical buffers placed in it."""

    index: int
    size: int
    flags: tuple[str, ...]
    parameter_number: int | None
    values: list[LogicalBuffer] = field(default_factory=list)

    @property
    def category(self) -> str:
        """'parameter', 'output', 'constant', 'thread-local' or 'temp'."""
        if self.parameter_number is not None:
            return "parameter"
        if "maybe-live-out" in self.flags or "output" in self.flags:
            return "output"
        if "constant" in self.flags:
            return "constant"
        if "thread-local" in self.flags:
            return "thread-local"
        return "temp"


@dataclass
class BufferAssignment:
    """The parsed dump: allocations in file order and any numeric summary lines."""

    allocations: list[Allocation]
    totals: dict[str, int] = field(default_factory=dict)

    def _sum(self, category: str) -> int:
        return sum(a.size for a in self.allocations if a.category == category)

    @property
    def argument_bytes(self) -> int:
        return self._sum("parameter")

    @property
    def output_bytes(self) -> int:
        """maybe-live-out and output-table allocations (an output aliased to a parameter is
        counted as a parameter)."""
        return self._sum("output")

    @property
    def temp_bytes(self) -> int:
        """Temporaries: the preallocated-temp slab(s) and any other unflagged allocation."""
        return self._sum("temp")

    @property
    def total_bytes(self) -> int:
        """Every allocation (= the memory-usage-report's `Total bytes`)."""
        return sum(a.size for a in self.allocations)

    def figures(self) -> dict[str, int]:
        """The named figures this dump gives, for Trace.figures and JSON."""
        return {
            "buffer_assignment_argument": self.argument_bytes,
            "buffer_assignment_output": self.output_bytes,
            "buffer_assignment_temp": self.temp_bytes,
            "buffer_assignment_constant": self._sum("constant"),
            "buffer_assignment_thread_local": self._sum("thread-local"),
            "buffer_assignment_total": self.total_bytes,
        }

    def allocations_of(self, instruction: str) -> list[Allocation]:
        """Allocations holding a logical buffer of `instruction` (by HLO name, without '%')."""
        return [a for a in self.allocations if any(v.instruction == instruction for v in a.values)]

    def largest_values(self, n: int = 10) -> list[tuple[Allocation, LogicalBuffer]]:
        """The n largest logical buffers (non-phi, so each buffer once) with their allocation."""
        pairs = [(a, v) for a in self.allocations for v in a.values if not v.phi]
        return sorted(pairs, key=lambda p: -p[1].size)[:n]


def _flags(rest: str) -> tuple[tuple[str, ...], int | None]:
    """The flags after `size N` (shapes removed first: they may hold commas)."""
    text = _SHAPE_PART.sub(lambda m: "output" if m.group(1) else "", rest)
    flags, parameter = [], None
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        found = _PARAMETER.match(part)
        if found:
            parameter = int(found.group(1))
            part = "parameter"
        flags.append(part.split(" at ShapeIndex")[0].strip())
    return tuple(flags), parameter


def parse_buffer_assignment(text: str) -> BufferAssignment:
    """Parses the text of a `*-buffer-assignment.txt` dump; ParseError on lines it cannot read.

    Only the allocation section is required; sections other versions append (`Used values:`,
    `HloLiveRange`) are skipped, and their `key: number` lines kept in `totals`.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected the dump text as str, got {type(text).__name__}")
    allocations: list[Allocation] = []
    totals: dict[str, int] = {}
    current: Allocation | None = None
    seen_header = False
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("BufferAssignment"):
            seen_header = True
            continue
        found = _ALLOCATION.match(line)
        if found:
            flags, parameter = _flags(found.group(3))
            current = Allocation(int(found.group(1)), int(found.group(2)), flags, parameter)
            allocations.append(current)
            continue
        if line.startswith(" value:"):
            value = _VALUE.match(line)
            if value is None or current is None:
                raise ParseError("expected ' value: <id name @pos> (size=N,offset=N): shape' "
                                 "inside an allocation", lineno, line)
            index = tuple(int(i) for i in value.group(3)[1:-1].split(",") if i) if value.group(3) else ()
            current.values.append(LogicalBuffer(
                id=int(value.group(1)), instruction=value.group(2).lstrip("%"), index=index,
                phi=bool(value.group(4)), size=int(value.group(6)), offset=int(value.group(7)),
                shape=value.group(8).strip()))
            continue
        current = None  # another section: its lines are not values of the last allocation
        total = _TOTAL.match(line.strip())
        if total:
            totals[total.group(1).strip()] = int(total.group(2))
    if not allocations and not seen_header:
        raise ParseError("expected a buffer-assignment dump ('BufferAssignment:' and "
                         "'allocation N: size N, ...:' lines)", 1, text.splitlines()[0] if text else None)
    return BufferAssignment(allocations, totals)
