"""Done records: ``settings.build_record(name)`` (``state/build-<name>.json``).

A component's record is removed before it builds and written atomically after its artifacts are
verified and staged, so a kill at any point leaves no record.  A record read from disk is trusted
only after :func:`record_problem` (every path it names stays in the staging tree); it says the
component is up to date when its key is the current one and its artifacts are in place, and
drives putting back (:func:`restage`) or removing (:func:`unstage`) the staged files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .. import console
from ..errors import ConfigError
from ..fsutil import read_json, stat_sig
from ..settings import Settings
from .staging import OutsideStaging, copy_tree, in_staging, stage_file


def read_record(settings: Settings, name: str) -> dict | None:
    """The done record of component ``name`` as it is on disk (None when there is none)."""
    return read_json(settings.build_record(name))


def record_problem(settings: Settings, rec: dict) -> str | None:
    """Why a done record read from disk cannot be trusted (a staged path outside the staging
    tree, a malformed entry), or None."""
    try:
        for a in rec.get("artifacts", []):
            if a.get("staged") is not None:
                in_staging(settings.staging_dir, a["staged"])
            if not isinstance(a.get("file"), str) or not isinstance(a.get("size"), int):
                return f"artifact entry {a!r} is malformed"
        tree = rec.get("staged_tree")
        if tree is not None:
            in_staging(settings.staging_dir, tree["dest"])
            if not isinstance(tree.get("from"), str):
                return f"staged_tree {tree!r} is malformed"
    except OutsideStaging as e:
        return f"staged path {e}"
    except (AttributeError, KeyError, TypeError):
        return "it is malformed"
    return None


#: the untrusted records already warned about: (path, stat signature)
_WARNED: set[tuple[str, str]] = set()


def trusted_record(settings: Settings, name: str) -> dict | None:
    """The done record of ``name`` when it can be trusted; a damaged or tampered one is
    ignored with a warning, once per record file as it is (a build asks about a record more
    than once: the manifest's no-op check, the shared build cache's downloads, the DAG),
    and the component is rebuilt; nothing it names is touched."""
    rec = read_record(settings, name)
    if rec is None:
        return None
    problem = record_problem(settings, rec)
    if problem:
        path = settings.build_record(name)
        seen = (str(path), repr(stat_sig(path)))
        if seen not in _WARNED:
            _WARNED.add(seen)
            console.warn(f"ignoring {path}: {problem}; {name} is rebuilt and nothing that "
                         "record names is written or deleted")
        return None
    return rec


def up_to_date(rec: dict | None, key: str) -> bool:
    """Whether ``rec`` (trusted) was built with ``key`` and its artifacts are in place."""
    if not rec or rec.get("key") != key:
        return False
    for a in rec.get("artifacts", []):
        p = Path(a["file"])
        if not p.is_file() or p.stat().st_size != a["size"]:
            return False
    return True


def _unstaged(settings: Settings, rec: dict) -> tuple[list[dict], dict | None]:
    """What of ``rec`` (trusted) is not in the staging tree: the artifacts whose staged copy is
    missing or of another size, and the staged tree when its directory is missing.  Raises
    :class:`OutsideStaging` for a path a symlink now leads out of the staging tree."""
    files = [a for a in rec.get("artifacts", []) if a.get("staged")
             and (not (dest := in_staging(settings.staging_dir, a["staged"])).is_file()
                  or dest.stat().st_size != a["size"])]
    tree = rec.get("staged_tree")
    if tree and in_staging(settings.staging_dir, tree["dest"]).is_dir():
        tree = None
    return files, tree


def needs_restage(settings: Settings, rec: dict) -> bool:
    """Whether a staged file or tree of ``rec`` (trusted) is missing from the staging tree."""
    try:
        files, tree = _unstaged(settings, rec)
    except OutsideStaging:
        return True
    return bool(files or tree)


def restage(settings: Settings, rec: dict) -> bool:
    """Put back staged files that went missing (e.g. staging wiped).  True if any was.
    ``rec`` comes from :func:`trusted_record`; a staging path that a symlink now leads out of
    the staging tree is refused (:class:`ConfigError`)."""
    try:
        files, tree = _unstaged(settings, rec)
        for a in files:
            stage_file(Path(a["file"]), settings.staging_dir, a["staged"], a.get("mode"))
        if tree:
            copy_tree(Path(tree["from"]), settings.staging_dir, tree["dest"])
    except OutsideStaging as e:
        raise ConfigError(
            f"{settings.build_record(rec.get('component', '?'))}: cannot put back a staged "
            f"file: {e}; refused", fix="remove the symlink in the staging tree that points out "
            f"of it (or delete {settings.staging_dir}), then run "
            f"`{settings.command('build')}` again") from None
    return bool(files or tree)


def unstage(settings: Settings, rec: dict) -> None:
    """Delete what a previous build of a component staged (``rec`` is trusted); a path that a
    symlink now leads out of the staging tree is left alone (with a warning)."""
    paths = [a["staged"] for a in rec.get("artifacts", []) if a.get("staged")]
    tree = (rec.get("staged_tree") or {}).get("dest")
    for rel in [*paths, *([tree] if tree else [])]:
        try:
            dest = in_staging(settings.staging_dir, rel)
        except OutsideStaging as e:
            console.warn(f"not deleting the old staged {rel!r}: {e}")
            continue
        if rel == tree:
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
        else:
            dest.unlink(missing_ok=True)
