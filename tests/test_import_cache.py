"""The cached import of a tarball (askbuild.importcache): every import after the first starts
from the objects the first stored beside the tarball, gives the same commit, and a damaged,
half-written or unstorable entry never changes a result."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import faults
import pytest
from test_tarimport import MIXED, _oracle
from upstreams import release_tarball, tar_bytes

from askbuild import fetching, gitutil, tarimport
from askbuild.importcache import RECORD, ImportCache

MESSAGE = tarimport.import_message("pkg-1.0.tar.xz", "pkg", "1.0", "cd" * 32)


def _packs(repo: Path) -> dict[str, int]:
    """The pack files of ``repo`` with their inode numbers."""
    d = repo / ".git" / "objects" / "pack"
    return {p.name: p.stat().st_ino for p in d.iterdir() if p.suffix in (".pack", ".idx")}


def _import(archive: Path, dest: Path, cache: ImportCache | None) -> str:
    return tarimport.import_tarball(archive, dest, strip_components=1, what="pkg",
                                    message=MESSAGE, cache=cache)


def _fsck(repo: Path) -> None:
    proc = gitutil.git(["fsck", "--full", "--strict"], cwd=repo, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def archive(tmp_path) -> Path:
    path = tmp_path / "pkg-1.0.tar.xz"
    path.write_bytes(tar_bytes(MIXED, compression="xz"))
    return path


def test_the_second_import_reuses_the_first_ones_objects_and_gives_the_same_commit(
        tmp_path, archive, capsys):
    entry = tmp_path / "cache" / "imports" / "entry"
    cache = ImportCache(entry, "pkg")
    first = _import(archive, tmp_path / "a", cache)
    record = json.loads((entry / RECORD).read_text())
    assert set(record["files"]) == set(_packs(tmp_path / "a"))      # its bulk pack and index
    for name, sha in record["files"].items():
        assert hashlib.sha256((entry / name).read_bytes()).hexdigest() == sha
    assert "reusing" not in capsys.readouterr().err

    second = _import(archive, tmp_path / "b", cache)
    assert "pkg: reusing the objects of an earlier import" in capsys.readouterr().err
    assert first == second == _oracle(archive, tmp_path / "oracle", 1, MESSAGE)
    # the cached pack is the only pack: git add found every blob and deflated nothing again
    packs = _packs(tmp_path / "b")
    assert packs == {n: (entry / n).stat().st_ino for n in record["files"]}   # hard links
    _fsck(tmp_path / "b")
    assert gitutil.out(["status", "--porcelain"], cwd=tmp_path / "b") == ""


@pytest.mark.parametrize("damage,why", [
    ("flip", "{pack} no longer matches its recorded sha256"),
    ("truncate", "{pack} no longer matches its recorded sha256"),
    ("no-record", f"{RECORD} is missing or unreadable"),
    ("garbage-record", f"{RECORD} is missing or unreadable"),
    ("outside", f"{RECORD} names '../../secret', which is not a pack file"),
])
def test_a_damaged_entry_is_replaced_with_a_warning_and_never_changes_the_commit(
        tmp_path, archive, capsys, damage, why):
    entry = tmp_path / "cache" / "entry"
    cache = ImportCache(entry, "pkg")
    first = _import(archive, tmp_path / "a", cache)
    shutil.rmtree(tmp_path / "a")                 # (the entry's packs are its own copies then)
    record = json.loads((entry / RECORD).read_text())
    pack = entry / next(n for n in record["files"] if n.endswith(".pack"))
    if damage == "flip":
        data = bytearray(pack.read_bytes())
        data[len(data) // 2] ^= 0xFF
        pack.chmod(0o644)
        pack.write_bytes(bytes(data))
    elif damage == "truncate":
        pack.chmod(0o644)
        os.truncate(pack, pack.stat().st_size // 2)
    elif damage == "no-record":
        (entry / RECORD).unlink()
    elif damage == "garbage-record":
        (entry / RECORD).write_text("{not json")
    else:
        secret = tmp_path / "secret"
        secret.write_text("not a pack\n")
        record["files"] = {"../../secret": hashlib.sha256(b"not a pack\n").hexdigest()}
        (entry / RECORD).write_text(json.dumps(record))
    capsys.readouterr()

    second = _import(archive, tmp_path / "b", cache)
    err = capsys.readouterr().err
    assert f"source pkg: the cached import {entry} is damaged ({why.format(pack=pack.name)})" \
        in err
    assert "importing without it" in err and "reusing" not in err
    assert second == first
    _fsck(tmp_path / "b")
    # the entry was rebuilt from this import: the next one reuses it
    third = _import(archive, tmp_path / "c", cache)
    assert "reusing the objects" in capsys.readouterr().err and third == first
    assert sorted(p.name for p in entry.parent.iterdir()) == ["entry"]
    if damage == "outside":
        assert (tmp_path / "secret").read_text() == "not a pack\n"


def test_a_killed_runs_half_written_entry_is_never_used_and_is_removed(tmp_path, archive,
                                                                        capsys):
    entry = tmp_path / "cache" / "entry"
    half = entry.with_name(".import.tmp-4242-0123abcd")    # what a kill -9 inside put leaves
    half.mkdir(parents=True)
    (half / "pack-0000000000000000000000000000000000000000.pack").write_bytes(b"PACK")
    cache = ImportCache(entry, "pkg")
    commit = _import(archive, tmp_path / "a", cache)
    assert "reusing" not in capsys.readouterr().err
    assert sorted(p.name for p in entry.parent.iterdir()) == ["entry"]
    assert commit == _oracle(archive, tmp_path / "oracle", 1, MESSAGE)
    half.mkdir()                                    # killed again, beside a complete entry
    assert _import(archive, tmp_path / "b", cache) == commit
    assert "reusing" in capsys.readouterr().err
    assert sorted(p.name for p in entry.parent.iterdir()) == ["entry"]


def test_a_full_disk_while_keeping_the_entry_is_a_warning_not_a_failure(tmp_path, archive,
                                                                         capsys):
    big = tmp_path / "big.tar.gz"         # incompressible: its pack cannot fit the tmpfs
    big.write_bytes(tar_bytes([("dir", "pkg-1.0"), *[
        ("file", f"pkg-1.0/r{i}.bin", os.urandom(64 << 10)) for i in range(16)]]))
    with faults.tmpfs(tmp_path / "cache", "256k") as cache_fs:
        entry = cache_fs / "imports" / "entry"
        commit = _import(big, tmp_path / "a", ImportCache(entry, "pkg"))
        err = capsys.readouterr().err
        assert f"cannot keep this import's objects in {entry.parent} (No space left on " \
               "device); the next import of this tarball checks every file in again" in err
        assert not entry.exists() and list(entry.parent.iterdir()) == []
    assert commit == _oracle(big, tmp_path / "oracle", 1, MESSAGE)
    _fsck(tmp_path / "a")


def test_fetch_after_the_work_tree_is_gone_reuses_the_cached_import(project, http_server,
                                                                    capsys):
    data = release_tarball("libfoo-1.0", {"configure": "#!/bin/sh\n", "src/a.c": "int a;\n"})
    url = http_server.add("files/libfoo-1.0.tar.gz", data)
    sha = hashlib.sha256(data).hexdigest()
    project.add_tarball("libfoo", url, sha256=sha, size=len(data))
    s = project.settings()
    first = gitutil.out(["rev-parse", "HEAD"], cwd=fetching.fetch(s, ["libfoo"])["libfoo"])
    assert (s.tarball_import(sha) / RECORD).is_file()
    capsys.readouterr()
    shutil.rmtree(s.src_dir)
    tree = fetching.fetch(s, ["libfoo"])["libfoo"]
    assert "source libfoo: reusing the objects of an earlier import" in capsys.readouterr().err
    assert gitutil.out(["rev-parse", "HEAD"], cwd=tree) == first
    _fsck(tree)
