"""The Python check-in of an imported tarball (askbuild.checkin): the commit of ``git add``,
made without it when the tree allows, and ``git add`` whenever the tree holds what only git
answers or git finds the result wrong.

Each import is compared with the oracle of test_tarimport (the first askbuild import: plain
``git add -A -f``); the git commands run are recorded to tell which way the import went."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import faults
import pytest
from test_tarimport import MESSAGE, MIXED, _oracle
from upstreams import random_bytes, tar_bytes

from askbuild import checkin, gitutil, packfile, tarimport
from askbuild.errors import NoSpaceError, SourceError
from askbuild.importcache import ImportCache


@pytest.fixture
def git_calls(monkeypatch):
    """The git subcommands askbuild runs (the word after the ``-c`` settings)."""
    calls: list[str] = []
    real = gitutil.git

    def spy(args, *a, **k):
        words = list(args)
        while words and words[0] == "-c":
            words = words[2:]
        calls.append(words[0])
        return real(args, *a, **k)
    monkeypatch.setattr(gitutil, "git", spy)
    return calls


def _import(tmp_path: Path, entries: list[tuple], name: str = "new",
            cache: ImportCache | None = None) -> tuple[str, Path]:
    archive = tmp_path / "pkg-1.0.tar.gz"
    archive.write_bytes(tar_bytes(entries))
    tree = tmp_path / name
    return tarimport.import_tarball(archive, tree, strip_components=1, what="pkg",
                                    message=MESSAGE, cache=cache), tree


def _git_ok(tree: Path) -> None:
    """What git itself says of the result: objects sound, pack index right, tree clean."""
    for args in (["fsck", "--full", "--strict"], ["status", "--porcelain", "--ignored"]):
        proc = gitutil.git(args, cwd=tree, check=False)
        assert proc.returncode == 0 and proc.stdout == "", (args, proc.stdout, proc.stderr)
    for idx in (tree / ".git" / "objects" / "pack").glob("*.idx"):
        gitutil.git(["verify-pack", "--", str(idx)], cwd=tree)


def _packs(tree: Path) -> list[str]:
    return sorted(p.name for p in (tree / ".git" / "objects" / "pack").iterdir())


# Bigger than one read (the streamed path), and incompressible.
BIG = random.Random(1).randbytes(3 * (1 << 20) + 17)


def test_mixed_archive_is_checked_in_without_git_add(tmp_path, git_calls):
    entries = [*MIXED, ("file", "pkg-1.0/big.bin", BIG),
               ("file", "pkg-1.0/.gitattributes", "*.c diff=cpp\n"),      # diff: no conversion
               ("file", "pkg-1.0/.github/workflow", "on: push\n"),
               ("file", "pkg-1.0/same-as-readme", "hello\n"),           # one blob, twice
               # a tree orders a directory as if its name ended in "/": x.c, x-y, x/, x0
               ("file", "pkg-1.0/x0", "0\n"), ("file", "pkg-1.0/x/inner", "in\n"),
               ("file", "pkg-1.0/x.c", "c\n"), ("file", "pkg-1.0/x-y", "y\n"),
               ("dir", "pkg-1.0/x/empty")]
    commit, tree = _import(tmp_path, entries)
    assert "add" not in git_calls
    assert commit == _oracle(tmp_path / "pkg-1.0.tar.gz", tmp_path / "old", 1)
    _git_ok(tree)
    # one pack holding every blob and tree once (the trees git commit made of the index were
    # there already): the commit is the only loose object
    assert len([p for p in _packs(tree) if p.endswith(".pack")]) == 1
    counts = dict(line.split(": ") for line in
                  gitutil.out(["count-objects", "-v"], cwd=tree).splitlines())
    blobs = {e.split()[1] for e in gitutil.out(["ls-files", "-s", "-z"], cwd=tree).split("\0")
             if e}
    trees = {gitutil.out(["rev-parse", "HEAD^{tree}"], cwd=tree)} | {
        line.split()[2] for line in gitutil.out(["ls-tree", "-r", "-t", "HEAD"],
                                                 cwd=tree).splitlines()
        if line.split()[1] == "tree"}
    assert int(counts["in-pack"]) == len(blobs) + len(trees)
    assert int(counts["count"]) == 1
    assert gitutil.git(["cat-file", "blob", "HEAD:big.bin"], cwd=tree, text=False).stdout == BIG


@pytest.mark.parametrize("entries", [
    [("file", "pkg-1.0/.gitattributes", "*.txt text\n"), ("file", "pkg-1.0/a.txt", "x\r\n")],
    [("file", "pkg-1.0/sub/.gitattributes", "[attr]mine eol=lf\n*.c mine\n"),
     ("file", "pkg-1.0/sub/a.c", "x\r\n")],
    [("file", "pkg-1.0/git~2/x", "an NTFS short name git may refuse\n")],
], ids=["text", "macro", "short-name"])
def test_what_only_git_add_answers_goes_to_git_add(tmp_path, git_calls, entries):
    commit, tree = _import(tmp_path, [("dir", "pkg-1.0"), *entries])
    assert "add" in git_calls
    assert commit == _oracle(tmp_path / "pkg-1.0.tar.gz", tmp_path / "old", 1)
    _git_ok(tree)


def test_user_attributes_file_changes_nothing(tmp_path, monkeypatch):
    """``$XDG_CONFIG_HOME/git/attributes`` is read by git even with no global config: it
    must not convert what the import stores (both ways give the attribute-free commit)."""
    entries = [("dir", "pkg-1.0"), ("file", "pkg-1.0/dos.c", "int a;\r\n")]
    clean, _ = _import(tmp_path, entries, "before")
    xdg = tmp_path / "xdg"
    (xdg / "git").mkdir(parents=True)
    (xdg / "git" / "attributes").write_text("* text=auto\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    for method in ("python", "bulk", "plain"):
        archive = tmp_path / "pkg-1.0.tar.gz"
        tree = tmp_path / method
        assert tarimport.import_tarball(archive, tree, strip_components=1, what="pkg",
                                        message=MESSAGE, method=method) == clean
        assert b"\r" in gitutil.git(["cat-file", "blob", "HEAD:dos.c"], cwd=tree,
                                     text=False).stdout


def test_a_wrong_check_in_is_caught_by_git_and_redone_by_git_add(tmp_path, git_calls,
                                                                 monkeypatch):
    """If the index askbuild writes ever missed a file or held a wrong stat, git's own look
    (``ls-files --others``, ``diff-files``) sends the import to ``git add``: still the right
    commit, and the pack of the failed attempt is gone."""
    real = checkin._index_file
    monkeypatch.setattr(checkin, "_index_file", lambda files, ids: real(files[1:], ids[1:]))
    commit, tree = _import(tmp_path, MIXED)
    assert git_calls.count("add") == 1
    assert commit == _oracle(tmp_path / "pkg-1.0.tar.gz", tmp_path / "old", 1)
    _git_ok(tree)
    assert len([p for p in _packs(tree) if p.endswith(".pack")]) == 1   # git add's only


def test_re_import_from_the_cached_import_writes_no_pack(tmp_path, git_calls):
    cache = ImportCache(tmp_path / "imports" / "entry", "pkg")
    first, a = _import(tmp_path, MIXED, "a", cache)
    again, b = _import(tmp_path, MIXED, "b", cache)
    assert first == again and "add" not in git_calls
    assert _packs(a) == _packs(b)               # the cached pack only: no blob written again
    _git_ok(b)


def test_a_refusal_leaves_nothing_behind(tmp_path):
    """A tree check_in will not take gets neither index nor pack from it."""
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "x").write_text("x\n")
    (tree / ".gitattributes").write_text("* ident\n")
    gitutil.git(["init", "-q", "--", str(tree)])
    before = sorted(os.listdir(tree / ".git"))
    assert checkin.check_in(tree) is None
    assert sorted(os.listdir(tree / ".git")) == before
    assert _packs(tree) == []


def test_full_disk_while_checking_in_says_so(tmp_path):
    """The extraction fits, the pack does not: a full-disk error naming the source and the
    place (never a traceback), and no pack half-written under a final name."""
    archive = tmp_path / "pkg-1.0.tar.gz"
    archive.write_bytes(tar_bytes([("dir", "pkg-1.0"),
                                   ("file", "pkg-1.0/blob.bin", random_bytes(600 << 10, 3))]))
    with faults.tmpfs(tmp_path / "small", "1000k") as small:
        with pytest.raises(NoSpaceError) as err:
            tarimport.import_tarball(archive, small / "tree", strip_components=1, what="pkg",
                                     message=MESSAGE)
        assert (small / "tree" / "blob.bin").stat().st_size == 600 << 10    # extracted
        assert "source pkg" in err.value.message and str(small / "tree") in err.value.message
        assert "no space left" in err.value.message.lower()
        pack_dir = small / "tree" / ".git" / "objects" / "pack"
        assert [p.name for p in pack_dir.iterdir()] == []
        assert not (small / "tree" / ".git" / "index").exists()


def test_big_files_go_a_chunk_at_a_time(tmp_path, monkeypatch, git_calls):
    """A file above the whole-read size is hashed, then deflated straight into the pack (a
    copy of it is stored once); the cached re-import writes nothing for it."""
    monkeypatch.setattr(checkin, "_WHOLE", 1 << 20)
    entries = [("dir", "pkg-1.0"), ("file", "pkg-1.0/big.bin", BIG),
               ("file", "pkg-1.0/copy/big.bin", BIG, 0o755), ("file", "pkg-1.0/small", "s\n")]
    cache = ImportCache(tmp_path / "imports" / "entry", "pkg")
    commit, tree = _import(tmp_path, entries, "a", cache)
    assert "add" not in git_calls
    assert commit == _oracle(tmp_path / "pkg-1.0.tar.gz", tmp_path / "old", 1)
    _git_ok(tree)
    assert gitutil.git(["cat-file", "blob", "HEAD:copy/big.bin"], cwd=tree,
                       text=False).stdout == BIG
    counts = dict(line.split(": ") for line in
                  gitutil.out(["count-objects", "-v"], cwd=tree).splitlines())
    assert int(counts["in-pack"]) == 2 + 2       # big.bin's and small's blobs; the two trees
    git_calls.clear()                           # (the oracle ran git add)
    again, b = _import(tmp_path, entries, "b", cache)
    assert again == commit and _packs(b) == _packs(tree) and "add" not in git_calls


def test_a_file_changed_while_checked_in_is_left_to_git_add(tmp_path, monkeypatch):
    """A file whose size is no longer the one the walk saw: check_in gives up (the import's
    ``git add`` then answers), removing its half-written pack and writing no index."""
    tree = tmp_path / "t"
    tree.mkdir()
    for name in ("a", "b", "c"):
        (tree / name).write_text(f"{name}\n")
    gitutil.git(["init", "-q", "--", str(tree)])
    real = checkin._walk

    def walk(top):
        for f in real(top):
            if f.path == b"b":
                (tree / "b").write_text("b, longer now\n")
            yield f
    monkeypatch.setattr(checkin, "_walk", walk)
    assert checkin.check_in(tree) is None
    assert _packs(tree) == [] and not (tree / ".git" / "index").exists()


@pytest.mark.parametrize("what", ["filemode", "fifo"])
def test_a_repository_or_file_git_add_must_judge_is_refused(tmp_path, what):
    """No executable bits recorded (``core.fileMode`` false), or a file that is neither
    regular nor a symlink: check_in writes nothing and leaves it to ``git add``."""
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "run.sh").write_text("#!/bin/sh\n")
    (tree / "run.sh").chmod(0o755)
    gitutil.git(["init", "-q", "--", str(tree)])
    if what == "filemode":
        gitutil.git(["config", "core.fileMode", "false"], cwd=tree)
    else:
        os.mkfifo(tree / "pipe")
    assert checkin.check_in(tree) is None
    assert _packs(tree) == [] and not (tree / ".git" / "index").exists()


def test_a_failure_to_write_while_checking_in_names_the_source(tmp_path, monkeypatch):
    def broken(tree, **_):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(checkin, "check_in", broken)
    with pytest.raises(SourceError) as err:
        _import(tmp_path, MIXED)
    assert err.value.message.startswith("source pkg: cannot check pkg-1.0.tar.gz into git")
    assert "Input/output error" in err.value.message and "writable" in err.value.fix


def test_pack_offsets_past_2_gib_use_the_large_offset_table(tmp_path):
    """A pack entry at 2 GiB or more is named in the index's 64-bit offset table (idx v2):
    git reads every offset back as written (``git show-index``), and the ids of the index
    are what askbuild takes as stored (askbuild.packfile).  (The entries are made up: no 2 GiB
    pack is written.)"""
    repo = tmp_path / "repo"
    gitutil.git(["init", "-q", "--", str(repo)], cwd=tmp_path)
    pack_dir = repo / ".git" / "objects" / "pack"
    writer = packfile.PackWriter(pack_dir)
    try:
        offsets = [12, 0x7FFFFFFF, 0x80000000, 5 * 2**30 + 7, 2**40 + 3]
        rng = random.Random(7)
        writer.entries = [(rng.randbytes(20), off, rng.getrandbits(32)) for off in offsets]
        idx = writer.index(b"\0" * 20)
    finally:
        writer.abort()
    read = gitutil.git(["show-index"], cwd=repo, input=idx).stdout.decode()
    got = {}
    for line in read.splitlines():
        off, sha, crc = line.split()
        got[bytes.fromhex(sha)] = (int(off), int(crc.strip("()"), 16))
    assert got == {sha: (off, crc) for sha, off, crc in writer.entries}
    (pack_dir / "pack-test.idx").write_bytes(idx)
    assert packfile.stored_ids(repo / ".git") == {sha for sha, _, _ in writer.entries}
