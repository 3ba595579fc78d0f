"""``inv rebase SOURCE --onto REF``: carry a source's local series to a new upstream release.

The old series is applied to the locked base (``askbuild/patched``), REF is fetched, and every
local patch commit is replayed onto REF (after the vendor layers) with ``git cherry-pick
--no-commit`` (merge-ort: full 3-way merge with rename detection, so patches follow files
that upstream moved).  Each patch is reported as

* ``clean``: the patch applies as it is (``git apply --check`` on the new tree);
* ``3way``: it needed the merge (context changed, or its files moved);
* ``upstream``: the merge left no change (upstream already has it): dropped;
* ``conflict``: the merge conflicts.  Later ``resolved`` or ``skipped``.

``--dry-run`` does all of that in a scratch clone, never stops (a conflicting patch is reported
and skipped) and touches neither the series, the pin nor the work tree.

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

import os
import shutil
from pathlib import Path

from . import console, fetching, gitutil, runlock
from . import patchqueue as pq
from .errors import ConfigError, DirtyTreeError, PatchFailed, UserError
from .fsutil import read_json, write_json_atomic
from .gitutil import FIXED_IDENTITY
from .refs import BASE_TAG, PATCHED, REBASE_BRANCH
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


# ---------------------------------------------------------------------------------------------
# state

def _load_state(settings: Settings, name: str) -> dict:
    path = settings.rebase_state(name)
    if not path.exists():
        raise UserError(f"no rebase of {name} is in progress",
                        fix=f"start one with `inv rebase {name} --onto REF`")
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
# replaying one patch

def _head(tree: Path) -> str:
    return gitutil.out(["rev-parse", "HEAD"], cwd=tree)


def _unmerged(tree: Path) -> list[str]:
    raw = gitutil.git(["diff", "--name-only", "--diff-filter=U", "-z"], cwd=tree).stdout
    return sorted({x for x in raw.split("\0") if x})


def _commit_like(tree: Path, old: str) -> str:
    """Commit the index with ``old``'s message and author; committer fixed, dated like the
    author (reproducible)."""
    date = gitutil.out(["show", "-s", "--format=%ad", "--date=raw", old], cwd=tree)
    env = {**FIXED_IDENTITY, "GIT_COMMITTER_DATE": date}
    env.pop("GIT_AUTHOR_NAME")
    env.pop("GIT_AUTHOR_EMAIL")
    env.pop("GIT_AUTHOR_DATE")
    gitutil.git([*pq.REPRO, "commit", "-q", "--no-verify", "--allow-empty", "-C", old], cwd=tree,
                env=env)
    return _head(tree)


def _paths(tree: Path, commit: str) -> list[str]:
    return gitutil.out(["diff-tree", "--no-commit-id", "--name-only", "-r", "--no-renames",
                        commit, "--"], cwd=tree).splitlines()


def _moved_detail(tree: Path, old: str, new: str) -> str:
    before, after = _paths(tree, old), _paths(tree, new)
    gone = [p for p in before if p not in after]
    came = [p for p in after if p not in before]
    if gone and came:
        return "followed a rename: " + ", ".join(
            f"{a} -> {b}" for a, b in zip(gone, came, strict=False))
    return ""


def _replay(tree: Path, item: dict) -> tuple[str, str | None, str, list[str]]:
    """Replay ``item["old"]`` onto HEAD: (status, new commit, detail, conflicting files).

    On ``conflict`` the tree is left in conflict state."""
    old = item["old"]
    diff = gitutil.git([*pq.REPRO, "diff-tree", "-p", "--binary", "--full-index", "-M",
                        f"{old}^", old, "--"], cwd=tree, text=False).stdout
    clean = bool(diff) and gitutil.git(["apply", "--check", "--whitespace=nowarn", "-"],
                                       cwd=tree, input=diff, check=False).returncode == 0
    proc = gitutil.git([*pq.REPRO, "-c", "merge.directoryRenames=true", "-c", "merge.renames=true",
                        "cherry-pick", "--no-commit", "--strategy=ort", old], cwd=tree,
                       env=dict(FIXED_IDENTITY), check=False)
    if proc.returncode != 0:
        files = _unmerged(tree)
        if not files:
            raise PatchFailed(f"replaying {item['layer']}/{item['file']} failed: "
                              f"{proc.stderr.strip()}",
                              fix="check the work tree for untracked files in the way")
        return "conflict", None, "conflict in " + ", ".join(files), files
    if gitutil.git(["diff", "--cached", "--quiet", "HEAD", "--"], cwd=tree,
                   check=False).returncode == 0:
        gitutil.git(["reset", "-q", "--hard", "HEAD"], cwd=tree)
        return "upstream", None, "already upstream (became empty): dropped", []
    new = _commit_like(tree, old)
    moved = _moved_detail(tree, old, new)
    if clean and not moved:
        return "clean", new, "", []
    return "3way", new, moved or "3-way merge", []


# ---------------------------------------------------------------------------------------------
# the loop

def _report(st: dict, *, dry_run: bool) -> Report:
    title = (f"rebase {st['source']} onto {st['onto']} ({st['new_base'][:12]})"
             + (" [dry run]" if dry_run else ""))
    rep = Report("rebase", title, COLUMNS,
                 subject={"source": st["source"], "onto": st["onto"],
                          "old_base": st["old_base"], "new_base": st["new_base"],
                          "dry_run": dry_run})
    for v in st.get("vendor", []):
        rep.add(layer=v["layer"], kind="vendor", patch=v["file"], status=v["status"],
                commit=v.get("commit"), detail=v.get("detail", ""), files=[])
    for it in st["queue"]:
        rep.add(layer=it["layer"], kind="local", patch=it["file"],
                status=it.get("status") or "pending", commit=it.get("new"),
                detail=it.get("detail", ""), files=it.get("files", []))
    rep.ok = not any(r["status"] in ("conflict", "failed") for r in rep.rows)
    return rep


def _run(settings: Settings, st: dict, tree: Path, *, dry_run: bool) -> bool:
    """Replay from ``st["pos"]``.  Returns True when done, False when stopped at a conflict.
    After every patch the state records the position and the last good commit."""
    queue = st["queue"]
    while st["pos"] < len(queue):
        item = queue[st["pos"]]
        status, new, detail, files = _replay(tree, item)
        item.update(status=status, new=new, detail=detail, files=files)
        if status == "conflict":
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


def _stop_message(settings: Settings, st: dict, tree: Path) -> PatchFailed:
    item = st["queue"][st["pos"]]
    name = st["source"]
    t = str(tree)
    files = item.get("files") or []
    return PatchFailed(
        f"rebase of {name} onto {st['onto']} stopped at patch {st['pos'] + 1} of "
        f"{len(st['queue'])}: {item['layer']}/{item['file']} conflicts in "
        f"{', '.join(files)}\n"
        f"  the work tree {t} is in conflict state on branch {REBASE_BRANCH}; the series files "
        f"and the pin are unchanged until the rebase completes",
        fix=f"edit the conflicting files, `git -C {t} add -- {' '.join(files)}`, then "
            f"`inv rebase {name} --continue`; or drop this patch: `inv rebase {name} --skip`; "
            f"or undo the whole rebase: `inv rebase {name} --abort`")


def _vendor_onto(settings: Settings, tree: Path, vendor_inputs: list[pq.PatchInput],
                 name: str) -> list[dict]:
    rows = []
    for i, p in enumerate(vendor_inputs, start=1):
        res = pq.apply_patch(tree, p, index=i, total=len(vendor_inputs), source=name)
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
    write_lock(settings, name, commit=st["new_base"], ref=st["onto"])
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
    rep.messages.append(f"pin of {name} moved to {st['new_base']} (ref {st['onto']}) in "
                        f"{settings.sources_file}")
    rep.subject["exported"] = rows_by_layer
    return rep


@runlock.exclusive("rebase")
def rebase(settings: Settings, source: str, onto: str = "", dry_run: bool = False,
           cont: bool = False, skip: bool = False, abort: bool = False,
           as_json: bool = False) -> Report | None:
    """The ``inv rebase`` verb (see the module documentation).  Holds the work-dir lock."""
    modes = [m for m, on in (("--continue", cont), ("--skip", skip), ("--abort", abort)) if on]
    if len(modes) > 1:
        raise UserError(f"rebase: {' and '.join(modes)} cannot be combined")
    if modes and (onto or dry_run):
        raise UserError(f"rebase: {modes[0]} takes no --onto/--dry-run",
                        fix=f"run `inv rebase {source} {modes[0]}`")
    pq.finish_pending_series(settings)
    pq.clean_scratch(settings)
    sources = load_sources(settings)
    if source not in sources:
        raise UserError(f"unknown source {source!r} in {settings.sources_file}",
                        fix=f"known sources: {', '.join(sources)}")
    layers = pq.load_layers(settings, sources).get(source, [])
    tree = settings.source_tree(source)
    what = f"rebase {source}" + (f" onto {onto}" if onto else "")
    with pq.git_errors(what, tree):
        pq.recover_tree(settings, source, tree)
        return _rebase(settings, sources, layers, tree, onto=onto, dry_run=dry_run, cont=cont,
                       skip=skip, abort=abort, as_json=as_json)


def _rebase(settings: Settings, sources: dict[str, Source], layers: list[pq.Layer], tree: Path,
            *, onto: str, dry_run: bool, cont: bool, skip: bool, abort: bool,
            as_json: bool) -> Report | None:
    name = tree.name
    src = sources[name]
    if abort:
        return _abort(settings, name)
    if cont or skip:
        st = _load_state(settings, name)
        if _phase(st) == "stopped":
            return _resume(settings, name, layers, sources, skip=skip, as_json=as_json)
        if skip:
            raise UserError(f"rebase {name}: there is no conflict to skip: the rebase was "
                            "interrupted, not stopped",
                            fix=f"`inv rebase {name} --continue` resumes it, "
                                f"`inv rebase {name} --abort` undoes it")
        console.info(f"resuming the interrupted rebase of {name} onto {st['onto']}")
        return _advance(settings, st, tree, layers, sources, as_json=as_json)
    if not onto:
        raise UserError("rebase: --onto REF is required",
                        fix=f"e.g. `inv rebase {name} --onto <new release tag>`")
    if src.kind != "git":
        raise UserError(f"rebase: {name} is a {src.kind} source; only git sources can be "
                        "rebased", fix="change its url/ref and run `inv lock --update` instead")
    if settings.rebase_state(name).exists():
        st = _load_state(settings, name)
        if _phase(st) != "stopped" and st["onto"] == onto and not dry_run:
            console.info(f"resuming the interrupted rebase of {name} onto {onto}")
            return _advance(settings, st, tree, layers, sources, as_json=as_json)
        raise DirtyTreeError(f"a rebase of {name} is already in progress",
                             fix=f"`inv rebase {name} --continue`, `--skip` or `--abort`")
    if not any(ly.kind == "local" for ly in layers):
        raise UserError(f"rebase: {name} has no local series in {pq.layers_file(settings)}")
    tree = pq.source_tree(settings, src)
    if dry_run:
        return _dry_run(settings, src, tree, onto, layers, sources, as_json=as_json)
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


def _refuse_unexported(settings: Settings, tree: Path, layers: list[pq.Layer]) -> None:
    """A rebase rewrites the series from the patched branch: work that only lives on an edit
    branch would be lost."""
    stale = pq.unexported_edits(settings, tree, layers)
    if not stale:
        return
    t = str(tree)
    raise DirtyTreeError(
        f"rebase {tree.name}: not started: work on edit branch(es) is not in the series yet "
        "and the rebase would drop it: "
        + "; ".join(f"{branch} (series {ly.dir}): {what}" for ly, branch, what in stale),
        fix="export it into the series first: "
            + ", ".join(f"`inv patches.export {ly.dir}`" for ly, _, _ in stale)
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
            rep.emit(as_json=as_json)
            raise _stop_message(settings, st, tree)
    rep = _complete(settings, st, tree, layers, sources)
    rep.emit(as_json=as_json)
    return rep


def _dry_run(settings: Settings, src: Source, tree: Path, onto: str, layers: list[pq.Layer],
             sources: dict[str, Source], *, as_json: bool) -> Report:
    inputs = pq.collect_inputs(settings, layers, sources, trees={src.name: tree})
    old_base = pq.base_commit(tree)
    new_base = fetch_onto(settings, src, tree, onto)
    with pq.scratch_worktree(tree, old_base, settings.work_dir) as scratch:
        record = pq.apply_queue(scratch, old_base, inputs, source=src.name, branch=None)
        st = {"source": src.name, "onto": onto, "new_base": new_base, "old_base": old_base,
              "pos": 0, "queue": _queue_from_record(record), "vendor": []}
        gitutil.git(["checkout", "-q", "--detach", new_base], cwd=scratch)
        vendor = [p for p in inputs if p.layer.kind == "vendor"]
        try:
            st["vendor"] = _vendor_onto(settings, scratch, vendor, src.name)
        except PatchFailed as e:
            st["vendor"] = [{"layer": vendor[0].layer.id if vendor else "", "file": "",
                             "status": "failed", "detail": e.message.splitlines()[0]}]
        _run(settings, st, scratch, dry_run=True)
    rep = _report(st, dry_run=True)
    rep.emit(as_json=as_json)
    return rep


def _resume(settings: Settings, name: str, layers: list[pq.Layer],
            sources: dict[str, Source], *, skip: bool, as_json: bool) -> Report:
    """After a stop at a conflict: take the user's resolution (or skip) and go on."""
    st = _load_state(settings, name)
    tree = settings.source_tree(name)
    t = str(tree)
    item = st["queue"][st["pos"]]
    if skip:
        gitutil.git(["reset", "-q", "--hard", "HEAD"], cwd=tree)
        item.update(status="skipped", new=None,
                    detail=f"skipped after a conflict in {', '.join(item.get('files', []))}")
    else:
        left = _unmerged(tree)
        if left:
            raise UserError(f"rebase {name}: still unresolved: {', '.join(left)}",
                            fix=f"resolve them and `git -C {t} add -- <file>` each, then "
                                f"`inv rebase {name} --continue` again")
        unstaged = gitutil.out(["diff", "--name-only"], cwd=tree)
        if unstaged:
            raise UserError(f"rebase {name}: changes not added: {unstaged.replace(chr(10), ', ')}",
                            fix=f"`git -C {t} add` them (or `git -C {t} checkout -- FILE` to "
                                f"drop them), then `inv rebase {name} --continue`")
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
        gitutil.git(["cherry-pick", "--abort"], cwd=tree, check=False)
        gitutil.git(["am", "--abort"], cwd=tree, check=False)
        gitutil.git(["reset", "-q", "--hard"], cwd=tree)
        gitutil.git(["tag", "-f", BASE_TAG, st["old_base"]], cwd=tree)
        gitutil.git(["checkout", "-q", "-f", "-B", PATCHED, st["old_head"]], cwd=tree)
        gitutil.git(["branch", "-q", "-D", REBASE_BRANCH], cwd=tree, check=False)
    _finish_state(settings, name)
    if not quiet:
        console.info(f"rebase of {name} aborted: series files and {settings.sources_file.name} "
                     f"restored; {tree} is back on {PATCHED}")
