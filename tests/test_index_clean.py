"""The patch stamp's "is every tracked file as the index says" (askbuild/patchqueue/record.py
``index_clean``): read by askbuild itself on a tree of fewer than ``GIT_CHECKS_FROM`` files,
by one ``git diff-files --quiet`` from there on (the kernel).  Both give the same answer for
every kind of change, on real git trees."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from patchfixtures import logging_git

from askbuild.patchqueue import record


def _git(tree: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(tree), *args], check=True, capture_output=True)


def _tree(path: Path) -> Path:
    """A committed tree: files, an executable, a symbolic link, a subdirectory; its index
    written a while after the files (no racily clean entry)."""
    path.mkdir()
    _git(path, "init", "-q")
    (path / "a.c").write_text("int a;\n")
    (path / "run.sh").write_text("#!/bin/sh\n")
    (path / "run.sh").chmod(0o755)
    (path / "d").mkdir()
    (path / "d" / "b.h").write_text("#define B 1\n")
    os.symlink("a.c", path / "link")
    old = time.time() - 60
    for p in ("a.c", "run.sh", "d/b.h"):
        os.utime(path / p, (old, old))
    _git(path, "add", "-A")
    _git(path, "-c", "user.name=T", "-c", "user.email=t@example.org", "commit", "-q", "-m", "x")
    return path


def _same_size_edit(p: Path) -> None:
    """The same size and mtime, another content: only the ctime tells.  Made in a later
    second than the index was written: git compares whole-second ctimes (Debian's git is
    built without USE_NSEC), so within that second neither ``diff-files`` nor the full
    check's ``git status`` sees it (the reader here does, by the nanosecond)."""
    st = p.stat()
    index = p.parent / ".git" / "index"
    while int(time.time()) <= index.stat().st_mtime_ns // 10**9:
        time.sleep(0.05)
    p.write_bytes(p.read_bytes().upper())
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


CHANGES = {
    "nothing": lambda t: None,
    "same-size edit, same mtime": lambda t: _same_size_edit(t / "a.c"),
    "longer": lambda t: (t / "d" / "b.h").write_text("#define B 2 /* more */\n"),
    "deleted": lambda t: (t / "a.c").unlink(),
    "exec bit dropped": lambda t: (t / "run.sh").chmod(0o644),
    "link retargeted": lambda t: (os.unlink(t / "link"), os.symlink("run.sh", t / "link")),
    "file replaced by a directory": lambda t: ((t / "a.c").unlink(), (t / "a.c").mkdir()),
    "touched, same content": lambda t: os.utime(t / "a.c"),
}
CLEAN = {"nothing"}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_askbuilds_reader_and_git_diff_files_agree(tmp_path, monkeypatch, change):
    """Each kind of change is seen by both ways (a file only touched counts as changed: the
    full check then refreshes the index, as git status does); an untouched tree is clean."""
    answers = []
    for way, threshold in (("askbuild", 10**9), ("git", 0)):
        tree = _tree(tmp_path / way)
        CHANGES[change](tree)
        monkeypatch.setattr(record, "GIT_CHECKS_FROM", threshold)
        answers.append(record.index_clean(tree))
    assert answers == [change in CLEAN] * 2, answers


def test_from_the_threshold_on_one_git_diff_files_answers(tmp_path, monkeypatch):
    tree = _tree(tmp_path / "t")
    path, log = logging_git(tmp_path)
    monkeypatch.setenv("PATH", path)
    monkeypatch.setattr(record, "GIT_CHECKS_FROM", 5)       # the tree has 4 entries
    assert record.index_clean(tree) and not log.exists()
    monkeypatch.setattr(record, "GIT_CHECKS_FROM", 4)
    assert record.index_clean(tree)
    assert [ln.split()[-2:] for ln in log.read_text().splitlines()] == [["diff-files",
                                                                         "--quiet"]]


def test_no_index_is_not_clean(tmp_path):
    (tmp_path / "t").mkdir()
    assert record.index_clean(tmp_path / "t") is False
