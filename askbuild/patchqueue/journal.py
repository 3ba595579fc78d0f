"""Crash safety: the run journal, recovery after a killed run, scratch work trees.

While askbuild changes a tree, a journal in its git dir (:func:`journal_begin`) makes everything
uncommitted there askbuild's own; the next run after a kill undoes it (:func:`recover_tree`:
stale git locks, a half-done ``git am``, changed and new files, HEAD, branch and record).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from .. import console, gitutil
from ..errors import PatchFailed
from ..fsutil import read_json, write_json_atomic
from ..gitutil import GitError
from ..refs import PATCHED
from ..settings import Settings
from .record import tree_state
from .worktree import NoSpaceLeft, git_dir, git_errors, rev

JOURNAL = "askbuild-run.json"       # in the git dir of a work tree while askbuild changes it
SCRATCH_PREFIX = "patch-scratch-"


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


#: the room a file system in RAM must have left for a scratch to go there (a scratch holds
#: the objects of a series and, of a small tree, its files: a few MB)
RAM_ROOM = 256 << 20


class ScratchHome(NamedTuple):
    """Where a run's scratch repositories go (:func:`scratch_home`): the directory, the
    prefix of their names, and whether it is in RAM."""
    parent: Path
    prefix: str
    in_ram: bool


def scratch_home(settings: Settings, *, ram: bool = True) -> ScratchHome:
    """Where this run's scratch repositories go: in RAM (``settings.ram_scratch_dir``, on
    ``/dev/shm`` by default: a scratch's files and objects are written and thrown away within
    the run, and on this machine's disk the loose objects of a 300-patch dry run took 2-5x
    the time they take in RAM while the disk was busy), named after the work directory; in
    the work directory when ``ram`` is False or :func:`ram_problem` names one."""
    if ram and not ram_problem(settings):
        d = settings.ram_scratch_dir
        assert d is not None
        return ScratchHome(d, f"{SCRATCH_PREFIX}{settings.scratch_key}-", True)
    return ScratchHome(settings.work_dir, SCRATCH_PREFIX, False)


def ram_problem(settings: Settings) -> str:
    """Why the scratch repositories cannot go to RAM ("" when they can; the directory is
    made when it is not there): ``ram_dir`` off or not there, the directory not this user's
    own (a real directory, not a link, no access for others: the RAM file system is shared
    by every user), or less than :data:`RAM_ROOM` free."""
    d = settings.ram_scratch_dir
    if d is None:
        return "off (ASKBUILD_RAM_DIR is empty)"
    if not _own_dir(d, make=True):
        return f"{d} cannot be made, or is not a directory of this user's own (mode 0700)"
    try:
        vfs = os.statvfs(d)
    except OSError as e:
        return f"{d}: {e.strerror}"
    free = vfs.f_bavail * vfs.f_frsize
    if free < RAM_ROOM:
        return f"{d}: {free >> 20} MB free, less than {RAM_ROOM >> 20} MB"
    return ""


def _own_dir(d: Path, *, make: bool = False) -> bool:
    """Whether ``d`` is a directory (not a link) of this user that no one else may enter;
    made so when it is not there and ``make``."""
    try:
        if make:
            with contextlib.suppress(FileExistsError):
                os.mkdir(d, 0o700)
        st = os.lstat(d)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def out_of_room(e: BaseException) -> bool:
    """Whether ``e`` says a file system ran full (git's words, an ``OSError``, a
    :class:`~.worktree.NoSpaceLeft`): the fault of the scratch's place, not of the work."""
    if isinstance(e, NoSpaceLeft):
        return True
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(e, GitError):
        return gitutil.says_no_space(f"{e.stderr}\n{e.stdout}")
    return False


def clean_scratch(settings: Settings) -> None:
    """Remove scratch work trees that killed runs left, in the work directory and in RAM
    (those named after this work directory: the work-dir lock is held, so no live run uses
    one); the git metadata of older versions' goes with ``worktree prune``."""
    places = [(settings.work_dir, SCRATCH_PREFIX)]
    ram = settings.ram_scratch_dir
    if ram is not None and _own_dir(ram):
        places.append((ram, f"{SCRATCH_PREFIX}{settings.scratch_key}-"))
    for parent, prefix in places:
        if parent.is_dir():
            for d in parent.glob(f"{prefix}*"):
                shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def scratch_worktree(tree: Path, base: str, parent: Path, *, prefix: str = SCRATCH_PREFIX,
                     paths: Iterable[str] | None = None, sparse_index: bool = True,
                     borrow: Iterable[Path] = (), checkout: bool = True,
                     reflog: bool = False) -> Iterator[Path]:
    """A throw-away work tree of ``tree``'s repository at ``base`` (detached HEAD): no branch,
    file or object of ``tree`` is touched.  It is made in ``parent`` (see
    :func:`scratch_home`), its name starting with ``prefix`` and unique to this run; one left
    by a killed run goes with :func:`clean_scratch`.

    The scratch is its own repository borrowing ``tree``'s objects (``alternates``, the
    ``shallow`` list copied: :func:`borrowing_repo`), so the objects the work writes (the
    commits of ``git am``, the merges of a dry run) go with it instead of piling up,
    unreachable, in ``tree``'s object store (where askbuild's git calls, ``gc.auto=0``, would
    never prune them).  Without ``paths`` it holds every file.  With ``paths`` (the files the
    work will touch), a cone-mode sparse checkout of the directories holding those files
    (and the files at the top and beside each parent directory), so a kernel's scratch is a
    few directories, not 80k files.  With ``sparse_index`` its index is sparse too (a few
    hundred entries: what the sequencer, which knows sparse indexes, wants); without it,
    full (for ``git am``, which in git 2.39 expands a sparse index on every read: 75 ms a
    patch on 30k files against the few ms of reading a full one); :func:`use_sparse_index`
    switches on the next index write.  The commits made there are the same (git merges and
    applies trees, not the work tree), but a file outside the cone is not there: callers
    check that the work touched none (and redo it in a full scratch otherwise).  ``paths``
    that no pattern can name (a line break in a name) give a full scratch.  ``borrow``: more
    object directories the scratch borrows from (another scratch's:
    :func:`~.graft.grafted_queue`).  ``checkout=False``: nothing checked out yet (HEAD
    unborn), for work on objects alone until a checkout is needed.  ``reflog``: HEAD's moves
    logged (``logs/HEAD``) whatever the user's ``core.logAllRefUpdates`` says, for a reader
    that follows them (:class:`~askbuild.treereplay.ReplayAlong`)."""
    parent.mkdir(parents=True, exist_ok=True)
    patterns = None if paths is None else sparse_patterns(paths)
    scratch = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
    try:
        borrowing_repo(tree, scratch, borrow)
        if reflog:
            _add_config(scratch, "[core]\n\tlogAllRefUpdates = true\n")
        if patterns is not None:
            _sparse_config(scratch, patterns, sparse_index)
        if checkout:
            gitutil.git(["checkout", "-q", "--detach", base], cwd=scratch)
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if _stale_worktrees(tree):      # (what scratch work trees of older versions left)
            gitutil.git(["worktree", "prune"], cwd=tree, check=False)


#: a work tree with fewer files than this gets a full scratch: checking out a few thousand
#: small files costs less than the few more git processes of a sparse one
SPARSE_FROM = 2000


def sparse_pays(tree: Path) -> bool:
    """Whether ``tree`` (its index: the file count in its header) is big enough for a
    sparse scratch (:data:`SPARSE_FROM`); True when the index cannot be read."""
    try:
        with open(git_dir(tree) / "index", "rb") as f:
            head = f.read(12)
    except OSError:
        return True
    return len(head) < 12 or head[:4] != b"DIRC" \
        or int.from_bytes(head[8:12], "big") >= SPARSE_FROM


def sparse_patterns(paths: Iterable[str]) -> bytes | None:
    """Cone-mode sparse-checkout patterns (as ``git sparse-checkout set --cone`` writes them)
    for the directories holding ``paths``: the top level's files, each ancestor directory's
    own files, each directory recursively; ``\\``, ``*``, ``?`` and ``[`` escaped as git
    escapes them.  None when a name holds a line break (no pattern can say it)."""
    dirs = set()
    for p in paths:
        if not p or "\n" in p or "\r" in p:
            return None
        d = p.rpartition("/")[0]
        if d:
            dirs.add(d)
    # directories taken whole, none inside another; their ancestors, own files only
    whole = {d for d in dirs if not any(d.startswith(f"{a}/") for a in _ancestors(d) & dirs)}
    parents = {a for d in whole for a in _ancestors(d)}
    lines = ["/*", "!/*/"]
    for d in sorted(whole | parents):
        e = "".join("\\" + c if c in "\\*?[" else c for c in d)
        lines += [f"/{e}/", f"!/{e}/*/"] if d in parents else [f"/{e}/"]
    return "".join(f"{ln}\n" for ln in lines).encode("utf-8", "surrogateescape")


def _ancestors(d: str) -> set[str]:
    """The proper ancestor directories of the directory ``d`` (``a/b/c``: ``a``, ``a/b``)."""
    parts = d.split("/")
    return {"/".join(parts[:i]) for i in range(1, len(parts))}


def borrowing_repo(tree: Path, scratch: Path, borrow: Iterable[Path] = ()) -> None:
    """Make ``scratch`` (an empty directory) a repository borrowing the objects of ``tree``'s
    (and of the object directories ``borrow``) through ``alternates``, with its ``shallow``
    list: the commits made there stay there."""
    gitutil.git(["init", "-q", "--template=", "--", str(scratch)], cwd=scratch.parent)
    src, gd = git_dir(tree), scratch / ".git"
    (gd / "objects" / "info").mkdir(parents=True, exist_ok=True)
    dirs = [(src / "objects").resolve(), *(Path(b).resolve() for b in borrow)]
    (gd / "objects" / "info" / "alternates").write_text("".join(f"{d}\n" for d in dirs))
    if (src / "shallow").is_file():
        shutil.copyfile(src / "shallow", gd / "shallow")


def _sparse_config(scratch: Path, patterns: bytes, sparse_index: bool) -> None:
    """Make the scratch repository ``scratch`` check out only what ``patterns`` (cone mode)
    take (:func:`scratch_worktree`).  Git is told no file outside the patterns is there (true
    of a fresh checkout), so reading the index does not stat every path left out."""
    gd = scratch / ".git"
    (gd / "info").mkdir(exist_ok=True)
    (gd / "info" / "sparse-checkout").write_bytes(patterns)
    _add_config(scratch, "[core]\n\tsparseCheckout = true\n\tsparseCheckoutCone = true\n"
                "[sparse]\n\texpectFilesOutsideOfPatterns = true\n")
    use_sparse_index(scratch, sparse_index)


def use_sparse_index(scratch: Path, on: bool = True) -> None:
    """Make the index of a sparse ``scratch`` (:func:`scratch_worktree`) sparse (``on``) or
    full from its next write (a checkout) on: the last ``index.sparse`` of its config wins."""
    _add_config(scratch, f"[index]\n\tsparse = {'true' if on else 'false'}\n")


def _add_config(scratch: Path, text: str) -> None:
    """Append ``text`` (git config lines) to the config of the scratch repository
    ``scratch``: the last value of a key wins, and the scratch is this run's own."""
    with open(scratch / ".git" / "config", "a", encoding="utf-8") as f:
        f.write(text)


def _stale_worktrees(tree: Path) -> bool:
    """Whether ``tree``'s git dir lists a worktree whose directory no longer exists (read from
    ``.git/worktrees/*/gitdir``, without running git)."""
    meta = tree / ".git" / "worktrees"
    if not meta.is_dir():
        return False
    for entry in meta.iterdir():
        try:
            gitdir = (entry / "gitdir").read_text().strip()
        except OSError:
            return True
        if not Path(gitdir).exists():
            return True
    return False
