"""ensure_archive: keeps exactly the matching members, once; pip itself is replaced by a local file."""

from __future__ import annotations

import io
import tarfile

import pytest

from reftrain.data import DataError
from reftrain.data import _fetch
from reftrain.data._fetch import Archive, archive_files, ensure_archive


def make_sdist(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.fixture
def fake_pip(tmp_path, monkeypatch):
    monkeypatch.setenv("REFTRAIN_CACHE", str(tmp_path / "cache"))
    sdist = tmp_path / "pkg-1.0.tar.gz"
    make_sdist(sdist, {
        "pkg-1.0/pkg/a.py": b"a = 1\n",
        "pkg-1.0/pkg/sub/b.py": b"b = 2\n",
        "pkg-1.0/pkg/data.bin": b"\0",
        "pkg-1.0/docs/intro.txt": b"Intro\n",
        "pkg-1.0/../evil.py": b"no\n",
    })
    calls = []

    def download(archive, dest):
        calls.append(archive.requirement)
        target = dest / sdist.name
        target.write_bytes(sdist.read_bytes())
        return target

    monkeypatch.setattr(_fetch, "_pip_download", download)
    return calls


def test_keeps_matching_members_below_the_top_folder_once(fake_pip, tmp_path):
    archive = Archive("pkg==1.0", "0" * 64, sdist=True, keep=("*.py", "docs/*.txt", "pkg/*"), drop=("*.bin",))
    root = ensure_archive(archive)
    kept = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert kept == ["COMPLETE", "docs/intro.txt", "pkg/a.py", "pkg/sub/b.py"]  # never ../evil.py
    assert not (tmp_path / "cache" / "evil.py").exists() and not (tmp_path / "evil.py").exists()
    assert archive_files(archive, ("pkg/*.py",)) == (root, ["pkg/a.py", "pkg/sub/b.py"])
    assert ensure_archive(archive) == root and fake_pip == ["pkg==1.0"]  # cached: no second download
    # Another selection of the same archive is another folder; nothing half-written is left.
    other = ensure_archive(Archive("pkg==1.0", "0" * 64, sdist=True, keep=("docs/*.txt",)))
    assert other != root and fake_pip == ["pkg==1.0"] * 2
    assert sorted(p.name for p in (tmp_path / "cache" / "assets").iterdir()) == sorted([root.name, other.name])


def test_a_pattern_matching_nothing_is_an_error_and_leaves_nothing(fake_pip, tmp_path):
    with pytest.raises(DataError, match=r"no member matching \['src/\*.py'\]"):
        ensure_archive(Archive("pkg==1.0", "0" * 64, sdist=True, keep=("pkg/*.py", "src/*.py")))
    assert list((tmp_path / "cache" / "assets").iterdir()) == []
