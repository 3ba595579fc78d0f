"""The commits of a ``git am`` read from HEAD's reflog (askbuild/patchqueue/reflog.py): what
``git rev-list`` says, and rev-list itself whenever the reflog says anything else."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from askbuild import gitutil
from askbuild.patchqueue import apply as pq_apply
from askbuild.patchqueue.reflog import am_commits


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                           text=True).stdout.strip()


def _repo(path: Path, *, reflog: bool = True) -> tuple[Path, str]:
    """A work tree with one commit, HEAD detached on it: (tree, that commit)."""
    path.mkdir()
    _git(path, "init", "-q")
    _git(path, "config", "core.logAllRefUpdates", "true" if reflog else "false")
    (path / "a.txt").write_text("".join(f"line {i}\n" for i in range(20)))
    _git(path, "add", "a.txt")
    _git(path, "-c", "user.name=T", "-c", "user.email=t@example.org", "commit", "-q", "-m",
         "base")
    base = _git(path, "rev-parse", "HEAD")
    _git(path, "checkout", "-q", "--detach", base)
    return path, base


def _mails(n: int) -> bytes:
    """``n`` mails, each changing one line of a.txt."""
    out = []
    lines = [f"line {i}\n" for i in range(20)]
    for i in range(1, n + 1):
        new = list(lines)
        new[i] = f"line {i} changed\n"
        hunk = "".join([f" {x}" for x in lines[max(0, i - 3):i]] + [f"-{lines[i]}", f"+{new[i]}"]
                       + [f" {x}" for x in lines[i + 1:i + 4]])
        start = max(0, i - 3) + 1
        count = min(i + 4, 20) - max(0, i - 3)
        out.append(
            f"From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
            f"From: Dev <dev@example.org>\nDate: Thu, 1 Jan 2026 00:00:0{i % 10} +0000\n"
            f"Subject: [PATCH] change {i}\n\n---\n"
            f"diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n"
            f"@@ -{start},{count} +{start},{count} @@\n{hunk}")
        lines = new
    return "".join(out).encode()


def _am(tree: Path, n: int) -> None:
    ok, out = pq_apply.git_am(tree, _mails(n), 1, three_way=False)
    assert ok, out


@pytest.mark.parametrize("n", [1, 5])
def test_the_commits_of_an_am_are_what_rev_list_says(tmp_path, monkeypatch, n):
    """After a ``git am`` of ``n`` mails the commits read from HEAD's reflog are rev-list's,
    and no git process is needed for them."""
    tree, base = _repo(tmp_path / "t")
    _am(tree, n)
    want = _git(tree, "rev-list", "--reverse", f"{base}..HEAD").split()
    assert len(want) == n
    calls = []
    real = gitutil.out
    monkeypatch.setattr(gitutil, "out", lambda args, **kw: calls.append(args) or real(args, **kw))
    assert am_commits(tree, base, n) == want
    assert calls == []


def test_without_a_reflog_rev_list_says_them(tmp_path):
    """No reflog kept (``core.logAllRefUpdates=false``): the same commits, from rev-list."""
    tree, base = _repo(tmp_path / "t", reflog=False)
    (tree / ".git" / "logs" / "HEAD").unlink(missing_ok=True)
    _am(tree, 3)
    assert not (tree / ".git" / "logs" / "HEAD").exists()
    want = _git(tree, "rev-list", "--reverse", f"{base}..HEAD").split()
    assert am_commits(tree, base, 3) == want and len(want) == 3


def test_a_reflog_that_does_not_lead_from_the_base_to_head_is_not_believed(tmp_path):
    """Reflog lines that do not chain from ``before`` to HEAD (a line of another move last,
    fewer lines than commits, a count the am did not make): rev-list's answer, whatever its
    length, never a guess."""
    tree, base = _repo(tmp_path / "t")
    _am(tree, 3)
    want = _git(tree, "rev-list", "--reverse", f"{base}..HEAD").split()
    assert am_commits(tree, base, 2) == want            # 2 lines lead from c1, not from base
    assert am_commits(tree, base, 4) == want            # the 4th line back is not the am's
    log = tree / ".git" / "logs" / "HEAD"
    kept = log.read_bytes()
    lines = kept.splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:-1]))               # the last commit's line lost
    assert am_commits(tree, base, 3) == want
    log.write_bytes(kept + lines[-1].replace(want[1].encode(), b"0" * 40, 1))
    assert am_commits(tree, base, 3) == want
