"""The one exception the HLO/StableHLO parsers raise for bad input."""

from __future__ import annotations

# Offending lines are cut to this many characters so that a 100 kB constant literal or a
# megabyte-long generated line cannot flood a log.
_MAX_SHOWN = 160


class ParseError(ValueError):
    """Malformed HLO or MLIR text.

    The message says where (1-based ``lineno``), shows the offending ``line`` (truncated) and
    says what was ``expected``; the three are also kept as attributes for programs.
    """

    def __init__(self, expected: str, lineno: int | None = None, line: str | None = None) -> None:
        self.expected = expected
        self.lineno = lineno
        self.line = line
        where = f"line {lineno}: " if lineno is not None else ""
        shown = ""
        if line is not None:
            text = line.strip()
            if len(text) > _MAX_SHOWN:
                text = text[:_MAX_SHOWN] + " ..."
            shown = f"\n    {text}"
        super().__init__(f"{where}{expected}{shown}")


class ScanError(ValueError):
    """A problem inside one statement (unbalanced bracket, unknown dtype, ...).

    Raised by the low-level helpers, which do not know the line; the parsers catch it and raise
    ParseError with the line number and text attached.
    """
