"""A component's build tree kept between builds, so an edit rebuilds like make does.

The build tree ``<work>/out/<c>/src`` holds the export of the component's inputs (``git archive
HEAD -- <inputs>``) plus whatever its steps made (objects, libraries).  Next time only what
changed is brought in: a file whose content differs from the last export, or that was touched
since (a step rewrote it), is written again with the current time as its mtime; a file no longer
exported is deleted; every other file keeps its bytes and its timestamp.  So make recompiles the
objects of the changed files and relinks, nothing else.

A clean build (the tree emptied, everything exported) happens instead when the tree cannot be
trusted or when what make cannot see changed: the tree state ``<work>/out/<c>/tree-state.json``
is missing or says ``dirty``, or the fingerprint differs -- the recipe (steps, flags, shared
variables), the environment of the steps after expansion, the toolchain, the ``uses`` trees, the
project files read, or a dependency's key.  The reason is returned (and written to the log and
the done record).

Crash safety: the state is set to ``dirty`` (atomically) before the tree is touched and to
``clean`` only after the component succeeded, so a build killed or failing at any point leaves
a tree the next build empties first.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from pathlib import Path

from .. import archive
from ..fsutil import read_json, write_json_atomic

STATE_SCHEMA = 1


def fingerprint(key_inputs: dict, env: dict[str, str]) -> dict:
    """What must be unchanged for an incremental build: the key's inputs except the source
    tree ids (make follows those), plus the recipe's ``env`` as expanded."""
    fp = {k: v for k, v in key_inputs.items() if k != "source"}
    fp["env"] = dict(sorted(env.items()))
    return fp


def _why_changed(old: dict, new: dict) -> str:
    names = {"recipe": "the recipe (steps, flags or shared variables)", "env": "the flags "
             "(the recipe's environment after expansion)", "toolchain": "the toolchain",
             "uses": "a tree it reads in place ([uses])", "project": "the project files it "
             "reads", "schema": "askbuild's key format"}
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    out = []
    for k in changed:
        if k == "depends":
            od, nd = old.get(k) or {}, new.get(k) or {}
            deps = sorted(d for d in set(od) | set(nd) if od.get(d) != nd.get(d))
            out.append(f"the key of dependency {', '.join(deps)}")
        else:
            out.append(names.get(k, k))
    return " and ".join(out) + " changed"


class BuildTree:
    """The build tree ``dest`` of one component and its state file ``state_path``."""

    def __init__(self, dest: Path, state_path: Path, fp: dict) -> None:
        self.dest = dest
        self.state_path = state_path
        self.fp = fp
        self.files: dict[str, list] = {}

    def clean_reason(self) -> str | None:
        """Why the tree must be built from scratch, or None when an incremental build is
        safe."""
        state = read_json(self.state_path)
        if not self.dest.is_dir() or state is None:
            return "no previous build tree"
        if state.get("schema") != STATE_SCHEMA or not isinstance(state.get("files"), dict):
            return "the previous build tree's state is unreadable"
        if state.get("status") != "clean":
            return "the previous build did not finish (killed or failed)"
        if state.get("fingerprint") != self.fp:
            return _why_changed(state.get("fingerprint") or {}, self.fp)
        if not _same_files(state.get("artifacts")):
            return ("an artifact of the previous build was removed or changed since "
                    "(the build tree was touched outside askbuild)")
        return None

    def _previous_files(self) -> dict[str, list]:
        state = read_json(self.state_path) or {}
        return state.get("files") or {}

    def mark_dirty(self) -> None:
        """Before the tree is touched: a kill from now on means "rebuild from scratch"."""
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.state_path, {"schema": STATE_SCHEMA, "status": "dirty",
                                            "files": {}})

    def mark_clean(self, artifacts: list[Path]) -> None:
        """After the component succeeded (``artifacts``: its files as it left them): the tree
        can be built on next time."""
        arts = {str(a): [(st := a.stat()).st_size, st.st_mtime_ns] for a in artifacts}
        write_json_atomic(self.state_path, {"schema": STATE_SCHEMA, "status": "clean",
                                            "fingerprint": self.fp, "files": self.files,
                                            "artifacts": arts})

    def update(self, tar_bytes: bytes) -> str:
        """Bring the export ``tar_bytes`` into the tree (the state is dirty from here on).
        Returns what was done, for the log and the done record."""
        reason = self.clean_reason()
        previous = {} if reason else self._previous_files()
        self.mark_dirty()
        with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tf:
            members = tf.getmembers()
            digests = {m.name: _digest(tf, m) for m in members if m.isfile() or m.issym()}
            if reason:
                if self.dest.exists():
                    shutil.rmtree(self.dest)
                self.dest.mkdir(parents=True)
                archive.extract_all(tf, self.dest, members)
                self._remember(digests)
                return f"clean build: {reason}"
            changed = [m for m in members if self._changed(m, digests, previous)]
            deleted = sorted(set(previous) - set(digests))
            self._delete(deleted)
            for m in changed:
                _clear(self.dest / m.name, m)
            archive.extract_all(tf, self.dest, changed)
        for m in changed:
            if not m.isdir():
                os.utime(self.dest / m.name, follow_symlinks=False)
        self._remember(digests)
        files = sum(1 for m in changed if not m.isdir())
        return f"incremental: {files} file(s) changed, {len(deleted)} deleted"

    def _changed(self, m: tarfile.TarInfo, digests: dict, previous: dict) -> bool:
        """Whether member ``m`` must be written: new, other content, or touched on disk since
        the last export."""
        p = self.dest / m.name
        if m.isdir():
            return not p.is_dir() or p.is_symlink()
        old = previous.get(m.name)
        if not isinstance(old, list) or len(old) != 4 or old[0] != digests[m.name]:
            return True
        try:
            st = p.lstat()
        except FileNotFoundError:
            return True
        return [st.st_size, st.st_mtime_ns, st.st_mode] != old[1:]

    def _delete(self, paths: list[str]) -> None:
        """Remove the files no longer exported (and the directories they leave empty)."""
        for rel in paths:
            p = self.dest / rel
            if p.is_symlink() or p.is_file():
                p.unlink()
            parent = p.parent
            while parent != self.dest and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent

    def _remember(self, digests: dict[str, str]) -> None:
        """The exported files as they are on disk now: [digest, size, mtime_ns, mode]."""
        self.files = {}
        for rel, d in digests.items():
            st = (self.dest / rel).lstat()
            self.files[rel] = [d, st.st_size, st.st_mtime_ns, st.st_mode]


def _same_files(arts: object) -> bool:
    """Whether every file of ``arts`` ({path: [size, mtime_ns]}) is still as recorded."""
    if not isinstance(arts, dict):
        return False
    for path, want in arts.items():
        try:
            st = Path(path).stat()
        except OSError:
            return False
        if [st.st_size, st.st_mtime_ns] != want:
            return False
    return True


def _digest(tf: tarfile.TarFile, m: tarfile.TarInfo) -> str:
    """The content of a file member (or a link's target) with its executable bit."""
    h = hashlib.sha256()
    if m.issym():
        h.update(b"link\0" + m.linkname.encode())
    else:
        h.update(b"file\0" + (b"x" if m.mode & 0o111 else b"-"))
        f = tf.extractfile(m)
        if f is not None:
            h.update(f.read())
    return h.hexdigest()


def _clear(p: Path, m: tarfile.TarInfo) -> None:
    """Make room for member ``m`` at ``p``: a file or link replaced, a directory in the way of
    a file removed (a directory member over a directory is kept)."""
    if p.is_symlink() or (p.exists() and not p.is_dir()):
        p.unlink()
    elif p.is_dir() and not m.isdir():
        shutil.rmtree(p)
