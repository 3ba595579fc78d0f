"""A re-written patch keeps its own file's format (issue 10, point 7): mails keep their
headers, numbering, extra headers, diffstat or not, index abbreviation and signature; plain
diffs stay plain diffs with their -pN (askbuild.patchqueue.style, real git)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from askbuild.patchqueue import style

ENV = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "a@x",
       "GIT_COMMITTER_NAME": "Ada", "GIT_COMMITTER_EMAIL": "a@x", "PATH": "/usr/bin:/bin",
       "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z"}


def git(tree: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=tree, env=ENV, check=True, capture_output=True,
                          text=True).stdout


def repo(tmp_path: Path) -> tuple[Path, str, str]:
    """A repository with a base and two versions of one change (v1, then v2 on a new base
    line, same message): (tree, commit v1, commit v2)."""
    tree = tmp_path / "r"
    tree.mkdir()
    git(tree, "init", "-q")
    (tree / "f.c").write_text("".join(f"line {i}\n" for i in range(1, 21)))
    git(tree, "add", "f.c")
    git(tree, "commit", "-qm", "base")
    (tree / "f.c").write_text((tree / "f.c").read_text().replace("line 5\n", "line 5 ours\n"))
    git(tree, "commit", "-qam", "f: ours\n\nWhy.\n")
    v1 = git(tree, "rev-parse", "HEAD").strip()
    git(tree, "checkout", "-q", "HEAD~1")
    (tree / "f.c").write_text((tree / "f.c").read_text().replace("line 1\n", "line 1 up\n")
                              .replace("line 5\n", "line 5 ours\nline 5b\n"))
    git(tree, "commit", "-qam", "f: ours\n\nWhy.\n")
    return tree, v1, git(tree, "rev-parse", "HEAD").strip()


def test_a_mail_keeps_headers_numbering_stat_abbrev_and_signature(tmp_path):
    tree, v1, v2 = repo(tmp_path)
    old = git(tree, "format-patch", "--stdout", "-1", "--subject-prefix=PATCH 3/5", "--stat",
              "--abbrev=9", "--signature=2.39.2", "--add-header=Cc: team@x", v1).encode()
    got = style.render(tree, v2, style.detect(old), same_message=True)
    assert got.split(b"\n", 1)[0] == f"From {v2} Mon Sep 17 00:00:00 2001".encode()
    assert style.split_mail(got)[0].split(b"\n", 1)[1] == \
        style.split_mail(old)[0].split(b"\n", 1)[1]          # headers + message, byte for byte
    assert b"Subject: [PATCH 3/5] f: ours" in got and b"Cc: team@x" in got
    assert re.search(rb"^---\n f\.c \| +5 \+\+\+--\n", got, re.M)    # a diffstat again
    assert re.search(rb"^index [0-9a-f]{9}\.\.[0-9a-f]{9} 100644$", got, re.M)
    assert got.endswith(b"\n-- \n2.39.2\n\n") and b"+line 5b" in got


def test_a_reworded_mail_keeps_its_prefix_and_extra_headers(tmp_path):
    tree, v1, v2 = repo(tmp_path)
    old = git(tree, "format-patch", "--stdout", "-1", "--subject-prefix=PATCH 2/7", "-p",
              "--zero-commit", "--no-signature", "--add-header=X-Ticket: 31", v1).encode()
    got = style.render(tree, v2, style.detect(old), same_message=False)
    assert got.startswith(b"From 0000000000000000000000000000000000000000 ")  # it was zero
    assert b"Subject: [PATCH 2/7] f: ours" in got and b"X-Ticket: 31" in got
    assert b"\n---\n" not in got.split(b"diff --git")[0]                     # no diffstat
    assert b"\n-- \n" not in got                                              # no signature


def test_a_plain_p0_diff_stays_a_plain_p0_diff(tmp_path):
    tree, v1, v2 = repo(tmp_path)
    old = (b"Fix from the vendor's tarball days.\n\n"
           + git(tree, "diff", "--no-prefix", f"{v1}~1", v1).encode())
    old = b"\n".join(ln for ln in old.split(b"\n")
                     if not ln.startswith((b"diff --git", b"index ")))
    got = style.render(tree, v2, style.detect(old, strip=0))
    assert got.startswith(b"Fix from the vendor's tarball days.\n\n--- f.c\n+++ f.c\n@@ ")
    assert b"diff --git" not in got and b"index " not in got and b"+line 5b" in got
    git(tree, "checkout", "-q", f"{v2}~1")
    applied = subprocess.run(["git", "apply", "--check", "-p0", "-"], cwd=tree, env=ENV,
                             input=got, capture_output=True)
    assert applied.returncode == 0, applied.stderr
