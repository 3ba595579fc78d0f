"""The staging tree (``settings.staging_dir``): nothing is ever written or deleted outside it.

Every staging path is checked with :func:`in_staging` after placeholder expansion and symlink
resolution, and again right before a copy writes; copies go through a temporary file, so a staged
file is either the old one or the complete new one.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path, PurePosixPath


class OutsideStaging(ValueError):
    """A staging path that would leave the staging tree (the reason is the message)."""


def in_staging(staging: Path, rel: object) -> Path:
    """``staging/rel``, once it is sure to stay inside the staging tree: ``rel`` must be a
    relative path without ``..`` and, with every symlink on the way resolved (the last
    component included), must land strictly below the resolved staging directory.  Raises
    :class:`OutsideStaging` otherwise.  Call it after placeholder expansion, right before a
    path is written or deleted."""
    if not isinstance(rel, str) or not rel.strip():
        raise OutsideStaging(f"{rel!r} is not a path")
    pure = PurePosixPath(rel)
    if pure.is_absolute():
        raise OutsideStaging(f"{rel!r} is an absolute path")
    if ".." in pure.parts:
        raise OutsideStaging(f"{rel!r} contains '..'")
    if "\0" in rel or not [p for p in pure.parts if p != "."]:
        raise OutsideStaging(f"{rel!r} does not name a file inside the staging tree")
    root = staging.resolve()
    dest = staging / rel
    real = dest.resolve()
    if root not in real.parents:
        raise OutsideStaging(f"{rel!r} resolves to {real} (through a symlink), outside the "
                             f"staging tree {root}")
    return dest


def stage_file(src: Path, staging: Path, rel: str, mode: int | None) -> None:
    """Copy ``src`` to ``staging/rel`` (checked again right here) through a temporary file:
    the staged file is either the old one or the complete new one, never a partial copy."""
    dest = in_staging(staging, rel)
    dest.parent.mkdir(parents=True, exist_ok=True)
    in_staging(staging, rel)       # the directories just made are real, not symlinks
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.askbuild-tmp")
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, mode if mode is not None
                 else (0o755 if os.access(src, os.X_OK) else 0o644))
        tmp.replace(dest)
    except OSError as e:
        raise _naming(e, dest) from e
    finally:
        tmp.unlink(missing_ok=True)


def copy_tree(src: Path, staging: Path, rel: str) -> None:
    """Replace the directory ``staging/rel`` (checked) with a copy of ``src``."""
    dest = in_staging(staging, rel)
    if dest.is_symlink():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    in_staging(staging, rel)
    try:
        _copytree(src, dest)
    except OSError as e:
        raise _naming(e, Path(e.filename2 or e.filename or dest)) from e


def _naming(e: OSError, dest: Path) -> OSError:
    """``e`` about the staged file ``dest`` (shutil names the source of a failed copy, but a
    full disk or a permission problem is about where the copy goes)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
        return type(e)(e.errno, e.strerror, str(dest))
    return e


def _copytree(src: Path, dest: Path) -> None:
    """``shutil.copytree(src, dest, symlinks=True)`` that stops at the first error and lets it
    through as it is (copytree gathers errors into one without errno: a full disk would not
    be recognisable)."""
    dest.mkdir()
    for root, dirs, files in os.walk(src):
        here = Path(root)
        there = dest / here.relative_to(src)
        for name in dirs + files:
            s, d = here / name, there / name
            if s.is_symlink():
                os.symlink(os.readlink(s), d)
            elif s.is_dir():
                d.mkdir()
            else:
                shutil.copy2(s, d)
        shutil.copystat(here, there)
