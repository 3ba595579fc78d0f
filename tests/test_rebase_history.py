"""Issue 10: the maintainer's rebase on real history (tests/rebasefixtures.py).

An ask-like upstream with three releases (v2 deletes a file a patch modifies and already has
one of our backports, v3 renames ``cmm-17.03.1/`` to ``cmm/``) and a five-patch series of real
``git format-patch`` mails with comments everywhere in ``series``.  One or more tests per
numbered point of the issue; each fails when that point regresses.  ``test_fixture_*`` only
check the fixtures themselves (they pass whatever the engine does about the issue).

Conventions these tests rely on (the house style of askbuild's messages): a command askbuild
prints for the user to run is written between backticks, e.g. `inv rebase ask --continue`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import rebasefixtures as fx
from rebasefixtures import CMM_NEW, CMM_OLD, EXPECTED, L2TP, NAME, P1, P2, P3, P4, P5

from askbuild import gitutil, locking, patchqueue, rebasing, series
from askbuild.errors import AskbuildError, PatchFailed

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = Path(__file__).resolve().parent / "schemas" / "rebase-report.schema.json"
REPORTS_DOC = ROOT / "docs" / "reports.md"
INV = [sys.executable, "-m", "invoke", "--search-root", str(ROOT)]


# -- helpers ----------------------------------------------------------------------------------

@pytest.fixture
def project(tmp_path) -> fx.AskProject:
    return fx.make_project(tmp_path)


def g(tree: Path, *args: str) -> str:
    return gitutil.out(list(args), cwd=tree)


def patched(project: fx.AskProject, **kw):
    """Settings for ``project`` with its tree fetched and patched by askbuild (v1 + series)."""
    settings = project.settings(**kw)
    rows = patchqueue.patch(settings, [NAME]).rows
    assert [r["status"] for r in rows] == ["applied"] * 5, rows     # fixture sanity
    return settings


def statuses(report) -> dict[str, str]:
    return {r["patch"]: r["status"] for r in report.rows}


def row(report, patch: str) -> dict:
    return next(r for r in report.rows if r["patch"] == patch)


def failure(fn, *args, **kw) -> AskbuildError:
    """Run ``fn`` expecting an askbuild error (never another exception); return it."""
    try:
        fn(*args, **kw)
    except AskbuildError as e:
        return e
    pytest.fail(f"{fn.__name__} succeeded; expected an askbuild error")


def said(e: Exception, project: fx.AskProject) -> str:
    """The message and fix of ``e`` with the test's directory (whose name holds the test's
    name, words like "ambiguous") replaced by ``<tmp>``, so a match comes from the words."""
    return str(e).replace(str(project.root.parent), "<tmp>")


def stop_at_conflict(settings, onto: str = "v2") -> PatchFailed:
    """Start the rebase; it must stop at patch 4 (the modify/delete conflict)."""
    e = failure(rebasing.rebase, settings, NAME, onto=onto)
    assert isinstance(e, PatchFailed), f"expected the stop at patch 4, got: {e}"
    assert f"stopped at patch 4 of 5: patches/ask/{P4}" in str(e)
    return e


def lock_entry(project: fx.AskProject) -> dict:
    return tomllib.loads(project.sources_file.read_text())[NAME]


def everything(project: fx.AskProject, settings) -> dict:
    """What a rebase (or anything that claims to change nothing) could touch: the series, the
    sources file, the state files (not the lock files), the work tree's HEAD, branches, tags,
    index entries (with conflict stages), status, files and cherry-pick state."""
    tree = project.tree
    state = {k: v for k, v in fx.snapshot(settings.state_dir).items()
             if not k.startswith("askbuild.lock")}
    return {
        "series": fx.snapshot(project.series_dir),
        "sources": project.sources_file.read_bytes(),
        "state": state,
        "head": g(tree, "rev-parse", "HEAD"),
        "branch": g(tree, "rev-parse", "--abbrev-ref", "HEAD"),
        "refs": g(tree, "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads",
                  "refs/tags"),
        "index": g(tree, "ls-files", "-s"),
        "status": g(tree, "status", "--porcelain=v1", "--untracked-files=all"),
        "cherry-pick": (tree / ".git" / "CHERRY_PICK_HEAD").exists(),
        "worktrees": g(tree, "worktree", "list", "--porcelain"),
        "files": {k: v for k, v in fx.snapshot(tree).items() if not k.startswith(".git/")},
    }


def cli_env(project: fx.AskProject) -> dict[str, str]:
    """The environment of a user's shell: the fixture project, and decoy default work and cache
    directories, so a printed command that drops ``--work-dir``/``--cache-dir`` acts on the
    wrong (empty) place and fails instead of passing by luck."""
    decoy = project.root.parent / "decoy"
    env = dict(os.environ, CI="true", ASKBUILD_PLAIN="1", ASKBUILD_PROJECT_ROOT=str(project.root),
               ASKBUILD_WORK_DIR=str(decoy / "work"), ASKBUILD_CACHE_DIR=str(decoy / "cache"))
    for key in ("ASKBUILD_DEBUG", "ASKBUILD_PROFILE"):
        env.pop(key, None)
    return env


def run(words: list[str], project: fx.AskProject) -> subprocess.CompletedProcess:
    """Run a command line as a user's shell would (``inv`` = this Python's invoke)."""
    if words[0] == "inv":
        words = [*INV, *words[1:]]
    return subprocess.run(words, cwd=ROOT, env=cli_env(project), capture_output=True,
                          text=True, timeout=300)


def inv(project: fx.AskProject, *args: str) -> subprocess.CompletedProcess:
    return run(["inv", *args], project)


def printed(text: str, program: str = "") -> list[str]:
    """Commands the output tells the user to run (between backticks), optionally only those
    of ``program`` (``inv`` or ``git``)."""
    found = re.findall(r"`((?:inv|git) [^`]+)`", text)
    return [c for c in found if not program or c.split()[0] == program]


def has_options(words: list[str], project: fx.AskProject) -> bool:
    """``words`` repeat the project's --work-dir, --cache-dir (and --profile) with their
    values."""
    opts = project.options()
    pairs = list(zip(opts[::2], opts[1::2], strict=True))
    return all(any(words[i:i + 2] == [k, v] or words[i] == f"{k}={v}"
                   for i in range(len(words))) for k, v in pairs)


def check_commands(text: str, project: fx.AskProject) -> list[list[str]]:
    """Every ``inv`` command printed in ``text``, split as a shell would; each must carry the
    run's options."""
    cmds = printed(text, "inv")
    assert cmds, f"no `inv ...` command printed in:\n{text}"
    split = [shlex.split(c) for c in cmds]
    bad = [c for c, w in zip(cmds, split, strict=True) if not has_options(w, project)]
    assert not bad, (f"printed commands without the run's options {project.options()} (pasted, "
                     f"they act on another work dir/cache/profile): {bad}")
    return split


def check_git_commands(text: str) -> list[list[str]]:
    """Every ``git -C DIR ...`` command printed in ``text``, split as a shell would: DIR must
    come out as one word naming an existing directory (quoted when it holds a space)."""
    split = [shlex.split(c) for c in printed(text, "git")]
    bad = [shlex.join(w) for w in split if len(w) > 2 and w[1] == "-C" and not Path(w[2]).is_dir()]
    assert not bad, f"printed git commands that do not work when pasted (quoting?): {bad}"
    return split


def find(cmds: list[list[str]], *needles: str) -> list[str]:
    for words in cmds:
        if all(n in words for n in needles):
            return words
    pytest.fail(f"no printed command with {needles}: {[shlex.join(c) for c in cmds]}")


def validate(data: dict) -> None:
    """``data`` follows tests/schemas/rebase-report.schema.json (docs/reports.md)."""
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.validate(data, schema)


# -- the fixtures themselves ---------------------------------------------------------------------

def test_fixture_patches_are_real_format_patch_mails():
    base, up = fx.template()
    sdir = base / "series"
    assert [e.name for e in series.parse(fx.SERIES_TEXT)] == fx.PATCHES
    for i, name in enumerate(fx.PATCHES, start=1):
        text = (sdir / name).read_text()
        first = text.splitlines()[0]
        assert re.fullmatch(r"From [0-9a-f]{40} Mon Sep 17 00:00:00 2001", first)
        assert not first.startswith("From 0000000")
        assert f"Subject: [PATCH {i}/5] " in text
        assert text.endswith(f"-- \n{fx.SIGNATURE}\n\n")
        has_stat = re.search(r"^---\n .* \| +\d+ [+-]+\n 1 file changed", text, re.M)
        index = re.search(r"^index ([0-9a-f]+)\.\.([0-9a-f]+) 100644$", text, re.M)
        assert index, name
        if name == P5:
            assert not has_stat and len(index.group(1)) == 12
        else:
            assert has_stat and len(index.group(1)) == 7
    # the upstream history the verdicts rest on
    files = {t: set(g(up.bare, "ls-tree", "-r", "--name-only", t).split()) for t in
             ("v1", "v2", "v3")}
    assert L2TP in files["v1"] and L2TP not in files["v2"] | files["v3"]
    assert CMM_OLD in files["v2"] and CMM_NEW in files["v3"] and CMM_OLD not in files["v3"]
    assert "cdx main line 20 overflow fixed" in g(up.bare, "show", f"v2:{fx.CDX_MAIN}")


def test_fixture_dry_runs_give_the_known_verdicts(project):
    settings = patched(project)
    for onto in ("v2", "v3"):
        report = rebasing.rebase(settings, NAME, onto=onto, dry_run=True)
        assert statuses(report) == EXPECTED[onto]
        assert row(report, P4)["files"] == [L2TP]
    assert row(report, P3)["detail"] == f"followed a rename: {CMM_OLD} -> {CMM_NEW}"


# -- 1. modify/delete conflicts ---------------------------------------------------------------

def test_1_modify_delete_is_classified_in_gits_words(project):
    """The report says which kind of conflict (as git does) and shows git's own words."""
    settings = patched(project)
    report = rebasing.rebase(settings, NAME, onto="v2", dry_run=True)
    r = row(report, P4)
    assert r["status"] == "conflict" and r["files"] == [L2TP]
    assert "modify/delete" in r["detail"], \
        f"the detail must name the kind of conflict (git: modify/delete): {r['detail']!r}"
    assert "deleted in" in r["detail"], \
        f"the detail must carry git's own words ('... deleted in ...'): {r['detail']!r}"
    conflicts = r.get("conflicts")
    assert conflicts and [(c["file"], c["kind"]) for c in conflicts] == \
        [(L2TP, "modify/delete")], f"rows carry conflicts: [{{file, kind, message}}]: {r}"
    assert "deleted in" in conflicts[0]["message"]


def test_1_stop_at_modify_delete_advises_skip_or_git_rm(project):
    settings = patched(project)
    msg = said(stop_at_conflict(settings), project)
    assert "modify/delete" in msg, f"the stop message must name the kind of conflict:\n{msg}"
    assert re.search(rf"git -C \S+.* rm -- {re.escape(L2TP)}", msg) or \
        f"git -C {shlex.quote(str(project.tree))} rm -- {L2TP}" in msg, \
        f"upstream deleted the file: the advice must include `git rm`:\n{msg}"
    assert re.search(r"inv rebase ask --skip", msg), msg
    assert "edit the conflicting files" not in msg, \
        f"'edit the files and git add them' brings the deleted file back:\n{msg}"
    if re.search(rf"add -- {re.escape(L2TP)}", msg):
        assert "whole file" in msg, f"`git add` of a deleted file must warn:\n{msg}"
    # following the advice: git rm + --continue drops the patch
    g(project.tree, "rm", "-q", "--", L2TP)
    report = rebasing.rebase(settings, NAME, cont=True)
    assert statuses(report)[P4] == "resolved" and "dropped" in row(report, P4)["detail"]
    assert not (project.series_dir / P4).exists()


def test_1_readding_the_deleted_file_is_flagged(project):
    """Keeping our version of the deleted file turns the patch into one that re-adds the whole
    file: the completed rebase warns (report messages) naming the patch and the file."""
    settings = patched(project)
    stop_at_conflict(settings)
    g(project.tree, "add", "--", L2TP)
    report = rebasing.rebase(settings, NAME, cont=True)
    exported = (project.series_dir / P4).read_text()
    assert "new file mode" in exported        # the scenario: the patch re-adds the file
    warned = [m for m in report.messages if P4 in m and "module_l2tp.c" in m
              and "whole file" in m.lower()]
    assert warned, ("expected a message saying the resolved patch now re-adds a whole file "
                    f"({P4}, {L2TP}); messages: {report.messages}")


# -- 2. printed commands work when pasted -----------------------------------------------------

@pytest.fixture
def lab(tmp_path) -> fx.AskProject:
    """Profile ``lab`` only (no recipes/sources.toml), work and cache dirs with a space."""
    return fx.make_project(tmp_path, profile="lab", dirs=" with space")


def test_2_printed_rebase_commands_work_when_pasted(lab):
    opts = lab.options()
    assert inv(lab, "patch", "--source", NAME, *opts).returncode == 0
    stop = inv(lab, "rebase", NAME, "--onto", "v2", *opts)
    assert stop.returncode == 2, stop.stderr
    cmds = check_commands(stop.stderr, lab)
    for mode in ("--continue", "--skip", "--abort"):
        find(cmds, "rebase", NAME, mode)
    rm = [w for w in check_git_commands(stop.stderr) if "rm" in w]
    assert rm, f"no `git ... rm` printed for the deleted file:\n{stop.stderr}"
    done = run(rm[0], lab)
    assert done.returncode == 0, f"`{shlex.join(rm[0])}` pasted failed: {done.stderr}"
    cont = run(find(cmds, "rebase", NAME, "--continue"), lab)
    assert cont.returncode == 0, f"the printed --continue failed when pasted:\n{cont.stderr}"
    assert lock_entry(lab)["commit"] == lab.upstream.v2


def test_2_printed_abort_in_the_patch_refusal_works_when_pasted(lab):
    opts = lab.options()
    assert inv(lab, "rebase", NAME, "--onto", "v2", *opts).returncode == 2
    refused = inv(lab, "patch", "--source", NAME, *opts)
    assert refused.returncode != 0 and "rebase of ask is in progress" in refused.stderr
    cmds = check_commands(refused.stderr, lab)
    abort = run(find(cmds, "rebase", NAME, "--abort"), lab)
    assert abort.returncode == 0, f"the printed --abort failed when pasted:\n{abort.stderr}"
    assert "aborted" in abort.stderr
    assert g(lab.tree, "rev-parse", "--abbrev-ref", "HEAD") == "askbuild/patched"


def test_2_printed_fetch_command_works_when_pasted(lab):
    """Offline with an empty cache: the message says to fetch once online; that command,
    pasted, fetches into this project's work dir and cache."""
    failed = inv(lab, "fetch", "--source", NAME, "--offline", *lab.options())
    assert failed.returncode == 1, failed.stderr
    cmds = check_commands(failed.stderr, lab)
    fetch = find(cmds, "fetch")
    assert "--offline" not in fetch, f"the advice is to fetch online: {shlex.join(fetch)}"
    done = run(fetch, lab)
    assert done.returncode == 0, f"`{shlex.join(fetch)}` pasted failed:\n{done.stderr}"
    assert g(lab.tree, "rev-parse", "askbuild/base") == lab.upstream.v1


def test_2_printed_patches_edit_command_works_when_pasted(lab):
    """A patch that no longer applies: the printed `inv patches.edit` carries the options."""
    text = lab.sources_file.read_text()
    lab.sources_file.write_text(text.replace('ref = "v1"', 'ref = "v2"')
                                .replace(lab.upstream.v1, lab.upstream.v2))
    failed = inv(lab, "patch", "--source", NAME, *lab.options())
    assert failed.returncode == 2, failed.stderr
    cmds = check_commands(failed.stderr, lab)
    edit = run(find(cmds, "patches.edit"), lab)
    assert "askbuild/edit/" in g(lab.tree, "branch", "--list", "askbuild/edit/*"), edit.stderr
    check_commands(edit.stderr, lab)
    check_git_commands(edit.stderr)


# -- 3. offline with a named ref -------------------------------------------------------------

def _upstream_gone(project: fx.AskProject) -> None:
    project.upstream.bare.rename(project.upstream.bare.with_name("gone.git"))


def test_3_offline_onto_a_tag_seen_by_an_earlier_online_rebase(project):
    settings = patched(project)
    rebasing.rebase(settings, NAME, onto="v2", dry_run=True)          # online: v2 resolved
    _upstream_gone(project)
    offline = project.settings(offline=True)
    try:
        report = rebasing.rebase(offline, NAME, onto="v2", dry_run=True)
    except AskbuildError as e:
        pytest.fail(f"--offline --onto v2 after an online rebase to v2 must work: {e}")
    assert statuses(report) == EXPECTED["v2"]
    stop_at_conflict(offline, "v2")


def test_3_fetch_ref_brings_a_tag_for_offline_use(project):
    opts = project.options()
    assert inv(project, "patch", "--source", NAME, *opts).returncode == 0
    sources_before = project.sources_file.read_bytes()
    fetched = inv(project, "fetch", "--source", NAME, "--ref", "v3", *opts)
    assert fetched.returncode == 0, f"`inv fetch --ref v3` failed:\n{fetched.stderr}"
    assert project.sources_file.read_bytes() == sources_before, "--ref must not move the pin"
    assert g(project.tree, "rev-parse", "askbuild/base") == project.upstream.v1
    _upstream_gone(project)
    dry = inv(project, "rebase", NAME, "--onto", "v3", "--dry-run", "--offline", *opts)
    assert dry.returncode == 0, f"offline dry run onto a fetched tag failed:\n{dry.stderr}"
    assert re.search(rf"{re.escape(P3)} +3way", dry.stderr), dry.stderr


# -- 4. abbreviated commits ------------------------------------------------------------------

def test_4_onto_an_abbreviated_commit_records_the_full_sha(project):
    settings = patched(project)
    v3 = project.upstream.v3
    try:
        report = rebasing.rebase(settings, NAME, onto=v3[:7], dry_run=True)
    except AskbuildError as e:
        pytest.fail(f"--onto {v3[:7]} (an unambiguous abbreviation of v3) was refused: {e}")
    assert report.subject["new_base"] == v3 and statuses(report) == EXPECTED["v3"]
    stop_at_conflict(settings, v3[:7])
    rebasing.rebase(settings, NAME, skip=True)
    entry = lock_entry(project)
    assert entry["commit"] == v3, entry
    assert entry["ref"] == v3, f"the sources file records the full SHA, not {entry['ref']!r}"


def test_4_ambiguous_abbreviation_names_the_candidates(project):
    settings = patched(project)
    prefix, a, b = fx.ambiguous_pair(project.upstream)
    e = failure(rebasing.rebase, settings, NAME, onto=prefix, dry_run=True)
    text = said(e, project)
    assert "ambiguous" in text.lower() and prefix in text, text
    assert a[:10] in text and b[:10] in text, f"the message lists the candidates:\n{text}"


def test_4_unknown_abbreviation_gets_a_clear_message(project):
    settings = patched(project)
    e = failure(rebasing.rebase, settings, NAME, onto="0badc0d", dry_run=True)
    text = said(e, project)
    assert "0badc0d" in text
    assert "commit" in text.lower(), \
        f"say that no tag, branch or commit (abbreviated or not) is 0badc0d:\n{text}"


def test_4_lock_resolves_an_abbreviated_ref(project):
    """``ref = "<7 hex>"`` in the sources file: locked to the full SHA, or refused with a
    message saying a full SHA is needed (never 'check the tag/branch name')."""
    v2 = project.upstream.v2
    project.sources_file.write_text(
        f'[{NAME}]\nkind = "git"\nurl = "{project.upstream.url}"\nref = "{v2[:7]}"\n')
    settings = project.settings()
    try:
        locking.lock(settings, [NAME])
    except AskbuildError as e:
        text = said(e, project)
        assert re.search(r"full (commit|SHA)|40", text) and v2[:7] in text, \
            f"an abbreviated ref is resolved or refused saying a full SHA is needed:\n{text}"
        return
    assert lock_entry(project)["commit"] == v2


# -- 5. --dry-run while a rebase is stopped ---------------------------------------------------

def test_5_dry_run_while_stopped_is_allowed_and_changes_nothing(project):
    settings = patched(project)
    stop_at_conflict(settings)
    before = everything(project, settings)
    for onto in ("v3", "v2"):
        try:
            report = rebasing.rebase(settings, NAME, onto=onto, dry_run=True)
        except AskbuildError as e:
            pytest.fail(f"--dry-run --onto {onto} while a rebase is stopped was refused: {e}")
        assert report.subject["dry_run"] is True and statuses(report) == EXPECTED[onto]
        after = everything(project, settings)
        changed = sorted(k for k in before if before[k] != after[k])
        assert not changed, f"the dry run changed: {changed}"
    # and the stopped rebase goes on as before
    g(project.tree, "rm", "-q", "--", L2TP)
    rebasing.rebase(settings, NAME, cont=True)
    assert lock_entry(project)["commit"] == project.upstream.v2


# -- 6. series comments ----------------------------------------------------------------------

def test_6_series_comments_are_kept_byte_for_byte(project):
    settings = patched(project)
    stop_at_conflict(settings)
    report = rebasing.rebase(settings, NAME, skip=True)
    assert statuses(report) == {**EXPECTED["v2"], P4: "skipped"}
    got = (project.series_dir / "series").read_text()
    assert got == fx.SERIES_AFTER_DROPS, (
        "series rewritten wrongly; expected every comment of a surviving entry or section kept "
        f"byte for byte, the dropped entries' own comments gone.\n--- got:\n{got}\n--- want:\n"
        f"{fx.SERIES_AFTER_DROPS}")


# -- 7. re-exported patches keep their format ------------------------------------------------

def _split_mail(mail: bytes) -> tuple[bytes, bytes]:
    """(headers + message, the rest: diffstat if any, diff, signature)."""
    stat = mail.find(b"\n---\n")
    diff = mail.find(b"\ndiff --git ")
    cut = stat if 0 <= stat < diff else diff
    return mail[:cut + 1], mail[cut + 1:]


def rendered_like(old: bytes, tree: Path, commit: str) -> bytes:
    """``commit`` as a mail in ``old``'s own format: ``old``'s headers and message, then the
    commit's diff written the way ``old`` was (diffstat or not, its index abbreviation, its
    signature), i.e. what the maintainer's ``git format-patch`` gives for the new commit."""
    head, tail = _split_mail(old)
    abbrev = len(re.search(rb"^index ([0-9a-f]+)\.\.", tail, re.M).group(1))
    signature = tail.rsplit(b"\n-- \n", 1)[1].strip().decode()
    stat = ["--stat"] if tail.startswith(b"---\n") else ["-p"]
    fresh = gitutil.git(["-c", "diff.noprefix=false", "-c", "diff.mnemonicPrefix=false",
                         "format-patch", "--stdout", "-1", *stat, f"--abbrev={abbrev}",
                         f"--signature={signature}", commit], cwd=tree,
                        env={"GIT_CONFIG_GLOBAL": "/dev/null"}, text=False).stdout
    return head + _split_mail(fresh)[1]


def _from_line_ok(mail: bytes) -> bool:
    """A real ``From <sha>`` line (the old commit's or the new one's), never the zero one."""
    first = mail.split(b"\n", 1)[0]
    return bool(re.fullmatch(rb"From [0-9a-f]{40} Mon Sep 17 00:00:00 2001", first)) \
        and not first.startswith(b"From 0000000000")


def test_7_reexported_patches_keep_their_own_format(project):
    settings = patched(project)
    before = fx.snapshot(project.series_dir)
    stop_at_conflict(settings, "v3")
    report = rebasing.rebase(settings, NAME, skip=True)
    assert statuses(report) == {**EXPECTED["v3"], P4: "skipped"}
    after = fx.snapshot(project.series_dir)
    assert set(after) == {"series", P1, P3, P5}
    assert after[P1] == before[P1], "a clean patch keeps its bytes"
    for name in (P3, P5):           # P3 followed the rename, P5 went 3-way
        want = rendered_like(before[name], project.tree, row(report, name)["commit"])
        got = after[name]
        same = got.split(b"\n", 1)[1] == want.split(b"\n", 1)[1]
        assert same and _from_line_ok(got), (
            f"{name} was reformatted: only what the rebase changed may differ (paths, context, "
            f"index ids; the From line may name the new commit); headers, diffstat presence, "
            f"index abbreviation and signature stay.\n--- got:\n{got.decode()}\n--- want "
            f"(From line aside):\n{want.decode()}")
    assert f" {CMM_NEW} | 2 +-\n".encode() in after[P3]        # the diffstat follows the rename
    assert b"\n---\n" not in after[P5].split(b"diff --git")[0]  # P5 had no diffstat


# -- 8. the JSON report ----------------------------------------------------------------------

def test_8_json_of_a_stopped_rebase_carries_where_and_what_next(project):
    opts = project.options()
    assert inv(project, "patch", "--source", NAME, *opts).returncode == 0
    proc = inv(project, "rebase", NAME, "--onto", "v2", "--json", *opts)
    assert proc.returncode == 2, proc.stderr
    data = json.loads(proc.stdout)
    validate(data)
    assert all(r["source"] == NAME for r in data["rows"])
    text = "\n".join(data["messages"])
    assert f"stopped at patch 4 of 5: patches/ask/{P4}" in text, \
        f"messages must say where the rebase stopped: {data['messages']}"
    assert L2TP in text and "modify/delete" in text, data["messages"]
    cmds = check_commands(text, project)
    for mode in ("--continue", "--skip", "--abort"):
        find(cmds, "rebase", NAME, mode)
    conflict = next(r for r in data["rows"] if r["patch"] == P4)
    assert [c["kind"] for c in conflict["conflicts"]] == ["modify/delete"]


def test_8_json_of_dry_run_and_completed_rebase_follow_the_schema(project, capsys):
    settings = patched(project)
    capsys.readouterr()
    rebasing.rebase(settings, NAME, onto="v3", dry_run=True, as_json=True)
    validate(json.loads(capsys.readouterr().out))
    stop_at_conflict(settings, "v3")
    capsys.readouterr()
    rebasing.rebase(settings, NAME, skip=True, as_json=True)
    data = json.loads(capsys.readouterr().out)
    validate(data)
    exported = data["subject"]["exported"]["patches/ask"]
    assert {r["patch"]: r["status"] for r in exported} == {
        P1: "unchanged", P2: "removed", P3: "updated", P4: "removed", P5: "updated"}


def _doc_section(title: str) -> str:
    text = REPORTS_DOC.read_text()
    start = text.index(f"### `{title}`")
    end = text.find("\n### ", start + 1)
    return text[start:end if end > 0 else None]


def test_8_every_key_of_the_rebase_json_is_documented(project, capsys):
    settings = patched(project)
    stop_at_conflict(settings, "v3")
    capsys.readouterr()
    rebasing.rebase(settings, NAME, skip=True, as_json=True)
    data = json.loads(capsys.readouterr().out)
    doc = _doc_section("rebase")
    rows_line = next(line for line in doc.splitlines() if "Rows:" in line)
    rows_doc = doc[doc.index(rows_line):]
    row_keys = sorted({k for r in data["rows"] for k in r} | {"source", "conflicts"})
    missing = [k for k in row_keys if f"`{k}`" not in rows_doc]
    assert not missing, f"docs/reports.md (### `rebase`, Rows:) does not document {missing}"
    m = re.search(r"`exported` \(`\{layer: \[\{([^}]*)\}\]\}`", doc)
    assert m, "docs/reports.md (### `rebase`) must give the shape of `exported`"
    documented = {k.strip() for k in m.group(1).split(",")}
    keys = {k for rows in data["subject"]["exported"].values() for r in rows for k in r}
    assert keys <= documented, f"exported rows carry undocumented keys {keys - documented}"


# -- 9. help ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["rebase", "--help"], ["--help", "rebase"]])
def test_9_rebase_help_describes_the_source_argument(args, project):
    proc = inv(project, *args)
    assert proc.returncode == 0, f"`inv {' '.join(args)}` failed:\n{proc.stderr}"
    assert re.search(r"--source=STRING +\S", proc.stdout), \
        f"no help text for the source argument:\n{proc.stdout}"
    assert re.search(r"--onto=STRING +\S", proc.stdout)


# -- --status --------------------------------------------------------------------------------

def test_status_while_stopped_says_where_what_and_the_next_commands(project):
    opts = project.options()
    assert inv(project, "patch", "--source", NAME, *opts).returncode == 0
    assert inv(project, "rebase", NAME, "--onto", "v2", *opts).returncode == 2
    settings = project.settings()
    before = everything(project, settings)
    proc = inv(project, "rebase", NAME, "--status", *opts)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert f"stopped at patch 4 of 5: patches/ask/{P4}" in out, out
    assert re.search(rf"{re.escape(L2TP)}\W+.*modify/delete", out), \
        f"the conflicted files with their kind:\n{out}"
    cmds = check_commands(out, project)
    for mode in ("--continue", "--skip", "--abort"):
        find(cmds, "rebase", NAME, mode)
    assert any("rm" in w for w in check_git_commands(out)), out
    assert everything(project, settings) == before, "--status changed something"


def test_status_without_a_rebase(project):
    opts = project.options()
    assert inv(project, "patch", "--source", NAME, *opts).returncode == 0
    proc = inv(project, "rebase", NAME, "--status", *opts)
    assert "no rebase of ask is in progress" in proc.stdout + proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# -- the maintainer's guide ------------------------------------------------------------------

def test_docs_walk_a_maintainer_through_a_deleted_file_and_a_renamed_directory():
    text = (ROOT / "docs" / "patches.md").read_text()
    section = text[text.index("## Moving to a new vendor release"):]
    for needle in ("modify/delete", " rm -- ", "--skip", "whole file", "--status",
                   "cmm-17.03.1/", "--dry-run"):
        assert needle in section, \
            f"docs/patches.md (rebase section) does not walk through {needle!r}"
