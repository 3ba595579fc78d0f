"""The batched rebase dry run (issue 9 item 4) behaves exactly like the real rebase.

The dry run reads its inputs and results in batched git calls; this proves, with real git,
that its rows and commits are the ones the real rebase (one patch at a time) makes, and that
the batching really happens (a ``git`` wrapper on PATH logs every call).
"""

from __future__ import annotations

import pytest
from patchfixtures import git_calls, git_logger, make_project

from askbuild import rebasing
from askbuild.errors import PatchFailed


def test_dry_run_predicts_the_commits_the_rebase_makes(tmp_path, monkeypatch):
    """The batched dry run's rows (status, commit, detail) are those of the real rebase, which
    replays one patch at a time (the conflicting patch skipped there).  The dry run replays
    the six patches with ONE ``git rebase -i`` and one ``rebase --skip`` per stop (the
    conflict, the patch already upstream), and asks ``git apply --check`` only for the three
    patches whose change moved (3-way)."""
    project = make_project(tmp_path)
    log = git_logger(tmp_path, monkeypatch)
    dry = rebasing.rebase(project.settings, "up", onto="v2", dry_run=True)
    assert git_calls(log, "cherry-pick") == 0
    assert git_calls(log, "rebase") == 3              # rebase -i, then --skip after each stop
    assert git_calls(log, "apply") == 3
    assert git_calls(log, "diff-tree") == 3           # old patches, new patches, files of both
    with pytest.raises(PatchFailed):
        rebasing.rebase(project.settings, "up", onto="v2")
    real = rebasing.rebase(project.settings, "up", skip=True)
    view = [(r["patch"], r["status"], r["commit"], r["detail"]) for r in dry.rows]
    want = [(r["patch"], r["status"], r["commit"], r["detail"]) for r in real.rows]
    assert view[2][1] == "conflict" and want[2][1] == "skipped"
    assert view[:2] + view[3:] == want[:2] + want[3:]
    assert [r["status"] for r in dry.rows] == ["clean", "3way", "conflict", "upstream", "3way",
                                              "3way"]
