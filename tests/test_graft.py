"""The old series' commits made in a small tree and grafted onto the full base
(:func:`patchqueue.grafted_queue`, the first pass of ``inv rebase --dry-run`` without a
patch record on a big tree).

* the record, commit for commit, is the one ``git am`` on the full tree gives (apply_queue in
  a full scratch), for a series with every kind of change: a line changed, files added in a
  new directory, deleted, renamed, made executable, a symlink, a binary file, odd names (a
  blank, a quote, a backslash, a leading colon), a ``.gitattributes`` above a file, a plain
  diff beside the mails; and the source tree is untouched, nothing is left behind;
* where the small tree could not stand for the full one it says so (None) and the dry run's
  answer is the full tree's: a directory above a new file is a file there, a named path is
  a directory, a patch needs a 3-way merge, a ``.gitattributes`` above a file makes git am
  refuse it, a name holds a line break; a patch that does not apply at all likewise;
* the dry run without a record on a big tree uses it (``inv patch --check`` too:
  tests/test_sparse_scratch.py);
* ``inv patch`` checks out just the files the series changed: the index and the tree of a
  checkout of the head (a directory emptied is gone, a mode, a link, odd names), the other
  files left alone;
* ``gitutil.plain_commits`` (how the graft and the tree replay read commits) takes only
  plain ones.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest
from patchfixtures import (
    DEV,
    add_release_v2,
    commit_all,
    g,
    logging_git,
    make_long_project,
    put,
)

from askbuild import patchqueue, rebasing
from askbuild.errors import PatchFailed
from askbuild.patchqueue import scratch as pq_scratch
from askbuild.patchqueue.inputs import PatchInput
from askbuild.patchqueue.layers import Layer

LAYER = Layer(source="src", kind="local", dir="patches/src")
ODD = 'odd dir/a "quoted" back\\slash.c'
LEAD = '"lead quote'
BREAK = "a line\nbreak.c"


def _base(tmp: Path) -> tuple[Path, str]:
    repo = tmp / "src"
    g(tmp, "init", "-q", "--", str(repo))
    put(repo, ".gitattributes", "*.c diff=cpp\n")
    put(repo, "deep/er/.gitattributes", "*.txt -text\n")
    for rel in ["deep/er/f.txt", "deep/er/gone.c", "deep/er/old.c", "run.sh", ODD, LEAD,
                ":colon.c", "untouched/x.c", "untouched/y/z.c", "f"]:
        put(repo, rel, "".join(f"{rel} line {i}\n" for i in range(1, 12)))
    put(repo, "blob.bin", bytes(range(256)) * 4)
    return repo, commit_all(repo, "base")


def _move(repo: Path, old: str, new: str) -> None:
    (repo / new).parent.mkdir(parents=True, exist_ok=True)
    (repo / old).rename(repo / new)


def _series(tmp: Path, repo: Path, base: str) -> list[PatchInput]:
    """Mails of commits made on ``base`` (then dropped), and a plain diff."""
    steps = [
        ("a line changed", lambda: put(repo, "deep/er/f.txt",
                                       (repo / "deep/er/f.txt").read_text().replace(
                                           "line 5", "line five"))),
        ("new files in a new directory", lambda: (put(repo, "new/dir/a.c", "a\n"),
                                                  put(repo, "new/b.c", "b\n"))),
        ("a file deleted", lambda: (repo / "deep/er/gone.c").unlink()),
        ("a file renamed", lambda: _move(repo, "deep/er/old.c", "moved/new.c")),
        ("made executable", lambda: (repo / "run.sh").chmod(0o755)),
        ("a symlink", lambda: (repo / "deep/link").symlink_to("er/f.txt")),
        ("a binary file", lambda: put(repo, "blob.bin", bytes(reversed(range(256))) * 4)),
        ("odd names", lambda: (put(repo, ODD, "changed\n"), put(repo, ":colon.c", "c\n"),
                               put(repo, LEAD, "d\n"))),
        ("a directory emptied", lambda: (repo / "untouched/y/z.c").unlink()),
    ]
    for msg, step in steps:
        step()
        commit_all(repo, msg)
    out = tmp / "mails"
    g(repo, "format-patch", "-q", "-M", "--binary", "-o", str(out), f"{base}..HEAD")
    inputs = [PatchInput(LAYER, m.name, 1, m.read_bytes()) for m in sorted(out.iterdir())]
    put(repo, "f", "plain diff\n")
    diff = g(repo, "diff", "--", "f").encode() + b"\n"
    g(repo, "checkout", "-q", "-f", "--detach", base)
    return [*inputs, PatchInput(LAYER, "plain.diff", 1, diff)]


def _full_record(repo: Path, base: str, inputs: list[PatchInput], parent: Path) -> dict:
    with patchqueue.scratch_worktree(repo, base, parent) as scratch:
        return patchqueue.apply_queue(scratch, base, inputs, source="src", branch=None,
                                      batch=True)


def test_the_grafted_commits_are_the_ones_git_am_makes_on_the_full_tree(tmp_path):
    repo, base = _base(tmp_path)
    inputs = _series(tmp_path, repo, base)
    paths = patchqueue.touched_paths(repo, inputs)
    assert "untouched/x.c" not in paths and ODD in paths
    refs = g(repo, "for-each-ref")
    with patchqueue.grafted_queue(repo, base, inputs, paths, tmp_path / "work",
                                  source="src") as got:
        assert got is not None
        record, objects = got.record, got.objects
        assert objects.is_dir() and Path(objects).is_relative_to(tmp_path / "work")
    assert list((tmp_path / "work").iterdir()) == []
    assert g(repo, "for-each-ref") == refs and g(repo, "rev-parse", "HEAD") == base
    # the commits lived in the scratch only
    assert subprocess.run(["git", "-C", str(repo), "cat-file", "-e", record["head"]],
                          capture_output=True).returncode != 0
    full = _full_record(repo, base, inputs, tmp_path / "work")
    assert record == full
    assert len(full["patches"]) == 10 and all(len(p["commits"]) == 1 for p in full["patches"])


def _one_mail(tmp: Path, repo: Path, base: str, change) -> list[PatchInput]:
    change()
    commit_all(repo, "the change")
    out = tmp / "one"
    g(repo, "format-patch", "-q", "--binary", "-o", str(out), f"{base}..HEAD")
    g(repo, "checkout", "-q", "-f", "--detach", base)
    return [PatchInput(LAYER, m.name, 1, m.read_bytes()) for m in sorted(out.iterdir())]


def _file_for_dir(repo: Path) -> None:
    """On the base ``f`` is a file; upstream of the patch it became a directory."""
    (repo / "f").unlink()
    put(repo, "f/inside.c", "x\n")


@pytest.mark.parametrize("case", ["file-above", "path-is-a-directory", "three-way",
                                  "attributes", "line-break"])
def test_where_the_small_tree_cannot_stand_for_the_full_one_it_says_so(tmp_path, case):
    repo, base = _base(tmp_path)
    if case == "attributes":            # a CRLF file that a .gitattributes above says is
        put(repo, "crlf/in/a.c", b"l1\r\nl2\r\nl3\r\nl4\r\n")   # text: git am refuses it
        crlf = commit_all(repo, "a CRLF file")      # ("does not match index")
        inputs = _one_mail(tmp_path, repo, crlf, lambda: put(
            repo, "crlf/in/a.c", b"l1\r\nL2\r\nl3\r\nl4\r\n"))
        put(repo, "crlf/.gitattributes", "*.c text\n")
        g(repo, "add", "--", "crlf/.gitattributes")    # (a.c stays CRLF in the commit)
        g(repo, "commit", "-q", "-m", "*.c is text", env=DEV)
        base = g(repo, "rev-parse", "HEAD")
        with pytest.raises(PatchFailed, match="did not apply"):     # (the full tree's answer)
            _full_record(repo, base, inputs, tmp_path / "full")
    elif case == "line-break":          # a name git's batch queries cannot take
        inputs = _one_mail(tmp_path, repo, base, lambda: put(repo, BREAK, "new\n"))
    elif case == "file-above":          # a new f/inside.c where the base has a file f
        inputs = _one_mail(tmp_path, repo, base, lambda: _file_for_dir(repo))
    elif case == "path-is-a-directory":  # a new file "untouched" where the base has a dir
        g(repo, "rm", "-q", "-r", "--", "untouched")
        inputs = _one_mail(tmp_path, repo, base,
                           lambda: put(repo, "untouched", "now a file\n"))
    else:                               # the patch was made on a later commit
        put(repo, "run.sh", (repo / "run.sh").read_text().replace("line 2", "line TWO"))
        later = commit_all(repo, "later")     # (in the patch's context, apart from its change)
        inputs = _one_mail(tmp_path, repo, later, lambda: put(
            repo, "run.sh", (repo / "run.sh").read_text().replace("line 5", "line FIVE")))
    g(repo, "checkout", "-q", "-f", "--detach", base)
    paths = patchqueue.touched_paths(repo, inputs)
    with patchqueue.grafted_queue(repo, base, inputs, paths, tmp_path / "work",
                                  source="src") as got:
        assert got is None
    assert not any((tmp_path / "work").glob("*"))      # (nothing left behind)


def graft_spy(monkeypatch, where: str = "askbuild.patchqueue") -> list:
    """What each grafted_queue of the run yielded (None, or its record); ``where``: the
    module whose name is replaced (the dry run's; ``inv patch --check`` calls the one of
    ``askbuild.patchqueue.patching``)."""
    seen: list = []
    real = patchqueue.grafted_queue

    @contextlib.contextmanager
    def spy(*a, **kw):
        with real(*a, **kw) as got:
            seen.append(None if got is None else got[0])
            yield got
    monkeypatch.setattr(f"{where}.grafted_queue", spy)
    return seen


def test_the_dry_run_without_a_record_on_a_big_tree_grafts(tmp_path, monkeypatch):
    monkeypatch.setattr(pq_scratch, "SPARSE_FROM", 0)      # (every tree is big)
    project = make_long_project(tmp_path, 6)
    add_release_v2(project)
    seen = graft_spy(monkeypatch)
    rows = rebasing.rebase(project.settings, "up", onto="v2", dry_run=True).rows
    assert [r["status"] for r in rows] == ["clean"] * 6
    assert len(seen) == 1 and seen[0] is not None
    # the record inv patch then writes has the very commits the graft made
    patchqueue.patch(project.settings, ["up"])
    recorded = patchqueue.tree_state(project.settings, "up")
    assert [p["commits"] for p in recorded["patches"]] \
        == [p["commits"] for p in seen[0]["patches"]]
    seen.clear()
    assert rebasing.rebase(project.settings, "up", onto="v2", dry_run=True).rows == rows
    assert seen == []                   # (a record now: nothing to graft)


def _on_disk(repo: Path) -> dict:
    """Every path of a work tree (``.git`` left out): a directory, a link and its target, or
    a file's bytes and executable bit."""
    out: dict = {}
    for p in sorted(repo.rglob("*")):
        rel = p.relative_to(repo).as_posix()
        if rel == ".git" or rel.startswith(".git/"):
            continue
        if p.is_symlink():
            out[rel] = ("link", str(p.readlink()))
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = (p.read_bytes(), bool(p.stat().st_mode & 0o100))
    return out


def test_inv_patch_checks_out_only_the_files_the_series_changed(tmp_path):
    """What ``inv patch`` does with a graft on a tree at the base: only the files the series
    changed are checked out, and the index and the tree are those of ``git checkout`` of the
    head (a new directory, a directory emptied and gone, a file deleted, renamed, made
    executable, a symbolic link, a binary file, odd names); the files it did not change are
    not written (same inode and time)."""
    from askbuild.patchqueue import patching
    from askbuild.patchqueue.journal import untracked_paths
    from askbuild.report import Report
    repo, base = _base(tmp_path)
    inputs = _series(tmp_path, repo, base)
    paths = patchqueue.touched_paths(repo, inputs)
    kept = {f: (repo / f).stat() for f in ("untouched/x.c", "deep/er/.gitattributes")}
    log = tmp_path / "git.log"
    with patchqueue.grafted_queue(repo, base, inputs, paths, tmp_path / "work",
                                  source="src") as got:
        assert got is not None
        assert set(got.changes) <= paths and "untouched/y/z.c" in got.changes
        assert got.changes["untouched/y/z.c"] is False and got.changes["new/dir/a.c"] is True
        grafted = patching._Grafted(got, Report("patch", "patch", []))
        path, log = logging_git(tmp_path)
        with pytest.MonkeyPatch.context() as m:
            m.setenv("PATH", path)
            record = patching._take_graft("src", repo, base, grafted, Report("p", "p", []),
                                          at_base=True, others=untracked_paths(repo))
    assert record is got.record
    assert "checkout --no-overlay" in log.read_text() and " --detach" not in log.read_text()
    head = record["head"]
    g(repo, "update-ref", "--no-deref", "HEAD", head)
    other = tmp_path / "other"
    g(tmp_path, "clone", "-q", "--no-checkout", "--", str(repo), str(other))
    g(other, "checkout", "-q", "--detach", base)
    g(other, "checkout", "-q", "--detach", head)
    assert _on_disk(repo) == _on_disk(other)
    assert not (repo / "untouched/y").exists() and (repo / "new/dir/a.c").is_file()
    assert g(repo, "ls-files", "-s") == g(other, "ls-files", "-s")
    assert g(repo, "status", "--porcelain", "--untracked-files=all", "--ignored") == ""
    for f, st in kept.items():
        now = (repo / f).stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), f


def test_a_name_that_is_not_utf8_is_grafted_and_checked_out(tmp_path):
    """A patch changing a file whose name is not UTF-8 (bytes to git): the small tree stands
    for the full one (the commits of ``git am`` on the full tree) and ``inv patch``'s
    checkout of the changed paths writes that very file, where the name used to end the
    run with a traceback."""
    import os

    from askbuild.patchqueue import patching
    from askbuild.patchqueue.journal import untracked_paths
    from askbuild.report import Report
    repo, base = _base(tmp_path)
    name = os.fsdecode(b"latin/caf\xe9.c")
    put(repo, name, "one\n")
    base = commit_all(repo, "a latin-1 name")
    inputs = _one_mail(tmp_path, repo, base, lambda: put(repo, name, "two\n"))
    paths = patchqueue.touched_paths(repo, inputs)
    assert paths == {name}
    with patchqueue.grafted_queue(repo, base, inputs, paths, tmp_path / "work",
                                  source="src") as got:
        assert got is not None and got.changes == {name: True}
        assert got.record == _full_record(repo, base, inputs, tmp_path / "full")
        grafted = patching._Grafted(got, Report("patch", "patch", []))
        record = patching._take_graft("src", repo, base, grafted, Report("p", "p", []),
                                      at_base=True, others=untracked_paths(repo))
    assert record is got.record
    assert (repo / name).read_text() == "two\n"
    g(repo, "update-ref", "--no-deref", "HEAD", record["head"])
    assert g(repo, "status", "--porcelain", "--untracked-files=all") == ""


def test_only_plain_commits_are_read_as_plain(tmp_path):
    """gitutil.plain_commits (what the graft and the tree replay read old commits with):
    tree, parent, author, committer and message of a plain commit; None for a root commit,
    a merge, a commit with an encoding header."""
    from askbuild import gitutil
    repo, base = _base(tmp_path)
    put(repo, "f", "one\n")
    plain = commit_all(repo, "a plain one\n\nwith a body")
    got = gitutil.plain_commits(repo, [plain])
    assert got is not None and len(got) == 1
    assert got[0].tree == g(repo, "rev-parse", f"{plain}^{{tree}}")
    assert got[0].parent == base and got[0].message == b"a plain one\n\nwith a body\n"
    assert got[0].author.startswith(b"Dev <") and got[0].committer.startswith(b"Dev <")
    g(repo, "checkout", "-q", "-b", "side", base)
    put(repo, "side.c", "side\n")
    side = commit_all(repo, "side")
    g(repo, "merge", "-q", "--no-edit", plain, env={"GIT_AUTHOR_NAME": "m",
                                                    "GIT_AUTHOR_EMAIL": "m@m",
                                                    "GIT_COMMITTER_NAME": "m",
                                                    "GIT_COMMITTER_EMAIL": "m@m"})
    merge = g(repo, "rev-parse", "HEAD")
    g(repo, "-c", "i18n.commitEncoding=ISO-8859-1", "commit", "-q", "--allow-empty",
      "-m", "latin", env={"GIT_AUTHOR_NAME": "m", "GIT_AUTHOR_EMAIL": "m@m",
                          "GIT_COMMITTER_NAME": "m", "GIT_COMMITTER_EMAIL": "m@m"})
    latin = g(repo, "rev-parse", "HEAD")
    assert "encoding ISO-8859-1" in g(repo, "cat-file", "commit", latin)
    for odd in (base, merge, latin):
        assert gitutil.plain_commits(repo, [plain, odd]) is None, odd
    assert gitutil.plain_commits(repo, [plain, side]) is not None
