"""The batched rebase dry run (issue 9 item 4) gives exactly what the per-patch dry run gives.

:data:`askbuild.rebasing.BATCH_REPLAY` chooses between ONE ``git rebase -i`` for the queue
(stopping only at a conflict or a patch that became empty) and one ``apply --check`` +
``cherry-pick`` + ``commit`` per patch.  On a series built to hit every way a patch can
meet a new release (clean at the same place, clean at an offset, a hunk anchored at line 1
that moved, two hunks that now share context, a conflict in the middle, a patch already
upstream, a new file, a later patch of a file an earlier one changed), both give the same
rows, commits, details, files and conflicts.  When ``inv patch`` recorded the series on this
base, the dry run reuses its commits (no ``git am``) with the same result.  A queue with no
conflict is replayed as trees (:data:`askbuild.rebasing.TREE_REPLAY`: one ``merge-tree`` a
patch, no work tree), again with the same rows and commits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
from patchfixtures import (
    DEV,
    Project,
    Upstream,
    commit_all,
    g,
    git_calls,
    git_logger,
    left_scratches,
    lines,
    make_tree,
    put,
    write_sources,
)

from askbuild import gitutil, rebasing, treereplay
from askbuild import patchqueue as pq
from askbuild.settings import Settings

# (file, 1-based line, new text, subject) of our series, in order
SERIES = [
    ("a.c", 4, "a line 4 OURS", "a: hunk anchored at line 1"),
    ("b.c", 15, "b line 15 OURS", "b: clean at an offset"),
    ("c.c", 10, "c line 10 OURS", "c: conflicts with upstream"),
    ("d.c", 5, "d line 5 OURS", "d: two hunks, now closer"),
    ("e.c", 3, "e line 3 fixed", "e: sent upstream"),
    ("f.c", 0, "new file\n", "f: a new file"),
    ("a.c", 20, "a line 20 OURS", "a: a later change of a.c"),
]
EXPECTED = ["3way", "clean", "conflict", "clean", "upstream", "clean", "clean"]


def _change(repo: Path, rel: str, n: int, new: str) -> None:
    p = repo / rel
    text = p.read_text().split("\n")
    text[n - 1] = new
    p.write_text("\n".join(text))


def _our_commits(work: Path) -> list[str]:
    out = []
    for i, (rel, n, new, subject) in enumerate(SERIES, start=1):
        if n == 0:
            put(work, rel, new)
        else:
            _change(work, rel, n, new)
            if rel == "d.c":
                _change(work, rel, 20, "d line 20 OURS")
        out.append(commit_all(work, subject, date=f"2026-03-0{i}T00:00:00Z"))
    return out


def _upstream_v2(work: Path) -> None:
    """v2: lines on top of a.c and b.c, the very line of c.c we change, the eight lines of
    d.c between our two hunks' contexts gone (the new patch has one hunk), our e.c fix."""
    for rel in ("a.c", "b.c"):
        p = work / rel
        p.write_text("".join(f"{rel} upstream top {i}\n" for i in range(5)) + p.read_text())
    _change(work, "c.c", 10, "c line 10 THEIRS")
    d = (work / "d.c").read_text().split("\n")
    (work / "d.c").write_text("\n".join(d[:8] + d[16:]))
    _change(work, "e.c", 3, "e line 3 fixed")


def make_series_project(tmp: Path) -> Project:
    """An upstream with v1 and v2 and our series of format-patch mails, as patchfixtures'
    projects are laid out (source ``up`` locked to v1, its work tree made as fetch would)."""
    work = tmp / "up-work"
    work.mkdir(parents=True)
    g(work, "init", "-q")
    for name in ("a", "b", "c", "d", "e"):
        put(work, f"{name}.c", lines(name, 30))
    v1 = commit_all(work, "release v1", who={**DEV, "GIT_AUTHOR_NAME": "Upstream"})
    g(work, "tag", "v1")
    ours = _our_commits(work)
    root = tmp / "project"
    series = root / "patches" / "up"
    series.mkdir(parents=True)
    names = []
    for i, c in enumerate(ours, start=1):
        names.append(f"{i:04d}-patch.patch")
        (series / names[-1]).write_bytes(pq.format_patch(work, c))
    (series / "series").write_text("".join(f"{n}\n" for n in names))
    g(work, "checkout", "-q", "--detach", v1)
    _upstream_v2(work)
    v2 = commit_all(work, "release v2", date="2026-02-01T00:00:00Z")
    g(work, "tag", "v2")
    bare = tmp / "up.git"
    g(tmp, "clone", "-q", "--bare", "--", str(work), str(bare))
    up = Upstream(bare, f"file://{bare}", v1, v2)
    write_sources(root, {"up": (up.url, "v1", v1)})
    (root / "recipes" / "patches.toml").write_text('[up]\nlocal = ["patches/up"]\n')
    settings = Settings(project_root=root, work_dir=tmp / "work", cache_dir=tmp / "cache")
    make_tree(settings, "up", up.url, v1)
    return Project(root, settings, up)




def _dry(project: Project, monkeypatch, *, batch: bool, onto: str = "v2") -> list[tuple]:
    monkeypatch.setattr(rebasing, "BATCH_REPLAY", batch)
    rep = rebasing.rebase(project.settings, "up", onto=onto, dry_run=True)
    return [(r["patch"], r["status"], r["commit"], r["detail"], r["files"],
             r["conflicts"]) for r in rep.rows]


@pytest.fixture
def project(tmp_path) -> Project:
    return make_series_project(tmp_path)


def test_batched_dry_run_equals_the_per_patch_dry_run(project, monkeypatch, tmp_path):
    """Every kind of patch, a conflict in the middle: the same rows, commits, details, files
    and conflicts as one patch at a time; the batched run replays with one ``rebase -i`` and
    a ``--skip`` per stop, and asks ``apply --check`` only where the change moved."""
    per_patch = _dry(project, monkeypatch, batch=False)
    assert [r[1] for r in per_patch] == EXPECTED
    log = git_logger(tmp_path, monkeypatch)
    batched = _dry(project, monkeypatch, batch=True)
    assert batched == per_patch
    assert git_calls(log, "cherry-pick") == 0
    assert git_calls(log, "rebase") == 3               # rebase -i, --skip after the 2 stops
    assert git_calls(log, "apply") == 2                # the anchored hunk, the closer hunks
    conflict = batched[2]
    assert conflict[4] == ["c.c"] and "CONFLICT (content)" in conflict[3]


def test_the_batched_dry_run_changes_nothing(project, monkeypatch):
    """Series files, pin, work tree, branch and record stay as they were; no scratch tree or
    rebase state is left."""
    pq.patch(project.settings, ["up"])
    tree = project.tree
    before = (g(tree, "rev-parse", "HEAD", "askbuild/patched"),
              project.settings.sources_file.read_bytes(),
              project.settings.patch_record("up").read_bytes())
    _dry(project, monkeypatch, batch=True)
    after = (g(tree, "rev-parse", "HEAD", "askbuild/patched"),
             project.settings.sources_file.read_bytes(),
             project.settings.patch_record("up").read_bytes())
    assert after == before
    assert g(tree, "status", "--porcelain", "--untracked-files=all") == ""
    assert g(tree, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert not left_scratches(project.settings)


def _unreachable(tree: Path) -> set[str]:
    """The objects of ``tree``'s repository nothing reaches (refs, reflogs, index)."""
    out = g(tree, "fsck", "--unreachable", "--no-progress")
    return {ln.split()[2] for ln in out.splitlines() if ln.startswith("unreachable ")}


@pytest.mark.parametrize("what", ["dry run", "dry run without a record", "patch --check"])
def test_scratch_work_leaves_no_object_in_the_tree(project, monkeypatch, what):
    """A small tree's scratch (a full one) is a repository of its own borrowing the tree's
    objects: the commits and merges of the dry run and of ``inv patch --check`` go with it
    and never pile up, unreachable, in the tree's repository (askbuild's git calls never
    prune them: ``gc.auto=0``).  (``--check`` runs on a tree never patched: on a patched one
    it makes the very commits ``inv patch`` recorded.)"""
    if what != "patch --check":
        pq.patch(project.settings, ["up"])
    if what == "dry run without a record":
        project.settings.patch_record("up").unlink()
    tree = project.tree
    before = _unreachable(tree)
    if what == "patch --check":
        assert {r["status"] for r in pq.patch(project.settings, ["up"], check=True).rows} \
            == {"applied"}
    else:
        assert [r[1] for r in _dry(project, monkeypatch, batch=True)] == EXPECTED
    assert _unreachable(tree) - before == set()
    assert not left_scratches(project.settings)


def test_the_commits_inv_patch_recorded_are_reused(project, monkeypatch, tmp_path):
    """After ``inv patch`` the dry run replays the recorded commits (no ``git am``), with the
    rows of a dry run that applies the series again; a record whose commits are not in the
    tree is not trusted (the series is applied again, same rows)."""
    fresh = _dry(project, monkeypatch, batch=True)
    pq.patch(project.settings, ["up"])
    log = git_logger(tmp_path, monkeypatch)
    assert _dry(project, monkeypatch, batch=True) == fresh
    assert git_calls(log, "am") == 0
    record = project.settings.patch_record("up")
    text = record.read_text()
    head = pq.tree_state(project.settings, "up")["head"]
    record.write_text(text.replace(head, "0" * 40))
    log.unlink()
    assert _dry(project, monkeypatch, batch=True) == fresh
    assert git_calls(log, "am") == 1


def test_a_later_base_gives_the_same_rows_both_ways(project, monkeypatch):
    """Onto v1 itself (every patch applies where it was written) both ways agree too, and
    every patch is clean with the commit ``inv patch`` made."""
    pq.patch(project.settings, ["up"])
    batched = _dry(project, monkeypatch, batch=True, onto="v1")
    assert batched == _dry(project, monkeypatch, batch=False, onto="v1")
    made = [p["commits"][-1] for p in pq.tree_state(project.settings, "up")["patches"]]
    assert [(r[1], r[2]) for r in batched] == [("clean", c) for c in made]


def test_the_users_rebase_settings_and_editor_change_nothing(project, monkeypatch, tmp_path):
    """A user whose environment names a sequence editor that fails, and whose git config
    abbreviates todo commands, squashes ``fixup!`` commits and checks for missing ones, gets
    the rows the per-patch replay gives."""
    per_patch = _dry(project, monkeypatch, batch=False)
    config = tmp_path / "user.gitconfig"
    config.write_text("[rebase]\n\tabbreviateCommands = true\n\tautoSquash = true\n"
                      "\tmissingCommitsCheck = error\n\tinstructionFormat = %s%n\n"
                      "\tupdateRefs = true\n[sequence]\n\teditor = false\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_SEQUENCE_EDITOR", "false")
    assert _dry(project, monkeypatch, batch=True) == per_patch


def _tag_v3(project: Project, tmp: Path) -> None:
    """``v3``: v2 without its change of the line our c.c patch changes (no conflict left)."""
    work = tmp / "v3-work"
    g(tmp, "clone", "-q", "--", str(project.upstream.bare), str(work))
    g(work, "checkout", "-q", "--detach", "v2")
    _change(work, "c.c", 10, "c line 10")
    commit_all(work, "release v3", date="2026-02-02T00:00:00Z")
    g(work, "tag", "v3")
    g(work, "push", "-q", "origin", "v3")


@pytest.mark.parametrize("sparse", [False, True], ids=["full-scratch", "sparse-scratch"])
def test_a_queue_that_picks_cleanly_is_replayed_as_trees(project, monkeypatch, tmp_path,
                                                         sparse):
    """Onto a release where no patch conflicts, the dry run answers from trees alone (one
    ``merge-tree`` for the queue, no ``rebase``, ``cherry-pick`` or ``commit``): the rows,
    commits and details of the sequencer and of one patch at a time, the patch already
    upstream dropped; a sparse scratch is checked out only to ask ``apply --check`` of the
    patches whose change moved."""
    _tag_v3(project, tmp_path)
    if sparse:
        from askbuild.patchqueue import scratch as pq_scratch
        monkeypatch.setattr(pq_scratch, "SPARSE_FROM", 0)
    pq.patch(project.settings, ["up"])
    per_patch = _dry(project, monkeypatch, batch=False, onto="v3")
    assert [r[1] for r in per_patch] == ["3way", "clean", "clean", "clean", "upstream",
                                         "clean", "clean"]
    monkeypatch.setattr(rebasing, "TREE_REPLAY", False)
    sequencer = _dry(project, monkeypatch, batch=True, onto="v3")
    monkeypatch.setattr(rebasing, "TREE_REPLAY", True)
    log = git_logger(tmp_path, monkeypatch)
    trees = _dry(project, monkeypatch, batch=True, onto="v3")
    assert trees == sequencer == per_patch
    assert git_calls(log, "merge-tree") == 1
    assert git_calls(log, "rebase") == git_calls(log, "cherry-pick") \
        == git_calls(log, "commit") == 0
    # new^ of the 2 moved ones: the scratch had nothing checked out before them
    assert git_calls(log, "checkout") == 2


@contextlib.contextmanager
def _fails_after(seconds: int, why: str):
    """Fail the test (not hang it) when the block is still running after ``seconds``."""
    def expired(*_):
        raise AssertionError(why)
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _fake_stdbuf(tmp: Path, monkeypatch) -> None:
    """A ``stdbuf`` first on PATH that runs the command without unbuffering it: git's
    answers then come only when it ends."""
    bin_dir = tmp / "fake-stdbuf"
    bin_dir.mkdir()
    script = bin_dir / "stdbuf"
    script.write_text('#!/bin/sh\nshift\nexec "$@"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


@pytest.mark.parametrize("how", ["no-stdbuf", "answers-held-back"])
def test_without_answers_one_by_one_the_sequencer_replays(project, monkeypatch, tmp_path,
                                                          how):
    """Without ``stdbuf``, or when ``merge-tree``'s answers do not come one by one (they
    would come only when it ends), the tree replay gives up at its first question, the
    merge of the start with itself (:data:`treereplay.PROBE_TIMEOUT`), not after a merge's
    time limit, and the sequencer gives the same rows."""
    _tag_v3(project, tmp_path)
    pq.patch(project.settings, ["up"])
    expected = _dry(project, monkeypatch, batch=True, onto="v3")
    if how == "no-stdbuf":
        real = treereplay.shutil.which
        monkeypatch.setattr(treereplay.shutil, "which",
                            lambda name, *a, **kw: None if name == "stdbuf" else real(name))
    else:
        _fake_stdbuf(tmp_path, monkeypatch)
        monkeypatch.setattr(treereplay, "PROBE_TIMEOUT", 0.5)
        monkeypatch.setattr(treereplay, "MERGE_TIMEOUT", 3600.0)
    log = git_logger(tmp_path, monkeypatch)
    with _fails_after(120, "the replay waited for a merge's time limit"):
        assert _dry(project, monkeypatch, batch=True, onto="v3") == expected
    assert git_calls(log, "rebase") == 2     # rebase -i, --skip past the patch upstream has
    assert git_calls(log, "merge-tree") == (0 if how == "no-stdbuf" else 1)


def test_the_tree_replay_writes_sound_objects(tmp_path):
    """The replay's commits (one pack written at the end) and helper commits (loose) pass
    ``git fsck --strict``; each new commit has its old one's message and author and the tree
    ``git cherry-pick`` gives; a commit that became empty is None."""
    repo = tmp_path / "repo"
    g(tmp_path, "init", "-q", "--", str(repo))
    put(repo, "a.c", "".join(f"a{i}\n" for i in range(20)))
    put(repo, "b.c", "b\n")
    base = commit_all(repo, "base")
    olds = []
    for i, (path, text) in enumerate([("a.c", None), ("new/c.c", "c\n"), ("b.c", "b2\n")]):
        if text is None:
            put(repo, path, (repo / path).read_text().replace("a3\n", "a3 local\n"))
        else:
            put(repo, path, text)
        olds.append(commit_all(repo, f"local {i}\n\nbody {i}", date=f"2026-01-0{i + 2}T00:00:00Z"))
    g(repo, "checkout", "-q", "--detach", base)
    put(repo, "a.c", (repo / "a.c").read_text().replace("a15\n", "a15 upstream\n"))
    put(repo, "b.c", "b2\n")                    # the third local commit is upstream already
    onto = commit_all(repo, "upstream", date="2026-02-01T00:00:00Z")
    got = treereplay.replay_trees(repo, onto, olds, ("askbuild", "askbuild@localhost"), [])
    assert got is not None and got[2] is None and all(got[:2])
    g(repo, "fsck", "--strict", "--no-dangling", "--no-progress")
    for old, new in zip(olds[:2], got[:2], strict=True):
        assert g(repo, "log", "-1", "--format=%B%an%ad", new) \
            == g(repo, "log", "-1", "--format=%B%an%ad", old)
    g(repo, "checkout", "-q", "--detach", onto)
    g(repo, "cherry-pick", "--allow-empty", olds[0], olds[1], env=DEV)
    assert g(repo, "rev-parse", "HEAD^{tree}") == g(repo, "rev-parse", f"{got[1]}^{{tree}}")
    assert g(repo, "rev-parse", f"{got[1]}^") == got[0]


class _Following(treereplay.ReplayAlong):
    """:class:`treereplay.ReplayAlong` keeping every instance (``made``)."""

    made: list[treereplay.ReplayAlong] = []

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        _Following.made.append(self)


def _children() -> list[str]:
    """The git processes among this process's children (zombies included; not the servers
    other tests of the session started)."""
    me, out = str(os.getpid()), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{pid}/status").read_text()
            if f"\nPPid:\t{me}\n" in status and status.startswith(
                    ("Name:\tgit", "Name:\tstdbuf")):
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                           .decode(errors="replace"))
    return out


@pytest.mark.parametrize("reflogs", ["default", "off in the user's config"])
def test_without_a_record_each_old_commit_is_replayed_while_the_series_is_applied(
        project, monkeypatch, tmp_path, reflogs):
    """Without a patch record the dry run applies the old series first (one ``git am``);
    each commit it makes is replayed onto the new release as soon as it is made (the
    follower picks every one of them before the apply returns: the test holds the apply's
    return until then, and fails after 30 s), with the rows and commits of the dry run that
    replays recorded commits, one ``merge-tree`` for all, no sequencer.  A user whose git
    config keeps no reflog changes nothing (the scratch's own config says to keep it)."""
    _tag_v3(project, tmp_path)
    pq.patch(project.settings, ["up"])
    expected = _dry(project, monkeypatch, batch=True, onto="v3")
    project.settings.patch_record("up").unlink()
    if reflogs != "default":
        config = tmp_path / "user.gitconfig"
        config.write_text("[core]\n\tlogAllRefUpdates = false\n")
        monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setattr(_Following, "made", [])
    monkeypatch.setattr(treereplay, "ReplayAlong", _Following)
    real_apply = pq.apply_queue
    waited = []

    def apply_then_wait(*args, **kw):
        record = real_apply(*args, **kw)
        commits = [c for p in record["patches"] for c in p["commits"]]
        assert len(_Following.made) == 1, "nothing follows the apply"
        along = _Following.made[0]
        deadline = time.monotonic() + 30
        while along.seen != commits and time.monotonic() < deadline:
            time.sleep(0.01)
        waited.append(along.seen == commits)
        return record
    monkeypatch.setattr(pq, "apply_queue", apply_then_wait)
    log = git_logger(tmp_path, monkeypatch)
    assert _dry(project, monkeypatch, batch=True, onto="v3") == expected
    assert waited == [True], "the old commits were not replayed while the series was applied"
    assert git_calls(log, "am") == git_calls(log, "merge-tree") == 1
    assert git_calls(log, "rebase") == git_calls(log, "cherry-pick") == 0
    assert not left_scratches(project.settings)
    assert _children() == []


def test_an_old_series_that_no_longer_applies_stops_the_follower_too(project, monkeypatch):
    """A patch that does not apply to the old base ends the dry run with the patch named;
    the replay that followed the apply leaves no process and no scratch behind."""
    series = project.root / "patches" / "up"
    bad = series / "0004-patch.patch"
    bad.write_bytes(bad.read_bytes().replace(b" d line 4\n", b" d line four\n"))
    with pytest.raises(rebasing.PatchFailed) as exc:
        _dry(project, monkeypatch, batch=True)
    assert "patch 4 of 7 of up did not apply: 0004-patch.patch" in exc.value.message
    assert not left_scratches(project.settings)
    assert _children() == []


def _following_repo(tmp: Path) -> tuple[Path, str, str]:
    """A repository at ``base`` (HEAD) and ``onto``, a later release changing a.c's top."""
    repo = tmp / "repo"
    g(tmp, "init", "-q", "--", str(repo))
    put(repo, "a.c", "".join(f"a{i}\n" for i in range(20)))
    base = commit_all(repo, "base")
    put(repo, "a.c", (repo / "a.c").read_text().replace("a1\n", "a1 upstream\n"))
    onto = commit_all(repo, "upstream", date="2026-02-01T00:00:00Z")
    g(repo, "checkout", "-q", "--detach", base)
    return repo, base, onto


def _local(repo: Path, i: int, old: str, new: str) -> str:
    put(repo, "a.c", (repo / "a.c").read_text().replace(old, new))
    return commit_all(repo, f"local {i}", date=f"2026-01-0{i + 2}T00:00:00Z")


WHO = ("askbuild", "askbuild@localhost")


def test_the_follower_replays_what_replay_trees_replays(tmp_path):
    """Commits made (by any git command) while :class:`treereplay.ReplayAlong` follows give
    the new commits :func:`treereplay.replay_trees` gives for them; a commit that conflicts
    gives None, as there."""
    repo, base, onto = _following_repo(tmp_path)
    args = ["-p", "--full-index"]
    with treereplay.ReplayAlong(repo, base, onto, WHO, [], diff_args=args) as along:
        olds = [_local(repo, i, f"a{10 + i}\n", f"a{10 + i} local\n") for i in range(3)]
        got = along.result(olds)
        diffs = (along.old_diffs(), along.new_diffs(got))
    assert got == treereplay.replay_trees(repo, onto, olds, WHO, []) and all(got)
    g(repo, "fsck", "--strict", "--no-dangling", "--no-progress")
    # the patches read along are diff-tree's of the same commits
    assert diffs == (gitutil.diff_tree_each(repo, olds, args),
                     gitutil.diff_tree_each(repo, got, args))
    assert all(b"local\n" in d for part in diffs for d in part.values())
    g(repo, "checkout", "-q", "--detach", base)
    with treereplay.ReplayAlong(repo, base, onto, WHO, [], diff_args=args) as along:
        olds = [_local(repo, 0, "a1\n", "a1 ours\n"), _local(repo, 1, "a5\n", "a5 local\n")]
        assert along.result(olds) is None
        # past the conflict the old commits were still followed for their patches, and the
        # caller's own new commits are asked of the same process
        assert along.old_diffs() == gitutil.diff_tree_each(repo, olds, args)
        assert along.new_diffs(got) == gitutil.diff_tree_each(repo, got, args)
    assert treereplay.replay_trees(repo, onto, olds, WHO, []) is None


@pytest.mark.parametrize("what", ["reset back", "another queue", "nothing made"])
def test_what_the_follower_cannot_vouch_for_is_unknown(tmp_path, what):
    """HEAD moved back (a reset), a queue other than the commits followed, or no commit
    seen: :data:`treereplay.UNKNOWN`, and the caller replays the queue itself."""
    repo, base, onto = _following_repo(tmp_path)
    with treereplay.ReplayAlong(repo, base, onto, WHO, [], diff_args=["-p"]) as along:
        if what == "nothing made":
            olds = []
        else:
            first = _local(repo, 0, "a7\n", "a7 x\n")
            if what == "reset back":
                g(repo, "reset", "-q", "--hard", base)
            second = _local(repo, 1, "a9\n", "a9 y\n")
            olds = [first, second] if what == "reset back" else [second]
        assert along.result(olds) is treereplay.UNKNOWN
        assert along.old_diffs() is None    # (not the patches of that queue either)
    assert _children() == []


def test_a_follower_that_cannot_start_leaves_the_replay_to_the_dry_run(project, monkeypatch,
                                                                        tmp_path):
    """When the follower cannot be set up (here its ``diff-tree``'s output file, as on a
    full disk), the dry run replays the queue after the apply, with the same rows, and no
    process of the follower is left."""
    _tag_v3(project, tmp_path)
    pq.patch(project.settings, ["up"])
    expected = _dry(project, monkeypatch, batch=True, onto="v3")
    project.settings.patch_record("up").unlink()

    class NoRoom(treereplay._Differ):
        def __init__(self, *args, **kw):
            raise OSError(28, "No space left on device")
    monkeypatch.setattr(treereplay, "_Differ", NoRoom)
    log = git_logger(tmp_path, monkeypatch)
    assert _dry(project, monkeypatch, batch=True, onto="v3") == expected
    assert git_calls(log, "merge-tree") == 1 and git_calls(log, "rebase") == 0
    assert not left_scratches(project.settings)
    assert _children() == []
