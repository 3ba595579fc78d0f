"""The patch step with real git: one commit per patch, layers, idempotence, determinism, dirty
trees, failures, --check, edit/export."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from patchfixtures import (
    DEV,
    Project,
    change_line,
    commit_all,
    g,
    make_project,
    make_tree,
    put,
    snapshot,
    write_sources,
)

from askbuild import patchqueue as pq
from askbuild import rebasing
from askbuild.errors import ConfigError, DirtyTreeError, PatchFailed, UserError
from askbuild.fsutil import write_json_atomic
from askbuild.gitutil import FIXED_IDENTITY
from askbuild.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def run_patch(project: Project, **kw):
    return pq.patch(project.settings, ["up"], **kw)


def log(tree: Path, rng: str = "askbuild/base..askbuild/patched") -> list[str]:
    return g(tree, "log", "--reverse", "--format=%s|%an|%cn|%ad|%cd", "--date=iso", rng,
             ).splitlines()


@pytest.fixture
def project(tmp_path) -> Project:
    return make_project(tmp_path)


def test_one_commit_per_patch_with_identity_and_dates_from_the_patch(project):
    report = run_patch(project)
    assert [r["status"] for r in report.rows] == ["applied"] * 6
    entries = log(project.tree)
    assert len(entries) == 6
    assert entries[0] == ("lib: make clean.c better|Dev|askbuild|2026-03-01 00:00:00 +0000|"
                          "2026-03-01 00:00:00 +0000")
    assert g(project.tree, "symbolic-ref", "HEAD") == "refs/heads/askbuild/patched"
    rec = pq.tree_state(project.settings, "up")
    assert rec["base"] == project.upstream.v1
    assert rec["head"] == g(project.tree, "rev-parse", "HEAD")
    assert [p["file"] for p in rec["patches"]] == sorted(p.name for p in
                                                          project.series_dir.glob("*.patch"))
    assert rec["layers"] == [{"id": "patches/up", "kind": "local", "dir": "patches/up",
                              "provider": None, "start": project.upstream.v1,
                              "end": rec["head"]}]


def test_crlf_lines_keep_their_cr(project):
    run_patch(project)
    data = (project.tree / "fmc/model.cpp").read_bytes()
    assert b"model line 5 OURS\r\n" in data
    assert data.count(b"\r\n") == data.count(b"\n") == 20


def test_same_inputs_give_the_same_commit_ids(tmp_path):
    a = make_project(tmp_path / "a")
    b = make_project(tmp_path / "b")
    run_patch(a)
    run_patch(b)
    head_a = pq.tree_state(a.settings, "up")["head"]
    assert head_a == pq.tree_state(b.settings, "up")["head"]
    # and rebuilding from the base in the same tree gives it again
    a.settings.patch_record("up").unlink()
    run_patch(a)
    assert pq.tree_state(a.settings, "up")["head"] == head_a


def test_second_run_is_a_no_op(project):
    run_patch(project)
    state = project.settings.patch_record("up")
    before = (state.stat().st_mtime_ns, g(project.tree, "rev-parse", "HEAD"))
    report = run_patch(project)
    assert [r["status"] for r in report.rows] == ["unchanged"] * 6
    assert (state.stat().st_mtime_ns, g(project.tree, "rev-parse", "HEAD")) == before


def test_changed_series_rebuilds_from_the_base(project):
    run_patch(project)
    old_head = pq.tree_state(project.settings, "up")["head"]
    series = project.series_dir / "series"
    series.write_text(series.read_text().replace("0002-near.patch\n", ""))
    report = run_patch(project)
    assert [r["patch"] for r in report.rows] == ["0001-clean.patch", "0003-conflict.patch",
                                                 "0004-upstream.patch", "0005-rename.patch",
                                                 "0006-crlf.patch"]
    rec = pq.tree_state(project.settings, "up")
    assert rec["head"] != old_head and len(log(project.tree)) == 5
    assert "near line 10 OURS" not in (project.tree / "lib/near.c").read_text()


def test_uncommitted_edits_are_never_thrown_away(project):
    run_patch(project)
    (project.tree / "lib/clean.c").write_text("my precious edit\n")
    (project.series_dir / "series").write_text("0001-clean.patch\n")   # forces a rebuild
    with pytest.raises(DirtyTreeError) as e:
        run_patch(project)
    msg = str(e.value)
    assert "uncommitted changes" in msg and "lib/clean.c" in msg
    assert "git -C" in msg and "stash" in msg and "reset --hard" in msg
    assert (project.tree / "lib/clean.c").read_text() == "my precious edit\n"


def test_foreign_commits_on_the_patched_branch_are_refused(project):
    run_patch(project)
    put(project.tree, "lib/mine.c", "mine\n")
    mine = commit_all(project.tree, "my own work")
    (project.series_dir / "series").write_text("0001-clean.patch\n")
    with pytest.raises(DirtyTreeError) as e:
        run_patch(project)
    assert "commits the patch series did not make" in str(e.value)
    assert "my own work" in str(e.value) and "switch -c my-work" in str(e.value)
    assert g(project.tree, "rev-parse", "askbuild/patched") == mine


def test_failure_names_series_patch_files_and_hunks_and_puts_the_tree_back(project):
    bad = project.series_dir / "0003-conflict.patch"
    bad.write_bytes(bad.read_bytes().replace(b" conflict line 9\n", b" conflict line nine\n"))
    with pytest.raises(PatchFailed) as e:
        run_patch(project)
    msg = str(e.value)
    assert "patch 3 of 6 of up did not apply: 0003-conflict.patch" in msg
    assert "series: patches/up (local layer)" in msg
    assert "patch file: patches/up/0003-conflict.patch" in msg
    assert "failed: lib/conflict.c: hunk #1 @@ -7,7 +7,7 @@ does not match" in msg
    assert "inv patches.edit patches/up" in msg
    assert f"nothing of this run was kept: {project.tree} is back as it was before it" in msg
    assert e.value.exit_code == 2
    # the tree: back at the base as fetch left it, clean, no am in progress, no record, no
    # half-applied askbuild/patched branch
    assert g(project.tree, "rev-parse", "HEAD") == project.upstream.v1
    assert g(project.tree, "branch", "--list", "askbuild/patched") == ""
    assert g(project.tree, "status", "--porcelain", "--untracked-files=no") == ""
    assert not (project.tree / ".git" / "rebase-apply").exists()
    assert pq.tree_state(project.settings, "up") is None
    # fixing the patch and running again works (our own commits are not "foreign")
    bad.write_bytes(bad.read_bytes().replace(b" conflict line nine\n", b" conflict line 9\n"))
    assert [r["status"] for r in run_patch(project).rows] == ["applied"] * 6


def test_a_failed_run_keeps_the_previous_good_state(project):
    """Issue #8: a failing series never leaves a half-applied askbuild/patched behind."""
    run_patch(project)
    record = project.settings.patch_record("up").read_bytes()
    head = g(project.tree, "rev-parse", "askbuild/patched")
    bad = project.series_dir / "0005-rename.patch"
    bad.write_bytes(bad.read_bytes().replace(b" cmm line 11\n", b" cmm line eleven\n"))
    with pytest.raises(PatchFailed, match="patch 5 of 6 of up did not apply") as e:
        run_patch(project)
    assert f"on askbuild/patched at {head[:12]}, the series as applied before" in str(e.value)
    assert g(project.tree, "symbolic-ref", "HEAD") == "refs/heads/askbuild/patched"
    assert g(project.tree, "rev-parse", "HEAD", "askbuild/patched").split() == [head, head]
    assert project.settings.patch_record("up").read_bytes() == record
    assert g(project.tree, "status", "--porcelain", "--untracked-files=all") == ""
    assert not (project.tree / ".git" / pq.JOURNAL).exists()


def test_plain_diff_is_committed_under_its_file_name(project):
    d = project.series_dir
    (d / "series").write_text("0001-clean.patch\nlocal-fix.diff -p0\n")
    (d / "local-fix.diff").write_text(
        "Some quilt-style description.\n\n--- lib/near.c\n+++ lib/near.c\n@@ -1,3 +1,3 @@\n"
        " near line 1\n-near line 2\n+near line 2 PLAIN\n near line 3\n")
    report = run_patch(project)
    assert [r["status"] for r in report.rows] == ["applied", "applied"]
    last = g(project.tree, "log", "-1", "--format=%s|%an|%ad", "--date=iso")
    assert last == "local-fix.diff|askbuild|1970-01-01 00:00:00 +0000"
    assert "near line 2 PLAIN" in (project.tree / "lib/near.c").read_text()


def test_plain_diff_failure_leaves_no_half_patch(project):
    d = project.series_dir
    (d / "series").write_text("0001-clean.patch\nhalf.diff\n")
    (d / "half.diff").write_text(
        "--- a/lib/near.c\n+++ b/lib/near.c\n@@ -1,3 +1,3 @@\n near line 1\n-near line 2\n"
        "+near line 2 X\n near line 3\n--- a/lib/up.c\n+++ b/lib/up.c\n@@ -1,3 +1,3 @@\n"
        " up line 1\n-up line TWO\n+up line 2 X\n up line 3\n")
    with pytest.raises(PatchFailed) as e:
        run_patch(project)
    assert "failed: lib/up.c: hunk #1 @@ -1,3 +1,3 @@ does not match" in str(e.value)
    assert "lib/near.c: hunk" not in str(e.value)
    assert "near line 2 X" not in (project.tree / "lib/near.c").read_text()
    assert g(project.tree, "status", "--porcelain") == ""


# -- layers ---------------------------------------------------------------------------------

def vendor_project(tmp_path: Path) -> tuple[Settings, Path, Path]:
    """A 'vendor' tree shipping patches for 'lib' (no series file) + a local series that needs
    the vendor patches applied first."""
    lib_work = tmp_path / "lib-work"
    lib_work.mkdir()
    g(lib_work, "init", "-q")
    put(lib_work, "src/lib.c", "".join(f"lib {i}\n" for i in range(1, 21)))
    lib_v1 = commit_all(lib_work, "lib 1.0")
    vendor_work = tmp_path / "vendor-work"
    vendor_work.mkdir()
    g(vendor_work, "init", "-q")
    put(vendor_work, "README", "vendor\n")
    # two vendor patches, written so that sorted order matters (b needs a)
    g(lib_work, "checkout", "-q", "-b", "tmp")
    change_line(lib_work, "src/lib.c", 5, "lib 5 VENDOR-A")
    a = commit_all(lib_work, "vendor a", date="2026-01-02T00:00:00Z")
    change_line(lib_work, "src/lib.c", 5, "lib 5 VENDOR-B")
    b = commit_all(lib_work, "vendor b", date="2026-01-03T00:00:00Z")
    change_line(lib_work, "src/lib.c", 6, "lib 6 LOCAL")
    local = commit_all(lib_work, "local on top", date="2026-01-04T00:00:00Z")
    put(vendor_work, "patches/lib/01-a.patch", pq.format_patch(lib_work, a))
    put(vendor_work, "patches/lib/02-b.patch", pq.format_patch(lib_work, b))
    vendor_v1 = commit_all(vendor_work, "vendor 1.0")
    root = tmp_path / "project"
    write_sources(root, {"vendor": (f"file://{vendor_work}", "main", vendor_v1),
                         "lib": (f"file://{lib_work}", "main", lib_v1)})
    (root / "recipes" / "patches.toml").write_text(
        '[lib]\nvendor = [{ from = "vendor", dir = "patches/{ref}-missing", optional = true },'
        ' { from = "vendor", dir = "patches/lib" }]\nlocal = ["patches/lib"]\n')
    sdir = root / "patches" / "lib"
    sdir.mkdir(parents=True)
    (sdir / "0001-local.patch").write_bytes(pq.format_patch(lib_work, local))
    (sdir / "series").write_text("0001-local.patch\n")
    settings = Settings(project_root=root, work_dir=tmp_path / "work", cache_dir=tmp_path / "c")
    make_tree(settings, "vendor", f"file://{vendor_work}", vendor_v1)
    tree = make_tree(settings, "lib", f"file://{lib_work}", lib_v1)
    return settings, tree, sdir


def test_vendor_layer_applies_before_the_local_series(tmp_path):
    settings, tree, _ = vendor_project(tmp_path)
    report = pq.patch(settings, ["lib"])
    assert [(r["layer"], r["kind"], r["patch"]) for r in report.rows] == [
        ("vendor:patches/main-missing", "vendor", ""),      # optional, absent: skipped
        ("vendor:patches/lib", "vendor", "01-a.patch"),
        ("vendor:patches/lib", "vendor", "02-b.patch"),
        ("patches/lib", "local", "0001-local.patch")]
    assert log(tree) == [
        "vendor a|Dev|askbuild|2026-01-02 00:00:00 +0000|2026-01-02 00:00:00 +0000",
        "vendor b|Dev|askbuild|2026-01-03 00:00:00 +0000|2026-01-03 00:00:00 +0000",
        "local on top|Dev|askbuild|2026-01-04 00:00:00 +0000|2026-01-04 00:00:00 +0000"]
    rec = pq.tree_state(settings, "lib")
    assert [ly["id"] for ly in rec["layers"]] == ["vendor:patches/main-missing",
                                                  "vendor:patches/lib", "patches/lib"]
    assert rec["layers"][1]["end"] == rec["layers"][2]["start"]
    # the provider's own tree was only read
    assert g(settings.src_dir / "vendor", "rev-parse", "HEAD") == \
        g(settings.src_dir / "vendor", "rev-parse", "askbuild/base")


def test_missing_vendor_directory_is_an_error_unless_optional(tmp_path):
    settings, _, _ = vendor_project(tmp_path)
    f = settings.recipes_dir / "patches.toml"
    f.write_text(f.read_text().replace("optional = true", "optional = false"))
    with pytest.raises(ConfigError, match="vendor layer vendor:patches/main-missing") as e:
        pq.patch(settings, ["lib"])
    assert "optional" not in str(e.value).split("matches no patch")[1]


def test_resolve_layer(tmp_path):
    settings, _, sdir = vendor_project(tmp_path)
    assert pq.resolve_layer(settings, "patches/lib/").id == "patches/lib"
    assert pq.resolve_layer(settings, "lib").id == "patches/lib"
    assert pq.resolve_layer(settings, str(sdir)).id == "patches/lib"
    with pytest.raises(UserError, match="vendor series"):
        pq.resolve_layer(settings, "vendor:patches/lib")
    with pytest.raises(UserError, match="no local series 'nope'"):
        pq.resolve_layer(settings, "nope")


# -- check ----------------------------------------------------------------------------------

def test_check_applies_in_a_scratch_clone_and_leaves_build_trees_alone(project):
    head = g(project.tree, "rev-parse", "HEAD")
    report = run_patch(project, check=True)
    assert report.kind == "patch-check" and report.ok
    assert [r["status"] for r in report.rows] == ["applied"] * 6
    assert g(project.tree, "rev-parse", "HEAD") == head
    assert pq.tree_state(project.settings, "up") is None
    assert g(project.tree, "branch", "--list", "askbuild/patched") == ""
    assert not [p for p in project.settings.work_dir.iterdir() if p.name.startswith("patch-")]
    assert not list((project.tree / ".git").glob("worktrees/*"))


def test_check_reports_a_failing_patch(project, capsys):
    bad = project.series_dir / "0002-near.patch"
    bad.write_bytes(bad.read_bytes().replace(b" near line 9\n", b" near line IX\n"))
    with pytest.raises(PatchFailed, match="0002-near.patch"):
        run_patch(project, check=True, as_json=True)
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == "askbuild.report/1" and data["kind"] == "patch-check"
    assert data["ok"] is False
    assert [r["status"] for r in data["rows"]] == ["applied", "failed"] + ["pending"] * 4


# -- edit / export --------------------------------------------------------------------------

def test_export_of_an_unchanged_queue_is_byte_identical(project):
    before = snapshot(project.series_dir)
    branch = pq.edit(project.settings, "patches/up")
    assert branch == "askbuild/edit/patches-up"
    assert g(project.tree, "symbolic-ref", "--short", "HEAD") == branch
    report = pq.export(project.settings, "patches/up")
    assert {r["status"] for r in report.rows} == {"unchanged"}
    assert snapshot(project.series_dir) == before


def test_export_of_hand_written_patches_keeps_their_bytes(project):
    d = project.series_dir
    (d / "series").write_text("# mine\n0001-clean.patch\nlocal-fix.diff -p0\n")
    (d / "local-fix.diff").write_text(
        "--- lib/near.c\n+++ lib/near.c\n@@ -1,3 +1,3 @@\n near line 1\n-near line 2\n"
        "+near line 2 PLAIN\n near line 3\n")
    for n in ("0002-near.patch", "0003-conflict.patch", "0004-upstream.patch",
              "0005-rename.patch", "0006-crlf.patch"):
        (d / n).unlink()
    before = snapshot(d)
    pq.edit(project.settings, "up")
    pq.export(project.settings, "up")
    assert snapshot(d) == before


def test_export_after_editing_amend_add_drop_reorder(project):
    d = project.series_dir
    before = snapshot(d)
    pq.edit(project.settings, "patches/up")
    t = project.tree
    start = pq.tree_state(project.settings, "up")["layers"][0]["start"]
    commits = g(t, "rev-list", "--reverse", f"{start}..HEAD").split()
    # rebuild the branch: drop "upstream" (4th), amend "near" (2nd), swap 5th/6th, add one
    g(t, "reset", "-q", "--hard", start)
    env = {"GIT_COMMITTER_NAME": "Me", "GIT_COMMITTER_EMAIL": "me@example.org"}
    for c in (commits[0], commits[1], commits[2], commits[5], commits[4]):
        g(t, "cherry-pick", c, env=env)
        if c == commits[1]:
            change_line(t, "lib/near.c", 12, "near line 12 AMENDED")
            g(t, "commit", "-q", "-a", "--amend", "--no-edit", env=env)
    put(t, "lib/new.c", "brand new\n")
    commit_all(t, "lib: add new.c", date="2026-04-01T00:00:00Z")
    report = pq.export(project.settings, "patches/up")
    status = {r["patch"]: r["status"] for r in report.rows}
    assert status == {"0001-clean.patch": "unchanged", "0002-near.patch": "updated",
                      "0003-conflict.patch": "unchanged", "0006-crlf.patch": "unchanged",
                      "0005-rename.patch": "unchanged", "0006-lib-add-new.c.patch": "new",
                      "0004-upstream.patch": "removed"}
    after = snapshot(d)
    assert (d / "series").read_text() == (
        "# our series\n0001-clean.patch\n0002-near.patch\n0003-conflict.patch\n"
        "0006-crlf.patch\n0005-rename.patch\n0006-lib-add-new.c.patch\n")
    for n in ("0001-clean.patch", "0003-conflict.patch", "0005-rename.patch",
              "0006-crlf.patch"):
        assert after[n] == before[n]
    assert "0004-upstream.patch" not in after
    near = after["0002-near.patch"].decode()
    assert near.startswith("From 0000000000000000000000000000000000000000 Mon Sep 17")
    assert "near line 12 AMENDED" in near and "\nindex " in near and "-- \n2." not in near
    # the exported series applies, and a second export is byte-identical
    assert [r["status"] for r in run_patch(project).rows] == ["applied"] * 6
    again = snapshot(d)
    pq.edit(project.settings, "patches/up")
    pq.export(project.settings, "patches/up")
    assert snapshot(d) == again


def test_export_refuses_uncommitted_work_and_stale_series(project):
    pq.edit(project.settings, "patches/up")
    (project.tree / "lib/clean.c").write_text("not committed\n")
    with pytest.raises(DirtyTreeError, match="would not be exported: lib/clean.c"):
        pq.export(project.settings, "patches/up")
    g(project.tree, "checkout", "--", "lib/clean.c")
    (project.series_dir / "0001-clean.patch").write_text("changed by hand\n")
    with pytest.raises(UserError, match="series files changed since the edit branch was made"):
        pq.export(project.settings, "patches/up")


# -- through the CLI ------------------------------------------------------------------------

def inv(project: Project, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CI="true", ASKBUILD_PROJECT_ROOT=str(project.root))
    return subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(ROOT), *args,
         "--work-dir", str(project.settings.work_dir), "--cache-dir",
         str(project.settings.cache_dir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_cli_failing_patch_exits_2_with_a_clear_message(project):
    bad = project.series_dir / "0005-rename.patch"
    bad.write_bytes(bad.read_bytes().replace(b" cmm line 11\n", b" cmm line eleven\n"))
    proc = inv(project, "patch", "--source", "up")
    assert proc.returncode == 2, proc.stderr
    assert "error: patch 5 of 6 of up did not apply: 0005-rename.patch" in proc.stderr
    assert "failed: cmm-17.03.1/src/cmm.c: hunk #1 @@ -9,7 +9,7 @@ does not match" in \
        proc.stderr
    assert "fix: refresh the patch" in proc.stderr
    assert "Traceback" not in proc.stderr
    # the report table was printed too (plain, CI)
    assert re.search(r"0004-upstream\.patch +applied", proc.stderr)
    assert re.search(r"0005-rename\.patch +failed", proc.stderr)


def test_cli_patch_json(project):
    proc = inv(project, "patch", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["kind"] == "patch" and data["ok"] is True
    assert data["summary"] == {"applied": 6}
    assert {r["source"] for r in data["rows"]} == {"up"}


def test_v1_series_applies_to_v2_by_3way_following_the_rename_and_keeping_cr(tmp_path):
    project = make_project(tmp_path, kinds=["near", "rename", "crlf"], with_tree=False)
    up = project.upstream
    write_sources(project.root, {"up": (up.url, "v2", up.v2)})
    make_tree(project.settings, "up", up.url, up.v2)
    report = run_patch(project)
    assert [(r["patch"], r["status"]) for r in report.rows] == [
        ("0001-near.patch", "3way"), ("0002-rename.patch", "3way"), ("0003-crlf.patch", "3way")]
    assert "cmm line 12 OURS" in (project.tree / "cmm/src/cmm.c").read_text()
    assert not (project.tree / "cmm-17.03.1").exists()
    crlf = (project.tree / "fmc/model.cpp").read_bytes()
    assert b"model line 2 changed upstream\r\nmodel line 3\r\nmodel line 4\r\n" \
           b"model line 5 OURS\r\n" in crlf
    assert crlf.count(b"\r\n") == crlf.count(b"\n")


def test_edit_resumes_an_existing_branch_and_refuses_a_foreign_one(project):
    pq.edit(project.settings, "patches/up")
    put(project.tree, "lib/wip.c", "wip\n")
    wip = commit_all(project.tree, "wip")
    g(project.tree, "checkout", "-q", "askbuild/patched")
    assert pq.edit(project.settings, "patches/up") == "askbuild/edit/patches-up"
    assert g(project.tree, "rev-parse", "HEAD") == wip
    g(project.tree, "checkout", "-q", "askbuild/patched")
    orphan = g(project.tree, "commit-tree", "-m", "unrelated", "HEAD^{tree}", env=DEV)
    g(project.tree, "branch", "-f", "askbuild/edit/patches-up", orphan)
    with pytest.raises(DirtyTreeError, match="does not start at the series' base"):
        pq.edit(project.settings, "patches/up")


def test_edit_a_series_whose_patch_no_longer_applies_then_export(project):
    """The refresh loop: the failing patch waits in `git am`, the rest queued behind it."""
    d = project.series_dir
    bad = d / "0003-conflict.patch"
    bad.write_bytes(bad.read_bytes().replace(b" conflict line 9\n", b" conflict line nine\n"))
    before = snapshot(d)
    with pytest.raises(PatchFailed):
        run_patch(project)
    pq.edit(project.settings, "patches/up")
    t = project.tree
    assert g(t, "symbolic-ref", "--short", "HEAD") == "askbuild/edit/patches-up"
    assert (t / ".git" / "rebase-apply").is_dir()            # am stopped at 0003
    with pytest.raises(DirtyTreeError, match="in progress"):
        pq.export(project.settings, "patches/up")
    change_line(t, "lib/conflict.c", 10, "conflict line 10 OURS")   # apply it by hand
    g(t, "add", "--", "lib/conflict.c")
    g(t, "am", "--continue", env=FIXED_IDENTITY)           # then 0004..0006 follow
    assert not (t / ".git" / "rebase-apply").exists()
    report = pq.export(project.settings, "patches/up")
    status = {r["patch"]: r["status"] for r in report.rows}
    assert status["0003-conflict.patch"] == "updated"
    assert {status[n] for n in status if n != "0003-conflict.patch"} == {"unchanged"}
    after = snapshot(d)
    assert [n for n in after if after[n] != before[n]] == ["0003-conflict.patch"]
    assert b" conflict line 9\n" in after["0003-conflict.patch"]
    assert [r["status"] for r in run_patch(project).rows] == ["applied"] * 6


def test_export_twice_while_editing(project):
    pq.edit(project.settings, "patches/up")
    t = project.tree
    change_line(t, "lib/up.c", 15, "up line 15 EXTRA")
    commit_all(t, "lib: extra", date="2026-04-02T00:00:00Z")
    first = pq.export(project.settings, "patches/up")
    assert [r["status"] for r in first.rows].count("new") == 1
    g(t, "commit", "--amend", "-q", "-m", "lib: extra, reworded", env=DEV)
    second = pq.export(project.settings, "patches/up")
    assert {r["patch"]: r["status"] for r in second.rows}["0007-lib-extra.patch"] == "updated"
    assert "reworded" in (project.series_dir / "0007-lib-extra.patch").read_text()
    again = snapshot(project.series_dir)
    pq.export(project.settings, "patches/up")
    assert snapshot(project.series_dir) == again


HOSTILE_GITCONFIG = """\
[commit]
\tgpgSign = true
[diff]
\tnoprefix = true
\tmnemonicPrefix = true
\tcontext = 7
\talgorithm = patience
[format]
\tsignature = hostile
\tnumbered = true
\theaders = "X-Hostile: yes\\n"
[apply]
\twhitespace = fix
[mailinfo]
\tscissors = true
[i18n]
\tcommitEncoding = ISO-8859-1
[core]
\tautocrlf = true
"""


def test_user_git_config_changes_no_commit_id_and_no_export_byte(tmp_path, monkeypatch):
    a = make_project(tmp_path / "a")
    run_patch(a)
    plain = pq.tree_state(a.settings, "up")["head"]
    b = make_project(tmp_path / "b")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text(HOSTILE_GITCONFIG)
    monkeypatch.setenv("HOME", str(home))
    before = snapshot(b.series_dir)
    run_patch(b)
    assert pq.tree_state(b.settings, "up")["head"] == plain
    pq.edit(b.settings, "patches/up")
    g(b.tree, "commit", "--amend", "-q", "--no-edit", "--no-gpg-sign", "-m",
      "fmc: keep CR (reworded)", env=DEV)
    pq.export(b.settings, "patches/up")
    after = snapshot(b.series_dir)
    assert [n for n in after if after[n] != before[n]] == ["0006-crlf.patch"]
    text = after["0006-crlf.patch"]
    assert b"X-Hostile" not in text and b"hostile" not in text and b"[PATCH 1/1]" not in text
    assert b"--- a/fmc/model.cpp\n+++ b/fmc/model.cpp\n@@ -2,7 +2,7 @@" in text


# -- trust (issue #8) -----------------------------------------------------------------------

def test_a_record_that_does_not_vouch_for_the_branch_is_not_trusted(project):
    """Two runs at once once left a branch of fewer commits than its record listed, with the
    record's head = the branch head; a later run took it as done."""
    run_patch(project)
    good = pq.tree_state(project.settings, "up")
    short = good["patches"][3]["commits"][-1]          # 4 of 6 patches
    g(project.tree, "checkout", "-q", "-B", "askbuild/patched", short)
    forged = {**good, "head": short}
    write_json_atomic(project.settings.patch_record("up"), forged)
    report = run_patch(project)
    assert [r["status"] for r in report.rows] == ["applied"] * 6
    assert pq.tree_state(project.settings, "up") == good
    assert g(project.tree, "rev-parse", "HEAD") == good["head"]


def test_patch_check_cleans_scratch_trees_left_by_killed_runs(project):
    work = project.settings.work_dir
    left = work / "patch-scratch-4242-killed"
    g(project.tree, "worktree", "add", "-q", "--detach", str(left), "askbuild/base")
    assert len(g(project.tree, "worktree", "list").splitlines()) == 2
    report = run_patch(project, check=True)
    assert report.ok
    assert not [p for p in work.iterdir() if p.name.startswith("patch-")]
    assert len(g(project.tree, "worktree", "list").splitlines()) == 1


LOCK_HOLDER = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.mark.parametrize("verb", ["patch", "edit", "export", "rebase"])
def test_the_writing_verbs_wait_for_the_work_dir_lock(project, capsys, verb):
    pq.edit(project.settings, "patches/up") if verb == "export" else None
    path = project.settings.run_lock
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(path), "1.5"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    import time
    t0 = time.monotonic()
    {"patch": lambda: run_patch(project), "edit": lambda: pq.edit(project.settings, "up"),
     "export": lambda: pq.export(project.settings, "up"),
     "rebase": lambda: rebasing.rebase(project.settings, "up", onto="v2", dry_run=True)}[verb]()
    assert time.monotonic() - t0 > 1.0
    holder.wait()
    assert "waiting for another askbuild run" in capsys.readouterr().err


def test_the_same_series_listed_twice_is_refused(project):
    layers = project.settings.recipes_dir / "patches.toml"
    layers.write_text('[up]\nlocal = ["patches/up", "patches/./up"]\n')
    with pytest.raises(ConfigError) as e:
        run_patch(project)
    msg = str(e.value)
    assert f"{layers}: [up]: the same series is listed twice: local[0] = 'patches/up' and " \
           "local[1] = 'patches/./up'" in msg and "applied twice" in msg
    (project.root / "patches" / "again").symlink_to("up")
    layers.write_text('[up]\nlocal = ["patches/up", "patches/again"]\n')
    with pytest.raises(ConfigError, match="local\\[1\\] = 'patches/again' are both"):
        run_patch(project)
    assert pq.tree_state(project.settings, "up") is None


def test_a_patch_linked_from_outside_the_series_is_refused(project, tmp_path):
    outside = tmp_path / "outside.patch"
    outside.write_bytes((project.series_dir / "0002-near.patch").read_bytes())
    (project.series_dir / "0002-near.patch").unlink()
    (project.series_dir / "0002-near.patch").symlink_to(outside)
    with pytest.raises(ConfigError) as e:
        run_patch(project)
    assert f"{project.series_dir / '0002-near.patch'} is a symbolic link to {outside}" in \
        str(e.value)
    assert pq.tree_state(project.settings, "up") is None


def test_a_git_failure_is_a_message_naming_the_source_not_a_traceback(project):
    """A file of the user's in git's way: git's own reason, the source, exit 2; the file and
    the tree are left as they were."""
    run_patch(project)
    t = project.tree
    g(t, "checkout", "-q", "--detach", "askbuild/patched")
    g(t, "rm", "-q", "README")
    mine = commit_all(t, "my tree without README")
    (t / "README").write_text("my own notes\n")
    proc = inv(project, "patch")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert "error: patch up: `git checkout` failed:" in proc.stderr
    assert "untracked working tree files would be overwritten by checkout" in proc.stderr
    assert (t / "README").read_text() == "my own notes\n"
    assert g(t, "rev-parse", "HEAD") == mine
    assert not (t / ".git" / pq.JOURNAL).exists()


def test_a_git_am_of_the_user_is_never_taken_for_a_killed_run(project):
    """Without askbuild's run journal, an am in progress is the user's: refused, untouched
    (only a lock file no process holds is cleaned)."""
    bad = project.series_dir / "0003-conflict.patch"
    bad.write_bytes(bad.read_bytes().replace(b" conflict line 9\n", b" conflict line nine\n"))
    with pytest.raises(PatchFailed):
        run_patch(project)
    pq.edit(project.settings, "patches/up")                 # leaves `git am` stopped for us
    change_line(project.tree, "lib/conflict.c", 10, "conflict line 10 resolving")
    (project.tree / ".git" / "ORIG_HEAD.lock").write_text("")
    with pytest.raises(DirtyTreeError, match="a git am/rebase is in progress"):
        run_patch(project)
    assert (project.tree / ".git" / "rebase-apply").is_dir()
    assert "conflict line 10 resolving" in (project.tree / "lib/conflict.c").read_text()
    assert not (project.tree / ".git" / "ORIG_HEAD.lock").exists()


# -- patch_state_problem: the build's gate (issue #14) ----------------------------------------

def problem(project: Project) -> str | None:
    return pq.patch_state_problem(project.settings, "up")


def test_patch_state_problem_is_none_only_for_the_current_series(project):
    assert problem(project).startswith("source up has not been patched (no record ")
    run_patch(project)
    assert problem(project) is None
    f = project.series_dir / "0001-clean.patch"
    orig = f.read_bytes()
    f.write_bytes(orig.replace(b"lib: make clean.c better", b"lib: make clean.c nicer"))
    assert problem(project) == ("the series changed since `inv patch`: "
                                "patches/up/0001-clean.patch (changed): run "
                                "`inv patch --source up`")
    f.write_bytes(orig)
    series = project.series_dir / "series"
    text = series.read_text()
    series.write_text(text.replace("0002-near.patch\n", ""))
    assert "patches/up/0002-near.patch (removed)" in problem(project)
    series.write_text(text.replace("0002-near.patch\n", "").replace(
        "0001-clean.patch\n", "0001-clean.patch\n0002-near.patch\n"))
    assert problem(project) is None                  # the same series again
    lines = text.splitlines(keepends=True)
    series.write_text("".join([lines[0], lines[2], lines[1], *lines[3:]]))
    assert "the series changed since `inv patch`: the order of the patches" in problem(project)
    series.write_text(text)
    assert problem(project) is None


def test_patch_state_problem_names_uncommitted_edits_and_other_heads(project):
    run_patch(project)
    tree = project.tree
    index = tree / ".git" / "index"
    (tree / "lib/clean.c").write_text("edited by hand\n")
    (tree / "notes.txt").write_text("mine\n")
    before = index.stat().st_mtime_ns
    got = problem(project)
    assert got.startswith(f"uncommitted edits in {tree}: lib/clean.c, notes.txt (untracked); "
                          "the build reads committed files only")
    assert "inv patches.edit SERIES" in got and f"git -C {tree} reset --hard" in got
    assert index.stat().st_mtime_ns == before        # a query writes nothing
    g(tree, "checkout", "-q", "--", "lib/clean.c")
    (tree / "notes.txt").unlink()
    assert problem(project) is None
    pq.edit(project.settings, "patches/up")
    change_line(tree, "lib/clean.c", 2, "clean line 2 EDITED")
    commit_all(tree, "an edit not exported yet")
    got = problem(project)
    assert got.startswith(f"{tree} is on branch askbuild/edit/patches-up, not on the patched "
                          "series (askbuild/patched at ")
    assert "inv patches.export SERIES" in got
    g(tree, "checkout", "-q", "--detach", "askbuild/base")
    assert f"{tree} is on a detached HEAD at " in problem(project)
    g(tree, "checkout", "-q", "askbuild/patched")
    assert problem(project) is None


def test_patch_state_problem_follows_the_lock_and_the_last_patch_run(project):
    from askbuild import fetching
    v1, v2 = project.upstream.v1, project.upstream.v2
    run_patch(project)
    sources = project.settings.sources_file
    text = sources.read_text()
    sources.write_text(text.replace(v1, v2).replace('ref = "v1"', 'ref = "v2"'))
    assert problem(project).startswith(f"source up is locked at {v2[:12]} but its tree "
                                       f"{project.tree} is at {v1[:12]} (fetched at another "
                                       "lock): run `inv fetch --source up` then `inv patch`")
    fetching.fetch(project.settings, ["up"])
    assert problem(project).startswith(
        f"source up was fetched at a new lock since `inv patch` (patched on {v1[:12]}, its "
        f"base is now {v2[:12]})")
    with pytest.raises(PatchFailed):                   # 0003-conflict does not apply to v2
        run_patch(project)
    assert problem(project).startswith("the last `inv patch` of up failed: patch 3 of 6 of up "
                                       "did not apply: 0003-conflict.patch (fix it and run ")
    sources.write_text(text.replace(v1, v2).replace('ref = "v1"', 'ref = "v2"')
                       .replace(f'commit = "{v2}"\n', ""))
    assert problem(project).startswith("source up has no lock entry")


def test_patch_state_problems_reads_the_sources_once_and_answers_each_source(project,
                                                                            monkeypatch):
    """The build asks for all its trees at once: the sources file (on the example profile
    also the check of the published upstreams) and the layers are read once, and each
    source gets the answer it gets alone."""
    from askbuild.patchqueue import state
    run_patch(project)
    alone = {n: pq.patch_state_problem(project.settings, n) for n in ("up", "nope")}
    loads = []
    real = state.load_sources
    monkeypatch.setattr(state, "load_sources", lambda s: loads.append(1) or real(s))
    both = pq.patch_state_problems(project.settings, ["up", "nope"])
    assert both == alone == {"up": None, "nope": f"no source named 'nope' in "
                                                 f"{project.settings.sources_file}"}
    assert len(loads) == 1
    project.settings.sources_file.write_text("[up\n")          # unreadable: each says so
    got = pq.patch_state_problems(project.settings, ["up", "nope"])
    assert set(got) == {"up", "nope"}
    assert all(v.startswith(f"source {n}: {project.settings.sources_file}") for n, v in
               got.items())


def test_patch_state_problem_ignores_a_stale_failure_note_and_sees_interrupted_runs(project):
    run_patch(project)
    f = project.series_dir / "0001-clean.patch"
    orig = f.read_bytes()
    f.write_bytes(orig.replace(b"clean line 4", b"clean line four"))    # no longer applies
    with pytest.raises(PatchFailed):
        run_patch(project)
    assert project.settings.failed_patch_record("up").is_file()
    assert problem(project).startswith("the last `inv patch` of up failed: patch 1 of 6")
    f.write_bytes(orig)              # back to the series the tree holds: nothing to refuse
    assert problem(project) is None
    run_patch(project)
    assert not project.settings.failed_patch_record("up").exists()
    (project.tree / ".git" / pq.JOURNAL).write_text('{"verb": "patch"}')
    assert problem(project).startswith(f"an interrupted `inv patch` left {project.tree} "
                                       "half-changed")
    (project.tree / ".git" / pq.JOURNAL).unlink()
    assert pq.patch_state_problem(project.settings, "nope") == \
        f"no source named 'nope' in {project.settings.sources_file}"
    import shutil
    shutil.rmtree(project.tree)
    assert problem(project).startswith(f"source up has no work tree at {project.tree}")
