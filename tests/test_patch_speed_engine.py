"""``inv patch`` asks git each question once (issue 9 item 4), with the same answers.

The checks before a re-patch read the base tag, ``askbuild/patched`` and HEAD with one
``git cat-file --batch-check`` and HEAD's branch and the uncommitted files with one
``git status``; a logging ``git`` on PATH counts them.  The answers are the ones the
one-question-per-process checks gave: a staged rename or a deleted file still stops the run
naming the file, a branch with a user's commit still stops it, and the record and branch
after the run are those of a first run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from patchfixtures import (
    DEV,
    Project,
    add_release_v2,
    commit_all,
    g,
    git_logger,
    logging_git,
    make_long_project,
    make_project,
    write_sources,
)

from askbuild import gitutil
from askbuild import patchqueue as pq
from askbuild.errors import DirtyTreeError


def _word(line: str) -> str:
    """The git subcommand of one logged call (after the ``-c`` options; "" when none)."""
    args = iter(line.split())
    for a in args:
        if a == "-c":
            next(args, None)
        elif not a.startswith("-"):
            return a
    return ""


def _words(log: Path) -> list[str]:
    """The git subcommand of each logged call."""
    return [w for w in map(_word, log.read_text().splitlines()) if w]


@pytest.fixture
def project(tmp_path) -> Project:
    return make_project(tmp_path)


def test_a_repatch_asks_each_question_once_and_gives_the_first_runs_result(project, tmp_path,
                                                                           monkeypatch):
    """Without its record, the tree is patched again with 2 full git processes (checkout of
    the base, am) and 6 quick ones (refs, status, the foreign-commit log, the journal's
    untracked list; branch and HEAD set after the series applied; the am's commits are read
    from HEAD's reflog, no rev-list) and ends exactly as the first run left it.
    ``git status`` runs on a thread from before the refs are read, the untracked list on
    another while the main one reads the log."""
    settings = project.settings
    pq.patch(settings, ["up"])
    first = pq.tree_state(settings, "up")
    head = g(project.tree, "rev-parse", "askbuild/patched")
    settings.patch_record("up").unlink()
    log = git_logger(tmp_path, monkeypatch)
    pq.patch(settings, ["up"])
    words = _words(log)
    # (status and the untracked list run on threads: any order; the log and the untracked
    # list need the refs)
    assert sorted(words[:4]) == ["cat-file", "log", "ls-files", "status"] \
        and words.index("cat-file") < min(words.index("log"), words.index("ls-files")) \
        and words[4:] == ["checkout", "am", "update-ref", "symbolic-ref"], words
    assert {"cat-file", "status", "log", "ls-files", "update-ref",
            "symbolic-ref"} <= gitutil.QUICK and not {"checkout", "am"} & gitutil.QUICK
    assert pq.tree_state(settings, "up") == first
    assert g(project.tree, "symbolic-ref", "HEAD") == "refs/heads/askbuild/patched"
    assert g(project.tree, "rev-parse", "HEAD") == head


def test_a_staged_rename_and_a_deleted_file_stop_the_run_by_name(project):
    """``git status`` entries of every kind (rename: new path; deletion) are named."""
    settings = project.settings
    pq.patch(settings, ["up"])
    settings.patch_record("up").unlink()
    tree = project.tree
    g(tree, "mv", "lib/clean.c", "lib/moved.c")
    (tree / "README").unlink()
    with pytest.raises(DirtyTreeError) as e:
        pq.patch(settings, ["up"])
    assert "lib/moved.c" in e.value.message and "README" in e.value.message
    assert (tree / "lib/moved.c").exists()          # nothing thrown away


def test_a_users_commit_on_the_patched_branch_stops_the_run(project):
    """Also when the record is gone (the branch is then checked with one ``git log``)."""
    settings = project.settings
    pq.patch(settings, ["up"])
    settings.patch_record("up").unlink()
    (project.tree / "mine.txt").write_text("mine\n")
    commit_all(project.tree, "my own work", who=DEV)
    with pytest.raises(DirtyTreeError) as e:
        pq.patch(settings, ["up"])
    assert "my own work" in e.value.message
    assert g(project.tree, "log", "-1", "--format=%s") == "my own work"


def test_a_quick_git_query_behind_config_options_is_still_started_the_quick_way(project,
                                                                               monkeypatch):
    """A read-only git command is started without a full fork (``procs.popen`` quick) also
    when ``-c NAME=VALUE`` pairs come first (askbuild's diff and merge settings), and a
    ``git apply`` that only reports; a command that changes a tree is not, whatever comes
    first."""
    from askbuild import procs
    patch = g(project.tree, "format-patch", "--stdout", "-1", "HEAD")
    seen: list[tuple[str, bool]] = []
    real = procs.run

    def spy(args, *, quick=False, **kw):
        seen.append((args[-1], quick))
        return real(args, quick=quick, **kw)
    monkeypatch.setattr(procs, "run", spy)
    tree = project.tree
    gitutil.git(["rev-parse", "HEAD"], cwd=tree)
    gitutil.git(["-c", "core.abbrev=12", "rev-parse", "HEAD"], cwd=tree)
    gitutil.git(["-c", "diff.noprefix=false", "-c", "diff.relative=false", "diff-tree",
                 "--always", "HEAD"], cwd=tree)
    gitutil.git(["-c", "advice.detachedHead=false", "checkout", "-q", "--detach", "HEAD"],
                cwd=tree)
    gitutil.git(["-c", "rev-parse", "HEAD"], cwd=tree, check=False)    # (-c takes "rev-parse")
    # git apply: read-only when it only reports, not when it applies
    for args in (["--numstat", "-z", "-p1"], ["-R", "--check"], ["--numstat", "--apply"]):
        gitutil.git(["apply", *args, "-"], cwd=tree, input=patch, check=False)
    assert [q for _, q in seen] == [True, True, True, False, False, True, True, False], seen


def test_a_tree_fetched_again_first_waits_for_its_early_status(tmp_path, monkeypatch):
    """``git status`` starts before the refs say whether the tree sits on its locked base;
    when it does not (the lock moved to v2) the fetch that changes the tree waits for that
    status to end, and the run patches v2."""
    project = make_long_project(tmp_path / "p", 3)
    add_release_v2(project)
    settings = project.settings
    pq.patch(settings, ["up"])
    v2 = g(project.upstream.bare, "rev-parse", "v2^{commit}")
    write_sources(project.root, {"up": (project.upstream.url, "v2", v2)})
    path, log = logging_git(tmp_path, body='case " $* " in *" status "*)\n'
                            '  sleep 0.5; "$REAL" "$@"; rc=$?; echo STATUS-DONE >> "$LOG"\n'
                            '  exit $rc;;\nesac\nexec "$REAL" "$@"\n')
    monkeypatch.setenv("PATH", path)
    monkeypatch.setenv("LOG", str(log))
    pq.patch(settings, ["up"])
    lines = log.read_text().splitlines()
    first = next(i for i, ln in enumerate(lines) if " status " in f" {ln} ")
    done = lines.index("STATUS-DONE")
    during = [_word(ln) for ln in lines[first + 1:done]]
    assert set(during) <= {"cat-file"}, lines            # nothing that changes the tree
    assert any(_word(ln) in ("fetch", "checkout") for ln in lines[done:]), lines
    record = pq.tree_state(settings, "up")
    assert record["base"] == v2 and len(record["patches"]) == 3

