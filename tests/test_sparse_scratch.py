"""Sparse scratch trees (issue 9, item 4 on a big tree): ``inv rebase --dry-run`` and
``inv patch --check`` work in a scratch that holds only the directories of the files the
patches name, and their answers are the ones a full scratch gives.

* :func:`patchqueue.scratch_worktree` with ``paths``: only those directories are checked out
  (names with blanks and pattern characters included), with a sparse index, HEAD at the base,
  the source tree's repository untouched (no worktree, no config change), nothing left;
* :func:`patchqueue.touched_paths`: git's own reading of the patches (both sides of a rename,
  new and deleted files, the strip level), None for what git cannot read;
* the dry run: the sparse answer (clean, conflicts, drops, 3-way merges, a rename followed
  out of the scratch) stands and equals a full scratch's; a patch git apply cannot read sends
  it to a full scratch; ``inv patch --check``: on a big tree the series is applied in a
  small tree and grafted (the full tree's rows and commits, no scratch tree), in a sparse
  scratch where that cannot stand, and a failing patch is worked out again in a full
  scratch (same message);
* on a big tree ``inv patch`` lists the untracked files (for its journal) while ``git
  status`` runs, and a failed run still puts the tree back without touching the user's; the
  patch stamp lists again only the directories that changed since the previous stamp;
* on a big tree ``inv patch`` itself grafts (the full tree's rows, record, commits and files)
  and, when a file is in the way of the checkout, gives ``git am``'s answer on the full tree.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import rebasefixtures as fx
from patchfixtures import (
    add_release_v2,
    commit_all,
    g,
    git_calls,
    git_logger,
    left_scratches,
    logging_git,
    make_long_project,
    put,
)
from test_graft import graft_spy

from askbuild import patchqueue, rebasing
from askbuild.errors import DirtyTreeError, PatchFailed
from askbuild.patchqueue import scratch as pq_scratch
from askbuild.patchqueue.inputs import PatchInput

ODD = ["a b/[x]*.c", "#hash", "!bang", "trail ", "back\\slash", "tab\there", "x*y/[1]/f.c"]
ELSEWHERE = ["other/deep/x.c", "dir/sub2/y.c", "x*y/z.c/g.c"]


def _repo(tmp: Path) -> tuple[Path, str]:
    repo = tmp / "src"
    repo.mkdir()
    g(repo, "init", "-q")
    for rel in [*ODD, "dir/sub/f.c", "dir/other.c", "top.c", *ELSEWHERE]:
        put(repo, rel, f"{rel}\n")
    return repo, commit_all(repo, "base")


def _files(tree: Path) -> set[str]:
    return {str(p.relative_to(tree)) for p in tree.rglob("*")
            if p.is_file() and ".git" not in p.relative_to(tree).parts}


def test_sparse_scratch_holds_only_the_named_files(tmp_path):
    repo, base = _repo(tmp_path)
    config = (repo / ".git" / "config").read_bytes()
    want = {*ODD, "dir/sub/f.c", "new/not-yet.c"}
    with patchqueue.scratch_worktree(repo, base, tmp_path / "work", paths=want) as scratch:
        # the directories of those files; the files at the top and beside dir/sub
        assert _files(scratch) == _files(repo) - set(ELSEWHERE)
        assert g(scratch, "rev-parse", "HEAD") == base
        assert g(scratch, "status", "--porcelain") == ""
        assert {"other/", "dir/sub2/"} <= set(g(scratch, "ls-files", "--sparse").splitlines())
        # the objects are borrowed: a commit made there is in the scratch only
        put(scratch, "dir/sub/f.c", "changed\n")
        made = commit_all(scratch, "in the scratch")
        assert g(scratch, "ls-tree", "-r", "--name-only", made).splitlines() \
            == g(repo, "ls-tree", "-r", "--name-only", base).splitlines()
    assert not scratch.exists()
    assert (repo / ".git" / "config").read_bytes() == config
    assert len(g(repo, "worktree", "list").splitlines()) == 1
    assert subprocess.run(["git", "-C", str(repo), "cat-file", "-e", made],
                          capture_output=True).returncode != 0


def test_a_name_no_pattern_can_say_gives_a_full_scratch(tmp_path):
    repo, base = _repo(tmp_path)
    assert pq_scratch.sparse_patterns(["ok.c", "line\nbreak.c"]) is None
    with patchqueue.scratch_worktree(repo, base, tmp_path / "work",
                                     paths={"top.c", "line\nbreak.c"}) as scratch:
        assert _files(scratch) == _files(repo)


def _mail(body: str) -> bytes:
    return (b"From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
            b"From: Dev <dev@example.org>\nDate: Sun, 1 Mar 2026 00:00:00 +0000\n"
            b"Subject: [PATCH] x\n\nmessage\n---\n" + body.encode() + b"--\n2.39.5\n\n")


RENAME = ("diff --git a/dir/other.c b/moved/other.c\nsimilarity index 100%\n"
          "rename from dir/other.c\nrename to moved/other.c\n")
NEW_AND_GONE = ("diff --git a/top.c b/top.c\ndeleted file mode 100644\n--- a/top.c\n"
                "+++ /dev/null\n@@ -1 +0,0 @@\n-top.c\n"
                "diff --git a/fresh.c b/fresh.c\nnew file mode 100644\n--- /dev/null\n"
                "+++ b/fresh.c\n@@ -0,0 +1 @@\n+fresh\n")
DEEPER = ("diff --git x/src/dir/sub/f.c y/src/dir/sub/f.c\n--- x/src/dir/sub/f.c\n"
          "+++ y/src/dir/sub/f.c\n@@ -1 +1 @@\n-dir/sub/f.c\n+changed\n")
COPY = ("diff --git x/src/orig.c y/src/copy.c\nsimilarity index 100%\n"
        "copy from src/orig.c\ncopy to src/copy.c\n")


def test_touched_paths_are_what_git_reads(tmp_path):
    repo, _ = _repo(tmp_path)
    inputs = [PatchInput(None, "1.patch", 1, _mail(RENAME)),
              PatchInput(None, "2.patch", 1, _mail(NEW_AND_GONE)),
              PatchInput(None, "3.diff", 2, DEEPER.encode())]
    assert patchqueue.touched_paths(repo, inputs) == \
        {"dir/other.c", "moved/other.c", "top.c", "fresh.c", "dir/sub/f.c"}
    # a copy alone (the only patch of its strip level) names its source too
    assert patchqueue.touched_paths(repo, [PatchInput(None, "4.diff", 2, COPY.encode())]) \
        == {"orig.c", "copy.c"}
    assert patchqueue.touched_paths(repo, []) == set()
    assert patchqueue.touched_paths(repo, [PatchInput(None, "x", 1, b"no patch here\n")]) \
        is None


# -- the verbs: sparse first, full when it did not go cleanly ---------------------------------

@pytest.fixture
def scratches(monkeypatch):
    """The ``paths`` each scratch of the run was made with (None: a full one); the fixture
    trees are small, so the sparse scratch is made for every size here."""
    monkeypatch.setattr(pq_scratch, "SPARSE_FROM", 0)
    made: list = []
    real = pq_scratch.scratch_worktree

    def spy(tree, base, parent, *, paths=None, **kw):
        made.append(None if paths is None else set(paths))
        return real(tree, base, parent, paths=paths, **kw)
    monkeypatch.setattr(patchqueue, "scratch_worktree", spy)
    monkeypatch.setattr("askbuild.patchqueue.patching.scratch_worktree", spy)
    return made


@pytest.fixture
def grafts(monkeypatch) -> list:
    """What each ``grafted_queue`` of ``inv patch --check`` yielded (None, or its record)."""
    return graft_spy(monkeypatch, "askbuild.patchqueue.patching")


def test_a_small_tree_gets_a_full_scratch(tmp_path, scratches, grafts, monkeypatch):
    project = make_long_project(tmp_path, 3)
    monkeypatch.setattr(pq_scratch, "SPARSE_FROM", 15)     # README + 10 files + 1 new: 12
    full = patchqueue.patch(project.settings, ["up"], check=True).rows
    assert scratches == [None] and grafts == []
    monkeypatch.setattr(pq_scratch, "SPARSE_FROM", 10)
    assert patchqueue.patch(project.settings, ["up"], check=True).rows == full
    assert scratches == [None] and len(grafts) == 1 and grafts[0] is not None


def _full_only(monkeypatch):
    monkeypatch.setattr(patchqueue, "touched_paths", lambda tree, inputs: None)
    monkeypatch.setattr("askbuild.patchqueue.patching.touched_paths", lambda tree, inputs: None)


def _long(tmp_path):
    project = make_long_project(tmp_path, 6)
    add_release_v2(project)
    return project


@pytest.mark.parametrize("record", [True, False], ids=["after-patch", "no-record"])
def test_a_clean_dry_run_stands_on_the_sparse_scratch(tmp_path, monkeypatch, scratches,
                                                      record):
    project = _long(tmp_path)
    settings = project.settings
    if record:
        patchqueue.patch(settings, ["up"])
    rows = rebasing.rebase(settings, "up", onto="v2", dry_run=True).rows
    assert [r["status"] for r in rows] == ["clean"] * 6
    assert len(scratches) == 1 and scratches[0] == \
        {f"lib/m{i % 10}.c" for i in range(1, 7)} | {"gen/p0003.txt", "gen/p0006.txt"}
    _full_only(monkeypatch)
    assert rebasing.rebase(settings, "up", onto="v2", dry_run=True).rows == rows
    assert scratches[1:] == [None]


@pytest.mark.parametrize("onto", ["v2", "v3"])
@pytest.mark.parametrize("record", [True, False], ids=["after-patch", "no-record"])
def test_conflicts_drops_and_followed_renames_on_the_sparse_scratch(tmp_path, monkeypatch,
                                                                    scratches, onto, record):
    """A conflict (modify/delete), a patch already upstream, 3-way merges and a patch that
    follows a renamed directory to files outside the scratch: the sparse answer stands, and
    it is the full scratch's, commit for commit."""
    project = fx.make_project(tmp_path)
    settings = project.settings()
    if record:
        patchqueue.patch(settings, [fx.NAME])
    rows = rebasing.rebase(settings, fx.NAME, onto=onto, dry_run=True).rows
    assert {r["patch"]: r["status"] for r in rows} == fx.EXPECTED[onto]
    assert len(scratches) == 1 and scratches[0] is not None
    assert fx.CMM_NEW not in scratches[0]
    _full_only(monkeypatch)
    assert rebasing.rebase(settings, fx.NAME, onto=onto, dry_run=True).rows == rows
    assert scratches[1:] == [None]


def _base64_mail(mail: bytes) -> bytes:
    """The same mail with its body base64-encoded (what ``git am`` decodes and
    ``git apply`` cannot read)."""
    head, _, body = mail.partition(b"\n\n")
    return (head + b"\nMIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\n"
            b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(body))


@pytest.mark.parametrize("record", [True, False], ids=["after-patch", "no-record"])
def test_a_patch_git_apply_cannot_read_sends_the_dry_run_to_a_full_scratch(
        tmp_path, monkeypatch, scratches, record):
    project = _long(tmp_path)
    mail = project.series_dir / "0002-change.patch"
    mail.write_bytes(_base64_mail(mail.read_bytes()))
    settings = project.settings
    if record:
        assert [r["status"] for r in patchqueue.patch(settings, ["up"]).rows] \
            == ["applied"] * 6
    rows = rebasing.rebase(settings, "up", onto="v2", dry_run=True).rows
    assert [r["status"] for r in rows] == ["clean"] * 6
    assert "lib/m2.c" not in scratches[0] and scratches[1:] == [None]
    _full_only(monkeypatch)
    assert rebasing.rebase(settings, "up", onto="v2", dry_run=True).rows == rows


def test_patch_check_stands_on_the_graft_and_falls_back(tmp_path, monkeypatch, scratches,
                                                        grafts):
    """On a big tree the check applies the series in a small tree (grafted: the full tree's
    rows, commit for commit, no scratch tree); where that cannot stand, in a sparse scratch;
    a failing patch, in a full one."""
    project = make_long_project(tmp_path, 6)
    rows = patchqueue.patch(project.settings, ["up"], check=True).rows
    assert [r["status"] for r in rows] == ["applied"] * 6
    assert scratches == [] and len(grafts) == 1 and grafts[0] is not None
    assert [r["commit"] for r in rows] == [p["commits"][-1] for p in grafts[0]["patches"]]
    with monkeypatch.context() as m:
        _full_only(m)
        assert patchqueue.patch(project.settings, ["up"], check=True).rows == rows
    # where the small tree cannot stand for the full one (a new file's directory is a file
    # upstream of the patch): the sparse scratch answers, as the full one would
    grafts.clear()
    scratches.clear()
    m7 = make_long_project(tmp_path / "file-above", 1)
    g(m7.tree, "rm", "-q", "--", "README")
    put(m7.tree, "README/inside.c", "x\n")
    commit_all(m7.tree, "README becomes a directory")
    mail = g(m7.tree, "format-patch", "--stdout", "-1", "HEAD")
    g(m7.tree, "checkout", "-q", "-f", "--detach", "HEAD^")
    (m7.series_dir / "0002-dir.patch").write_text(mail)
    with open(m7.series_dir / "series", "a") as f:
        f.write("0002-dir.patch\n")
    scratches.clear()
    got = patchqueue.patch(m7.settings, ["up"], check=True).rows
    assert grafts == [None] and len(scratches) == 1 and scratches[0] is not None
    with monkeypatch.context() as m:
        _full_only(m)
        assert patchqueue.patch(m7.settings, ["up"], check=True).rows == got
    grafts.clear()
    scratches.clear()
    # a patch that does not apply: the sparse attempt fails, the full one says why
    (project.series_dir / "0004-change.patch").write_bytes(
        (project.series_dir / "0004-change.patch").read_bytes().replace(b" m4 block 0 line 2",
                                                                        b" m4 block 0 line X"))
    scratches.clear()
    with pytest.raises(PatchFailed) as sparse_first:
        patchqueue.patch(project.settings, ["up"], check=True)
    assert grafts == [None] and scratches[0] is not None and scratches[1:] == [None]
    _full_only(monkeypatch)
    with pytest.raises(PatchFailed) as full_only:
        patchqueue.patch(project.settings, ["up"], check=True)
    assert str(sparse_first.value) == str(full_only.value)
    assert "0004-change.patch" in str(full_only.value)


def test_on_a_big_tree_the_journal_lists_untracked_files_while_git_status_runs(tmp_path,
                                                                             monkeypatch):
    """On a big tree ``inv patch`` lists the untracked files on a thread while ``git status``
    runs: a run that fails half-way still puts the tree back without touching the user's
    untracked files, and removes the ones it made."""
    monkeypatch.setattr(pq_scratch, "SPARSE_FROM", 0)      # (every tree is big)
    project = make_long_project(tmp_path, 6)
    tree = project.tree
    put(tree, "mine.txt", "my notes\n")
    put(tree, "scratch/dir/keep.o", "build output\n")
    bad = project.series_dir / "0005-change.patch"
    bad.write_bytes(bad.read_bytes().replace(b" m5 block 0 line 2", b" m5 block 0 line X"))
    with pytest.raises(PatchFailed):
        patchqueue.patch(project.settings, ["up"])
    assert (tree / "mine.txt").read_text() == "my notes\n"
    assert (tree / "scratch/dir/keep.o").read_text() == "build output\n"
    assert not (tree / "gen" / "p0003.txt").exists()           # made by patch 3: gone
    assert g(tree, "status", "--porcelain", "--untracked-files=all").splitlines() \
        == ["?? mine.txt", "?? scratch/dir/keep.o"]


def test_the_stamp_lists_again_only_the_directories_that_changed(tmp_path, monkeypatch):
    """The patch stamp's directory signatures, taken with the previous stamp's: the same as
    a walk of every directory, after directories were added, removed, renamed, changed and
    given another mode; only the changed ones (and those changed just before the previous
    stamp, whose signature cannot vouch for them) are listed again."""
    from askbuild.patchqueue import record
    tree = tmp_path / "t"
    for rel in ["a/b/c/f", "a/b/g", "m/n/f", "x/y/z/f", "keep/deep/er/f", "u/v/f"]:
        put(tree, rel, "x\n")
    taken = time.time_ns()
    first = record._tree_dirs(tree)
    put(tree, "a/b/new.txt", "y\n")                     # a/b changes
    put(tree, "c/new/deep/f", "z\n")                    # new directories
    shutil.rmtree(tree / "x" / "y")                     # a directory gone
    (tree / "m").rename(tree / "m2")                    # a directory renamed
    (tree / "u" / "v").chmod(0o000)                     # its mode (its ctime) changes
    listed: list[str] = []
    real = os.scandir

    def spy(path):
        listed.append(os.path.relpath(path, tree))
        return real(path)
    monkeypatch.setattr(record.os, "scandir", spy)
    try:
        full = record._tree_dirs(tree)
        listed.clear()
        assert record._tree_dirs(tree, first, taken + 2 * record.RACY_NS) == full
        assert "keep/deep" not in listed and "keep/deep/er" not in listed
        assert {".", "a/b", "c", "c/new", "c/new/deep", "m2", "m2/n", "x", "u/v"} <= set(listed)
        listed.clear()
        # taken right after those changes: nothing can vouch, everything is listed again
        assert record._tree_dirs(tree, first, taken) == full
        assert "keep/deep/er" in listed
    finally:
        (tree / "u" / "v").chmod(0o755)


@pytest.mark.parametrize("when", ["before the run's changes", "after them"])
def test_the_stamps_walk_during_a_run_reads_again_what_the_run_changed(tmp_path, when):
    """The directories of the next stamp, walked on a thread while ``inv patch`` grafts
    (record.TreeWalk): with the directories above the paths the run changed read again, a
    walk of every directory, whether the walk came before those changes or after (a new
    directory, one made empty and removed as a checkout does, a new file); a directory
    someone else changed meanwhile keeps the signature the walk read, which the next run
    finds changed."""
    import threading

    from askbuild.patchqueue import record
    tree = tmp_path / "t"
    for rel in ["a/b/c/f", "a/b/g", "x/y/z/f", "keep/deep/er/f", "u/v/f"]:
        put(tree, rel, "x\n")
    first = record._tree_dirs(tree)
    go = threading.Event()
    walk = record.TreeWalk(tree, None, go.wait)
    if when == "before the run's changes":
        go.set()
        walk._walked()
    put(tree, "a/b/new.txt", "y\n")
    put(tree, "c/new/deep/f", "z\n")
    (tree / "x/y/z/f").unlink()
    for d in ("x/y/z", "x/y"):
        (tree / d).rmdir()
    put(tree, "u/v/someone-else.txt", "w\n")          # (not the run's)
    go.set()
    got = walk.dirs(["a/b/new.txt", "c/new/deep/f", "x/y/z/f"])
    fresh = record._tree_dirs(tree)
    if when == "after them":
        assert got == fresh
    else:
        assert got == {**fresh, "u/v": first["u/v"]} and first["u/v"] != fresh["u/v"]
    assert "c/new/deep" in got and "x/y" not in got and "x/y/z" not in got
    assert walk.taken_ns <= time.time_ns()
    # a run whose changes will not be known (HEAD not at the base) makes no walk
    assert record.TreeWalk(tree, None, lambda: False).dirs(["a/b/new.txt"]) is None


def _state(project) -> tuple:
    """What ``inv patch`` leaves: HEAD and the branch, the record, every file's bytes."""
    tree = project.tree
    return (g(tree, "rev-parse", "HEAD", "askbuild/patched"), g(tree, "symbolic-ref", "HEAD"),
            project.settings.patch_record("up").read_text(),
            {f: (tree / f).read_bytes() for f in _files(tree)})


def test_inv_patch_on_a_big_tree_grafts(tmp_path, monkeypatch, grafts):
    """On a big tree ``inv patch`` applies the series in a small tree, grafts the commits
    onto the base, brings their objects into the tree's repository and checks the tree out
    at the last (one ``git am``: the small tree's): the rows, record, HEAD, branch and files
    of ``git am`` on the full tree, a repository ``git fsck --strict`` passes, nothing
    untracked; the next run is a no-op."""
    monkeypatch.setattr(pq_scratch, "SPARSE_FROM", 0)      # (every tree is big)
    project = make_long_project(tmp_path / "grafted", 6)
    with monkeypatch.context() as m:
        log = git_logger(tmp_path, m)
        rows = patchqueue.patch(project.settings, ["up"]).rows
    assert len(grafts) == 1 and grafts[0] is not None
    assert git_calls(log, "am") == 1 and git_calls(log, "checkout") == 1
    full = make_long_project(tmp_path / "full", 6)
    with monkeypatch.context() as m:
        m.setattr(pq_scratch, "SPARSE_FROM", 10**9)
        assert patchqueue.patch(full.settings, ["up"]).rows == rows
    assert grafts[1:] == []
    assert [r["status"] for r in rows] == ["applied"] * 6
    assert _state(project) == _state(full)
    g(project.tree, "fsck", "--strict", "--no-dangling", "--no-progress")
    assert g(project.tree, "status", "--porcelain", "--untracked-files=all") == ""
    # the stamp's directories (walked while the series was grafted): those of the tree now
    from askbuild.patchqueue import record as pq_record
    stamp = json.loads(project.settings.patch_stamp("up").read_text())
    assert stamp["dirs"] == pq_record._tree_dirs(project.tree)
    assert [r["status"] for r in patchqueue.patch(project.settings, ["up"]).rows] \
        == ["unchanged"] * 6
    # the record vouches for the tree (the stamp gone, so git is asked): nothing is listed
    # for a journal, nothing read for a graft
    project.settings.patch_stamp("up").unlink()
    with monkeypatch.context() as m:
        log = git_logger(tmp_path, m)
        rows = patchqueue.patch(project.settings, ["up"]).rows
    assert [r["status"] for r in rows] == ["unchanged"] * 6
    assert git_calls(log, "status") == 1
    assert [git_calls(log, w) for w in ("ls-files", "apply", "am", "init")] == [0, 0, 0, 0]


def test_on_a_big_tree_git_status_runs_while_the_series_is_grafted(tmp_path, monkeypatch,
                                                                  grafts):
    """``git status`` of the tree runs while the series is applied in the small repository:
    here a ``git status`` that may only go on once that ``git am`` has started (within
    10 s; alone, it fails) and the run still grafts and gives the tree of a plain run."""
    monkeypatch.setattr(pq_scratch, "SPARSE_FROM", 0)      # (every tree is big)
    project = make_long_project(tmp_path, 6)
    mark = tmp_path / "am-started"
    body = (f'case " $* " in\n  *" am "*) : > "{mark}" ;;\n'
            f'  *" status "*) i=0; while [ ! -e "{mark}" ] && [ $i -lt 100 ]; do sleep 0.1; '
            f'i=$((i + 1)); done; [ -e "{mark}" ] || {{ echo "status ran alone" >&2; exit 1; }}'
            ' ;;\nesac\nexec "$REAL" "$@"\n')
    path, _ = logging_git(tmp_path, body=body)
    monkeypatch.setenv("PATH", path)
    rows = patchqueue.patch(project.settings, ["up"]).rows
    assert [r["status"] for r in rows] == ["applied"] * 6
    assert len(grafts) == 1 and grafts[0] is not None
    assert g(project.tree, "rev-parse", "HEAD") == grafts[0]["head"]


def test_a_dirty_big_tree_is_refused_and_keeps_nothing_of_the_graft(tmp_path, monkeypatch,
                                                                     grafts):
    """An uncommitted edit in a big tree: ``inv patch`` refuses with the file named, though
    the series was already grafted in the small repository meanwhile; nothing of the graft
    reaches the tree (no object in its repository, HEAD, files and record as they were) and
    no scratch is left."""
    monkeypatch.setattr(pq_scratch, "SPARSE_FROM", 0)      # (every tree is big)
    project = make_long_project(tmp_path, 6)
    tree = project.tree
    put(tree, "lib/m1.c", "my edit\n")
    before = (g(tree, "rev-parse", "HEAD"), g(tree, "count-objects", "-v"))
    with pytest.raises(DirtyTreeError) as e:
        patchqueue.patch(project.settings, ["up"])
    assert "uncommitted changes" in str(e.value) and "lib/m1.c" in str(e.value)
    assert len(grafts) == 1 and grafts[0] is not None       # (it had stood)
    assert (g(tree, "rev-parse", "HEAD"), g(tree, "count-objects", "-v")) == before
    assert (tree / "lib/m1.c").read_text() == "my edit\n"
    assert not project.settings.patch_record("up").exists()
    assert not left_scratches(project.settings)


@pytest.mark.parametrize("kind", ["untracked", "ignored", "a directory"])
def test_inv_patch_on_a_big_tree_with_a_file_in_the_way(tmp_path, monkeypatch, grafts, kind):
    """An untracked file, an ignored one (which a checkout would overwrite) or an untracked
    directory where a patch makes a file: the grafted commits are not checked out over it;
    ``git am`` on the full tree then stops at that patch with the message of a run without
    the graft, and the tree, the user's file and the record stay as they were."""
    monkeypatch.setattr(pq_scratch, "SPARSE_FROM", 0)
    messages = []
    mine = "gen/p0003.txt" + ("/inner.txt" if kind == "a directory" else "")
    for name, sparse_from in [("grafted", 0), ("full", 10**9)]:
        project = make_long_project(tmp_path / name, 6)
        monkeypatch.setattr(pq_scratch, "SPARSE_FROM", sparse_from)
        tree = project.tree
        before = g(tree, "rev-parse", "HEAD")
        put(tree, mine, "mine\n")                           # patch 3 makes gen/p0003.txt
        if kind == "ignored":
            with open(tree / ".git/info/exclude", "a") as f:
                f.write("p0003.txt\n")
        with pytest.raises(PatchFailed) as e:
            patchqueue.patch(project.settings, ["up"])
        messages.append(str(e.value).replace(str(tmp_path / name), "<tmp>"))
        assert (tree / mine).read_text() == "mine\n"
        assert g(tree, "rev-parse", "HEAD") == before
        assert g(tree, "status", "--porcelain", "--untracked-files=all", "--ignored") \
            == ("!! " if kind == "ignored" else "?? ") + mine
        assert not project.settings.patch_record("up").exists()
    assert len(grafts) == 1 and grafts[0] is not None       # (the graft itself stood)
    assert messages[0] == messages[1] and "0003-change.patch" in messages[0]


def _failing_grafted_checkout(tmp_path, monkeypatch, grafts, error, code: int, stderr: str,
                              *, writes: bool) -> str:
    """``inv patch`` on a big tree whose checkout of the grafted commits fails with git's
    ``code`` and ``stderr`` (after it wrote, when ``writes``): it raises ``error`` (its
    message returned) after one ``git am`` (the small tree's, none tried again on the full
    tree), and the tree, its branch and the record are as they were."""
    from askbuild import gitutil
    from askbuild.patchqueue import patching
    monkeypatch.setattr(pq_scratch, "SPARSE_FROM", 0)
    project = make_long_project(tmp_path, 6)
    tree = project.tree
    before = g(tree, "rev-parse", "HEAD")
    real = gitutil.git

    def failing(args, *a, **kw):
        if args[:1] == ["checkout"] and kw.get("cwd") == tree:
            if writes:
                real(args, *a, **kw)    # (it did write: the journal must undo it)
            return subprocess.CompletedProcess(args, code, "", stderr)
        return real(args, *a, **kw)
    monkeypatch.setattr(patching.gitutil, "git", failing)
    log = git_logger(tmp_path, monkeypatch)
    with pytest.raises(error) as e:
        patchqueue.patch(project.settings, ["up"])
    monkeypatch.setattr(patching.gitutil, "git", real)
    assert len(grafts) == 1 and grafts[0] is not None and git_calls(log, "am") == 1
    assert g(tree, "rev-parse", "HEAD") == before
    assert g(tree, "status", "--porcelain", "--untracked-files=all") == ""
    assert not project.settings.patch_record("up").exists()
    return str(e.value)


def test_another_failure_of_the_grafted_checkout_is_said_and_undone(tmp_path, monkeypatch,
                                                                   grafts):
    """When the checkout of the files the grafted series changed fails for another reason
    (here: a file it may not write), the run stops with git's words and the source named,
    not a patch that does not apply and not ``git am`` tried again; the journal puts the
    tree, its branch and the record back as they were."""
    message = _failing_grafted_checkout(
        tmp_path, monkeypatch, grafts, PatchFailed, 1,
        "error: unable to create file lib/m1.c: Permission denied\n", writes=True)
    assert "Permission denied" in message and "up" in message
    assert "did not apply" not in message


def test_a_full_disk_at_the_grafted_checkout_is_said_as_such(tmp_path, monkeypatch, grafts):
    """When the checkout of the grafted commits runs out of space, the run stops with the
    full disk named (not a patch that does not apply, not ``git am`` tried again), and the
    tree, its branch and the record stay as they were."""
    from askbuild.patchqueue.worktree import NoSpaceLeft
    message = _failing_grafted_checkout(
        tmp_path, monkeypatch, grafts, NoSpaceLeft, 128,
        "error: unable to write file lib/m1.c: No space left on device\n", writes=False)
    assert "no space left on device" in message
