"""Check an extracted tree into its new git repository as ``git add -A -f`` would, faster.

Issue 9 (cold kernel import): ``git add`` of a 1.24 GB, 83k-file kernel tree took 35-50 s of
one core (its collision-detecting SHA-1, deflate, and one file at a time).  Here Python does
the same work on every core: each file's blob id (``hashlib``'s SHA-1 of ``blob <size>\\0``
and the bytes, the id git gives the same bytes), each blob not yet stored deflated at level 1
into ONE pack file with its ``.idx`` (:mod:`askbuild.packfile`; pack format 2, what the bulk
check-in wrote before), and the index written with every file's stat data, so git sees the
work tree as clean without reading a file again.  ``git commit`` then makes the trees and the
commit from that index exactly as after ``git add``: the same tree, the same commit id (the
trees it makes are in the pack already, built here the same way: it writes the commit alone).

Only what ``git add`` would do to the bytes untouched takes this path.  :func:`check_in`
returns None, having written nothing, and the caller runs ``git add``, when the tree holds:

* a ``.gitattributes`` that may convert content (``text``, ``eol``, ``crlf``, ``ident``,
  ``filter``, ``working-tree-encoding``, or a macro: any ``[attr]`` line);
* a name git treats specially or may refuse (another ``.git``, ``git~1``, a backslash, a
  ``.gitmodules`` symlink), or a file that is neither regular nor a symlink;
* a repository that does not record executable bits or symlinks as such
  (``core.fileMode``/``core.symlinks`` false);
* a file that changed while it was read.

Every index entry is a file just read; git must then find every file tracked and none
changed (``ls-files --others``, ``diff-files``: :func:`askbuild.tarimport.commit_tree`
checks, and falls back to ``git add`` when it does not).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from . import packfile
from .fsutil import write_bytes_atomic

#: Attributes (and macro definitions) that make ``git add`` store other bytes than the file's.
_CONVERTS = re.compile(rb"\b(?:text|eol|crlf|ident|filter|working-tree-encoding)\b|\[attr\]")
_CHUNK = 1 << 20
#: Files up to this size are read whole; bigger ones a chunk at a time, twice when new (each
#: worker holds one whole file: at 64 MB, the kernel's 10 headers of 8-24 MB made the
#: check-in's peak RSS 113-126 MB, at 8 MB it is 93 MB, in the same time)
_WHOLE = 8 << 20
#: Files hashed and deflated per batch (bounds the memory of deflated blobs in flight).
_BATCH = 1024
_LEVEL = 1                          # what ``core.compression=1`` gave the bulk check-in


class _Refuse(Exception):
    """The tree holds something only ``git add`` answers."""


def _special(name: bytes, is_link: bool) -> bool:
    """Names ``git add`` treats specially or may refuse (its ``verify_path``), conservatively."""
    low = name.lower()
    return (b"\\" in name or low.startswith(b"git~")
            or (low.startswith(b".git") and low[4:5] in (b"", b".", b" ", b":"))
            or (is_link and low.startswith(b".gitmodules")))


class _File(NamedTuple):
    """A file or symlink to check in, in little memory (83k of them for the kernel: an
    ``os.stat_result`` each took 0.64 kB, 50 MB of the check-in's 156 MB peak)."""
    path: bytes                 # relative to the tree
    link: bool
    size: int
    stat: bytes                 # its index entry's stat fields, packed (:func:`_stat_fields`)


_M32 = 0xFFFFFFFF


def _stat_fields(st: os.stat_result) -> bytes:
    """The stat part of an index entry (ctime, mtime, dev, ino, mode, uid, gid, size), as
    git writes it: 32-bit big-endian fields."""
    ct, mt = st.st_ctime_ns, st.st_mtime_ns
    return struct.pack(">10I", (ct // 10**9) & _M32, ct % 10**9, (mt // 10**9) & _M32,
                       mt % 10**9, st.st_dev & _M32, st.st_ino & _M32, _git_mode(st),
                       st.st_uid & _M32, st.st_gid & _M32, st.st_size & _M32)


def _walk(top: bytes) -> Iterator[_File]:
    """Every file and symlink under ``top`` (paths relative to it), without the top ``.git``."""
    stack = [b""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(top, rel) if rel else top) as it:
            for e in it:
                if not rel and e.name == b".git":
                    continue
                path = rel + b"/" + e.name if rel else e.name
                st = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    if _special(e.name, False):
                        raise _Refuse
                    stack.append(path)
                elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                    if _special(e.name, stat.S_ISLNK(st.st_mode)):
                        raise _Refuse
                    if e.name == b".gitattributes" and stat.S_ISREG(st.st_mode):
                        with open(e.path, "rb") as f:
                            if _CONVERTS.search(f.read()):
                                raise _Refuse
                    yield _File(path, stat.S_ISLNK(st.st_mode), st.st_size, _stat_fields(st))
                else:
                    raise _Refuse


def _git_mode(st: os.stat_result) -> int:
    if stat.S_ISLNK(st.st_mode):
        return 0o120000
    return 0o100755 if st.st_mode & stat.S_IXUSR else 0o100644


def _blob(top: bytes, file: _File, known: set[bytes]) -> tuple[bytes, bytes | None]:
    """(blob id, its pack entry: header and deflated bytes, or None when already stored) of a
    symlink or a file of up to :data:`_WHOLE` bytes."""
    full = os.path.join(top, file.path)
    if file.link:
        return _entry(os.readlink(full), known)
    with open(full, "rb") as f:
        data = f.read()
    if len(data) != file.size:
        raise _Refuse                           # changed since the walk: let git add answer
    return _entry(data, known)


def _chunks(f) -> Iterator[bytes]:
    return iter(lambda: f.read(_CHUNK), b"")


def _entry(data: bytes, known: set[bytes]) -> tuple[bytes, bytes | None]:
    h = hashlib.sha1(b"blob %d\0" % len(data))
    h.update(data)
    sha = h.digest()
    if sha in known:
        return sha, None
    return sha, packfile.entry(packfile.BLOB, data, _LEVEL)


def _add_big(writer: packfile.PackWriter, full: bytes, size: int, known: set[bytes]) -> bytes:
    """A file bigger than :data:`_WHOLE`, a chunk at a time: hashed, then (when its blob is
    new) deflated straight into the pack and hashed again (it must not have changed)."""
    h = hashlib.sha1(b"blob %d\0" % size)
    with open(full, "rb") as f:
        got = 0
        for c in _chunks(f):
            h.update(c)
            got += len(c)
        sha = h.digest()
        if got != size:
            raise _Refuse
        if sha in known:
            return sha
        f.seek(0)
        z, again = zlib.compressobj(_LEVEL), hashlib.sha1(b"blob %d\0" % size)
        writer.begin(size)
        for c in _chunks(f):
            again.update(c)
            writer.extend(z.compress(c))
        writer.extend(z.flush())
    if again.digest() != sha:
        raise _Refuse                           # changed between the two reads
    writer.end(sha)
    return sha


def _index_file(files: list[_File], ids: list[bytes]) -> bytearray:
    """A version 2 git index of ``files`` (sorted as git sorts them) with their blob ids,
    built in one buffer."""
    out = bytearray(b"DIRC")
    out += struct.pack(">II", 2, len(files))
    for f, sha in zip(files, ids, strict=True):
        out += f.stat
        out += sha
        out += struct.pack(">H", min(len(f.path), 0xFFF))
        out += f.path
        out += b"\0" * (8 - (62 + len(f.path)) % 8)
    out += hashlib.sha1(out).digest()
    return out


def _trees(files: list[_File], ids: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The tree objects ``git commit`` makes of an index holding ``files`` (their blob ids
    ``ids``): ``(id, content)``, each directory's tree after those of its subdirectories,
    the root's last.  A tree lists its entries as ``<octal mode> <name>\\0<id>``, ordered by
    name with a directory's name compared as if it ended in ``/`` (git's
    ``base_name_compare``); a directory is mode ``40000``."""
    root: dict[bytes, object] = {}
    for f, sha in zip(files, ids, strict=True):
        *dirs, name = f.path.split(b"/")
        node = root
        for d in dirs:
            node = node.setdefault(d, {})       # type: ignore[assignment]
        node[name] = (struct.unpack_from(">I", f.stat, 24)[0], sha)
    out: list[tuple[bytes, bytes]] = []

    def build(node: dict) -> bytes:
        entries = []
        for name, v in node.items():
            if isinstance(v, dict):
                entries.append((name + b"/", b"40000 %s\0%s" % (name, build(v))))
            else:
                entries.append((name, b"%o %s\0%s" % (v[0], name, v[1])))
        entries.sort()
        body = b"".join(e for _, e in entries)
        sha = hashlib.sha1(b"tree %d\0%s" % (len(body), body)).digest()
        out.append((sha, body))
        return sha
    build(root)
    return out


def check_in(tree: Path, *, workers: int | None = None) -> list[Path] | None:
    """Give the new repository at ``tree/.git`` every file of ``tree`` as ``git add -A -f``
    would: the blobs not yet in its packs into one new pack, and the index.  The pack also
    gets the trees ``git commit`` will make of that index (:func:`_trees`), which it then
    finds stored: it writes the commit alone, not one loose file per directory (5k on the
    kernel: 0.5 s, and up to 4 s when the file system is slow to hand out inodes, after
    big deletions).  Returns the pack files written (none when every object was stored);
    None, with nothing written, when only ``git add`` can (see the module)."""
    top = os.fsencode(tree)
    git_dir = tree / ".git"
    config = (git_dir / "config").read_text(errors="replace").lower()
    if re.search(r"^\s*(?:filemode|symlinks)\s*=\s*false", config, re.M):
        return None
    try:
        files = sorted(_walk(top))                  # (by path: no two have the same)
    except _Refuse:
        return None
    known = packfile.stored_ids(git_dir)
    writer = packfile.PackWriter(git_dir / "objects" / "pack")
    written: list[Path] = []
    try:
        ids: list[bytes] = []
        workers = workers or os.cpu_count() or 1
        with ThreadPoolExecutor(workers) as pool:
            for i in range(0, len(files), _BATCH):
                batch = files[i:i + _BATCH]
                small = [f for f in batch if f.link or f.size <= _WHOLE]
                n = -(-len(small) // workers)           # one task per worker and batch
                parts = pool.map(lambda part: [_blob(top, f, known) for f in part],
                                 [small[k:k + n] for k in range(0, len(small), n)])
                done = dict(zip((f.path for f in small), (r for part in parts for r in part),
                                strict=True))
                for f in batch:
                    if f.path not in done:
                        ids.append(_add_big(writer, os.path.join(top, f.path), f.size, known))
                        known.add(ids[-1])
                        continue
                    sha, entry = done[f.path]
                    ids.append(sha)
                    if entry is not None and sha not in known:
                        known.add(sha)
                        writer.add(sha, entry)
        for sha, body in _trees(files, ids):
            if sha not in known:
                known.add(sha)
                writer.add(sha, packfile.entry(packfile.TREE, body, _LEVEL))
        written = writer.finish()
        write_bytes_atomic(git_dir / "index", _index_file(files, ids))
    except BaseException as e:
        writer.abort()
        for p in written:
            p.unlink(missing_ok=True)
        if isinstance(e, _Refuse):
            return None
        raise
    return written
