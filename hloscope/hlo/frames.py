"""Whose line is it: the user's frame in an op's Python call stack.

JAX records an op's call stack with its own frames left out, so the innermost frame is often a
library's: every `nnx.Linear` matmul is `flax/nnx/nn/linear.py`, every AdamW buffer
`optax/_src/...`. The line a user would change is the innermost frame outside installed
packages and the standard library. Paths are judged by their text alone, so HLO written on
another machine (`/usr/lib/python3/dist-packages/...`, a conda env's `site-packages`) is judged
the same way.
"""

from __future__ import annotations

import re
from typing import Iterable

# site-packages/dist-packages (pip, conda, Debian); with any Python's own lib/pythonX.Y (the
# standard library) and "<frozen runpy>", "<string>", "<embedded module>" (no file to edit), a library.
_PACKAGES = re.compile(r"[/\\](?:site|dist)-packages[/\\]")
_LIBRARY = re.compile(rf"{_PACKAGES.pattern}|[/\\]lib(?:64)?[/\\]python\d+(?:\.\d+)?[/\\]|^<")

Frame = tuple[str, int]  # file, line


def is_library(path: str) -> bool:
    """True when `path` is inside an installed package or the standard library."""
    return _LIBRARY.search(path) is not None


def user_source(frames: Iterable[Frame]) -> str | None:
    """`file:line` of the innermost frame outside libraries when the innermost frame (the op's
    own line, `frames` listed innermost first) is a library's; None when the op's own line is
    already the user's, or no frame is."""
    frames = iter(frames)
    first = next(frames, None)
    if first is None or not is_library(first[0]):
        return None
    return next((f"{path}:{line}" for path, line in frames if not is_library(path)), None)


def shown_source(source: str | None, user: str | None) -> str | None:
    """How a report shows an op's line: the user's line first, then the library line it went
    through, named from its package (`model.py:53 via flax/nnx/nn/linear.py:1342`)."""
    if not (user and source):
        return source
    return f"{user} via {_PACKAGES.split(source)[-1]}"


def entry_source(entry: dict) -> str | None:
    """`shown_source` of a profile's finding or buffer (a dict with "source", "user_source")."""
    return shown_source(entry.get("source"), entry.get("user_source"))
