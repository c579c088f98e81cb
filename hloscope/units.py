"""Byte counts as people write and read them: `70GiB`, `80 GB`, `34,359,738,368 B (32.00 GiB)`,
`32.0 GiB`: every byte formatter of hloscope lives here."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*([0-9][0-9_,]*(?:\.[0-9]+)?(?:[eE][0-9]+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(size: int | float | str) -> int:
    """Returns bytes for a count (`74000000000`) or a number with a unit (`70GiB`, `80 GB`).

    Raises ValueError naming the text for anything else, and for sizes that are not positive.
    """
    if isinstance(size, bool):
        raise ValueError(f"size {size!r}: expected a size in bytes or with a unit, such as 70GiB")
    if isinstance(size, (int, float)):
        count = size
    else:
        match = _SIZE.match(str(size))
        if not match:
            raise ValueError(f"size {size!r}: expected a size in bytes or with a unit, such as 70GiB or 80GB")
        count = float(match.group(1).replace(",", "").replace("_", "")) * _UNITS[(match.group(2) or "b").lower()]
    if not count > 0:
        raise ValueError(f"size {size!r}: must be positive")
    return int(count)


def human_bytes(count: int | float | None) -> str:
    """Returns e.g. '34,359,738,368 B (32.00 GiB)'; '-' for None."""
    if count is None:
        return "-"
    return f"{int(count):,} B ({count / 2**30:.2f} GiB)"


def gib(count: int | float | None) -> str:
    """Returns e.g. '41.88 GiB'; '-' for None."""
    return "-" if count is None else f"{count / 2**30:,.2f} GiB"


def short_bytes(count: int | float) -> str:
    """Returns the count in the largest binary unit below 1024 of it, e.g. '32.0 GiB', '512 B'
    (the findings' sentences, where the exact count would crowd the text)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable: TiB ends the loop")
