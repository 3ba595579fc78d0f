"""Fault suite of the patch queue and the rebase (issue #8): real ``inv`` processes, real
signals (``kill -9`` of the whole process group, SIGTERM, SIGINT), real stale git locks, two
runs at once, a real full tmpfs.  After every fault a PLAIN re-run must give exactly what an
uninterrupted run gives (commit ids are deterministic), with no manual step.

Kill points are exact, whatever the machine's speed: inside ``git am`` through a gated
``git`` (:class:`faults.GatedAm`: the am is held after its k-th commit until the test lets it
go, one batched am or one am per patch alike), or a child ``inv`` with an audit hook that
SIGKILLs its own process group at its k-th process start or file rename (``KILLER``), k seeded
over the whole run; only the ``slow`` tests also use seeded delays."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import faults
import pytest
from patchfixtures import (
    DEV,
    Project,
    add_release_v2,
    change_line,
    commit_all,
    g,
    left_scratches,
    make_long_project,
    make_project,
    snapshot,
)

from askbuild import patchqueue as pq
from askbuild.fsutil import read_json

N = 60                  # patches of the long series
STOP_AT = 20           # commits a gated `git am` makes before it is held
REBASE_KINDS = ["clean", "near", "upstream", "rename", "crlf"]      # no conflict: one command

# Runs the real CLI in this process, SIGKILLing the whole process group at the k-th process
# start or file rename (k = argv[1]); k = 0: never, and the count is printed at exit.
KILLER = r"""
import atexit, os, runpy, signal, sys
at, count = int(sys.argv[1]), 0
def hook(event, args):
    global count
    if event in ("subprocess.Popen", "os.rename"):
        count += 1
        if count == at:
            os.killpg(os.getpgrp(), signal.SIGKILL)
sys.addaudithook(hook)
if at == 0:
    atexit.register(lambda: sys.stderr.write(f"\nKILL-POINTS {count}\n"))
sys.argv = ["invoke", *sys.argv[2:]]
runpy.run_module("invoke", run_name="__main__", alter_sys=True)
"""


def common(project: Project) -> list[str]:
    return ["--work-dir", str(project.settings.work_dir), "--cache-dir",
            str(project.settings.cache_dir)]


def env(project: Project) -> dict:
    return {"ASKBUILD_PROJECT_ROOT": str(project.root)}


def run(project: Project, *args: str) -> subprocess.CompletedProcess:
    return faults.inv(*args, *common(project), env=env(project), timeout=300)


def start(project: Project, *args: str) -> subprocess.Popen:
    return faults.start(*args, *common(project), env=env(project))


def killed_at(project: Project, k: int, *args: str) -> subprocess.CompletedProcess:
    """``inv ARGS`` SIGKILLed (whole group) at its k-th process start / rename (0: never)."""
    full = dict(os.environ, CI="true", ASKBUILD_PLAIN="1", **env(project))
    return subprocess.run([sys.executable, "-c", KILLER, str(k), "--search-root",
                           str(faults.ROOT), *args, *common(project)],
                          cwd=faults.ROOT, env=full, capture_output=True, text=True,
                          timeout=300, start_new_session=True)


def kill_count(project: Project, *args: str) -> int:
    """Run ``inv ARGS`` uninterrupted; how many kill points it has."""
    proc = killed_at(project, 0, *args)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stderr.rsplit("KILL-POINTS ", 1)[1].split()[0])


def seeded(seed: str, n: int, count: int, lo: int = 1) -> list[int]:
    """``n`` seeded kill points in ``[lo, count]``."""
    return sorted({int(x) for x in faults.kill_points(seed, n, lo, count + 1)})


def wait_until(cond, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {what}:\n{proc.communicate()[1]}")
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"no {what} after {timeout} s")
        time.sleep(0.005)


def wait_no_process_in(path: Path, timeout: float = 5) -> list[str]:
    """Processes still working in ``path`` (children die with askbuild: give them a moment)."""
    t0 = time.monotonic()
    while (left := faults.processes_with_cwd_under(path)) and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    return left


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The record of an uninterrupted patch run of the long series."""
    project = make_long_project(tmp_path_factory.mktemp("reference"), N)
    pq.patch(project.settings, ["up"])
    return pq.tree_state(project.settings, "up")


def assert_like_reference(project: Project, ref: dict) -> None:
    """The tree, branch and record are exactly those of an uninterrupted run."""
    tree = project.tree
    rec = pq.tree_state(project.settings, "up")
    assert rec is not None and rec["head"] == ref["head"]
    assert rec["patches"] == ref["patches"] and rec["layers"] == ref["layers"]
    assert g(tree, "rev-parse", "HEAD", "askbuild/patched").split() == [ref["head"]] * 2
    assert g(tree, "symbolic-ref", "HEAD") == "refs/heads/askbuild/patched"
    assert g(tree, "status", "--porcelain", "--untracked-files=all") == ""
    chain = g(tree, "rev-list", "--reverse", f"{ref['base']}..HEAD").split()
    assert chain == [c for p in ref["patches"] for c in p["commits"]]
    gd = tree / ".git"
    assert not (gd / "rebase-apply").exists() and not (gd / pq.JOURNAL).exists()
    assert not [p for p in gd.rglob("*.lock") if "objects" not in p.parts]


# -- inv patch ------------------------------------------------------------------------------

@pytest.fixture
def gate(tmp_path) -> Iterator[faults.GatedAm]:
    """A gated ``git am`` holding after ``STOP_AT`` commits; released (its am killed) at the
    end of the test."""
    gate = faults.GatedAm(tmp_path / "gate", STOP_AT)
    yield gate
    gate.close()


def start_gated(project: Project, gate: faults.GatedAm, *args: str) -> subprocess.Popen:
    """``inv ARGS`` started with the gated ``git am``."""
    return faults.start(*args, *common(project), env={**env(project), **gate.env})


def assert_held_inside_am(project: Project, ref: dict, am: int) -> None:
    """The run's ``git am`` is alive, in progress, ``STOP_AT`` commits on."""
    assert faults.pid_alive(am)
    assert (project.tree / ".git" / "rebase-apply").is_dir()
    assert len(g(project.tree, "rev-list", f"{ref['base']}..HEAD").split()) == STOP_AT


def test_kill_9_during_git_am_then_a_plain_rerun_heals(tmp_path, reference, gate):
    project = make_long_project(tmp_path, N)
    proc = start_gated(project, gate, "patch", "--source", "up")
    am = gate.wait_inside(proc)
    assert_held_inside_am(project, reference, am)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert wait_no_process_in(project.tree) == []       # the git am died with askbuild
    # the fault hit: a half-applied tree, no record
    assert pq.tree_state(project.settings, "up") is None
    assert (project.tree / ".git" / pq.JOURNAL).exists()
    assert (project.tree / ".git" / "rebase-apply").exists()
    again = run(project, "patch", "--source", "up")
    assert again.returncode == 0, again.stderr
    assert "was interrupted while changing" in again.stderr
    assert_like_reference(project, reference)


@pytest.mark.slow
def test_kill_9_at_seeded_points_of_a_long_patch_run(tmp_path):
    """Kill points over the whole run (start-up, checkout, am, record), 200 patches."""
    n = 200
    ref_project = make_long_project(tmp_path / "ref", n)
    t0 = time.monotonic()
    assert run(ref_project, "patch").returncode == 0
    took = time.monotonic() - t0
    ref = pq.tree_state(ref_project.settings, "up")
    for i, delay in enumerate(faults.kill_points("patch-long", 4, 0.3, took)):
        project = make_long_project(tmp_path / f"k{i}", n)
        first, _ = faults.kill_after(delay, "patch", *common(project), env=env(project))
        assert first.returncode in (0, -signal.SIGKILL), first.stderr
        assert wait_no_process_in(project.tree) == []
        again = run(project, "patch")
        assert again.returncode == 0, f"kill after {delay} s:\n{again.stderr}"
        assert_like_reference(project, ref)


def test_kill_9_at_every_point_of_a_grafted_patch_run(tmp_path):
    """On a tree big enough for ``inv patch`` to graft (the series applied in a small
    repository, its objects copied into the tree's, the tree checked out at the last
    commit): killed at each process start and rename of the run (25), then a plain
    re-run gives the uninterrupted run's tree, branch and record, in a repository
    ``git fsck --strict`` passes, and no scratch is left."""
    files = 2000                                        # (scratch.SPARSE_FROM)
    ref_project = make_long_project(tmp_path / "ref", 6, filler=files)
    count = kill_count(ref_project, "patch")
    ref = pq.tree_state(ref_project.settings, "up")
    assert count > 20
    for k in range(1, count + 1):
        project = make_long_project(tmp_path / f"k{k}", 6, filler=files)
        first = killed_at(project, k, "patch")
        assert first.returncode in (0, -signal.SIGKILL), first.stderr
        assert wait_no_process_in(project.tree) == []
        again = run(project, "patch")
        assert again.returncode == 0, f"killed at point {k} of {count}:\n{again.stderr}"
        assert_like_reference(project, ref)
        g(project.tree, "fsck", "--strict", "--no-dangling", "--no-progress")
        assert not left_scratches(project.settings)


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"),
                                             (signal.SIGINT, 130, "interrupted")])
def test_sigterm_and_sigint_stop_quickly_and_the_rerun_heals(tmp_path, reference, gate, sig,
                                                             code, word):
    project = make_long_project(tmp_path, N)
    proc = start_gated(project, gate, "patch")
    am = gate.wait_inside(proc)
    assert_held_inside_am(project, reference, am)
    t0 = time.monotonic()
    proc.send_signal(sig)                           # askbuild alone, as a user or CI would
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    assert proc.returncode == code, err
    assert took < 3.0, f"took {took:.1f} s to stop"
    faults.assert_clean_message(subprocess.CompletedProcess([], code, "", err), word)
    assert wait_no_process_in(project.tree, timeout=1) == []
    assert not faults.pid_alive(am)
    assert pq.tree_state(project.settings, "up") is None
    again = run(project, "patch")
    assert again.returncode == 0, again.stderr
    assert_like_reference(project, reference)


def test_stale_git_locks_left_by_a_killed_git_are_removed(tmp_path):
    """``index.lock`` (git fails outright) and ``ORIG_HEAD.lock`` (git am fails: it used to be
    reported as a patch that does not apply) left by a killed git."""
    project = make_project(tmp_path)
    gd = project.tree / ".git"
    for name in ("index.lock", "ORIG_HEAD.lock", "HEAD.lock"):
        (gd / name).write_text("")
    proc = run(project, "patch")
    assert proc.returncode == 0, proc.stderr
    assert "removed stale git lock file(s)" in proc.stderr and "ORIG_HEAD.lock" in proc.stderr
    assert [r for r in proc.stderr.splitlines() if "applied" in r][-1] == "summary: 6 applied"
    rec = pq.tree_state(project.settings, "up")
    assert g(project.tree, "rev-parse", "HEAD") == rec["head"]
    assert not list(gd.glob("*.lock"))


def test_a_lock_held_by_a_live_process_is_left_alone(tmp_path):
    project = make_project(tmp_path)
    lock = project.tree / ".git" / "index.lock"
    stale = project.tree / ".git" / "ORIG_HEAD.lock"
    stale.write_text("")
    with lock.open("w"):        # a git of the user's at work
        assert pq.clear_stale_locks(project.tree) == ["ORIG_HEAD.lock"]
        assert lock.exists()
    lock.unlink()


def test_two_patch_runs_at_once_serialize_and_agree(tmp_path, reference, gate):
    """Run A is held inside its ``git am`` until run B says it waits for A's work-dir lock:
    B then finds A's result (all unchanged) and the tree is the reference."""
    project = make_long_project(tmp_path, N)
    a = start_gated(project, gate, "patch", "--json")
    am = gate.wait_inside(a)
    b = start_gated(project, gate, "patch", "--json")
    said = faults.read_until(b.stderr, "waiting for another askbuild run")
    held = faults.pid_alive(am)                     # A was still inside its am
    gate.release()
    (out_a, err_a), (out_b, err_b) = a.communicate(timeout=300), b.communicate(timeout=300)
    assert held
    waits = f"work directory {project.settings.work_dir}: waiting for another askbuild run"
    assert waits in said, said + err_b
    assert a.returncode == 0, err_a
    assert b.returncode == 0, said + err_b
    assert json.loads(out_a)["summary"] == {"applied": N}
    assert json.loads(out_b)["summary"] == {"unchanged": N}
    assert_like_reference(project, reference)


def _full_disk_then_room(project: Project, work: Path, leave: int, ref: dict,
                         more_env: dict | None = None) -> None:
    """``inv patch`` with ``leave`` bytes left on the file system of ``work``: it fails,
    saying the disk is full (not that a patch did not apply); once there is room, a plain
    re-run gives the uninterrupted run's tree."""
    filler = faults.fill(work, leave=leave)
    proc = faults.inv("patch", *common(project), env={**env(project), **(more_env or {})},
                      timeout=300)
    assert proc.returncode in (1, 2), proc.stderr
    faults.assert_clean_message(proc)
    assert "no space left on device" in proc.stderr.lower()
    assert "refresh the patch" not in proc.stderr and "did not apply" not in proc.stderr
    filler.unlink()
    again = run(project, "patch")
    assert again.returncode == 0, again.stderr
    assert_like_reference(project, ref)


def test_no_space_left_is_said_clearly_and_the_rerun_heals(tmp_path, reference):
    work = tmp_path / "work"
    with faults.tmpfs(work, "16m"):
        _full_disk_then_room(make_long_project(tmp_path, N), work, 256 << 10, reference)


@pytest.mark.parametrize("leave", [16 << 10, 240 << 10], ids=["at-status", "at-the-graft"])
def test_no_space_left_in_a_grafted_patch_run_is_said_clearly_and_the_rerun_heals(
        tmp_path, leave):
    """A full disk on a tree big enough for ``inv patch`` to graft: where ``git status``
    writes the index ("Out of diskspace", git's own words), or in the small repository
    (the series then goes to ``git am`` on the tree, where the disk is full too): one clear
    message naming it, not a patch "that did not apply"; a plain re-run once there is room
    gives the uninterrupted run's tree.  (The small repository is in the work dir here:
    ``ASKBUILD_RAM_DIR`` empty; in RAM it would have room: tests/test_scratch_home.py.)"""
    files = 2000                                        # (scratch.SPARSE_FROM)
    ref_project = make_long_project(tmp_path / "ref", 6, filler=files)
    assert run(ref_project, "patch").returncode == 0
    ref = pq.tree_state(ref_project.settings, "up")
    work = tmp_path / "work"
    with faults.tmpfs(work, "48m"):
        project = make_long_project(work, 6, filler=files)
        _full_disk_then_room(project, work, leave, ref, {"ASKBUILD_RAM_DIR": ""})
        g(project.tree, "fsck", "--strict", "--no-dangling", "--no-progress")


# -- inv rebase -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rebase_reference(tmp_path_factory) -> dict:
    """An uninterrupted rebase onto v2 (series, sources file, record) and its kill points;
    the v1 patch record (what --abort must give back)."""
    project = make_project(tmp_path_factory.mktemp("rebase-ref"), kinds=REBASE_KINDS)
    before = {"series": snapshot(project.series_dir), "sources": sources_text(project)}
    count = kill_count(project, "rebase", "up", "--onto", "v2")
    v1 = make_project(tmp_path_factory.mktemp("rebase-v1"), kinds=REBASE_KINDS)
    pq.patch(v1.settings, ["up"])
    return {"count": count, "series": snapshot(project.series_dir), "before": before,
            "sources": sources_text(project), "record": pq.tree_state(project.settings, "up"),
            "v1_record": pq.tree_state(v1.settings, "up")}


def sources_text(project: Project) -> str:
    """The sources file, with the fixture's own upstream path made neutral."""
    return project.settings.sources_file.read_text().replace(project.upstream.url, "URL")


def assert_rebased(project: Project, ref: dict) -> None:
    assert snapshot(project.series_dir) == ref["series"]
    assert sources_text(project) == ref["sources"]
    assert pq.tree_state(project.settings, "up") == ref["record"]
    assert g(project.tree, "rev-parse", "HEAD") == ref["record"]["head"]
    assert g(project.tree, "status", "--porcelain", "--untracked-files=all") == ""
    assert not project.settings.rebase_state("up").exists()
    assert g(project.tree, "branch", "--list", "askbuild/rebase") == ""


@pytest.mark.parametrize("seed", ["rebase-1"])
def test_kill_9_during_rebase_then_the_same_command_finishes_it(tmp_path, rebase_reference,
                                                                seed):
    count = rebase_reference["count"]
    for k in seeded(seed, 1, count, lo=count // 2):      # the replay or the completion
        project = make_project(tmp_path / f"k{k}", kinds=REBASE_KINDS)
        first = killed_at(project, k, "rebase", "up", "--onto", "v2")
        assert first.returncode == -signal.SIGKILL, first.stderr
        again = run(project, "rebase", "up", "--onto", "v2")
        assert again.returncode == 0, f"killed at point {k}:\n{again.stderr}"
        assert_rebased(project, rebase_reference)


@pytest.mark.slow
def test_kill_9_at_many_points_of_a_rebase_then_continue_or_abort(tmp_path, rebase_reference):
    for i, delay in enumerate(faults.kill_points("rebase-timed", 3, 0.0, 0.6)):
        project = make_project(tmp_path / f"t{i}", kinds=REBASE_KINDS)
        proc = start(project, "rebase", "up", "--onto", "v2")
        state = project.settings.rebase_state("up")
        wait_until(state.exists, proc, "the rebase state")
        time.sleep(delay)                       # in the middle of a git command, mostly
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        mode = ["--continue"] if state.exists() else ["--onto", "v2"]
        again = run(project, "rebase", "up", *mode)
        assert again.returncode == 0, f"killed {delay} s in:\n{again.stderr}"
        assert_rebased(project, rebase_reference)
    for k in seeded("rebase-many", 12, rebase_reference["count"]):
        project = make_project(tmp_path / f"c{k}", kinds=REBASE_KINDS)
        assert killed_at(project, k, "rebase", "up", "--onto", "v2").returncode == -9
        if project.settings.rebase_state("up").exists():
            again = run(project, "rebase", "up", "--continue")
        else:
            again = run(project, "rebase", "up", "--onto", "v2")
        assert again.returncode == 0, f"killed at point {k}:\n{again.stderr}"
        assert_rebased(project, rebase_reference)
        check_abort_after_kill(tmp_path / f"a{k}", k, rebase_reference)


def check_abort_after_kill(tmp: Path, k: int, ref: dict) -> None:
    project = make_project(tmp, kinds=REBASE_KINDS)
    assert killed_at(project, k, "rebase", "up", "--onto", "v2").returncode == -9
    in_progress = project.settings.rebase_state("up").exists()
    ab = run(project, "rebase", "up", "--abort")
    if in_progress:
        assert ab.returncode == 0, f"killed at point {k}:\n{ab.stderr}"
    else:
        assert ab.returncode == 1 and "no rebase of up is in progress" in ab.stderr
    assert snapshot(project.series_dir) == ref["before"]["series"]
    assert sources_text(project) == ref["before"]["sources"]
    again = run(project, "patch")
    assert again.returncode == 0, again.stderr
    assert pq.tree_state(project.settings, "up") == ref["v1_record"]
    assert g(project.tree, "rev-parse", "HEAD") == ref["v1_record"]["head"]


def test_kill_9_late_in_a_rebase_then_abort_restores_everything(tmp_path, rebase_reference):
    """Killed in the completion (series rewritten, pin moved, tree being re-patched)."""
    k = rebase_reference["count"] - 2
    check_abort_after_kill(tmp_path, k, rebase_reference)


# -- patches.edit / patches.export ----------------------------------------------------------

def amend_near(project: Project) -> None:
    """On the edit branch: reword + change the 2nd commit, add one (fixed ids)."""
    t = project.tree
    start = pq.tree_state(project.settings, "up")["layers"][0]["start"]
    commits = g(t, "rev-list", "--reverse", f"{start}..HEAD").split()
    g(t, "reset", "-q", "--hard", commits[0])
    env_ = {**DEV, "GIT_COMMITTER_DATE": "2026-04-01T00:00:00Z"}
    for c in commits[1:]:
        g(t, "cherry-pick", c, env=env_)
        if c == commits[1]:
            change_line(t, "lib/near.c", 12, "near line 12 AMENDED")
            g(t, "commit", "-q", "-a", "--amend", "--no-edit", env=env_)
    change_line(t, "lib/up.c", 15, "up line 15 EXTRA")
    commit_all(t, "lib: extra", date="2026-04-02T00:00:00Z")


@pytest.fixture(scope="module")
def edit_reference(tmp_path_factory) -> dict:
    project = make_project(tmp_path_factory.mktemp("edit-ref"))
    edit_count = kill_count(project, "patches.edit", "patches/up")
    branch = g(project.tree, "rev-parse", "askbuild/edit/patches-up")
    erec = read_json(project.settings.state_dir / "edit-up-patches-up.json")
    amend_near(project)
    export_count = kill_count(project, "patches.export", "patches/up")
    return {"edit_count": edit_count, "branch": branch, "erec": erec,
            "export_count": export_count, "series": snapshot(project.series_dir)}


def check_edit_after_kill(tmp: Path, k: int, ref: dict) -> None:
    project = make_project(tmp)
    assert killed_at(project, k, "patches.edit", "patches/up").returncode == -9
    again = run(project, "patches.edit", "patches/up")
    assert again.returncode == 0, f"killed at point {k}:\n{again.stderr}"
    assert g(project.tree, "rev-parse", "HEAD") == ref["branch"]
    assert g(project.tree, "symbolic-ref", "HEAD") == "refs/heads/askbuild/edit/patches-up"
    assert read_json(project.settings.state_dir / "edit-up-patches-up.json") == ref["erec"]


def test_kill_9_during_patches_edit_then_a_plain_rerun(tmp_path, edit_reference):
    """Killed when the edit branch is made but its record not yet written."""
    check_edit_after_kill(tmp_path, edit_reference["edit_count"] - 1, edit_reference)


def check_export_after_kill(tmp: Path, k: int, ref: dict) -> subprocess.CompletedProcess:
    project = make_project(tmp)
    pq.edit(project.settings, "patches/up")
    amend_near(project)
    assert killed_at(project, k, "patches.export", "patches/up").returncode == -9
    again = run(project, "patches.export", "patches/up")
    assert again.returncode == 0, f"killed at point {k}:\n{again.stderr}"
    assert snapshot(project.series_dir) == ref["series"]
    return again


def test_kill_9_while_export_replaces_the_series_files_then_a_plain_rerun(tmp_path,
                                                                         edit_reference):
    again = check_export_after_kill(tmp_path, edit_reference["export_count"] - 2,
                                    edit_reference)
    assert "finished writing the series that an interrupted run had started" in again.stderr


@pytest.mark.slow
def test_kill_9_at_seeded_points_of_edit_and_export(tmp_path, edit_reference):
    for k in seeded("export-many", 6, edit_reference["export_count"]):
        check_export_after_kill(tmp_path / f"x{k}", k, edit_reference)
    for k in seeded("edit-many", 6, edit_reference["edit_count"]):
        check_edit_after_kill(tmp_path / f"e{k}", k, edit_reference)


DRY = ("rebase", "up", "--onto", "v2", "--dry-run", "--json")


def _long_v2(tmp: Path) -> Project:
    """The long series' project with a release v2 (no record: the dry run applies the old
    series again, and replays it along its ``git am``)."""
    project = make_long_project(tmp, N)
    add_release_v2(project)
    return project


def _rows(proc: subprocess.CompletedProcess) -> list[dict]:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["rows"]


def _processes_in(top: Path) -> list[str]:
    """Processes whose working directory lies under ``top``."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if cwd == str(top) or cwd.startswith(f"{top}/"):
            out.append(f"{pid} {cwd}")
    return out


def _assert_dry_run_left_nothing(project: Project, v1: str) -> None:
    assert not left_scratches(project.settings)
    assert g(project.tree, "rev-parse", "HEAD") == v1
    assert g(project.tree, "status", "--porcelain", "--untracked-files=all") == ""
    assert not project.settings.patch_record("up").exists()
    deadline = time.monotonic() + 10    # (a killed run's quick git queries end at their EOF)
    while _processes_in(project.root.parent) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_in(project.root.parent) == []


def test_kill_9_of_a_dry_run_without_a_record_then_a_plain_rerun(tmp_path):
    """A dry run without a patch record, killed (its whole group) while ``git am`` applies
    the old series and the follower replays it, and at seeded points of the whole run: the
    same command again reports the same rows as an uninterrupted run, and nothing of either
    run is left (no scratch, no process working in the project, the tree as it was)."""
    reference = _long_v2(tmp_path / "ref")
    want = _rows(run(reference, *DRY))
    count = kill_count(_long_v2(tmp_path / "count"), *DRY)

    project = _long_v2(tmp_path / "timed")
    proc = start(project, *DRY)

    def following() -> bool:
        logs = [p / ".git" / "logs" / "HEAD" for p in left_scratches(project.settings)]
        return any(p.is_file() and len(p.read_bytes().splitlines()) > STOP_AT
                   for p in logs)
    wait_until(following, proc, "a scratch with commits of the old series")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert _rows(run(project, *DRY)) == want
    _assert_dry_run_left_nothing(project, project.upstream.v1)

    for k in seeded("dry-run", 3, count):
        project = _long_v2(tmp_path / f"k{k}")
        assert killed_at(project, k, *DRY).returncode == -signal.SIGKILL
        assert _rows(run(project, *DRY)) == want, f"killed at point {k}"
        _assert_dry_run_left_nothing(project, project.upstream.v1)
