"""What a work tree looks like to git, and git failures as messages.

Read-only queries of a source's work tree (its base, refs, git dir, changed files, an operation
in progress) shared by the patch, edit, export and rebase verbs, and :func:`git_errors`, which
turns an unexpected :class:`GitError` into a :class:`PatchFailed` naming what askbuild was doing
(a full disk is :class:`NoSpaceLeft`, never "refresh the patch").
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from .. import gitutil
from ..errors import PatchFailed, free_space
from ..gitutil import FIXED_IDENTITY, GitError
from ..refs import BASE_REF, PATCHED

PATCHED_REF = f"refs/heads/{PATCHED}"

#: Who askbuild's own commits are committed by (commits by anyone else are the user's work).
ASKBUILD_COMMITTER = (f"{FIXED_IDENTITY['GIT_COMMITTER_NAME']} "
                      f"<{FIXED_IDENTITY['GIT_COMMITTER_EMAIL']}>")
# Config that would make commits or diffs depend on the user's git configuration.
REPRO = ["-c", "commit.gpgSign=false", "-c", "i18n.commitEncoding=UTF-8",
         "-c", "diff.noprefix=false", "-c", "diff.mnemonicPrefix=false",
         "-c", "diff.relative=false", "-c", "mailinfo.scissors=false"]


def has_base(tree: Path) -> bool:
    """Whether ``tree`` is a git work tree with its base tag (fetch made it completely)."""
    if not (tree / ".git").exists():
        return False
    proc = gitutil.git(["rev-parse", "-q", "--verify", f"{BASE_REF}^{{commit}}"],
                       cwd=tree, check=False)
    return proc.returncode == 0


def base_commit(tree: Path) -> str:
    """The commit of the ``askbuild/base`` tag of ``tree``."""
    return gitutil.out(["rev-parse", "--verify", f"{BASE_REF}^{{commit}}"], cwd=tree)


def _git_dir(tree: Path) -> Path:
    return Path(gitutil.out(["rev-parse", "--absolute-git-dir"], cwd=tree))


def git_dir(tree: Path) -> Path:
    """The git dir of a work tree (``.git`` is a directory in the trees fetch makes)."""
    dot = tree / ".git"
    return dot if dot.is_dir() else _git_dir(tree)


def rev(tree: Path, ref: str) -> str | None:
    """The commit ``ref`` names in ``tree`` (None when there is none)."""
    proc = gitutil.git(["rev-parse", "-q", "--verify", f"{ref}^{{commit}}"], cwd=tree,
                       check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def read_refs(tree: Path, names: Sequence[str]) -> dict[str, str | None]:
    """What :func:`rev` answers for each of ``names`` (refs, ``HEAD`` or SHAs: the commit it
    names, None when none), in ONE ``git cat-file --batch-check``."""
    names = list(dict.fromkeys(names))
    if not names:
        return {}
    if any(not n or "\n" in n or n.startswith("-") for n in names):
        raise ValueError(f"not a ref: {names!r}")
    args = ["cat-file", "--batch-check=%(objectname) %(objecttype)"]
    lines = gitutil.out(args, cwd=tree,
                        input="".join(f"{n}^{{commit}}\n" for n in names)).splitlines()
    if len(lines) != len(names):
        raise GitError(args, 0, "\n".join(lines), f"{len(lines)} answers for {len(names)} refs")
    found = {}
    for name, line in zip(names, lines, strict=True):
        sha, _, kind = line.rpartition(" ")
        found[name] = sha if kind == "commit" and gitutil.is_sha(sha) else None
    return found


class TreeStatus(NamedTuple):
    """Where HEAD is and what is uncommitted (:func:`tree_status`)."""
    head: str | None            # the commit of HEAD (None: no commit yet)
    symref: str | None          # the branch HEAD is on (``refs/heads/...``), None: detached
    changed: list[str]          # tracked files with uncommitted changes (staged or not)


def tree_status(tree: Path) -> TreeStatus:
    """HEAD, its branch and :func:`changed_files`, from ONE ``git status`` (what
    ``rev-parse HEAD``, ``symbolic-ref -q HEAD`` and :func:`changed_files` answer)."""
    raw = gitutil.git(["status", "--porcelain=v2", "--branch", "--no-ahead-behind", "-z",
                       "--untracked-files=no"], cwd=tree).stdout
    head = symref = None
    changed: list[str] = []
    fields = iter(raw.split("\0"))
    for f in fields:
        if f.startswith("# branch.oid "):
            head = f[len("# branch.oid "):] if gitutil.is_sha(f[len("# branch.oid "):]) else None
        elif f.startswith("# branch.head "):
            name = f[len("# branch.head "):]
            if name.startswith("refs/"):        # (not under refs/heads/: git says it whole)
                symref = gitutil.git(["symbolic-ref", "-q", "HEAD"], cwd=tree,
                                     check=False).stdout.strip() or None
            elif name != "(detached)":
                symref = f"refs/heads/{name}"
        elif f[:2] in ("1 ", "2 ", "u "):
            changed.append(f.split(" ", {"1": 8, "2": 9, "u": 10}[f[0]])[-1])
            if f[0] == "2":
                next(fields, None)          # the original path of a rename / copy
    return TreeStatus(head, symref, changed)


def operation_in_progress(tree: Path) -> str | None:
    """Which git operation (am, rebase, merge...) is stopped half-way in ``tree``, if any."""
    gd = git_dir(tree)
    for marker, what in (("rebase-apply", "a git am/rebase"), ("rebase-merge", "a git rebase"),
                         ("MERGE_HEAD", "a merge"), ("CHERRY_PICK_HEAD", "a cherry-pick"),
                         ("REVERT_HEAD", "a revert")):
        if (gd / marker).exists():
            return what
    return None


def changed_files(tree: Path) -> list[str]:
    """Tracked files with uncommitted changes (staged or not)."""
    raw = gitutil.git(["status", "--porcelain=v1", "-z", "--untracked-files=no"], cwd=tree).stdout
    return [e[3:] for e in raw.split("\0") if len(e) > 3]


def uncommitted(tree: Path) -> list[str]:
    """Changed tracked files and untracked files (not ignored) of ``tree``; nothing written
    (``--no-optional-locks``)."""
    raw = gitutil.git(["--no-optional-locks", "status", "--porcelain=v1", "-z",
                       "--untracked-files=normal"], cwd=tree).stdout
    fields = raw.split("\0")
    out, i = [], 0
    while i < len(fields):
        f = fields[i]
        i += 1
        if len(f) > 3:
            out.append(f[3:] + (" (untracked)" if f.startswith("??") else ""))
            if f[0] in "RC":
                i += 1          # the original path of a rename / copy
    return out


class NoSpaceLeft(PatchFailed):
    """The file system ran full while git worked (not a patch that does not apply)."""


def no_space(text: str) -> bool:
    """Whether git's output says the file system ran full (:func:`gitutil.says_no_space`)."""
    return gitutil.says_no_space(text)


def no_space_error(what: str, where: Path, detail: str = "") -> NoSpaceLeft:
    """A :class:`NoSpaceLeft` naming ``what``, the free space at ``where`` and git's words."""
    lines = [f"{what}: no space left on device ({free_space(where)})"]
    lines += [f"  git: {ln}" for ln in detail.strip().splitlines()[:4] if ln.strip()]
    return NoSpaceLeft("\n".join(lines),
                       fix="free some space (or use another --work-dir), then run the same "
                           "command again: the interrupted work is redone from a clean state")


def git_words(args: list[str]) -> str:
    """The git subcommand of ``args`` (after any ``-c NAME=VALUE``)."""
    it = iter(args)
    for a in it:
        if a == "-c":
            next(it, None)
        elif not a.startswith("-"):
            return a
    return " ".join(args[:1])


def git_failure(e: GitError, what: str, where: Path | None = None) -> PatchFailed:
    """A :class:`PatchFailed` naming ``what`` and git's reason for an unexpected git failure."""
    reason = (e.stderr or e.stdout or "").strip()
    if no_space(reason):
        return no_space_error(what, where or Path.cwd(), reason)
    shown = "; ".join(ln.strip() for ln in reason.splitlines()[-4:] if ln.strip())
    t = f"git -C {shlex.quote(str(where))} status" if where else "git status"
    return PatchFailed(f"{what}: `git {git_words(e.args_)}` failed: "
                       f"{shown or f'exit status {e.returncode}'}",
                       fix=f"see what git says (`{t}`), then run the same command again "
                           "(askbuild first puts back a tree it left half-changed)")


@contextlib.contextmanager
def git_errors(what: str, where: Path | None = None) -> Iterator[None]:
    """Turn a :class:`GitError` inside the block into a :class:`PatchFailed` naming ``what``."""
    try:
        yield
    except GitError as e:
        raise git_failure(e, what, where) from e
