"""The batched patch queue (issue 9 item 4): runs of mails applied with ONE ``git am``.

``apply_queue(batch=True)`` must give exactly what one ``git am --3way`` per patch gives (same
commits, so same trees, messages, authors and dates; same rows, same failure message), spawn
a constant number of ``git am`` (a logging ``git`` on PATH counts them), and be crash-safe on
a real work tree: a run killed inside or right after the batched ``git am`` (deterministic
kill points: a ``git`` wrapper kills askbuild) or stopped by a full disk leaves the tree to
the run journal, and a PLAIN re-run gives what an uninterrupted run gives.

``inv patch --check`` and the rebase dry run (scratch trees) always use the batched apply;
``inv patch`` on a work tree does when :data:`askbuild.patchqueue.apply.BATCH` says so (the
default), and the crash tests here force it in the child process whatever the default.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import faults
import pytest
from patchfixtures import Project, g, logging_git, make_long_project, make_project

from askbuild import gitutil, rebasing
from askbuild import patchqueue as pq
from askbuild.errors import PatchFailed
from askbuild.patchqueue import apply as pq_apply
from askbuild.report import Report
from askbuild.sources import load_sources

N = 40

# The real CLI with the batched apply forced on for work trees (argv: inv arguments).
BATCHED_CLI = r"""
import runpy, sys
import askbuild.patchqueue.apply as apply
apply.BATCH = True
sys.argv = ["invoke", *sys.argv[1:]]
runpy.run_module("invoke", run_name="__main__", alter_sys=True)
"""


def _inputs(project: Project) -> list[pq.PatchInput]:
    sources = load_sources(project.settings)
    layers = pq.load_layers(project.settings, sources)["up"]
    return pq.collect_inputs(project.settings, layers, sources, trees={"up": project.tree})


def _queue(project: Project, base: str, *, batch: bool) -> tuple[list[dict], dict | None, str,
                                                                  str]:
    """Apply the series onto ``base`` on a detached HEAD: (rows, record or None, the failure
    message + fix + partial record ("" when none), HEAD afterwards)."""
    report = Report("patch", "patch", pq.PATCH_COLUMNS)
    record, failure = None, ""
    try:
        record = pq.apply_queue(project.tree, base, _inputs(project), source="up",
                                report=report, branch=None, batch=batch)
    except PatchFailed as e:
        failure = f"{e.message}\nfix: {e.fix}\npartial: {e.partial}"
    head = gitutil.out(["rev-parse", "HEAD"], cwd=project.tree)
    return report.rows, record, failure, head


def _git_logger(tmp: Path, monkeypatch, body: str = "") -> Path:
    """:func:`patchfixtures.logging_git` first on the test's PATH (running ``body``)."""
    path, log = logging_git(tmp, body=body)
    monkeypatch.setenv("PATH", path)
    return log


def _calls(log: Path, word: str) -> int:
    return sum(1 for ln in log.read_text().splitlines() if f" {word} " in f" {ln} ")


# -- the same commits, rows and messages as one patch at a time -----------------------------

@pytest.fixture(params=["user's git identity", "no git identity"])
def identity(request, tmp_path, monkeypatch):
    """Run with the developer's git config, and as on a fresh CI runner: no user.name or
    user.email anywhere (``git am --abort`` / ``--quit`` refuse to run then unless askbuild
    gives them its identity)."""
    if request.param == "no git identity":
        home = tmp_path / "empty-home"
        home.mkdir()
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
        for var in ("EMAIL", "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME",
                    "GIT_COMMITTER_EMAIL"):
            monkeypatch.delenv(var, raising=False)
    return request.param


def test_batched_queue_gives_the_same_commits_rows_and_failure_as_one_by_one(tmp_path,
                                                                              identity):
    """On v2 the series has an applied patch, a 3-way patch and then a failing one: the
    batched run and the per-patch run give the same rows (3way included), the same commits,
    the same failure message (failing hunk, git's words, the partial record) and leave HEAD
    on the same last good commit, with no ``git am`` left in progress."""
    project = make_project(tmp_path)
    v2 = project.upstream.v2
    one_by_one = _queue(project, v2, batch=False)
    batched = _queue(project, v2, batch=True)
    assert batched == one_by_one
    rows, _, failure, head = batched
    assert [r["status"] for r in rows] == ["applied", "3way", "failed", "pending", "pending",
                                           "pending"]
    assert rows[1]["detail"] == "3-way merge" and rows[1]["commit"] == head
    assert "patch 3 of 6 of up did not apply: 0003-conflict.patch" in failure
    assert not (project.tree / ".git" / "rebase-apply").exists()


def test_batched_queue_of_mixed_inputs_gives_the_same_commits(tmp_path):
    """Mails without an mbox ``From `` line, a plain diff between mails (it breaks the run)
    and a patch with two mails in one file give the same commits and rows either way."""
    project = make_project(tmp_path)
    sdir = project.series_dir
    two = sdir / "0002-near.patch"
    bare = sdir / "0003-conflict.patch"
    bare.write_bytes(bare.read_bytes().split(b"\n", 1)[1])          # no "From <sha>" line
    plain = sdir / "0004-upstream.patch"
    plain.write_bytes(plain.read_bytes()[plain.read_bytes().index(b"diff --git"):])
    (sdir / "0001-clean.patch").write_bytes((sdir / "0001-clean.patch").read_bytes()
                                             + two.read_bytes())    # two mails in one file
    two.unlink()
    (sdir / "series").write_text((sdir / "series").read_text().replace("0002-near.patch\n", ""))
    v1 = project.upstream.v1
    one_by_one = _queue(project, v1, batch=False)
    batched = _queue(project, v1, batch=True)
    assert batched == one_by_one
    rows, record, failure, _ = batched
    assert failure == "" and [r["status"] for r in rows] == ["applied"] * 5
    assert [len(p["commits"]) for p in record["patches"]] == [2, 1, 1, 1, 1]


def test_a_long_batched_series_makes_the_commits_of_one_by_one(tmp_path):
    """40 mails (new files among them): the same commit ids, so the same trees, messages,
    authors and author/committer dates, one per patch."""
    project = make_long_project(tmp_path, N)
    v1 = project.upstream.v1
    one_by_one = _queue(project, v1, batch=False)
    batched = _queue(project, v1, batch=True)
    assert batched == one_by_one
    assert [len(p["commits"]) for p in batched[1]["patches"]] == [1] * N
    log = g(project.tree, "log", "--format=%an <%ae> %ad|%cd|%s", "--date=raw",
            f"{v1}..{batched[3]}").splitlines()[::-1]
    assert len(log) == N and log[0].startswith("Dev <dev@example.org> ")
    assert all(ln.split("|")[0].split("> ")[1] == ln.split("|")[1] for ln in log)
    assert [ln.split("|")[2] for ln in log] == [f"change {i:04d}" for i in range(1, N + 1)]


def test_a_subject_saying_3_way_merge_is_not_a_3way_apply(tmp_path):
    """A patch that applies as it is but whose subject says "3-way merge" is ``applied``,
    batched or not (git's ``Applying: <subject>`` line is not its fall-back message)."""
    project = make_long_project(tmp_path, 3)
    p = project.series_dir / "0002-change.patch"
    p.write_bytes(p.read_bytes().replace(b"change 0002", b"avoid the 3-way merge"))
    for batch in (False, True):
        rows = _queue(project, project.upstream.v1, batch=batch)[0]
        assert [r["status"] for r in rows] == ["applied"] * 3, batch


# -- a constant number of git am processes ---------------------------------------------------

def test_patch_check_spawns_one_git_am_for_a_long_series(tmp_path, monkeypatch):
    """``inv patch --check`` of 40 mails: ONE ``git am`` and no ``rev-list`` (the commits
    are read from HEAD's reflog), every patch reported applied."""
    project = make_long_project(tmp_path, N)
    log = _git_logger(tmp_path, monkeypatch)
    report = pq.patch(project.settings, ["up"], check=True)
    assert [r["status"] for r in report.rows] == ["applied"] * N
    assert _calls(log, "am") == 1
    assert _calls(log, "rev-list") == 0


def test_rebase_dry_run_applies_the_old_series_with_one_git_am(tmp_path, monkeypatch):
    project = make_project(tmp_path)
    log = _git_logger(tmp_path, monkeypatch)
    rebasing.rebase(project.settings, "up", onto="v2", dry_run=True)
    assert _calls(log, "am") == 1


def test_the_batched_work_tree_run_spawns_one_git_am(tmp_path, monkeypatch):
    """With the batched apply on (as :data:`BATCH` would make it), ``inv patch`` of 40 mails
    runs one ``git am`` and gives the record of the per-patch run."""
    ref = make_long_project(tmp_path / "ref", N)
    pq.patch(ref.settings, ["up"])
    project = make_long_project(tmp_path / "p", N)
    monkeypatch.setattr(pq_apply, "BATCH", True)
    log = _git_logger(tmp_path, monkeypatch)
    pq.patch(project.settings, ["up"])
    assert _calls(log, "am") == 1
    assert pq.tree_state(project.settings, "up") == pq.tree_state(ref.settings, "up")


# -- crash safety of the batched apply on a work tree ----------------------------------------

def _common(project: Project) -> list[str]:
    return ["--work-dir", str(project.settings.work_dir), "--cache-dir",
            str(project.settings.cache_dir)]


def _batched_cli(project: Project, *args: str, path: str | None = None
                 ) -> subprocess.CompletedProcess:
    env = dict(os.environ, CI="true", ASKBUILD_PLAIN="1",
               ASKBUILD_PROJECT_ROOT=str(project.root))
    if path:
        env["PATH"] = path
    proc = subprocess.Popen([sys.executable, "-c", BATCHED_CLI, "--search-root",
                             str(faults.ROOT), *args, *_common(project)], cwd=faults.ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    out, err = proc.communicate(timeout=300)
    try:
        os.killpg(proc.pid, signal.SIGKILL)         # a power loss takes every process
    except ProcessLookupError:
        pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# The wrapper's `git am`: MID applies the first 20 mails and stops at a 21st that does not
# apply (the on-disk state of an am killed half-way: .git/rebase-apply, a detached HEAD 20
# commits on); AFTER runs the whole am.  Then it SIGKILLs askbuild (its parent) and itself.
KILL_IN_AM = r"""
case " $* " in
  *" am "*)
    if [ "$MODE" = mid ]; then
      { awk '/^From 0000000000000000000000000000000000000000 /{n++} n<=20'
        printf 'From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n'
        printf 'From: x <x@x>\nSubject: [PATCH] broken\n\n---\n'
        printf -- '--- a/none\n+++ b/none\n@@ -1 +1 @@\n-a\n+b\n'
      } | "$REAL" "$@" >/dev/null 2>&1
    else
      "$REAL" "$@" >/dev/null 2>&1
    fi
    kill -9 $PPID; kill -9 $$ ;;
esac
exec "$REAL" "$@"
"""


@pytest.mark.parametrize("mode", ["mid", "after"])
def test_kill_9_inside_or_after_the_batched_git_am_then_a_plain_rerun_heals(tmp_path,
                                                                            monkeypatch, mode):
    """Killed with the series half-applied by the batched ``git am`` (``mid``: an am in
    progress) or fully applied on the detached HEAD but not recorded (``after``): no record,
    the journal says the tree is askbuild's, and a plain ``inv patch`` puts it back and gives
    the uninterrupted run's record, branch and clean tree."""
    ref = make_long_project(tmp_path / "ref", N)
    pq.patch(ref.settings, ["up"])
    want = pq.tree_state(ref.settings, "up")
    project = make_long_project(tmp_path / "p", N)
    monkeypatch.setenv("MODE", mode)
    _git_logger(tmp_path, monkeypatch, KILL_IN_AM)
    first = _batched_cli(project, "patch", "--source", "up", path=os.environ["PATH"])
    assert first.returncode == -signal.SIGKILL, first.stderr
    gd, tree = project.tree / ".git", project.tree
    assert (gd / "rebase-apply").exists() == (mode == "mid")
    assert pq.tree_state(project.settings, "up") is None
    assert (gd / pq.JOURNAL).exists()
    done = len(g(tree, "rev-list", f"{want['base']}..HEAD").split())
    assert done == (20 if mode == "mid" else N)
    assert gitutil.git(["symbolic-ref", "-q", "HEAD"], cwd=tree, check=False).returncode == 1
    assert gitutil.git(["rev-parse", "-q", "--verify", "askbuild/patched"], cwd=tree,
                       check=False).returncode == 1           # (no branch moved yet)
    monkeypatch.undo()
    again = faults.inv("patch", "--source", "up", *_common(project),
                       env={"ASKBUILD_PROJECT_ROOT": str(project.root)})
    assert again.returncode == 0, again.stderr
    assert "was interrupted while changing" in again.stderr
    assert pq.tree_state(project.settings, "up") == want
    assert g(tree, "rev-parse", "HEAD", "askbuild/patched").split() == [want["head"]] * 2
    assert g(tree, "symbolic-ref", "HEAD") == "refs/heads/askbuild/patched"
    assert g(tree, "status", "--porcelain", "--untracked-files=all") == ""
    assert not (gd / "rebase-apply").exists() and not (gd / pq.JOURNAL).exists()


def test_a_full_disk_in_the_batched_git_am_is_said_clearly_and_the_rerun_heals(tmp_path):
    ref = make_long_project(tmp_path / "ref", N)
    pq.patch(ref.settings, ["up"])
    work = tmp_path / "p" / "work"
    with faults.tmpfs(work, "16m"):
        project = make_long_project(tmp_path / "p", N)
        filler = faults.fill(work, leave=128 << 10)
        proc = _batched_cli(project, "patch")
        assert proc.returncode in (1, 2), proc.stderr
        faults.assert_clean_message(proc)
        assert "no space left on device" in proc.stderr.lower()
        assert "refresh the patch" not in proc.stderr and "did not apply" not in proc.stderr
        assert pq.tree_state(project.settings, "up") is None
        filler.unlink()
        again = _batched_cli(project, "patch")
        assert again.returncode == 0, again.stderr
        assert pq.tree_state(project.settings, "up") == pq.tree_state(ref.settings, "up")
        assert g(project.tree, "status", "--porcelain", "--untracked-files=all") == ""


# Gated `git am` for deterministic fault timing (whatever the machine's speed): the wrapper
# touches $MARK, then waits for $GATE (two runs at once), or (GATE=stop) applies the first 20
# mails, leaves the am stopped at a broken 21st and sleeps (SIGTERM while "in git am").
# Only the first am of the test waits for $GATE.
GATED_AM = r"""
case " $* " in
  *" am "*)
    if [ "$GATE" = stop ]; then
      { awk '/^From 0000000000000000000000000000000000000000 /{n++} n<=20'
        printf 'From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n'
        printf 'From: x <x@x>\nSubject: [PATCH] broken\n\n---\n'
        printf -- '--- a/none\n+++ b/none\n@@ -1 +1 @@\n-a\n+b\n'
      } | "$REAL" "$@" >/dev/null 2>&1
      touch "$MARK"; sleep 60; exit 1
    fi
    if mkdir "$MARK.first" 2>/dev/null; then       # only the first am waits
      touch "$MARK"
      while [ ! -e "$GATE" ]; do sleep 0.02; done
    fi ;;
esac
exec "$REAL" "$@"
"""


def _start_batched(project: Project, *args: str) -> subprocess.Popen:
    env = dict(os.environ, CI="true", ASKBUILD_PLAIN="1",
               ASKBUILD_PROJECT_ROOT=str(project.root))
    return subprocess.Popen([sys.executable, "-c", BATCHED_CLI, "--search-root",
                             str(faults.ROOT), *args, *_common(project)], cwd=faults.ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() - t0 < timeout, f"no {path} after {timeout} s"
        time.sleep(0.01)


def test_two_batched_runs_at_once_serialize_and_agree(tmp_path, monkeypatch):
    """Run A is held inside its batched ``git am`` until run B says it waits for the
    work-dir lock: B then finds A's result (all unchanged), and the tree is the reference."""
    ref = make_long_project(tmp_path / "ref", N)
    pq.patch(ref.settings, ["up"])
    project = make_long_project(tmp_path / "p", N)
    mark, gate = tmp_path / "in-am", tmp_path / "gate"
    monkeypatch.setenv("MARK", str(mark))
    monkeypatch.setenv("GATE", str(gate))
    _git_logger(tmp_path, monkeypatch, GATED_AM)
    a = _start_batched(project, "patch", "--json")
    _wait_for(mark, a)
    b = _start_batched(project, "patch", "--json")
    said = faults.read_until(b.stderr, "waiting for another askbuild run")
    gate.touch()
    (out_a, err_a), (out_b, err_b) = a.communicate(timeout=300), b.communicate(timeout=300)
    assert "waiting for another askbuild run" in said, said + err_b
    assert a.returncode == 0, err_a
    assert b.returncode == 0, said + err_b
    assert json.loads(out_a)["summary"] == {"applied": N}
    assert json.loads(out_b)["summary"] == {"unchanged": N}
    assert pq.tree_state(project.settings, "up") == pq.tree_state(ref.settings, "up")


def test_sigterm_while_the_batched_git_am_is_stopped_half_way_then_the_rerun_heals(
        tmp_path, monkeypatch):
    ref = make_long_project(tmp_path / "ref", N)
    pq.patch(ref.settings, ["up"])
    project = make_long_project(tmp_path / "p", N)
    mark = tmp_path / "in-am"
    monkeypatch.setenv("MARK", str(mark))
    monkeypatch.setenv("GATE", "stop")
    _git_logger(tmp_path, monkeypatch, GATED_AM)
    proc = _start_batched(project, "patch")
    _wait_for(mark, proc)
    assert (project.tree / ".git" / "rebase-apply").exists()
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert time.monotonic() - t0 < 3.0
    faults.assert_clean_message(subprocess.CompletedProcess([], 143, "", err), "terminated")
    assert pq.tree_state(project.settings, "up") is None
    monkeypatch.undo()
    again = faults.inv("patch", *_common(project),
                       env={"ASKBUILD_PROJECT_ROOT": str(project.root)})
    assert again.returncode == 0, again.stderr
    assert pq.tree_state(project.settings, "up") == pq.tree_state(ref.settings, "up")
    assert g(project.tree, "status", "--porcelain", "--untracked-files=all") == ""
    assert not (project.tree / ".git" / "rebase-apply").exists()
