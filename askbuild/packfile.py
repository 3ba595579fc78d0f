"""Git pack files written by askbuild: the pack format (version 2) and its index (``.idx``
version 2, with the 64-bit offset table past 2 GiB).

Two writers use it: the tarball check-in (:mod:`askbuild.checkin`: every new blob of an
imported tree deflated into one pack) and the rebase dry run's tree replay
(:mod:`askbuild.treereplay`: the commits it makes, one pack at the end instead of a loose
file each).  A pack is written under a temporary name, its trailer (the SHA-1 of everything
before it) appended, then renamed into place, and its ``.idx`` after it (git looks for the
``.idx``): a reader never sees half a pack.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path

from .fsutil import write_bytes_atomic

#: pack entry types
COMMIT, TREE, BLOB = 1, 2, 3
_CHUNK = 1 << 20


def entry_header(size: int, kind: int = BLOB) -> bytes:
    """A pack entry's type and size header."""
    b = (kind << 4) | (size & 0x0F)
    size >>= 4
    out = bytearray()
    while size:
        out.append(b | 0x80)
        b = size & 0x7F
        size >>= 7
    out.append(b)
    return bytes(out)


def entry(kind: int, data: bytes, level: int = 1) -> bytes:
    """The pack entry of an object of ``kind`` holding ``data`` (deflated at ``level``)."""
    return entry_header(len(data), kind) + zlib.compress(data, level)


def stored_ids(git_dir: Path) -> set[bytes]:
    """The object ids in the repository's pack files (read from their ``.idx``)."""
    known: set[bytes] = set()
    for idx in (git_dir / "objects" / "pack").glob("pack-*.idx"):
        data = idx.read_bytes()
        if data[:8] != b"\377tOc\0\0\0\2":
            continue
        n = struct.unpack(">I", data[8 + 255 * 4:8 + 256 * 4])[0]
        base = 8 + 256 * 4
        known.update(data[base + 20 * i:base + 20 * (i + 1)] for i in range(n))
    return known


class PackWriter:
    """One pack file and its index, written under temporary names and renamed into place."""

    def __init__(self, pack_dir: Path):
        self.dir = pack_dir
        self.tmp = pack_dir / f"tmp_pack_askbuild_{os.getpid()}"
        self.f = open(self.tmp, "wb")
        self.f.write(b"PACK" + struct.pack(">II", 2, 0))      # count patched in at the end
        self.entries: list[tuple[bytes, int, int]] = []          # (id, offset, crc32)
        self.offset = 12
        self._start = self._crc = 0             # (the entry begin() started)

    def add(self, sha: bytes, entry: bytes) -> None:
        """Add the object ``sha`` as its pack ``entry`` (:func:`entry`)."""
        self.entries.append((sha, self.offset, zlib.crc32(entry)))
        self.f.write(entry)
        self.offset += len(entry)

    def begin(self, size: int, kind: int = BLOB) -> None:
        """Start an entry of ``size`` bytes of data written a piece at a time: its header
        now, the deflated data with :meth:`extend`, then :meth:`end`."""
        self._start, self._crc = self.offset, 0
        self.extend(entry_header(size, kind))

    def extend(self, data: bytes) -> None:
        """Write the next piece of the entry :meth:`begin` started."""
        self.f.write(data)
        self.offset += len(data)
        self._crc = zlib.crc32(data, self._crc)

    def end(self, sha: bytes) -> None:
        """End the entry :meth:`begin` started: it is the object ``sha``."""
        self.entries.append((sha, self._start, self._crc))

    def finish(self, *, durable: bool = True) -> list[Path]:
        """Close the pack; returns the files written (none when nothing was added).
        ``durable``: the pack is synced to disk before it is renamed into place (not needed
        in a repository thrown away after the run)."""
        self.f.seek(8)
        self.f.write(struct.pack(">I", len(self.entries)))
        self.f.close()
        if not self.entries:
            self.tmp.unlink()
            return []
        h = hashlib.sha1()
        with open(self.tmp, "rb") as f:
            for c in iter(lambda: f.read(_CHUNK), b""):
                h.update(c)
        trailer = h.digest()
        with open(self.tmp, "ab") as f:
            f.write(trailer)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        pack = self.dir / f"pack-{trailer.hex()}.pack"
        os.chmod(self.tmp, 0o444)
        os.rename(self.tmp, pack)
        idx = pack.with_suffix(".idx")              # (after its pack: git looks for the .idx)
        try:
            write_bytes_atomic(idx, self.index(trailer), durable=durable)
            os.chmod(idx, 0o444)
        except BaseException:
            pack.unlink(missing_ok=True)
            raise
        return [pack, idx]

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)

    def index(self, trailer: bytes) -> bytes:
        """The ``.idx`` (version 2) of the entries added, for the pack whose SHA-1 is
        ``trailer``."""
        entries = sorted(self.entries)
        fanout = [0] * 256
        for sha, _, _ in entries:
            fanout[sha[0]] += 1
        total, cum = 0, []
        for n in fanout:
            total += n
            cum.append(total)
        large: list[int] = []
        offsets = []
        for _, off, _ in entries:
            if off < 0x80000000:
                offsets.append(off)
            else:
                offsets.append(0x80000000 | len(large))
                large.append(off)
        body = b"".join([
            b"\377tOc", struct.pack(">I", 2), struct.pack(">256I", *cum),
            b"".join(sha for sha, _, _ in entries),
            struct.pack(f">{len(entries)}I", *(crc for _, _, crc in entries)),
            struct.pack(f">{len(entries)}I", *offsets),
            struct.pack(f">{len(large)}Q", *large), trailer])
        return body + hashlib.sha1(body).digest()
