"""``inv rebase``: the fixture series from v1 to v2 of a fixture upstream (real git)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from patchfixtures import Project, make_project, snapshot

from askbuild import patchqueue as pq
from askbuild import rebasing
from askbuild.errors import DirtyTreeError, PatchFailed, UserError
from askbuild.fsutil import write_json_atomic

ROOT = Path(__file__).resolve().parent.parent

EXPECTED = {
    "0001-clean.patch": "clean",
    "0002-near.patch": "3way",
    "0003-conflict.patch": "conflict",
    "0004-upstream.patch": "upstream",
    "0005-rename.patch": "3way",
    "0006-crlf.patch": "3way",
}


@pytest.fixture
def project(tmp_path) -> Project:
    return make_project(tmp_path)


def statuses(report) -> dict[str, str]:
    return {r["patch"]: r["status"] for r in report.rows}


def resolve_conflict(tree: Path) -> None:
    f = tree / "lib/conflict.c"
    text = f.read_text()
    assert "<<<<<<<" in text
    text = re.sub(r"<<<<<<< [^\n]*\n.*?>>>>>>> [^\n]*\n", "conflict line 10 MERGED\n", text,
                  flags=re.S)
    f.write_text(text)


def g(tree: Path, *args: str) -> str:
    from askbuild import gitutil
    return gitutil.out(list(args), cwd=tree)


def test_dry_run_reports_every_status_and_changes_nothing(project):
    series_before = snapshot(project.series_dir)
    sources_before = project.settings.sources_file.read_bytes()
    report = rebasing.rebase(project.settings, "up", onto="v2", dry_run=True)
    assert statuses(report) == EXPECTED          # complete: it went on after the conflict
    rows = {r["patch"]: r for r in report.rows}
    assert rows["0003-conflict.patch"]["files"] == ["lib/conflict.c"]
    assert "conflict in lib/conflict.c" in rows["0003-conflict.patch"]["detail"]
    assert "dropped" in rows["0004-upstream.patch"]["detail"]
    assert rows["0005-rename.patch"]["detail"] == \
        "followed a rename: cmm-17.03.1/src/cmm.c -> cmm/src/cmm.c"
    assert report.ok is False
    assert report.subject["new_base"] == project.upstream.v2
    # nothing touched: series, pin, work tree, no rebase state
    assert snapshot(project.series_dir) == series_before
    assert project.settings.sources_file.read_bytes() == sources_before
    assert g(project.tree, "rev-parse", "HEAD") == project.upstream.v1
    assert not project.settings.rebase_state("up").exists()
    assert not [p for p in project.settings.work_dir.iterdir() if p.name.startswith("patch-")]


def test_dry_run_json_follows_the_schema(project, capsys):
    rebasing.rebase(project.settings, "up", onto="v2", dry_run=True, as_json=True)
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == "askbuild.report/1"
    assert data["kind"] == "rebase"
    assert set(data) == {"schema", "kind", "title", "ok", "subject", "columns", "rows",
                         "summary", "messages"}
    assert data["subject"]["dry_run"] is True and data["subject"]["onto"] == "v2"
    assert data["summary"] == {"3way": 3, "clean": 1, "conflict": 1, "upstream": 1}
    for row in data["rows"]:
        assert set(row) >= {"layer", "kind", "patch", "status", "commit", "detail", "files"}


def test_rebase_stops_at_the_conflict_then_continue_finishes(project):
    series_before = snapshot(project.series_dir)
    sources_before = project.settings.sources_file.read_bytes()
    with pytest.raises(PatchFailed) as e:
        rebasing.rebase(project.settings, "up", onto="v2")
    msg = str(e.value)
    assert "stopped at patch 3 of 6: patches/up/0003-conflict.patch conflicts in " \
           "lib/conflict.c" in msg
    assert f"git -C {project.tree} add -- lib/conflict.c" in msg
    assert "inv rebase up --continue" in msg and "inv rebase up --skip" in msg
    assert "inv rebase up --abort" in msg
    assert e.value.exit_code == 2
    # stopped: conflict state in the tree, series and pin untouched
    assert g(project.tree, "diff", "--name-only", "--diff-filter=U") == "lib/conflict.c"
    assert snapshot(project.series_dir) == series_before
    assert project.settings.sources_file.read_bytes() == sources_before
    # the patch step refuses to run over it
    with pytest.raises(DirtyTreeError, match="rebase of up is in progress"):
        pq.patch(project.settings, ["up"])
    # continuing without resolving says what is left
    with pytest.raises(UserError, match="still unresolved: lib/conflict.c"):
        rebasing.rebase(project.settings, "up", cont=True)
    resolve_conflict(project.tree)
    g(project.tree, "add", "--", "lib/conflict.c")
    report = rebasing.rebase(project.settings, "up", cont=True)
    assert statuses(report) == {**EXPECTED, "0003-conflict.patch": "resolved"}
    # series exported: upstreamed patch gone, clean one byte-identical, others refreshed
    after = snapshot(project.series_dir)
    assert "0004-upstream.patch" not in after
    assert after["0001-clean.patch"] == series_before["0001-clean.patch"]
    assert (project.series_dir / "series").read_text() == (
        "# our series\n0001-clean.patch\n0002-near.patch\n0003-conflict.patch\n"
        "0005-rename.patch\n0006-crlf.patch\n")
    assert b"conflict line 10 MERGED" in after["0003-conflict.patch"]
    assert b"+++ b/cmm/src/cmm.c" in after["0005-rename.patch"]
    assert b" model line 2 changed upstream\r\n" in after["0006-crlf.patch"]
    # pin moved to v2
    lock = tomllib.loads(project.settings.sources_file.read_text())["up"]
    assert lock["commit"] == project.upstream.v2 and lock["ref"] == "v2"
    assert "# fixture sources" in project.settings.sources_file.read_text()
    # the tree is patched from the new series on the new base
    rec = pq.tree_state(project.settings, "up")
    assert rec["base"] == project.upstream.v2 and len(rec["patches"]) == 5
    assert g(project.tree, "rev-parse", "askbuild/base") == project.upstream.v2
    assert "cmm line 12 OURS" in (project.tree / "cmm/src/cmm.c").read_text()
    crlf = (project.tree / "fmc/model.cpp").read_bytes()
    assert b"model line 5 OURS\r\n" in crlf and crlf.count(b"\r\n") == 20
    assert not project.settings.rebase_state("up").exists()
    assert not project.settings.rebase_backup("up").exists()
    assert g(project.tree, "branch", "--list", "askbuild/rebase") == ""
    # and the new series is stable: patching again is a no-op
    assert {r["status"] for r in pq.patch(project.settings, ["up"]).rows} == {"unchanged"}


def test_skip_drops_the_conflicting_patch(project):
    with pytest.raises(PatchFailed):
        rebasing.rebase(project.settings, "up", onto="v2")
    report = rebasing.rebase(project.settings, "up", skip=True)
    assert statuses(report) == {**EXPECTED, "0003-conflict.patch": "skipped"}
    assert sorted(p.name for p in project.series_dir.glob("*.patch")) == [
        "0001-clean.patch", "0002-near.patch", "0005-rename.patch", "0006-crlf.patch"]
    assert "conflict line 10 THEIRS" in (project.tree / "lib/conflict.c").read_text()


def test_abort_restores_series_and_pin_byte_for_byte(project):
    # make the sources file and series unusual so a rewrite would show
    sf = project.settings.sources_file
    sf.write_bytes(sf.read_bytes() + b"\n# trailing comment, no newline at the end")
    (project.series_dir / "notes.txt").write_bytes(b"keep me\r\n")
    series_before = snapshot(project.series_dir)
    sources_before = sf.read_bytes()
    pq.patch(project.settings, ["up"])
    head_before = g(project.tree, "rev-parse", "askbuild/patched")
    with pytest.raises(PatchFailed):
        rebasing.rebase(project.settings, "up", onto="v2")
    # the maintainer fiddles with the series while stopped
    (project.series_dir / "0001-clean.patch").write_text("oops\n")
    (project.series_dir / "stray.patch").write_text("stray\n")
    rebasing.rebase(project.settings, "up", abort=True)
    assert snapshot(project.series_dir) == series_before
    assert sf.read_bytes() == sources_before
    assert g(project.tree, "symbolic-ref", "--short", "HEAD") == "askbuild/patched"
    assert g(project.tree, "rev-parse", "HEAD") == head_before
    assert g(project.tree, "rev-parse", "askbuild/base") == project.upstream.v1
    assert g(project.tree, "status", "--porcelain", "--untracked-files=no") == ""
    assert not project.settings.rebase_state("up").exists()
    with pytest.raises(UserError, match="no rebase of up is in progress"):
        rebasing.rebase(project.settings, "up", abort=True)


def test_rebase_without_conflicts_is_one_command(tmp_path):
    project = make_project(tmp_path, kinds=["clean", "near", "upstream", "rename", "crlf"])
    report = rebasing.rebase(project.settings, "up", onto="v2")
    assert statuses(report) == {"0001-clean.patch": "clean", "0002-near.patch": "3way",
                                "0003-upstream.patch": "upstream",
                                "0004-rename.patch": "3way", "0005-crlf.patch": "3way"}
    assert any("pin of up moved to" in m for m in report.messages)
    assert pq.tree_state(project.settings, "up")["base"] == project.upstream.v2


def test_option_errors(project):
    with pytest.raises(UserError, match="--onto REF is required"):
        rebasing.rebase(project.settings, "up")
    with pytest.raises(UserError, match="cannot be combined"):
        rebasing.rebase(project.settings, "up", cont=True, abort=True)
    with pytest.raises(UserError, match="no rebase of up is in progress"):
        rebasing.rebase(project.settings, "up", cont=True)
    with pytest.raises(UserError, match="unknown source 'nope'"):
        rebasing.rebase(project.settings, "nope", onto="v2")
    with pytest.raises(Exception, match="not a valid git ref"):
        rebasing.rebase(project.settings, "up", onto="--upload-pack=evil")


def test_dirty_tree_refuses_to_start(project):
    pq.patch(project.settings, ["up"])
    (project.tree / "README").write_text("edit\n")
    with pytest.raises(DirtyTreeError, match="uncommitted changes"):
        rebasing.rebase(project.settings, "up", onto="v2")
    assert not project.settings.rebase_state("up").exists()


def test_cli_rebase_dry_run_and_conflict_exit_codes(project):
    env = dict(os.environ, CI="true", ASKBUILD_PROJECT_ROOT=str(project.root))
    common = ["--work-dir", str(project.settings.work_dir), "--cache-dir",
              str(project.settings.cache_dir)]
    inv = [sys.executable, "-m", "invoke", "--search-root", str(ROOT)]
    proc = subprocess.run([*inv, "rebase", "up", "--onto", "v2", "--dry-run", *common],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"0003-conflict\.patch +conflict", proc.stderr)
    assert re.search(r"0004-upstream\.patch +upstream", proc.stderr)
    proc = subprocess.run([*inv, "rebase", "up", "--onto", "v2", *common],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "fix: edit the conflicting files" in proc.stderr
    proc = subprocess.run([*inv, "rebase", "up", "--abort", *common],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "aborted" in proc.stderr


def test_continue_accepts_a_resolution_committed_by_hand(project):
    with pytest.raises(PatchFailed):
        rebasing.rebase(project.settings, "up", onto="v2")
    resolve_conflict(project.tree)
    from patchfixtures import commit_all
    commit_all(project.tree, "lib: our conflict.c fix, redone by hand")
    report = rebasing.rebase(project.settings, "up", cont=True)
    assert statuses(report)["0003-conflict.patch"] == "resolved"
    text = (project.series_dir / "0003-conflict.patch").read_text()
    assert "Subject: [PATCH] lib: our conflict.c fix, redone by hand" in text


def test_conflict_resolved_to_no_change_drops_the_patch(project):
    with pytest.raises(PatchFailed):
        rebasing.rebase(project.settings, "up", onto="v2")
    g(project.tree, "checkout", "HEAD", "--", "lib/conflict.c")     # take upstream's side
    report = rebasing.rebase(project.settings, "up", cont=True)
    row = next(r for r in report.rows if r["patch"] == "0003-conflict.patch")
    assert row["status"] == "resolved" and "dropped" in row["detail"]
    assert not (project.series_dir / "0003-conflict.patch").exists()


def test_rebase_of_a_source_with_a_vendor_layer(tmp_path):
    from patchfixtures import change_line, commit_all
    from test_patchqueue import vendor_project
    settings, tree, sdir = vendor_project(tmp_path)
    lib_work = tmp_path / "lib-work"
    g(lib_work, "checkout", "-q", "main")
    change_line(lib_work, "src/lib.c", 18, "lib 18 upstream 1.1")
    v2 = commit_all(lib_work, "lib 1.1", date="2026-05-01T00:00:00Z")
    g(lib_work, "tag", "v1.1")
    before = snapshot(sdir)
    report = rebasing.rebase(settings, "lib", onto="v1.1")
    assert [(r["kind"], r["patch"], r["status"]) for r in report.rows] == [
        ("vendor", "01-a.patch", "applied"), ("vendor", "02-b.patch", "applied"),
        ("local", "0001-local.patch", "clean")]
    assert snapshot(sdir) == before                       # a clean patch keeps its bytes
    assert tomllib.loads(settings.sources_file.read_text())["lib"]["commit"] == v2
    rec = pq.tree_state(settings, "lib")
    assert rec["base"] == v2 and [p["kind"] for p in rec["patches"]] == ["vendor", "vendor",
                                                                          "local"]
    assert "lib 6 LOCAL" in (tree / "src/lib.c").read_text()


def test_a_dry_run_without_a_record_puts_the_vendor_layer_onto_the_new_base(tmp_path):
    """No patch record: the dry run applies the old series again, then the vendor layer onto
    the NEW base, and answers what the rebase then does, commit for commit."""
    from patchfixtures import change_line, commit_all
    from test_patchqueue import vendor_project
    settings, tree, sdir = vendor_project(tmp_path)
    lib_work = tmp_path / "lib-work"
    g(lib_work, "checkout", "-q", "main")
    change_line(lib_work, "src/lib.c", 18, "lib 18 upstream 1.1")
    commit_all(lib_work, "lib 1.1", date="2026-05-01T00:00:00Z")
    g(lib_work, "tag", "v1.1")
    assert pq.tree_state(settings, "lib") is None
    dry = rebasing.rebase(settings, "lib", onto="v1.1", dry_run=True)
    real = rebasing.rebase(settings, "lib", onto="v1.1")

    def rows(report):
        return [(r["kind"], r["patch"], r["status"], r["commit"]) for r in report.rows]
    assert [r[:3] for r in rows(dry)] == [
        ("vendor", "01-a.patch", "applied"), ("vendor", "02-b.patch", "applied"),
        ("local", "0001-local.patch", "clean")]
    assert rows(dry) == rows(real)


def test_a_new_file_follows_its_directory_rename(tmp_path):
    project = make_project(tmp_path, kinds=["rename", "newfile"])
    report = rebasing.rebase(project.settings, "up", onto="v2")
    assert statuses(report) == {"0001-rename.patch": "3way", "0002-newfile.patch": "3way"}
    assert (project.tree / "cmm/src/extra.c").read_text() == "extra\n"
    assert not (project.tree / "cmm-17.03.1").exists()
    assert b"+++ b/cmm/src/extra.c" in (project.series_dir / "0002-newfile.patch").read_bytes()


def test_with_work_trees_made_by_fetch(tmp_path):
    """The real layout: fetch makes the tree (objects borrowed from a shallow cache repo) and
    brings the new release into the cache only."""
    project = make_project(tmp_path, with_tree=False)
    pq.patch(project.settings, ["up"])              # fetching.ensure_source makes the tree
    assert (project.tree / ".git" / "objects" / "info" / "alternates").exists()
    check = pq.patch(project.settings, ["up"], check=True)
    assert [r["status"] for r in check.rows] == ["applied"] * 6
    report = rebasing.rebase(project.settings, "up", onto="v2", dry_run=True)
    assert statuses(report) == EXPECTED
    with pytest.raises(PatchFailed):
        rebasing.rebase(project.settings, "up", onto="v2")
    resolve_conflict(project.tree)
    g(project.tree, "add", "--", "lib/conflict.c")
    rebasing.rebase(project.settings, "up", cont=True)
    assert pq.tree_state(project.settings, "up")["base"] == project.upstream.v2
    assert {r["status"] for r in pq.patch(project.settings, ["up"]).rows} == {"unchanged"}


# -- trust (issue #8) -----------------------------------------------------------------------

def test_work_on_an_edit_branch_that_was_not_exported_stops_the_rebase(tmp_path):
    from patchfixtures import change_line, commit_all
    project = make_project(tmp_path, kinds=["clean", "near", "upstream", "rename", "crlf"])
    pq.edit(project.settings, "patches/up")
    change_line(project.tree, "lib/clean.c", 15, "clean line 15 MINE")
    mine = commit_all(project.tree, "lib: my unexported work", date="2026-04-01T00:00:00Z")
    g(project.tree, "checkout", "-q", "askbuild/patched")
    series_before = snapshot(project.series_dir)
    with pytest.raises(DirtyTreeError) as e:
        rebasing.rebase(project.settings, "up", onto="v2")
    msg = str(e.value)
    assert "askbuild/edit/patches-up (series patches/up): 1 commit(s) not exported" in msg
    assert "inv patches.export patches/up" in msg
    assert f"git -C {project.tree} branch -D askbuild/edit/patches-up" in msg
    assert not project.settings.rebase_state("up").exists()
    assert g(project.tree, "rev-parse", "askbuild/edit/patches-up") == mine
    assert snapshot(project.series_dir) == series_before
    # exported: the rebase carries it, and the (exported) edit branch goes with the old base
    pq.export(project.settings, "patches/up")
    rebasing.rebase(project.settings, "up", onto="v2")
    assert "clean line 15 MINE" in \
        (project.series_dir / "0006-lib-my-unexported-work.patch").read_text()
    assert "clean line 15 MINE" in (project.tree / "lib/clean.c").read_text()
    assert g(project.tree, "branch", "--list", "askbuild/edit/*") == ""


def test_an_edit_branch_with_nothing_new_does_not_stop_the_rebase(tmp_path):
    project = make_project(tmp_path, kinds=["clean", "near", "upstream", "rename", "crlf"])
    pq.edit(project.settings, "patches/up")
    rebasing.rebase(project.settings, "up", onto="v2")
    assert pq.tree_state(project.settings, "up")["base"] == project.upstream.v2


def test_abort_never_writes_through_a_link_planted_in_the_series(project, tmp_path):
    series_before = snapshot(project.series_dir)
    with pytest.raises(PatchFailed):
        rebasing.rebase(project.settings, "up", onto="v2")
    victim = tmp_path / "victim.txt"
    victim.write_text("must stay\n")
    target = project.series_dir / "0001-clean.patch"
    target.unlink()
    target.symlink_to(victim)
    (project.series_dir / "stray-link").symlink_to(tmp_path)
    rebasing.rebase(project.settings, "up", abort=True)
    assert victim.read_text() == "must stay\n"
    assert not target.is_symlink() and snapshot(project.series_dir) == series_before
    assert not (project.series_dir / "stray-link").exists()


def test_skip_is_refused_when_the_rebase_was_interrupted_not_stopped(tmp_path):
    project = make_project(tmp_path, kinds=["clean", "near", "upstream", "rename", "crlf"])
    st = project.settings.rebase_state("up")
    st.parent.mkdir(parents=True, exist_ok=True)
    recovery = {"series": {}, "sources_file": str(project.settings.sources_file)}
    write_json_atomic(st, {"source": "up", "onto": "v2", "phase": "replay", "queue": [],
                           "recovery": recovery, "pos": 0})
    with pytest.raises(UserError, match="no conflict to skip: the rebase was interrupted"):
        rebasing.rebase(project.settings, "up", skip=True)


# -- conflicts classified as git does (issue 10, point 1) -------------------------------------

def _two_sides(tmp_path: Path, base: dict, ours: dict, theirs: dict) -> tuple[Path, str]:
    """A repository at ``ours`` (HEAD) and a commit ``theirs`` (the patch), both on ``base``;
    a ``None`` value deletes the file."""
    from askbuild import gitutil
    repo = tmp_path / "two-sides"
    repo.mkdir()
    env = dict(gitutil.FIXED_IDENTITY)

    def commit(files: dict, message: str) -> str:
        for name, text in files.items():
            if text is None:
                g(repo, "rm", "-q", "--", name)
            else:
                (repo / name).parent.mkdir(parents=True, exist_ok=True)
                (repo / name).write_text(text)
                g(repo, "add", "--", name)
        gitutil.git(["commit", "-q", "-m", message], cwd=repo, env=env)
        return g(repo, "rev-parse", "HEAD")

    g(repo, "init", "-q", "-b", "main")
    root = commit(base, "base")
    theirs_commit = commit(theirs, "the patch")
    g(repo, "checkout", "-q", "--detach", root)
    commit(ours, "upstream")
    return repo, theirs_commit


LINES = "".join(f"line {i}\n" for i in range(1, 21))


def test_conflicts_are_classified_in_gits_words_with_fitting_advice(tmp_path, project):
    """content, add/add and a modify/delete where the PATCH deleted the file (upstream changed
    it): each file gets its kind and git's own line; the advice for the patch-side deletion
    offers both `git rm` (keep the deletion) and `git add` (keep upstream's version)."""
    changed = LINES.replace("line 5\n", "line 5 upstream\n")
    repo, patch = _two_sides(
        tmp_path, {"a.c": LINES, "gone.c": LINES},
        ours={"a.c": LINES.replace("line 10\n", "line 10 OURS\n"), "gone.c": changed,
              "new.c": "upstream's new file\n"},
        theirs={"a.c": LINES.replace("line 10\n", "line 10 THEIRS\n"), "gone.c": None,
                "new.c": "our new file\n"})
    from askbuild import gitutil
    proc = gitutil.git(["cherry-pick", "--no-commit", "--strategy=ort", patch], cwd=repo,
                       check=False, env=dict(gitutil.FIXED_IDENTITY))
    assert proc.returncode != 0
    found = rebasing.classify_conflicts(repo, proc.stdout + proc.stderr)
    kinds = {c["file"]: c["kind"] for c in found}
    assert kinds == {"a.c": "content", "gone.c": "modify/delete", "new.c": "add/add"}
    words = {c["file"]: c["message"] for c in found}
    assert words["a.c"] == "CONFLICT (content): Merge conflict in a.c"
    assert words["new.c"] == "CONFLICT (add/add): Merge conflict in new.c"
    assert words["gone.c"].startswith("CONFLICT (modify/delete): gone.c deleted in ")
    assert not any(c["gone"] for c in found)        # upstream has every file
    advice = " ".join(rebasing._advice(project.settings, "up", repo, found))
    assert f"`git -C {repo} add -- a.c new.c`" in advice
    assert f"`git -C {repo} rm -- gone.c` keeps the deletion" in advice
    assert f"`git -C {repo} add -- gone.c` keeps upstream's version" in advice


def test_content_conflict_rows_and_json_carry_the_kind(project, capsys):
    """A stopped rebase: the conflicting row's `conflicts` names the kind (content) in git's
    words, and the JSON `messages` say where it stopped and the next commands."""
    with pytest.raises(PatchFailed):
        rebasing.rebase(project.settings, "up", onto="v2", as_json=True)
    data = json.loads(capsys.readouterr().out)
    row = next(r for r in data["rows"] if r["patch"] == "0003-conflict.patch")
    assert row["conflicts"] == [{"file": "lib/conflict.c", "kind": "content",
                                 "message": "CONFLICT (content): Merge conflict in lib/conflict.c"}]
    assert all(r["source"] == "up" for r in data["rows"])
    text = "\n".join(data["messages"])
    assert "stopped at patch 3 of 6: patches/up/0003-conflict.patch" in text
    assert f"git -C {project.tree} add -- lib/conflict.c" in text
    assert "inv rebase up --continue" in text


def test_status_of_an_interrupted_rebase_and_combined_modes(project, capsys):
    """--status of a rebase killed mid-replay (state in phase ``replay``) says it was
    interrupted and how to resume; --status with another mode is refused."""
    with pytest.raises(PatchFailed):
        rebasing.rebase(project.settings, "up", onto="v2")
    path = project.settings.rebase_state("up")
    st = json.loads(path.read_text())
    st["phase"] = "replay"
    write_json_atomic(path, st)
    report = rebasing.rebase(project.settings, "up", status=True)
    text = "\n".join(report.messages)
    assert "was interrupted" in text and "inv rebase up --continue" in text
    with pytest.raises(UserError, match="cannot be combined"):
        rebasing.rebase(project.settings, "up", status=True, abort=True)
