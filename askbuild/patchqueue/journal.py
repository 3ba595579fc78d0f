"""Crash safety: the run journal and recovery after a killed run.

While askbuild changes a tree, a journal in its git dir (:func:`journal_begin`) makes everything
uncommitted there askbuild's own; the next run after a kill undoes it (:func:`recover_tree`:
stale git locks, a half-done ``git am``, changed and new files, HEAD, branch and record).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from .. import console, gitutil
from ..errors import PatchFailed
from ..fsutil import read_json, write_json_atomic
from ..gitutil import GitError
from ..refs import PATCHED
from ..settings import Settings
from .record import tree_state
from .worktree import git_dir, git_errors, rev

JOURNAL = "askbuild-run.json"       # in the git dir of a work tree while askbuild changes it


def _open_files() -> set[str]:
    """Every path some process of this machine holds open (read from /proc)."""
    found: set[str] = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                found.add(os.readlink(fd))
    return found


def clear_stale_locks(tree: Path) -> list[str]:
    """Remove the ``*.lock`` files of the tree's git dir that no process holds open: a git
    killed while holding them leaves them behind and every later git refuses to work.
    Returns the removed ones (relative to the git dir)."""
    gd = git_dir(tree)
    locks: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(gd):
        if Path(dirpath) == gd and "objects" in dirnames:
            dirnames.remove("objects")
        locks += [Path(dirpath) / f for f in filenames if f.endswith(".lock")]
    if not locks:
        return []
    held = _open_files()
    removed = []
    for lock in locks:
        if os.path.realpath(lock) in held:
            continue                    # a live git (the user's?) holds it: not stale
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
            removed.append(str(lock.relative_to(gd)))
    return removed


def _journal_path(tree: Path) -> Path:
    return git_dir(tree) / JOURNAL


def untracked_paths(tree: Path) -> list[str]:
    """Untracked paths (ignored ones included; an untracked directory as ``dir/``): what a
    journal keeps (:func:`journal_begin`)."""
    raw = gitutil.git(["ls-files", "--others", "--directory", "-z"], cwd=tree).stdout
    return sorted(x for x in raw.split("\0") if x)


def _position(settings: Settings, name: str, tree: Path) -> dict:
    sym = gitutil.git(["symbolic-ref", "-q", "HEAD"], cwd=tree, check=False).stdout.strip()
    return position(rev(tree, "HEAD"), sym or None, rev(tree, f"refs/heads/{PATCHED}"),
                    tree_state(settings, name))


def position(head: str | None, symref: str | None, patched: str | None,
             record: dict | None) -> dict:
    """Where a tree is, as a journal records it (``prev`` of :func:`journal_begin`): the
    commit of HEAD, the branch HEAD is on (None: detached), ``askbuild/patched`` and the
    patch record."""
    return {"head": head, "symref": symref, "patched": patched, "record": record}


def journal_begin(settings: Settings, name: str, tree: Path, verb: str, *,
                  prev: dict | None = None, untracked: list[str] | None = None,
                  **extra: object) -> None:
    """Say (in the tree's git dir) that askbuild starts changing the clean ``tree``.  Until
    :func:`journal_end`, every uncommitted change, git operation, new untracked file and lock
    file in the tree is askbuild's own: when the run dies, the next one undoes them and puts
    HEAD, ``askbuild/patched`` and the patch record back as they were here
    (:func:`recover_tree`).  ``prev``: that position (:func:`position`) when the caller has
    just read it (under the work-dir lock, nothing changed since), else it is read here.
    ``untracked``: :func:`untracked_paths` when the caller has just read it (under the same
    lock), else it is read here.  ``extra``: ``created_branch`` / ``edit_record`` (deleted on
    recovery)."""
    journal = {"schema": 1, "verb": verb, "pid": os.getpid(), "source": name,
               "started": time.time(), "prev": prev or _position(settings, name, tree),
               "untracked": untracked_paths(tree) if untracked is None else untracked,
               **extra}
    write_json_atomic(_journal_path(tree), journal)


def journal_end(tree: Path) -> None:
    """The tree is in a state askbuild or the user stands by: no recovery needed."""
    _journal_path(tree).unlink(missing_ok=True)


@contextlib.contextmanager
def journalled(settings: Settings, name: str, tree: Path, verb: str, *,
               prev: dict | None = None, untracked: list[str] | None = None,
               **extra: object) -> Iterator[None]:
    """Run the block under a run journal (:func:`journal_begin`; ``prev``, ``untracked``: the
    position and the untracked paths the caller just read).  On success the journal goes.
    On an error the tree is put back at once (a PatchFailed says so in its message); when
    even that fails, or the run is killed or interrupted, the journal stays and the next run
    puts the tree back first (:func:`recover_tree`)."""
    journal_begin(settings, name, tree, verb, prev=prev, untracked=untracked, **extra)
    try:
        yield
    except Exception as e:
        undo_failed_run(settings, name, tree, e)
        raise
    journal_end(tree)


def undo_failed_run(settings: Settings, name: str, tree: Path, e: Exception) -> None:
    """After an error under a journal: put the tree back as the journal says and, for a
    PatchFailed, say so; when that is impossible (no space...), the journal stays for the next
    run to finish the job."""
    journal = read_json(_journal_path(tree)) or {}
    prev = journal.get("prev") or {}
    failed = e if isinstance(e, PatchFailed) else None
    try:
        _rollback(settings, name, tree, journal)
    except (GitError, OSError) as err:
        if failed is not None:
            failed.partial = None
            failed.message += (f"\n  {tree} could not be put back yet "
                               f"({str(err).strip()[:200]}); the next run of askbuild does it "
                               "before anything else")
        return
    if failed is None or journal.get("verb") == "rebase":
        return
    if prev.get("record") and prev.get("head") == prev.get("patched"):
        where = f"on {PATCHED} at {prev['head'][:12]}, the series as applied before"
    else:
        where = f"at {str(prev.get('head'))[:12]}"
    failed.message += (f"\n  nothing of this run was kept: {tree} is back as it was before it "
                       f"({where})")


def _drop_operation(tree: Path) -> None:
    """Forget askbuild's own half-done git am / rebase / cherry-pick (files are reset after)."""
    gd = git_dir(tree)
    for d in ("rebase-apply", "rebase-merge", "sequencer"):
        if (gd / d).exists():
            shutil.rmtree(gd / d, ignore_errors=True)


def _remove_new_untracked(tree: Path, before: list[str]) -> None:
    old = set(before)
    old_dirs = tuple(x for x in old if x.endswith("/"))
    for rel in untracked_paths(tree):
        if rel in old or (old_dirs and rel.startswith(old_dirs)):
            continue
        p = tree / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _restore_position(settings: Settings, name: str, tree: Path, prev: dict) -> None:
    """HEAD (branch or detached), ``askbuild/patched`` and the patch record as in ``prev``."""
    if prev.get("head"):
        gitutil.git(["checkout", "-q", "-f", "--detach", prev["head"]], cwd=tree)
    if prev.get("patched"):
        gitutil.git(["update-ref", f"refs/heads/{PATCHED}", prev["patched"]], cwd=tree)
    elif rev(tree, f"refs/heads/{PATCHED}"):
        gitutil.git(["update-ref", "-d", f"refs/heads/{PATCHED}"], cwd=tree)
    sym = prev.get("symref")
    if sym and prev.get("head") and rev(tree, sym) == prev["head"]:
        gitutil.git(["symbolic-ref", "HEAD", sym], cwd=tree)
    if prev.get("record") is None:
        settings.patch_record(name).unlink(missing_ok=True)
    else:
        write_json_atomic(settings.patch_record(name), prev["record"])


def _rollback(settings: Settings, name: str, tree: Path, journal: dict) -> None:
    """Undo what the journalled run did to ``tree`` (see :func:`journal_begin`)."""
    _drop_operation(tree)
    gitutil.git(["reset", "-q", "--hard"], cwd=tree)
    _remove_new_untracked(tree, journal.get("untracked", []))
    if journal.get("verb") != "rebase":     # a rebase resumes from its own state file
        _restore_position(settings, name, tree, journal.get("prev") or {})
    branch = journal.get("created_branch")
    if branch and rev(tree, f"refs/heads/{branch}"):
        gitutil.git(["update-ref", "-d", f"refs/heads/{branch}"], cwd=tree)
    if journal.get("edit_record"):
        Path(str(journal["edit_record"])).unlink(missing_ok=True)
    journal_end(tree)


def recover_tree(settings: Settings, name: str, tree: Path | None = None) -> bool:
    """Heal source ``name``'s work tree after an askbuild run was killed in it (call with the
    work-dir lock held, before anything else uses the tree).

    Stale git lock files are removed.  When the killed run's journal is there, the tree is put
    back as it was before that run (its half-done ``git am``, changed and new files dropped;
    HEAD, ``askbuild/patched`` and the record restored), so the run can simply be done again.
    Without a journal nothing but stale lock files is touched: uncommitted changes and git
    operations are the user's (the usual dirty-tree refusal applies).  True when repaired."""
    tree = tree or settings.source_tree(name)
    if not (tree / ".git").exists():
        return False
    gd = git_dir(tree)
    if (gd / "worktrees").is_dir():
        gitutil.git(["worktree", "prune"], cwd=tree, check=False)
    removed = clear_stale_locks(tree)
    jpath = gd / JOURNAL
    journal = read_json(jpath) if jpath.exists() else None
    if journal is None:
        jpath.unlink(missing_ok=True)       # (an unreadable journal is not ours to trust)
        if removed:
            console.info(f"source {name}: removed stale git lock file(s) in {gd} left by a "
                         f"killed git: {', '.join(removed)}")
        return bool(removed)
    with git_errors(f"source {name}: recovering {tree} after an interrupted run", tree):
        _rollback(settings, name, tree, journal)
    console.info(f"source {name}: an `inv {journal.get('verb')}` (pid {journal.get('pid')}) was "
                 f"interrupted while changing {tree}; its half-done work was undone "
                 "and the tree put back as it was before it"
                 + (f" (stale git locks removed: {', '.join(removed)})" if removed else ""))
    return True
