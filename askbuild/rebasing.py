"""``inv rebase SOURCE --onto REF``: carry a source's local series to a new upstream release.

The old series is applied to the locked base (``askbuild/patched``), REF is fetched, and every
local patch commit is replayed onto REF (after the vendor layers) with ``git cherry-pick
--no-commit`` (merge-ort: full 3-way merge with rename detection, so patches follow files
that upstream moved).  Each patch is reported as

* ``clean``: the patch applies as it is (``git apply --check`` on the new tree);
* ``3way``: it needed the merge (context changed, or its files moved);
* ``upstream``: the merge left no change (upstream already has it): dropped;
* ``conflict``: the merge conflicts.  Later ``resolved`` or ``skipped``.  Each conflicting
  file is classified as git does (:func:`classify_conflicts`: ``content``, ``modify/delete``,
  ``rename/delete``, ``add/add``, ...) with git's own ``CONFLICT (...)`` line, and the advice
  fits the kind (:func:`_advice`: a file the new release deleted gets ``git rm`` or
  ``--skip``, never ``git add``).  A resolution that turns a patch into one re-adding a whole
  file is flagged in the report's messages.

``--dry-run`` does all of that in a scratch clone, never stops (a conflicting patch is reported
and skipped) and touches neither the series, the pin nor the work tree; it is allowed while a
rebase is in progress.  It replays the commits ``inv patch`` recorded (when the record is for
the same series and base) with one ``git rebase -i`` (:func:`_dry_replay`: the same merge,
commits and statuses as one ``cherry-pick`` per patch).  ``--status``
(:func:`rebase_status`) shows where a rebase is, its conflicts with their kind and the next
commands, and changes nothing.  Every command printed
comes from :meth:`Settings.command`, so it carries the run's options.

Otherwise the work of the rebase happens on branch ``askbuild/rebase`` of the source's work tree.
Before anything changes a recovery point is written (``state/rebase-<name>.json`` plus copies of
every local series directory and of the sources file under ``state/rebase-<name>/``).  At the
first conflict the tree is left in conflict state and the message says what to do next
(``--continue`` after ``git add``, ``--skip``, ``--abort``).  ``--abort`` puts the series
files and the sources file back byte for byte and the work tree back on ``askbuild/patched``.
When every patch is through, the series directories are rewritten (unchanged patches keep
their bytes, see :func:`askbuild.patchqueue.write_series`), the pin moves to REF
(``sources.write_lock``: commit and ref) and the work tree is re-patched from the new series.

Crash safety: the state file says which phase the rebase is in (``vendor``, ``replay``,
``stopped`` at a conflict, ``complete``) and the last good commit.  A rebase killed in any
phase other than ``stopped`` is resumed by ``--continue`` (or by running the same
``--onto REF`` again): the tree goes back to the last good commit (its half-done cherry-pick
and stale git locks dropped) and the replay goes on; a killed completion starts over from the
recovery point.  ``--abort`` works in every phase.  A rebase does not start while an edit
branch (``inv patches.edit``) holds commits that were not exported: they would be lost.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
from pathlib import Path

from . import console, fetching, gitutil, procs, runlock, treereplay
from . import patchqueue as pq
from .errors import ConfigError, DirtyTreeError, PatchFailed, UserError
from .fsutil import read_json, write_json_atomic
from .gitutil import FIXED_IDENTITY
from .refs import BASE_REF, BASE_TAG, PATCHED, REBASE_BRANCH
from .report import Report
from .settings import Settings
from .sources import Source, load_sources, write_lock

COLUMNS = ["layer", "patch", "status", "commit", "detail"]
STATE_SCHEMA = 1


# ---------------------------------------------------------------------------------------------
# fetching the new base

def _has_commit(tree: Path, sha: str) -> bool:
    return gitutil.git(["cat-file", "-e", f"{sha}^{{commit}}"], cwd=tree,
                       check=False).returncode == 0


def fetch_onto(settings: Settings, src: Source, tree: Path, onto: str) -> str:
    """Bring ``onto`` into ``tree``'s object store and return its commit SHA: fetched into
    the source's cache repository by :func:`askbuild.fetching.fetch_ref` (mirrors and
    ``--offline`` honoured), then copied from there into the work tree."""
    gitutil.check_ref(onto, what=f"rebase {src.name} --onto")
    sha = fetching.fetch_ref(settings, src, onto)
    if not _has_commit(tree, sha):
        gitutil.git(["fetch", "-q", "--no-tags", "--",
                     str(fetching.cache_repo(settings, src)), sha], cwd=tree)
    return sha


def recorded_ref(onto: str, sha: str) -> str:
    """The ``ref`` the sources file records for ``--onto onto`` that resolved to ``sha``: the
    full SHA when ``onto`` is an abbreviation of it (a prefix never names the commit for
    good: it may become ambiguous), else ``onto`` as given (a tag or branch)."""
    lowered = onto.lower()
    if 4 <= len(onto) < 40 and re.fullmatch(r"[0-9a-f]+", lowered) and sha.startswith(lowered):
        return sha
    return onto


# ---------------------------------------------------------------------------------------------
# state

def _load_state(settings: Settings, name: str) -> dict:
    path = settings.rebase_state(name)
    if not path.exists():
        raise UserError(f"no rebase of {name} is in progress",
                        fix=f"start one with `{settings.command('rebase', name, '--onto', 'REF')}`")
    st = read_json(path)
    if not st or not isinstance(st.get("queue"), list) or not _recovery_ok(st.get("recovery")) \
            or st.get("source") != name:
        raise ConfigError(f"{path}: the rebase state of {name} is unreadable",
                          fix=f"restore the series and {settings.sources_file.name} from git "
                              f"if needed, then delete {path} and {settings.rebase_backup(name)}")
    return st


def _recovery_ok(rec: object) -> bool:
    """The shape :func:`_record_recovery` writes: ``{"series": {dir: "<n>"}, "sources_file":
    path}``; anything else is a damaged state."""
    return (isinstance(rec, dict) and isinstance(rec.get("sources_file"), str)
            and isinstance(rec.get("series"), dict)
            and all(isinstance(k, str) and isinstance(v, str) and v.isdigit()
                    for k, v in rec["series"].items()))


def _phase(st: dict) -> str:
    """``vendor`` | ``replay`` | ``stopped`` (at a conflict: the user's turn) | ``complete``."""
    return st.get("phase") or ("stopped" if st.get("head_at_stop") else "replay")


def _save_state(settings: Settings, st: dict) -> None:
    write_json_atomic(settings.rebase_state(st["source"]), st)


def _record_recovery(settings: Settings, name: str, layers: list[pq.Layer]) -> dict:
    """Copy every local series directory and the sources file into the backup directory."""
    bdir = settings.rebase_backup(name)
    if bdir.exists():
        shutil.rmtree(bdir)
    (bdir / "series").mkdir(parents=True)
    saved = {}
    for i, ly in enumerate(ly for ly in layers if ly.kind == "local"):
        src_dir = settings.project_root / ly.dir
        dst = bdir / "series" / str(i)
        shutil.copytree(src_dir, dst, symlinks=True)
        saved[ly.dir] = str(i)
    shutil.copy2(settings.sources_file, bdir / "sources.toml")
    record = settings.patch_record(name)
    if record.exists():
        shutil.copy2(record, bdir / "patch-record.json")
    return {"series": saved, "sources_file": str(settings.sources_file)}


def _listing(top: Path) -> tuple[dict[Path, Path], dict[Path, str], set[Path]]:
    """Files, symbolic links (with their targets) and directories under ``top``, relative;
    links are never followed."""
    files: dict[Path, Path] = {}
    links: dict[Path, str] = {}
    dirs: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(top):
        here = Path(dirpath)
        rel = here.relative_to(top)
        for d in list(dirnames):
            if (here / d).is_symlink():
                links[rel / d] = os.readlink(here / d)
                dirnames.remove(d)
            else:
                dirs.add(rel / d)
        for f in filenames:
            if (here / f).is_symlink():
                links[rel / f] = os.readlink(here / f)
            else:
                files[rel / f] = here / f
    return files, links, dirs


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)


def _restore_dir(saved: Path, target: Path) -> None:
    """Make ``target`` hold exactly what ``saved`` holds, byte for byte; a link in either is
    replaced or recreated as a link, never written through."""
    files, links, dirs = _listing(saved)
    if (target.exists() or target.is_symlink()) and not target.is_dir():
        target.unlink()
    target.mkdir(parents=True, exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(target, topdown=False):
        here = Path(dirpath)
        rel = here.relative_to(target)
        for name in filenames + dirnames:
            p, r = here / name, rel / name
            if p.is_symlink():
                if links.get(r) != os.readlink(p):
                    p.unlink()
            elif p.is_dir():
                if r not in dirs:
                    shutil.rmtree(p)
            elif r not in files:
                p.unlink()
    for d in sorted(dirs):
        (target / d).mkdir(parents=True, exist_ok=True)
    for r, src in files.items():
        dst = target / r
        data = src.read_bytes()
        if dst.is_symlink() or not dst.is_file() or dst.read_bytes() != data:
            if dst.is_symlink() or dst.is_dir():
                _remove(dst)
            tmp = dst.with_name(f".{dst.name}.askbuild-tmp")
            tmp.write_bytes(data)
            os.replace(tmp, dst)
        shutil.copystat(src, dst)
    for r, link in links.items():
        dst = target / r
        if dst.is_symlink() and os.readlink(dst) == link:
            continue
        if dst.exists() or dst.is_symlink():
            _remove(dst)
        os.symlink(link, dst)


def _restore_recovery(settings: Settings, st: dict) -> None:
    """Put the saved series directories and sources file back.  The places written to are
    never taken from the state file: only this source's current local series directories and
    the active sources file qualify, so a damaged or tampered state cannot write elsewhere."""
    name = st["source"]
    bdir = settings.rebase_backup(name)
    rec = st["recovery"]
    where = settings.rebase_state(name)
    allowed = {ly.dir for ly in pq.load_layers(settings).get(name, []) if ly.kind == "local"}
    bad = sorted(d for d in rec["series"] if d not in allowed)
    if bad or Path(rec["sources_file"]) != settings.sources_file:
        raise ConfigError(
            f"{where}: names places that are not {name}'s series or the sources file "
            f"({', '.join(bad) or rec['sources_file']}); refusing to restore anything",
            fix=f"restore the series and {settings.sources_file.name} from git if needed, then "
                f"delete {where} and {bdir}")
    for d, key in rec["series"].items():
        _restore_dir(bdir / "series" / key, settings.project_root / d)
    sources_file = settings.sources_file
    data = (bdir / "sources.toml").read_bytes()
    if sources_file.read_bytes() != data:
        tmp = sources_file.with_name(sources_file.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, sources_file)
    record = bdir / "patch-record.json"
    if record.exists():
        saved = settings.patch_record(st["source"])
        saved.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(record, saved)


def _finish_state(settings: Settings, name: str) -> None:
    settings.rebase_state(name).unlink(missing_ok=True)
    shutil.rmtree(settings.rebase_backup(name), ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# conflicts, classified as git does

# git's tag in ``CONFLICT (<tag>): ...`` -> the kind the report names (docs/reports.md)
CONFLICT_KINDS = {
    "content": "content", "add/add": "add/add", "modify/delete": "modify/delete",
    "rename/delete": "rename/delete", "rename/rename": "rename/rename",
    "rename/add": "rename/add", "rename involved in collision": "rename/add",
    "file/directory": "file/directory", "distinct types": "file/directory",
    "directory/file": "file/directory", "file location": "directory rename",
    "directory rename split": "directory rename", "implicit dir rename": "directory rename",
    "submodule": "submodule", "binary": "binary",
}
_CONFLICT_LINE = re.compile(r"^CONFLICT \(([^)]+)\): (.*)$", re.M)


def _stages(tree: Path) -> dict[str, set[int]]:
    """``{unmerged path: the index stages it has}`` (1 base, 2 ours = HEAD, 3 theirs = the
    patch)."""
    raw = gitutil.git(["ls-files", "-u", "-z"], cwd=tree).stdout
    out: dict[str, set[int]] = {}
    for entry in raw.split("\0"):
        if entry:
            meta, _, path = entry.partition("\t")
            out.setdefault(path, set()).add(int(meta.split()[2]))
    return out


def _mentions(message: str, path: str) -> bool:
    return re.search(rf"(?:^|\s){re.escape(path)}(?=[\s.,;:)]|$)", message) is not None


def _kind_from_stages(stages: set[int]) -> tuple[str, str]:
    """A kind and a description in git's status words, for a file git's output did not name."""
    if stages == {1, 3}:
        return "modify/delete", "deleted by us (HEAD), modified by the patch"
    if stages == {1, 2}:
        return "modify/delete", "modified by us (HEAD), deleted by the patch"
    if stages == {2, 3}:
        return "add/add", "both added"
    if stages == {1, 2, 3}:
        return "content", "both modified"
    return "other", "unmerged"


def classify_conflicts(tree: Path, output: str,
                       unmerged: dict[str, set[int]] | None = None) -> list[dict]:
    """The unmerged files of ``tree`` after a failed merge whose output is ``output``: one
    ``{file, kind, message, gone}`` each, ``message`` being git's own ``CONFLICT (...)`` line
    for that file (or git's status words when the output named none) and ``gone`` true when
    the file is not in HEAD (the new base deleted or moved it) while the patch changes it.
    ``unmerged``: :func:`_stages` of the tree, when the caller has just read it."""
    found = _CONFLICT_LINE.findall(output)
    binary = {m.group(1) for m in re.finditer(r"Cannot merge binary files: (\S+)", output)}
    result = []
    for path, stages in sorted((_stages(tree) if unmerged is None else unmerged).items()):
        hit = next(((tag, text) for tag, text in found if _mentions(text, path)), None)
        if hit:
            kind = CONFLICT_KINDS.get(hit[0], "other")
            message = f"CONFLICT ({hit[0]}): {hit[1].strip()}"
        else:
            kind, words = _kind_from_stages(stages)
            message = f"{path}: {words}"
        if path in binary and kind == "content":
            kind = "binary"
        result.append({"file": path, "kind": kind, "message": message,
                       "gone": 2 not in stages and 3 in stages})
    return result


def _public(conflicts: list[dict]) -> list[dict]:
    """The report's view of :func:`classify_conflicts` (``file``, ``kind``, ``message``)."""
    return [{k: c[k] for k in ("file", "kind", "message")} for c in conflicts]


def _advice(settings: Settings, name: str, tree: Path, conflicts: list[dict]) -> list[str]:
    """What to do about each kind of conflict, then how to go on; every command ready to paste.
    A file upstream deleted is never to be ``git add``-ed back: that re-adds the whole file."""
    t = shlex.quote(str(tree))
    parts = []
    merge = [c["file"] for c in conflicts if not c.get("gone") and c["kind"] != "modify/delete"]
    if merge:
        files = " ".join(shlex.quote(f) for f in merge)
        parts.append(f"edit the conflicting files ({', '.join(merge)}: resolve the conflict "
                     f"markers), then `git -C {t} add -- {files}`")
    for c in conflicts:
        f = shlex.quote(c["file"])
        if c.get("gone"):
            parts.append(
                f"{c['file']} is not in the new release (upstream deleted or moved it) and this "
                f"patch changes it: if the change is no longer needed there, remove it: "
                f"`git -C {t} rm -- {f}` (if the code moved to another file, make the change "
                f"there and git add that file); do not git add {c['file']}: that brings back the "
                f"whole file and the patch would re-add the whole file")
        elif c["kind"] == "modify/delete":
            parts.append(f"{c['file']}: this patch deletes it and upstream changed it: "
                         f"`git -C {t} rm -- {f}` keeps the deletion, "
                         f"`git -C {t} add -- {f}` keeps upstream's version")
    cmd = settings.command
    return [*parts, f"then `{cmd('rebase', name, '--continue')}`",
            f"or drop this whole patch: `{cmd('rebase', name, '--skip')}`",
            f"or undo the whole rebase: `{cmd('rebase', name, '--abort')}`",
            f"`{cmd('rebase', name, '--status')}` shows this again"]


def _readded_files(tree: Path, old: str, new: str) -> list[str]:
    """Files the commit ``new`` adds whole while the patch's old commit ``old`` did not add
    them (a resolution that brought back a file upstream deleted)."""
    def added(commit: str) -> set[str]:
        return set(gitutil.out(["diff-tree", "--no-commit-id", "--name-only", "-r",
                                "--no-renames", "--diff-filter=A", commit, "--"],
                               cwd=tree).splitlines())
    return sorted(added(new) - added(old))


def _readd_warning(settings: Settings, tree: Path, item: dict) -> str:
    """The report message for a resolution that turned a patch into one re-adding whole files
    ("" when it did not)."""
    files = _readded_files(tree, item["old"], item["new"])
    if not files:
        return ""
    series = item["layer"]
    return (f"warning: {series}/{item['file']}: the resolution turned the patch into one that "
            f"re-adds the whole file {', '.join(files)} (the patch only changed it; the new "
            f"release does not have it); if that is not intended, once the rebase is complete "
            f"drop or redo the patch: `{settings.command('patches.edit', series)}`, then "
            f"`{settings.command('patches.export', series)}`")


# ---------------------------------------------------------------------------------------------
# replaying one patch

def _head(tree: Path) -> str:
    return gitutil.out(["rev-parse", "HEAD"], cwd=tree)


def _unmerged(tree: Path) -> list[str]:
    raw = gitutil.git(["diff", "--name-only", "--diff-filter=U", "-z"], cwd=tree).stdout
    return sorted({x for x in raw.split("\0") if x})


def _commit_like(tree: Path, old: str, date: str | None = None, *,
                 allow_empty: bool = True) -> str | None:
    """Commit the index with ``old``'s message and author; committer fixed, dated like the
    author (``date``: ``old``'s raw author date, when the caller read it already).  Returns
    the new commit; with ``allow_empty=False`` nothing is committed when the index has no
    change (then None, and no ``rev-parse``: the caller reads the commits later)."""
    date = date or gitutil.out(["show", "-s", "--format=%ad", "--date=raw", old], cwd=tree)
    env = {**FIXED_IDENTITY, "GIT_COMMITTER_DATE": date}
    env.pop("GIT_AUTHOR_NAME")
    env.pop("GIT_AUTHOR_EMAIL")
    env.pop("GIT_AUTHOR_DATE")
    args = [*pq.REPRO, "commit", "-q", "--no-verify", "-C", old]
    if allow_empty:
        gitutil.git([*args[:-2], "--allow-empty", *args[-2:]], cwd=tree, env=env)
        return _head(tree)
    proc = gitutil.git(args, cwd=tree, env=env, check=False)
    if proc.returncode == 0:
        return ""
    if _index_unchanged(tree):
        return None
    raise gitutil.GitError(args, proc.returncode, proc.stdout, proc.stderr)


def _index_unchanged(tree: Path) -> bool:
    return gitutil.git(["diff", "--cached", "--quiet", "HEAD", "--"], cwd=tree,
                       check=False).returncode == 0


def _paths(tree: Path, commit: str) -> list[str]:
    return _names(tree, [commit])[commit]


def _moved_detail(tree: Path, old: str, new: str) -> str:
    return _moved(_paths(tree, old), _paths(tree, new))


def _moved(before: list[str], after: list[str]) -> str:
    """``followed a rename: a -> b`` when the files a patch changes moved ("" otherwise)."""
    gone = [p for p in before if p not in after]
    came = [p for p in after if p not in before]
    if gone and came:
        return "followed a rename: " + ", ".join(
            f"{a} -> {b}" for a, b in zip(gone, came, strict=False))
    return ""


def _old_diff(tree: Path, old: str) -> bytes:
    return gitutil.git([*pq.REPRO, "diff-tree", "-p", "--binary", "--full-index", "-M",
                        f"{old}^", old, "--"], cwd=tree, text=False).stdout


def _per_commit(tree: Path, commits: list[str], args: list[str], *,
                sep: bytes = b"\n") -> dict[str, bytes]:
    """:func:`askbuild.gitutil.diff_tree_each` in the scratch ``tree`` (askbuild's diff
    settings), reading no index: diff-tree reads one though it only compares commits, and
    in a sparse scratch expands it first (60 ms on 30k files)."""
    return gitutil.diff_tree_each(tree, commits, args, sep=sep, config=pq.REPRO,
                                  env=_no_index(tree))


def _no_index(tree: Path) -> dict[str, str]:
    """The environment of a git call in the scratch ``tree`` that reads no index."""
    return {"GIT_INDEX_FILE": str(_scratch_git_dir(tree) / "askbuild-no-index")}


def _new_diffs(tree: Path, news: list[str],
               along: treereplay.ReplayAlong | None) -> dict[str, bytes]:
    """The patches of the replay's new commits ``news``: asked of the ``diff-tree`` that
    followed the replay (``along``), else :func:`_per_commit`."""
    got = along.new_diffs(news) if along is not None else None
    return got if got is not None else _per_commit(tree, news, _DIFF_ARGS)


def _names(tree: Path, commits: list[str]) -> dict[str, list[str]]:
    """The files each of ``commits`` changes against its parent (renames as a deletion and an
    addition), names as they are (``-z``: no quoting): one ``diff-tree``."""
    if not commits:
        return {}
    raw = _per_commit(tree, commits, [*_NAME_ARGS, "-z"], sep=b"\0")
    return {c: [os.fsdecode(f) for f in part.split(b"\0") if f] for c, part in raw.items()}


def _replay(tree: Path, item: dict) -> dict:
    """Replay ``item["old"]`` onto HEAD: ``{status, new, detail, files, conflicts}`` (the new
    commit; the conflicting files and :func:`classify_conflicts` of them).

    On ``conflict`` the tree is left in conflict state; ``detail`` is git's own words."""
    old = item["old"]
    out, clean = _pick(tree, item, _old_diff(tree, old), None, allow_empty=True)
    if out is not None:
        return out
    new = _head(tree)
    return _picked(new, clean, _moved_detail(tree, old, new))


def _pick(tree: Path, item: dict, diff: bytes, date: str | None, *,
          allow_empty: bool) -> tuple[dict | None, bool]:
    """Cherry-pick ``item["old"]`` (whose patch is ``diff``) onto HEAD and commit it like the
    old one: (the outcome of a conflict or of a patch upstream has, None when a commit was
    made; whether ``diff`` applied as it is)."""
    old = item["old"]
    clean = bool(diff) and gitutil.git(["apply", "--check", "--whitespace=nowarn", "-"],
                                       cwd=tree, input=diff, check=False).returncode == 0
    proc = gitutil.git([*pq.REPRO, "-c", "merge.directoryRenames=true", "-c", "merge.renames=true",
                        "cherry-pick", "--no-commit", "--strategy=ort", old], cwd=tree,
                       env=dict(FIXED_IDENTITY), check=False)
    if proc.returncode != 0:
        conflicts = classify_conflicts(tree, f"{proc.stdout}\n{proc.stderr}")
        if not conflicts:
            raise PatchFailed(f"replaying {item['layer']}/{item['file']} failed: "
                              f"{proc.stderr.strip()}",
                              fix="check the work tree for untracked files in the way")
        return _outcome("conflict", detail="; ".join(c["message"] for c in conflicts),
                        files=[c["file"] for c in conflicts], conflicts=conflicts), clean
    if allow_empty and _index_unchanged(tree):
        made = None
    else:
        made = _commit_like(tree, old, date, allow_empty=allow_empty)
    if made is None:
        gitutil.git(["reset", "-q", "--hard", "HEAD"], cwd=tree)
        return _outcome("upstream", detail=UPSTREAM_DETAIL), clean
    return None, clean


def _picked(new: str, clean: bool, moved: str) -> dict:
    if clean and not moved:
        return _outcome("clean", new=new)
    return _outcome("3way", new=new, detail=moved or "3-way merge")


def _outcome(status: str, *, new: str | None = None, detail: str = "",
             files: list[str] | None = None, conflicts: list[dict] | None = None) -> dict:
    return {"status": status, "new": new, "detail": detail, "files": files or [],
            "conflicts": conflicts or []}


# ---------------------------------------------------------------------------------------------
# the loop

def _report(st: dict, *, dry_run: bool) -> Report:
    title = (f"rebase {st['source']} onto {st['onto']} ({st['new_base'][:12]})"
             + (" [dry run]" if dry_run else ""))
    rep = Report("rebase", title, COLUMNS,
                 subject={"source": st["source"], "onto": st["onto"],
                          "old_base": st["old_base"], "new_base": st["new_base"],
                          "dry_run": dry_run})
    name = st["source"]
    for v in st.get("vendor", []):
        rep.add(source=name, layer=v["layer"], kind="vendor", patch=v["file"],
                status=v["status"], commit=v.get("commit"), detail=v.get("detail", ""),
                files=[], conflicts=[])
    for it in st["queue"]:
        rep.add(source=name, layer=it["layer"], kind="local", patch=it["file"],
                status=it.get("status") or "pending", commit=it.get("new"),
                detail=it.get("detail", ""), files=it.get("files", []),
                conflicts=_public(it.get("conflicts", [])))
        if it.get("warning"):
            rep.messages.append(it["warning"])
    rep.ok = not any(r["status"] in ("conflict", "failed") for r in rep.rows)
    return rep


def _run(settings: Settings, st: dict, tree: Path, *, dry_run: bool) -> bool:
    """Replay from ``st["pos"]``.  Returns True when done, False when stopped at a conflict.
    After every patch the state records the position and the last good commit."""
    queue = st["queue"]
    while st["pos"] < len(queue):
        item = queue[st["pos"]]
        outcome = _replay(tree, item)
        item.update(outcome)
        new = outcome["new"]
        if outcome["status"] == "conflict":
            if not dry_run:
                st["phase"] = "stopped"
                st["head_at_stop"] = _head(tree)
                _save_state(settings, st)
                return False
            gitutil.git(["reset", "-q", "--hard", "HEAD"], cwd=tree)
        st["pos"] += 1
        if not dry_run:
            st["head"] = new or _head(tree)
            _save_state(settings, st)
    return True


UPSTREAM_DETAIL = "already upstream (became empty): dropped"

#: Whether the dry run replays a queue that picks cleanly as trees, with no work tree
#: (:func:`askbuild.treereplay.replay_trees`: one ``merge-tree`` process for the queue),
#: before the sequencer (which it runs instead at the first conflict).
TREE_REPLAY = True

#: Whether the dry run without a patch record replays each old commit (and reads its patch)
#: while ``git am`` makes the next ones (:class:`askbuild.treereplay.ReplayAlong`), not
#: after the whole series.
REPLAY_ALONG = True

#: Whether the dry run replays the queue with ONE ``git rebase -i`` (the sequencer:
#: :func:`_dry_replay`) or with one ``cherry-pick`` per patch (:func:`_dry_replay_per_patch`,
#: the reference the batched replay is tested against: tests/test_rebase_batch.py).
BATCH_REPLAY = True

_DIFF_ARGS = ["-p", "--binary", "--full-index", "-M"]       # (as :func:`_old_diff`)
_NAME_ARGS = ["--name-only", "-r", "--no-renames"]            # (:func:`_names`)
_REPLAY_CONFIG = ["-c", "merge.directoryRenames=true", "-c", "merge.renames=true"]
# what a user's rebase configuration must not change in the sequencer's run
_REPLAY_COMMITTER = (FIXED_IDENTITY["GIT_COMMITTER_NAME"], FIXED_IDENTITY["GIT_COMMITTER_EMAIL"])
_REPLAY_GIT = [*pq.REPRO, *_REPLAY_CONFIG]      # (the replay's -c options)
_SEQUENCER_CONFIG = [
    "-c", "rebase.autoSquash=false", "-c", "rebase.autoStash=false",
    "-c", "rebase.updateRefs=false", "-c", "rebase.missingCommitsCheck=ignore",
    "-c", "rebase.abbreviateCommands=false", "-c", "rebase.rescheduleFailedExec=false",
    "-c", "rebase.forkPoint=false"]


def _dry_replay(st: dict, tree: Path, old_names: dict[str, list[str]] | None = None,
                along: treereplay.ReplayAlong | None = None) -> None:
    """The dry run's replay of the whole queue onto HEAD of the scratch ``tree``, never
    stopping (a conflict is reported and dropped), with the same outcomes and commits as
    :func:`_replay` one by one (:func:`_dry_replay_per_patch`), in a constant number of git
    processes when every patch applies: the old patches are read with one ``diff-tree``; a
    queue with no conflict is replayed as trees (:func:`askbuild.treereplay.replay_trees`:
    one ``merge-tree`` process, no work tree, the same merges and commits); otherwise the
    queue is replayed by ONE ``git rebase -i`` whose todo picks exactly the queue's commits
    (the merge of ``cherry-pick``, each commit made as :func:`_commit_like` makes it:
    message and author of the old one, askbuild's committer dated like the author), which
    stops only at a patch that conflicts or became empty (classified as :func:`_pick` does,
    then ``rebase --skip`` goes on); the new commits and their patches are read with one
    ``rev-list`` and one ``diff-tree``.

    ``clean`` (the old patch applies to the tree before it as it is, ``git apply --check``)
    is answered without a process when the new commit's patch is the old one but for blob
    ids, line numbers and the function names of the hunk headers (a hunk said to start at
    line 0 or 1 must start there in both, as ``git apply`` anchors it; then the files are
    the same too: nothing moved).  Only for the others (a 3-way merge, context that changed
    or moved, a rename followed) the tree before the patch is checked out and
    ``git apply --check`` asked, as :func:`_pick` asks it, and the files of the old and new
    commits read (one ``diff-tree`` for all).  An old commit with no change sends the queue
    the per-patch way.  ``old_names``: the files of the old commits, when the caller has
    read them.  ``along``: what followed the ``git am`` that made the old commits
    (:class:`askbuild.treereplay.ReplayAlong`): its replay and the patches it read stand
    when it vouches for the queue; the new commits' patches are asked of it in any case."""
    queue = st["queue"][st["pos"]:]
    olds = [it["old"] for it in queue]
    if not olds:
        return
    batch = BATCH_REPLAY and len(set(olds)) == len(olds)
    streamed = along.result(olds) if along is not None else treereplay.UNKNOWN
    streamed_olds = along.old_diffs() if along is not None else None
    # (the old patches are read while the trees are merged: two processes, two cores)
    old_diffs = procs.in_background(_per_commit, tree, olds, _DIFF_ARGS) \
        if streamed_olds is None else lambda: streamed_olds
    start = st.get("start") or _head(tree)
    if not (TREE_REPLAY and batch):
        got = None
    elif streamed is not treereplay.UNKNOWN:
        got = streamed                  # type: ignore[assignment]
    else:
        got = treereplay.replay_trees(tree, start, olds, _REPLAY_COMMITTER, _REPLAY_GIT)
    # (and the new ones while the old ones are: the tree replay made them all at once)
    new_diffs_of = None if not (got and any(got)) else \
        procs.in_background(_new_diffs, tree, [c for c in got if c], along)
    diffs = old_diffs()
    if not batch or not all(diffs[o] for o in olds):
        _dry_replay_per_patch(st, tree, diffs)      # (the replay's commits are dropped)
        return
    if got is not None:                 # (every patch picked cleanly or became empty)
        for item, new in zip(queue, got, strict=True):
            if new is None:
                item.update(_outcome("upstream", detail=UPSTREAM_DETAIL))
        st["pos"] += len(queue)
        picked = [item for item, new in zip(queue, got, strict=True) if new]
        news = [new for new in got if new]
    else:
        _check_out(tree, start)
        picked = _sequence(st, tree, queue, start)
        news = gitutil.out(["rev-list", "--reverse", f"{start}..HEAD", "--"],
                           cwd=tree).split()
    if len(news) != len(picked):
        raise PatchFailed(f"rebase dry run of {st['source']}: {len(picked)} patch(es) were "
                          f"committed but {len(news)} commit(s) are on the scratch tree",
                          fix="run the dry run again; report it if it happens again")
    if not news:
        return
    new_diffs = new_diffs_of() if new_diffs_of else _new_diffs(tree, news, along)
    same = []
    for item, new in zip(picked, news, strict=True):
        shape = _change_shape(diffs[item["old"]])
        same.append(shape is not None and shape == _change_shape(new_diffs[new]))
        if same[-1]:                # (the same files, too: nothing moved)
            item.update(_picked(new, True, ""))
    moved = [(item, new) for item, new, s in zip(picked, news, same, strict=True) if not s]
    if not moved:
        return
    names = dict(old_names or {})
    names.update(_names(tree, [c for it, new in moved for c in (it["old"], new)
                               if c not in names]))
    for item, new in moved:
        gitutil.git(["checkout", "-q", "--detach", f"{new}^"], cwd=tree)
        clean = gitutil.git(["apply", "--check", "--whitespace=nowarn", "-"], cwd=tree,
                            input=diffs[item["old"]], check=False).returncode == 0
        item.update(_picked(new, clean, _moved(names[item["old"]], names[new])))


def _sequence(st: dict, tree: Path, queue: list[dict], start: str) -> list[dict]:
    """Replay ``queue`` onto ``start`` (HEAD of the scratch ``tree``) with one
    ``git rebase -i`` and a ``rebase --skip`` after each stop: a conflicting patch gets its
    ``conflict`` outcome, one that became empty ``upstream``; st["pos"] moves past the
    queue.  Returns the items that made a commit, in order."""
    gd = _scratch_git_dir(tree)
    todo = gd / "askbuild-dry-run-todo"
    todo.write_text("".join(f"pick {it['old']}\n" for it in queue))
    # (the todo is put in place by the "editor"; the environment's editor would win over
    # a sequence.editor setting)
    env = {"GIT_COMMITTER_NAME": FIXED_IDENTITY["GIT_COMMITTER_NAME"],
           "GIT_COMMITTER_EMAIL": FIXED_IDENTITY["GIT_COMMITTER_EMAIL"],
           "GIT_SEQUENCE_EDITOR": f"cp -- {shlex.quote(str(todo))}"}
    base = [*pq.REPRO, *_REPLAY_CONFIG, *_SEQUENCER_CONFIG]
    proc = gitutil.git([*base, "rebase", "-i", "--committer-date-is-author-date",
                        "--empty=ask", "--strategy=ort", start], cwd=tree, env=env, check=False)
    stopped: set[int] = set()
    while (gd / "rebase-merge").is_dir():
        k = _stopped_at(gd, queue)
        item = queue[k]
        if k in stopped:                # (the skip did not get past it)
            gitutil.git(["rebase", "--abort"], cwd=tree, env=env, check=False)
            raise gitutil.GitError(["rebase", "--skip"], proc.returncode, proc.stdout,
                                   _git_words(proc.stderr))
        out = f"{proc.stdout}\n{proc.stderr}".replace("\r", "\n")
        stages = _stages(tree)
        if stages:
            conflicts = classify_conflicts(tree, out, stages)
            item.update(_outcome("conflict", detail="; ".join(c["message"] for c in conflicts),
                                 files=[c["file"] for c in conflicts], conflicts=conflicts))
        elif "is now empty" in out and _index_unchanged(tree):
            item.update(_outcome("upstream", detail=UPSTREAM_DETAIL))
        else:
            gitutil.git(["rebase", "--abort"], cwd=tree, env=env, check=False)
            raise PatchFailed(f"replaying {item['layer']}/{item['file']} failed: "
                              f"{_git_words(proc.stderr)}",
                              fix="check the work tree for untracked files in the way")
        stopped.add(k)
        proc = gitutil.git([*base, "rebase", "--skip"], cwd=tree, env=env, check=False)
    if proc.returncode != 0:
        raise gitutil.GitError(["rebase"], proc.returncode, proc.stdout,
                               _git_words(proc.stderr))
    st["pos"] += len(queue)
    return [it for i, it in enumerate(queue) if i not in stopped]


def _check_out(tree: Path, commit: str) -> None:
    """HEAD of the scratch ``tree`` detached at ``commit`` (a sparse scratch may have nothing
    checked out yet)."""
    head = gitutil.git(["rev-parse", "-q", "--verify", "HEAD"], cwd=tree, check=False)
    if head.stdout.strip() != commit:
        gitutil.git(["checkout", "-q", "--detach", commit], cwd=tree)


def _git_words(stderr: str) -> str:
    """What the sequencer said, without its progress lines and hints."""
    lines = stderr.replace("\r", "\n").splitlines()
    return "\n".join(ln for ln in lines if ln.strip()
                     and not ln.startswith(("Rebasing (", "hint:"))).strip()


def _scratch_git_dir(tree: Path) -> Path:
    """The git dir of a scratch worktree (its ``.git`` file names it)."""
    dot = tree / ".git"
    if dot.is_file():
        text = dot.read_text()
        if text.startswith("gitdir: "):
            gd = Path(text[len("gitdir: "):].strip())
            return gd if gd.is_absolute() else (tree / gd).resolve()
    return pq.git_dir(tree)


def _stopped_at(gd: Path, queue: list[dict]) -> int:
    """The index in ``queue`` of the pick the sequencer stopped at (the last one done)."""
    done = [ln.split()[1] for ln in (gd / "rebase-merge" / "done").read_text().splitlines()
            if ln.startswith("pick ")]
    k = len(done) - 1
    if k < 0 or k >= len(queue) or not queue[k]["old"].startswith(done[-1]):
        raise gitutil.GitError(["rebase"], 1, "", f"the rebase stopped at an unexpected "
                               f"place ({done[-1:] or 'nothing done'})")
    return k


_HUNK_HEADER = re.compile(rb"^@@ -(\d+)(,\d+)? \+\d+(,\d+)? @@.*$", re.M)
_BLOB_LINES = re.compile(rb"^(?:index [0-9a-f]+\.\.[0-9a-f]+.*|(?:dis)?similarity index \d+%)$",
                         re.M)


def _change_shape(diff: bytes) -> bytes | None:
    """``diff`` (``diff-tree -p --binary --full-index -M``) without what does not decide
    whether ``git apply`` takes it: blob ids, similarity, line numbers (a hunk starting at
    line 0 or 1 keeps it: apply anchors such a hunk at the start), function names.  None for
    a binary patch (apply checks its blob ids)."""
    if b"GIT binary patch" in diff:
        return None
    diff = _BLOB_LINES.sub(b"", diff)
    return _HUNK_HEADER.sub(lambda m: b"@@ -" + (m[1] if int(m[1]) <= 1 else b"n")
                            + (m[2] or b"") + b" +" + (m[3] or b"") + b" @@", diff)


def _dry_replay_per_patch(st: dict, tree: Path, diffs: dict[str, bytes]) -> None:
    """The dry run's replay one patch at a time (``apply --check``, ``cherry-pick``,
    ``commit`` per patch; ``diffs``: the old patches): what :func:`_replay` does for each, a
    conflict reported and dropped."""
    queue = st["queue"][st["pos"]:]
    olds = [it["old"] for it in queue]
    dates = dict(ln.split(" ", 1) for ln in gitutil.out(
        ["show", "-s", "--format=%H %ad", "--date=raw", *olds], cwd=tree).splitlines())
    start = st.get("start") or _head(tree)
    _check_out(tree, start)
    picked: list[tuple[dict, bool]] = []
    for item in queue:
        out, clean = _pick(tree, item, diffs[item["old"]], dates[item["old"]],
                           allow_empty=False)
        if out is None:
            picked.append((item, clean))
        else:
            item.update(out)
            if out["status"] == "conflict":
                gitutil.git(["reset", "-q", "--hard", "HEAD"], cwd=tree)
        st["pos"] += 1
    news = gitutil.out(["rev-list", "--reverse", f"{start}..HEAD", "--"], cwd=tree).split()
    if len(news) != len(picked):
        raise PatchFailed(f"rebase dry run of {st['source']}: {len(picked)} patch(es) were "
                          f"committed but {len(news)} commit(s) are on the scratch tree",
                          fix="run the dry run again; report it if it happens again")
    names = _names(tree, [it["old"] for it, _ in picked] + news)
    for (item, clean), new in zip(picked, news, strict=True):
        item.update(_picked(new, clean, _moved(names[item["old"]], names[new])))


def _where(st: dict) -> str:
    """``stopped at patch N of M: layer/file`` of a stopped rebase."""
    item = st["queue"][st["pos"]]
    return (f"stopped at patch {st['pos'] + 1} of {len(st['queue'])}: "
            f"{item['layer']}/{item['file']}")


def _conflict_lines(conflicts: list[dict], unresolved: set[str] | None = None) -> list[str]:
    """One line per conflicting file: file, kind, git's words (and, with ``unresolved``,
    whether it is still unmerged)."""
    lines = []
    for c in conflicts:
        state = ""
        if unresolved is not None:
            state = " (unresolved)" if c["file"] in unresolved else " (marked resolved)"
        gone = ", deleted upstream" if c.get("gone") else ""
        lines.append(f"  {c['file']}: {c['kind']}{gone}{state}: {c['message']}")
    return lines


def _stop_text(settings: Settings, st: dict, tree: Path) -> tuple[str, str]:
    """(message, fix) of a rebase stopped at a conflict: where, the conflicts in git's words,
    and the advice that fits each kind of conflict."""
    item = st["queue"][st["pos"]]
    name = st["source"]
    conflicts = item.get("conflicts") or [
        {"file": f, "kind": "content", "message": f"conflict in {f}"} for f in item["files"]]
    message = "\n".join([
        f"rebase of {name} onto {st['onto']} {_where(st)} conflicts in "
        f"{', '.join(item['files'])}",
        *_conflict_lines(conflicts),
        f"  the work tree {tree} is in conflict state on branch {REBASE_BRANCH}; the series "
        "files and the pin are unchanged until the rebase completes"])
    return message, ";\n       ".join(_advice(settings, name, tree, conflicts))


def _stop_message(settings: Settings, st: dict, tree: Path) -> PatchFailed:
    message, fix = _stop_text(settings, st, tree)
    return PatchFailed(message, fix=fix)


def _vendor_onto(settings: Settings, tree: Path, vendor_inputs: list[pq.PatchInput],
                 name: str) -> list[dict]:
    rows = []
    for i, p in enumerate(vendor_inputs, start=1):
        res = pq.apply_patch(tree, p, index=i, total=len(vendor_inputs), source=name,
                             settings=settings)
        rows.append({"layer": p.layer.id, "file": p.name,
                     "status": res.method, "commit": res.commits[-1] if res.commits else None,
                     "detail": "vendor patch"})
    return rows


def _queue_from_record(record: dict) -> list[dict]:
    queue = []
    for p in record["patches"]:
        if p["kind"] != "local":
            continue
        for c in p["commits"]:
            queue.append({"layer": p["layer"], "file": p["file"], "strip": p["strip"],
                          "old": c, "status": None, "new": None, "detail": "", "files": []})
    return queue


def _complete(settings: Settings, st: dict, tree: Path, layers: list[pq.Layer],
              sources: dict[str, Source]) -> Report:
    """Export the new series, move the pin, re-patch the tree, drop the recovery point.  A
    completion that was killed starts over from the recovery point (same result)."""
    name = st["source"]
    if st.get("completing"):
        _restore_recovery(settings, st)
    else:
        st["completing"] = True
        _save_state(settings, st)
    rows_by_layer: dict[str, list[dict]] = {}
    for ly in layers:
        if ly.kind != "local":
            continue
        items = [it for it in st["queue"] if it["layer"] == ly.id]
        commits = [it["new"] for it in items if it.get("new")]
        old = []
        for it in items:
            if old and old[-1][0] == it["file"]:
                old[-1][2].append(it["old"])
            else:
                old.append((it["file"], it["strip"], [it["old"]]))
        prefer = {it["new"]: it["file"] for it in items if it.get("new")}
        rows_by_layer[ly.id] = pq.write_series(settings, settings.project_root / ly.dir, tree,
                                               commits, old, prefer=prefer)
    ref = recorded_ref(st["onto"], st["new_base"])
    write_lock(settings, name, commit=st["new_base"], ref=ref)
    gitutil.git(["tag", "-f", BASE_TAG, st["new_base"]], cwd=tree)
    sources = load_sources(settings)
    scratch = Report("patch", "patch", pq.PATCH_COLUMNS)
    pq.patch_source(settings, sources[name], sources=sources, layers=layers, report=scratch,
                    tree=tree, ignore_rebase=True)
    gitutil.git(["branch", "-q", "-D", REBASE_BRANCH], cwd=tree, check=False)
    stale = {branch for _, branch, _ in pq.unexported_edits(settings, tree, layers)}
    for ly in layers:       # edit branches from before the rebase are not resumed silently
        branch = pq.edit_branch(ly)
        if ly.kind == "local" and branch not in stale:      # exported: the series has it
            gitutil.git(["branch", "-q", "-D", branch], cwd=tree, check=False)
        settings.edit_record(ly.source, ly.slug).unlink(missing_ok=True)
    _finish_state(settings, name)
    rep = _report(st, dry_run=False)
    changed = [f"{lid}/{r['patch']}: {r['status']}" for lid, rows in rows_by_layer.items()
               for r in rows if r["status"] != "unchanged"]
    rep.messages.append(f"series exported ({len(changed)} file(s) changed"
                        + (": " + "; ".join(changed) if changed else "") + ")")
    rep.messages.append(f"pin of {name} moved to {st['new_base']} (ref {ref}) in "
                        f"{settings.sources_file}")
    rep.subject["exported"] = rows_by_layer
    return rep


@runlock.exclusive("rebase")
def rebase(settings: Settings, source: str, onto: str = "", dry_run: bool = False,
           cont: bool = False, skip: bool = False, abort: bool = False, status: bool = False,
           as_json: bool = False) -> Report | None:
    """The ``inv rebase`` verb (see the module documentation).  Holds the work-dir lock.
    ``status``: say where a rebase is (:func:`status`), changing nothing."""
    modes = [m for m, on in (("--continue", cont), ("--skip", skip), ("--abort", abort),
                             ("--status", status)) if on]
    if len(modes) > 1:
        raise UserError(f"rebase: {' and '.join(modes)} cannot be combined")
    if modes and (onto or dry_run):
        raise UserError(f"rebase: {modes[0]} takes no --onto/--dry-run",
                        fix=f"run `{settings.command('rebase', source, modes[0])}`")
    if status:
        return rebase_status(settings, source, as_json=as_json)
    pq.finish_pending_series(settings)
    pq.clean_scratch(settings)
    sources = _known_sources(settings, source)
    layers = pq.load_layers(settings, sources).get(source, [])
    tree = settings.source_tree(source)
    what = f"rebase {source}" + (f" onto {onto}" if onto else "")
    with pq.git_errors(what, tree):
        pq.recover_tree(settings, source, tree)
        return _rebase(settings, sources, layers, tree, onto=onto, dry_run=dry_run, cont=cont,
                       skip=skip, abort=abort, as_json=as_json)


def _known_sources(settings: Settings, source: str) -> dict[str, Source]:
    sources = load_sources(settings)
    if source not in sources:
        raise UserError(f"unknown source {source!r} in {settings.sources_file}",
                        fix=f"known sources: {', '.join(sources)}")
    return sources


def _rebase(settings: Settings, sources: dict[str, Source], layers: list[pq.Layer], tree: Path,
            *, onto: str, dry_run: bool, cont: bool, skip: bool, abort: bool,
            as_json: bool) -> Report | None:
    name = tree.name
    src = sources[name]
    cmd = settings.command
    if abort:
        return _abort(settings, name)
    if cont or skip:
        st = _load_state(settings, name)
        if _phase(st) == "stopped":
            return _resume(settings, name, layers, sources, skip=skip, as_json=as_json)
        if skip:
            raise UserError(f"rebase {name}: there is no conflict to skip: the rebase was "
                            "interrupted, not stopped",
                            fix=f"`{cmd('rebase', name, '--continue')}` resumes it, "
                                f"`{cmd('rebase', name, '--abort')}` undoes it")
        console.info(f"resuming the interrupted rebase of {name} onto {st['onto']}")
        return _advance(settings, st, tree, layers, sources, as_json=as_json)
    if not onto:
        raise UserError("rebase: --onto REF is required",
                        fix=f"e.g. `{cmd('rebase', name, '--onto', 'REF')}` (REF: the new "
                            "release's tag, a branch or a commit)")
    if src.kind != "git":
        raise UserError(f"rebase: {name} is a {src.kind} source; only git sources can be "
                        "rebased",
                        fix=f"change its url/ref and run `{cmd('lock', '--update')}` instead")
    if not any(ly.kind == "local" for ly in layers):
        raise UserError(f"rebase: {name} has no local series in {pq.layers_file(settings)}")
    in_progress = settings.rebase_state(name).exists()
    if dry_run:                         # changes nothing: also while a rebase is in progress
        if in_progress:
            console.info(f"a rebase of {name} is in progress; this dry run does not touch it")
        refs: dict[str, str | None] = {}
        tree = pq.source_tree(settings, src, refs=refs)
        return _dry_run(settings, src, tree, onto, layers, sources, as_json=as_json,
                        old_base=refs.get(BASE_REF))
    if in_progress:
        st = _load_state(settings, name)
        if _phase(st) != "stopped" and st["onto"] == onto:
            console.info(f"resuming the interrupted rebase of {name} onto {onto}")
            return _advance(settings, st, tree, layers, sources, as_json=as_json)
        raise DirtyTreeError(
            f"a rebase of {name} onto {st['onto']} is already in progress",
            fix=f"`{cmd('rebase', name, '--status')}` shows where it is; go on with "
                f"`{cmd('rebase', name, '--continue')}` or `{cmd('rebase', name, '--skip')}`, "
                f"or undo it with `{cmd('rebase', name, '--abort')}`")
    tree = pq.source_tree(settings, src)
    _refuse_unexported(settings, tree, layers)
    scratch = Report("patch", "patch", pq.PATCH_COLUMNS)
    record = pq.patch_source(settings, src, sources=sources, layers=layers, report=scratch,
                             tree=tree)
    new_base = fetch_onto(settings, src, tree, onto)
    st = {"schema": STATE_SCHEMA, "source": name, "onto": onto, "new_base": new_base,
          "old_base": record["base"], "old_head": record["head"], "pos": 0,
          "queue": _queue_from_record(record), "vendor": [], "phase": "vendor", "head": None}
    st["recovery"] = _record_recovery(settings, name, layers)
    _save_state(settings, st)
    console.step(f"rebase {name}: {len(st['queue'])} local patch(es) from "
                 f"{record['base'][:12]} onto {onto} ({new_base[:12]})")
    return _advance(settings, st, tree, layers, sources, as_json=as_json)


def rebase_status(settings: Settings, name: str, *, as_json: bool = False) -> Report | None:
    """``inv rebase NAME --status``: where the rebase of ``name`` is (the report so far), the
    conflicted files with their kind and whether they are still unmerged, and the exact next
    commands.  Reads only: changes nothing (no recovery, no pending series completed).  Without
    a rebase in progress it says so and returns None."""
    _known_sources(settings, name)
    if not settings.rebase_state(name).exists():
        console.info(f"no rebase of {name} is in progress "
                     f"(start one with `{settings.command('rebase', name, '--onto', 'REF')}`)")
        return None
    st = _load_state(settings, name)
    tree = settings.source_tree(name)
    rep = _report(st, dry_run=False)
    rep.title = f"rebase {name} onto {st['onto']} ({st['new_base'][:12]}) [status]"
    rep.messages += _status_lines(settings, st, tree)
    rep.emit(as_json=as_json)
    return rep


def _status_lines(settings: Settings, st: dict, tree: Path) -> list[str]:
    name = st["source"]
    cmd = settings.command
    if _phase(st) != "stopped":
        return [f"the rebase of {name} onto {st['onto']} was interrupted (phase {_phase(st)}, "
                f"{st['pos']} of {len(st['queue'])} patch(es) through)",
                f"next: `{cmd('rebase', name, '--continue')}` resumes it, "
                f"`{cmd('rebase', name, '--abort')}` undoes it"]
    item = st["queue"][st["pos"]]
    conflicts = item.get("conflicts") or [
        {"file": f, "kind": "content", "message": f"conflict in {f}"} for f in item["files"]]
    unresolved = set(_unmerged(tree)) if (tree / ".git").exists() else set()
    lines = [f"rebase of {name} onto {st['onto']} {_where(st)}",
             f"conflicts in {tree}:", *_conflict_lines(conflicts, unresolved)]
    return lines + ["next:", *(f"  {part}" for part in _advice(settings, name, tree, conflicts))]


def _refuse_unexported(settings: Settings, tree: Path, layers: list[pq.Layer]) -> None:
    """A rebase rewrites the series from the patched branch: work that only lives on an edit
    branch would be lost."""
    stale = pq.unexported_edits(settings, tree, layers)
    if not stale:
        return
    t = shlex.quote(str(tree))
    raise DirtyTreeError(
        f"rebase {tree.name}: not started: work on edit branch(es) is not in the series yet "
        "and the rebase would drop it: "
        + "; ".join(f"{branch} (series {ly.dir}): {what}" for ly, branch, what in stale),
        fix="export it into the series first: "
            + ", ".join(f"`{settings.command('patches.export', ly.dir)}`"
                        for ly, _, _ in stale)
            + "; or, to throw that work away, delete the branch: "
            + ", ".join(f"`git -C {t} branch -D {branch}`" for _, branch, _ in stale))


def _advance(settings: Settings, st: dict, tree: Path, layers: list[pq.Layer],
             sources: dict[str, Source], *, as_json: bool) -> Report:
    """Go on from the phase in ``st``: vendor layers onto the new base, the replay, the
    completion.  The tree carries a run journal while askbuild changes it (an error puts it
    back at the last good commit at once, a kill on the next run)."""
    name = st["source"]
    if _phase(st) == "vendor":
        try:
            with pq.journalled(settings, name, tree, "rebase"):
                gitutil.git(["checkout", "-q", "-f", "-B", REBASE_BRANCH, st["new_base"]],
                            cwd=tree)
                vendor = [p for p in pq.collect_inputs(settings, layers, sources,
                                                       trees={name: tree})
                          if p.layer.kind == "vendor"]
                st["vendor"] = _vendor_onto(settings, tree, vendor, name)
                st.update(phase="replay", head=_head(tree))
                _save_state(settings, st)
        except pq.NoSpaceLeft:
            raise
        except PatchFailed as e:
            _abort(settings, name, quiet=True)
            e.message += (f"\n  the rebase of {name} was undone: series, pin and work tree are "
                          "as before")
            raise
    if _phase(st) == "replay":
        with pq.journalled(settings, name, tree, "rebase"):
            gitutil.git(["checkout", "-q", "-f", "-B", REBASE_BRANCH, st["head"]], cwd=tree)
            done = _run(settings, st, tree, dry_run=False)
            if done:
                st["phase"] = "complete"
                _save_state(settings, st)
        if not done:                    # stopped at a conflict: the tree is the user's now
            rep = _report(st, dry_run=False)
            error = _stop_message(settings, st, tree)
            if as_json:                 # the JSON carries what stderr says (docs/reports.md)
                text = f"{error.message}\nfix: {error.fix}"
                rep.messages += [line.strip() for line in text.splitlines() if line.strip()]
            rep.emit(as_json=as_json)
            raise error
    rep = _complete(settings, st, tree, layers, sources)
    rep.emit(as_json=as_json)
    return rep


def _dry_run(settings: Settings, src: Source, tree: Path, onto: str, layers: list[pq.Layer],
             sources: dict[str, Source], *, as_json: bool, old_base: str | None = None
             ) -> Report:
    """The dry run in a scratch work tree: the old series' commits (those ``inv patch``
    recorded for this very series and base, else the series applied again onto the old
    base), the vendor layers onto the new base, then the replay (:func:`_dry_replay`).
    ``old_base``: the base commit of ``tree`` when the caller has just read it.

    On a big tree (:func:`~askbuild.patchqueue.scratch.sparse_pays`) it first runs in a
    sparse scratch holding only the directories of the files the patches name
    (:func:`~askbuild.patchqueue.apply.touched_paths`): a kernel's scratch is then a few
    directories, not 80k files.  Git merges trees, so the replay's commits, conflicts and
    drops are those of a full tree, and the one question asked of the work tree (``git
    apply --check`` of an old patch) reads only files the old commits touch.  So the sparse
    answer stands unless an old commit touches a file outside the scratch (git read a patch
    differently), a vendor patch failed, or git failed there: then everything is worked out
    again in a full scratch, whose answer is the one reported.

    The scratches are in RAM when there is room; when it runs out there, the dry run is done
    again in the work directory (:func:`~askbuild.patchqueue.scratch.in_scratch_home`)."""
    inputs = pq.collect_inputs(settings, layers, sources, trees={src.name: tree})
    old_base = old_base or pq.base_commit(tree)
    new_base = fetch_onto(settings, src, tree, onto)
    record = _recorded_series(settings, src.name, tree, old_base, inputs)
    paths = pq.touched_paths(tree, inputs) if pq.sparse_pays(tree) else None
    st = pq.in_scratch_home(settings, lambda home: _dry_attempts(
        settings, src, tree, onto, inputs, record, old_base, new_base, paths, home))
    rep = _report(st, dry_run=True)
    rep.emit(as_json=as_json)
    return rep


def _dry_attempts(settings: Settings, src: Source, tree: Path, onto: str,
                  inputs: list[pq.PatchInput], record: dict | None, old_base: str,
                  new_base: str, paths: set[str] | None, home: pq.ScratchHome) -> dict:
    """The state of :func:`_dry_run`, its scratches in ``home``: in a sparse scratch of
    ``paths`` when that answer stands, else in a full one."""
    if paths is not None:
        with contextlib.suppress(PatchFailed, gitutil.GitError, _NotSparse):
            return _dry_attempt(settings, src, tree, onto, inputs, record, old_base, new_base,
                                paths, home)
    return _dry_attempt(settings, src, tree, onto, inputs, record, old_base, new_base, None,
                        home)


def _dry_attempt(settings: Settings, src: Source, tree: Path, onto: str,
                 inputs: list[pq.PatchInput], record: dict | None, old_base: str,
                 new_base: str, paths: set[str] | None, home: pq.ScratchHome) -> dict:
    """One try of :func:`_dry_run` in a scratch (``paths``: a sparse one): its state.

    Without a record, a sparse try makes the old series' commits in a small tree and grafts
    them onto the old base (:func:`~askbuild.patchqueue.graft.grafted_queue`); when that
    cannot stand for the full tree it applies the series in the sparse scratch, with a full
    index until then (``git am`` expands a sparse one on every patch) and a sparse one from
    the checkout of the new base on (the sequencer's)."""
    vendor = [p for p in inputs if p.layer.kind == "vendor"]
    with contextlib.ExitStack() as stack:
        borrow: list[Path] = []
        if record is None and paths is not None:
            grafted = stack.enter_context(pq.grafted_queue(
                tree, old_base, inputs, paths, home.parent, source=src.name,
                prefix=home.prefix))
            if grafted is not None:
                record = grafted.record
                borrow.append(grafted.objects)
        # (with the old commits at hand and no vendor patch to apply, a sparse scratch is
        # checked out only if the replay needs a work tree: _dry_replay)
        follow = record is None and REPLAY_ALONG and TREE_REPLAY and BATCH_REPLAY \
            and not vendor
        scratch = stack.enter_context(pq.scratch_worktree(
            tree, new_base if record else old_base, home.parent, prefix=home.prefix,
            paths=paths, sparse_index=record is not None, borrow=borrow,
            checkout=record is None or bool(vendor), reflog=follow))
        along = None
        if record is None:
            if follow:
                # (each old commit replayed onto the new base as soon as git am made it)
                along = stack.enter_context(treereplay.ReplayAlong(
                    scratch, old_base, new_base, _REPLAY_COMMITTER, _REPLAY_GIT,
                    diff_args=_DIFF_ARGS, diff_config=pq.REPRO, diff_env=_no_index(scratch)))
            record = pq.apply_queue(scratch, old_base, inputs, source=src.name, branch=None,
                                    batch=True, detached_at=old_base)
            if paths is not None:
                pq.use_sparse_index(scratch)
            if vendor:                  # (else the replay checks out what it needs)
                gitutil.git(["checkout", "-q", "--detach", new_base], cwd=scratch)
        st = {"source": src.name, "onto": onto, "new_base": new_base, "old_base": old_base,
              "pos": 0, "queue": _queue_from_record(record), "vendor": []}
        st["start"] = None if vendor else new_base
        try:
            st["vendor"] = _vendor_onto(settings, scratch, vendor, src.name)
        except PatchFailed as e:
            if paths is not None:
                raise _NotSparse from e
            st["vendor"] = [{"layer": vendor[0].layer.id if vendor else "", "file": "",
                             "status": "failed", "detail": e.message.splitlines()[0]}]
        old_names = None
        if paths is not None:
            old_names = _names(scratch, [it["old"] for it in st["queue"]])
            if any(f not in paths for files in old_names.values() for f in files):
                raise _NotSparse        # (an old commit touches a file outside the scratch)
        _dry_replay(st, scratch, old_names, along)
    return st


class _NotSparse(Exception):
    """A sparse dry run cannot vouch for its answer (:func:`_dry_run`)."""


def _recorded_series(settings: Settings, name: str, tree: Path, base: str,
                     inputs: list[pq.PatchInput]) -> dict | None:
    """The patch record of ``name`` when it was made from exactly ``inputs`` on ``base`` and
    its commits are in ``tree``, one after the other from ``base`` (one ``rev-list``): the
    old series need not be applied again.  None otherwise."""
    record = pq.tree_state(settings, name)
    if not pq.record_matches(record, base, inputs):
        return None
    head = record.get("head")
    want = [c for p in record["patches"] for c in p.get("commits") or []]
    if not all(isinstance(c, str) and gitutil.is_sha(c) for c in [head, *want]) \
            or (want[-1] if want else base) != head:
        return None
    chain = gitutil.git(["rev-list", "--reverse", f"{base}..{head}", "--"], cwd=tree,
                        check=False)
    return record if chain.returncode == 0 and chain.stdout.split() == want else None


def _resume(settings: Settings, name: str, layers: list[pq.Layer],
            sources: dict[str, Source], *, skip: bool, as_json: bool) -> Report:
    """After a stop at a conflict: take the user's resolution (or skip) and go on."""
    st = _load_state(settings, name)
    tree = settings.source_tree(name)
    t = shlex.quote(str(tree))
    cmd = settings.command
    item = st["queue"][st["pos"]]
    if skip:
        gitutil.git(["reset", "-q", "--hard", "HEAD"], cwd=tree)
        item.update(status="skipped", new=None,
                    detail=f"skipped after a conflict in {', '.join(item.get('files', []))}")
    else:
        left = _unmerged(tree)
        if left:
            kinds = {c["file"]: c["kind"] for c in item.get("conflicts", [])}
            raise UserError(f"rebase {name}: still unresolved: "
                            + ", ".join(f"{f} ({kinds[f]})" if f in kinds else f for f in left),
                            fix=f"resolve them as `{cmd('rebase', name, '--status')}` says "
                                f"(git add or git rm each), then "
                                f"`{cmd('rebase', name, '--continue')}` again")
        unstaged = gitutil.out(["diff", "--name-only"], cwd=tree)
        files = " ".join(shlex.quote(f) for f in unstaged.splitlines())
        if unstaged:
            raise UserError(f"rebase {name}: changes not added: {unstaged.replace(chr(10), ', ')}",
                            fix=f"add them (`git -C {t} add -- {files}`) or drop them "
                                f"(`git -C {t} checkout -- {files}`), then "
                                f"`{cmd('rebase', name, '--continue')}`")
        head = _head(tree)
        if head != st.get("head_at_stop"):
            new = head          # the user committed the resolution themselves
        elif gitutil.git(["diff", "--cached", "--quiet", "HEAD", "--"], cwd=tree,
                         check=False).returncode == 0:
            new = None
        else:
            new = _commit_like(tree, item["old"])
        item.update(status="resolved", new=new,
                    detail=("conflict resolved" if new else
                            "conflict resolved to no change: dropped"))
        warning = _readd_warning(settings, tree, item) if new else ""
        if warning:
            item.update(warning=warning, detail="conflict resolved; re-adds whole file(s)")
    st["pos"] += 1
    st.update(phase="replay", head=_head(tree))
    _save_state(settings, st)
    return _advance(settings, st, tree, layers, sources, as_json=as_json)


def _abort(settings: Settings, name: str, *, quiet: bool = False) -> None:
    """Put series, sources file, patch record and work tree back as before the rebase (from
    any phase, also after the rebase was killed)."""
    st = _load_state(settings, name)
    tree = settings.source_tree(name)
    _restore_recovery(settings, st)
    if (tree / ".git").exists():
        gitutil.git(["cherry-pick", "--abort"], cwd=tree, env=dict(FIXED_IDENTITY), check=False)
        gitutil.git(["am", "--abort"], cwd=tree, env=dict(FIXED_IDENTITY), check=False)
        gitutil.git(["reset", "-q", "--hard"], cwd=tree)
        gitutil.git(["tag", "-f", BASE_TAG, st["old_base"]], cwd=tree)
        gitutil.git(["checkout", "-q", "-f", "-B", PATCHED, st["old_head"]], cwd=tree)
        gitutil.git(["branch", "-q", "-D", REBASE_BRANCH], cwd=tree, check=False)
    _finish_state(settings, name)
    if not quiet:
        console.info(f"rebase of {name} aborted: series files and {settings.sources_file.name} "
                     f"restored; {tree} is back on {PATCHED}")
