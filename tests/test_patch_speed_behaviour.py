"""The batched patch queue (issue 9 item 4) behaves exactly like one patch at a time.

``inv patch`` applies runs of mails with ONE ``git am`` and the rebase dry run reads its
inputs and results in batched git calls; these tests prove, with real git, that the commits,
report rows and failure messages are the ones of the per-patch path, and that the batching
really happens (a ``git`` wrapper on PATH logs every call).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from patchfixtures import make_project

from askbuild import gitutil, rebasing
from askbuild import patchqueue as pq
from askbuild.errors import PatchFailed
from askbuild.report import Report
from askbuild.sources import load_sources


def _inputs(project) -> list[pq.PatchInput]:
    sources = load_sources(project.settings)
    layers = pq.load_layers(project.settings, sources)["up"]
    return pq.collect_inputs(project.settings, layers, sources, trees={"up": project.tree})


def _queue(project, base: str, *, batch: bool) -> tuple[list[dict], dict | None, str, str]:
    """Apply the series onto ``base`` on a detached HEAD: (rows, record or None, the failure
    message + fix ("" when none), HEAD afterwards)."""
    report = Report("patch", "patch", pq.PATCH_COLUMNS)
    record, failure = None, ""
    try:
        record = pq.apply_queue(project.tree, base, _inputs(project), source="up",
                                report=report, branch=None, batch=batch)
    except PatchFailed as e:
        failure = f"{e.message}\nfix: {e.fix}\npartial: {e.partial}"
    head = gitutil.out(["rev-parse", "HEAD"], cwd=project.tree)
    return report.rows, record, failure, head


def test_batched_queue_gives_the_same_commits_rows_and_failure_as_one_by_one(tmp_path):
    """On v2 the series has an applied patch, a 3-way patch and then a failing one: the
    batched run and the per-patch run give the same rows (3way included), the same commits,
    the same failure message (failing hunk, git's words, the partial record) and leave HEAD
    on the same last good commit."""
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
    assert not (project.tree / ".git" / "rebase-apply").exists()     # no am left behind


def test_batched_queue_of_mixed_inputs_gives_the_same_commits(tmp_path):
    """Mails without an mbox ``From `` line, a plain diff between mails (it breaks the batch)
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
    series = (sdir / "series").read_text().replace("0002-near.patch\n", "")
    (sdir / "series").write_text(series)
    v1 = project.upstream.v1
    one_by_one = _queue(project, v1, batch=False)
    batched = _queue(project, v1, batch=True)
    assert batched == one_by_one
    rows, record, failure, _ = batched
    assert failure == "" and [r["status"] for r in rows] == ["applied"] * 5
    assert [len(p["commits"]) for p in record["patches"]] == [2, 1, 1, 1, 1]


def _git_logger(tmp: Path, monkeypatch) -> Path:
    """A ``git`` first on PATH that logs each call's arguments, then runs the real git."""
    real = next(Path(d) / "git" for d in os.environ["PATH"].split(os.pathsep)
                if (Path(d) / "git").is_file())
    bindir, log = tmp / "bin", tmp / "git.log"
    bindir.mkdir()
    wrapper = bindir / "git"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexec "{real}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def _calls(log: Path, word: str) -> int:
    return sum(1 for ln in log.read_text().splitlines() if f" {word} " in f" {ln} ")


def test_inv_patch_runs_one_git_am_for_the_whole_series(tmp_path, monkeypatch):
    """Six mails: one ``git am``, one ``rev-list`` to read the commits, and the commits are
    those of applying them one by one."""
    project = make_project(tmp_path)
    expected = _queue(project, project.upstream.v1, batch=False)[1]
    log = _git_logger(tmp_path, monkeypatch)
    pq.patch(project.settings, ["up"])
    assert _calls(log, "am") == 1
    assert _calls(log, "rev-list") == 1
    record = pq.tree_state(project.settings, "up")
    assert [p["commits"] for p in record["patches"]] == \
        [p["commits"] for p in expected["patches"]]


def test_dry_run_predicts_the_commits_the_rebase_makes(tmp_path, monkeypatch):
    """The batched dry run's rows (status, commit, detail) are those of the real rebase, which
    replays one patch at a time (the conflicting patch skipped there); per patch the dry run
    runs only apply --check, cherry-pick and commit."""
    project = make_project(tmp_path)
    log = _git_logger(tmp_path, monkeypatch)
    dry = rebasing.rebase(project.settings, "up", onto="v2", dry_run=True)
    assert _calls(log, "cherry-pick") == 6
    assert _calls(log, "diff-tree") == 2           # old patches, then the files of old and new
    with pytest.raises(PatchFailed):
        rebasing.rebase(project.settings, "up", onto="v2")
    real = rebasing.rebase(project.settings, "up", skip=True)
    view = [(r["patch"], r["status"], r["commit"], r["detail"]) for r in dry.rows]
    want = [(r["patch"], r["status"], r["commit"], r["detail"]) for r in real.rows]
    assert view[2][1] == "conflict" and want[2][1] == "skipped"
    assert view[:2] + view[3:] == want[:2] + want[3:]
    assert [r["status"] for r in dry.rows] == ["clean", "3way", "conflict", "upstream", "3way",
                                              "3way"]
