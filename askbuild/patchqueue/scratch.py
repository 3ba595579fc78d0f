"""Scratch repositories: throw-away work trees of a source tree's repository (the rebase dry
run's, ``inv patch --check``'s, the small repository ``inv patch`` grafts from), where they
go (in RAM when there is room: :func:`scratch_home`), sparse ones for big trees, and the
removal of those a killed run left (:func:`clean_scratch`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple, TypeVar

from .. import gitutil
from ..errors import NO_SPACE
from ..fsutil import dirs_above
from ..gitutil import GitError
from ..settings import Settings
from .worktree import NoSpaceLeft, git_dir

SCRATCH_PREFIX = "patch-scratch-"
T = TypeVar("T")

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
        return ScratchHome(d, _ram_prefix(settings), True)
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


def _ram_prefix(settings: Settings) -> str:
    """What the names of this work directory's scratches in RAM start with."""
    return f"{SCRATCH_PREFIX}{settings.scratch_key}-"


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


def in_scratch_home(settings: Settings, work: Callable[[ScratchHome], T]) -> T:
    """``work(home)`` with its scratches in :func:`scratch_home`; when that is in RAM and
    it runs out of room there (:func:`out_of_room`), ``work`` again in the work directory
    (``work`` starts from scratch each time: the first one's scratches are gone)."""
    home = scratch_home(settings)
    try:
        return work(home)
    except Exception as e:
        if not (home.in_ram and out_of_room(e)):
            raise
    return work(scratch_home(settings, ram=False))


def out_of_room(e: BaseException) -> bool:
    """Whether ``e`` says a file system ran full (git's words, an ``OSError``, a
    :class:`~.worktree.NoSpaceLeft`): the fault of the scratch's place, not of the work."""
    if isinstance(e, NoSpaceLeft):
        return True
    if isinstance(e, OSError):
        return e.errno in NO_SPACE
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
        places.append((ram, _ram_prefix(settings)))
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
    whole = {d for d in dirs if not any(a in dirs for a in dirs_above(d))}
    parents = {a for d in whole for a in dirs_above(d)}
    lines = ["/*", "!/*/"]
    for d in sorted(whole | parents):
        e = "".join("\\" + c if c in "\\*?[" else c for c in d)
        lines += [f"/{e}/", f"!/{e}/*/"] if d in parents else [f"/{e}/"]
    return "".join(f"{ln}\n" for ln in lines).encode("utf-8", "surrogateescape")


def borrowing_repo(tree: Path, scratch: Path, borrow: Iterable[Path] = ()) -> None:
    """Make ``scratch`` (an empty directory) a repository borrowing the objects of ``tree``'s
    (and of the object directories ``borrow``) through ``alternates``, with its ``shallow``
    list: the commits made there stay there."""
    init_repo(scratch)
    src, gd = git_dir(tree), scratch / ".git"
    (gd / "objects" / "info").mkdir(parents=True, exist_ok=True)
    dirs = [(src / "objects").resolve(), *(Path(b).resolve() for b in borrow)]
    (gd / "objects" / "info" / "alternates").write_text("".join(f"{d}\n" for d in dirs))
    if (src / "shallow").is_file():
        shutil.copyfile(src / "shallow", gd / "shallow")


def init_repo(scratch: Path) -> None:
    """Make the empty directory ``scratch`` a repository as ``git init --template=`` makes
    one, without its process (3 ms alone, three times that while the tree's ``git status``
    takes the CPU): ``HEAD``, ``objects/``, ``refs/`` and the config, with git's probes of
    the file system (executable bits, symbolic links, case).  With ``GIT_DEFAULT_HASH`` set
    (another object format), git does it."""
    if os.environ.get("GIT_DEFAULT_HASH"):
        gitutil.git(["init", "-q", "--template=", "--", str(scratch)], cwd=scratch.parent)
        return
    gd = scratch / ".git"
    for d in ("objects/info", "objects/pack", "refs/heads", "refs/tags"):
        (gd / d).mkdir(parents=True)
    (gd / "HEAD").write_text("ref: refs/heads/master\n")
    config = gd / "config"
    config.write_text("")
    mode = config.lstat().st_mode
    with contextlib.suppress(OSError):
        config.chmod(mode ^ stat.S_IXUSR)
    filemode = config.lstat().st_mode != mode
    with contextlib.suppress(OSError):
        config.chmod(mode)
    probe = gd / "tXXXXXX"
    try:
        os.symlink("testing", probe)
        probe.unlink()
        symlinks = True
    except OSError:
        symlinks = False
    lines = ["[core]", "\trepositoryformatversion = 0", f"\tfilemode = {str(filemode).lower()}",
             "\tbare = false", "\tlogallrefupdates = true"]
    if not symlinks:
        lines.append("\tsymlinks = false")
    if (gd / "CoNfIg").exists():
        lines.append("\tignorecase = true")
    config.write_text("".join(f"{ln}\n" for ln in lines))


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
