"""A work tree's HEAD commit and refs read from git's own files, without a git process.

Only the plain layouts are read: ``.git`` a directory or a ``gitdir:`` file (a linked worktree,
its shared refs in the ``commondir``), ``HEAD`` detached or a symbolic ref, loose refs (which
win) and ``packed-refs``.  Anything else -- a reftable repository, a ref that is neither loose
nor packed, an unreadable or malformed file -- answers ``None``: "unsure, ask git".  Git
writes every one of these files with a lock file and a rename, so a read never sees half a
file.
"""

from __future__ import annotations

import re
from pathlib import Path

_OID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
#: Refs each linked worktree has for itself (the others live in the common directory).
_PER_WORKTREE = ("refs/worktree/", "refs/bisect/", "refs/rewritten/")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


def git_dir(tree: Path) -> Path | None:
    """The git directory of work tree ``tree`` (``.git``, or where a ``.git`` file points)."""
    dot = tree / ".git"
    if dot.is_dir():
        return dot
    text = _read(dot)
    if not text or not text.startswith("gitdir:"):
        return None
    path = Path(text[len("gitdir:"):].strip())
    return path if path.is_absolute() else tree / path


def _common_dir(gitdir: Path) -> Path:
    text = _read(gitdir / "commondir")
    if not text:
        return gitdir
    path = Path(text)
    return path if path.is_absolute() else gitdir / path


def _packed(common: Path, ref: str) -> str | None:
    text = _read(common / "packed-refs")
    for line in (text or "").splitlines():
        if line.startswith(("#", "^")):
            continue
        oid, _, name = line.partition(" ")
        if name == ref:
            return oid
    return None


def ref_value(tree: Path, ref: str, _depth: int = 0) -> str | None:
    """The object id ``ref`` (a full name, ``refs/...`` or ``HEAD``) points at in ``tree``,
    following symbolic refs; not peeled (a tag ref gives the tag's id).  None when unsure."""
    gitdir = git_dir(tree)
    if gitdir is None or _depth > 5:
        return None
    common = _common_dir(gitdir)
    shared = ref.startswith("refs/") and not ref.startswith(_PER_WORKTREE)
    where = common if shared else gitdir
    text = _read(where / ref)
    if text is None and shared:
        text = _packed(common, ref)
    if text is None:
        return None
    if text.startswith("ref:"):
        target = text[len("ref:"):].strip()
        return ref_value(tree, target, _depth + 1) if target.startswith("refs/") else None
    return text if _OID.fullmatch(text) else None


def head_commit(tree: Path) -> str | None:
    """The commit HEAD of work tree ``tree`` is at, read from files; None when unsure."""
    return ref_value(tree, "HEAD")
