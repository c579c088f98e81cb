"""The one exception the HLO/StableHLO parsers raise for bad input."""

from __future__ import annotations

# Offending lines are cut to this many characters so that a 100 kB constant literal or a
# megabyte-long generated line cannot flood a log.
_MAX_SHOWN = 100


class ParseError(ValueError):
    """Malformed HLO or MLIR text, or a program that cannot run (cycles, recursion, absurd sizes).

    The message is one line: where (1-based ``lineno`` and ``column``), what was ``expected``,
    and the start of the offending ``line``; the parts are also kept as attributes. ``column``
    is where the problem was found when the scanner knows it, else the first non-blank
    character of the line (the start of the statement).
    """

    def __init__(self, expected: str, lineno: int | None = None, line: str | None = None,
                 column: int | None = None, path: str | None = None) -> None:
        self.expected = expected
        self.path = path
        self.lineno = lineno
        self.line = line
        if column is None and line is not None:
            column = len(line) - len(line.lstrip()) + 1
        elif column is None and lineno is not None:
            column = 1
        self.column = column
        where = f"{path}: " if path else ""
        if lineno is not None:
            where += f"line {lineno}, column {column}: "
        shown = ""
        if line is not None:
            text = " ".join(line.split())
            if len(text) > _MAX_SHOWN:
                text = text[:_MAX_SHOWN] + " ..."
            shown = f" (in: {text})"
        super().__init__(f"{where}{' '.join(expected.split())}{shown}")


class ScanError(ValueError):
    """A problem inside one statement (unbalanced bracket, unknown dtype, ...).

    Raised by the low-level helpers, which do not know the line; the parsers catch it and raise
    ParseError with the line number and text attached.
    """
