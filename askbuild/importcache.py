"""Cached tarball imports: the git objects of an import, kept beside the tarball (issue 9).

The first import of a tarball hashes and deflates every file into one pack (the check-in of
:mod:`askbuild.checkin`, or git's bulk check-in: ~20-40 s for a kernel tree).  Its pack files
are then kept in the download cache, beside the tarball they came from
(``<tarball cache>/imports/<sha256>/``, :meth:`askbuild.settings.Settings.tarball_import`),
with a record of each file's sha256.  Every later import of the same tarball (another work
directory, a work tree thrown away, a second checkout of askbuild sharing the cache) still
extracts the archive (the work tree keeps the archive's times, modes and empty directories)
but starts its repository with those packs: the check-in then only computes the files' ids,
finds every object stored and writes no pack (a few seconds on the kernel tree).

The cache never decides the commit: the tree is always what ``git add`` would make of the
extracted files, so the commit id is the one every import gives, with or without the entry.
Objects only an earlier import needed (a file another ``strip_components`` names elsewhere)
are carried along harmlessly.

Trust and faults: an entry is built under a temporary name and renamed into place complete
(a killed run leaves a ``.import.tmp-*`` directory the next run removes, never an entry); an
entry whose record is missing or unreadable, names a file that is not a pack or pack index,
or whose files no longer match their recorded sha256 (truncated, bit rot) is moved aside and
removed with a warning naming it, and the import goes on without it.  A failure to keep an
entry (a full disk) is a warning: the import itself succeeded.  Callers hold the source's
cache lock around each use of an entry (:attr:`ImportCache.lock`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import console
from .download import unique_name
from .fsutil import discard, read_json, sha256_file, write_json_atomic

#: The record inside an entry: ``{"version": 1, "files": {pack file name: sha256}}``.
RECORD = "import.json"
VERSION = 1
_PACK_FILE = re.compile(r"pack-[0-9a-f]{40,64}\.(?:pack|idx)")
#: What a killed run leaves beside an entry (removed before an entry is written).
LEFTOVER = re.compile(r"\.import\.(?:tmp|old)-[0-9]+-[0-9a-f]+")


def leftovers(entry: Path) -> list[Path]:
    """Temporary directories killed runs left beside ``entry``."""
    try:
        return sorted(p for p in entry.parent.iterdir() if LEFTOVER.fullmatch(p.name))
    except OSError:
        return []


def _place(src: Path, dest: Path) -> None:
    """``dest`` becomes ``src``'s content: a hard link (packs are never written again), a copy
    across file systems; written under a temporary name, so it appears complete or not at all."""
    tmp = dest.with_name(unique_name(f".{dest.name}.tmp-"))
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _discard(path: Path) -> None:
    with contextlib.suppress(OSError):
        discard(path, ".import.old-")


@dataclass(frozen=True)
class ImportCache:
    """The cached import of one tarball: ``entry`` is its directory, ``what`` the source,
    ``lock`` the source's cache lock (held around each use of the entry)."""

    entry: Path
    what: str
    lock: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def _files(self) -> tuple[list[str], str]:
        """The entry's pack files, packs before indexes, or why the entry cannot be used."""
        record = read_json(self.entry / RECORD)
        if record is None:
            return [], f"{RECORD} is missing or unreadable"
        files = record.get("files")
        if record.get("version") != VERSION or not isinstance(files, dict) or not files:
            return [], f"{RECORD} is not a version {VERSION} record"
        for name, sha in files.items():
            if not _PACK_FILE.fullmatch(str(name)) or not isinstance(sha, str):
                return [], f"{RECORD} names {name!r}, which is not a pack file"
            try:
                got, _ = sha256_file(self.entry / name)
            except OSError as e:
                return [], f"{name}: {e.strerror or e}"
            if got != sha:
                return [], f"{name} no longer matches its recorded sha256"
        return sorted(files, key=lambda n: n.endswith(".idx")), ""

    def take(self, git_dir: Path) -> bool:
        """Give the new repository ``git_dir`` the entry's packs; False when there is no usable
        entry (a damaged one is removed, with a warning)."""
        with self.lock():
            self._sweep()
            return self._take(git_dir)

    def put(self, git_dir: Path) -> None:
        """Keep the packs of the finished import ``git_dir`` as the entry (when there is none)."""
        with self.lock():
            self._sweep()
            self._put(git_dir)

    def _sweep(self) -> None:
        """Remove what killed runs left beside the entry (the lock is held: none is live)."""
        for p in leftovers(self.entry):
            shutil.rmtree(p, ignore_errors=True)

    def _take(self, git_dir: Path) -> bool:
        if not self.entry.exists():
            return False
        names, why = self._files()
        if why:
            console.warn(f"source {self.what}: the cached import {self.entry} is damaged "
                         f"({why}); removing it and importing without it")
            _discard(self.entry)
            return False
        pack_dir = git_dir / "objects" / "pack"
        try:
            for name in names:
                _place(self.entry / name, pack_dir / name)
        except OSError as e:
            for name in names:
                (pack_dir / name).unlink(missing_ok=True)
            console.warn(f"source {self.what}: cannot use the cached import {self.entry} "
                         f"({e.strerror or e}); importing without it")
            return False
        console.info(f"source {self.what}: reusing the objects of an earlier import "
                     f"({self.entry})")
        return True

    def _put(self, git_dir: Path) -> None:
        if self.entry.exists():
            return
        packs = sorted(p for p in (git_dir / "objects" / "pack").iterdir()
                       if _PACK_FILE.fullmatch(p.name))
        if not any(p.suffix == ".pack" for p in packs):
            return
        tmp = self.entry.with_name(unique_name(".import.tmp-"))
        try:
            tmp.mkdir(parents=True)
            files = {}
            for p in packs:
                _place(p, tmp / p.name)
                files[p.name] = sha256_file(tmp / p.name)[0]
            write_json_atomic(tmp / RECORD, {"version": VERSION, "files": files})
            os.rename(tmp, self.entry)
        except OSError as e:
            if not self.entry.exists():
                console.warn(f"source {self.what}: cannot keep this import's objects in "
                             f"{self.entry.parent} ({e.strerror or e}); the next import of "
                             "this tarball checks every file in again")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

