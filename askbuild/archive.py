"""Safe extraction of release tarballs.

Three layers: our own member checks (:func:`iter_checked`) run on every member before any
byte of it is written, then :mod:`tarfile`'s PEP 706 ``data`` filter runs as it is extracted,
then the extracted tree is walked and every symbolic link resolved against all the others
(:func:`check_links`), so the result does not depend on the order of the members.
Refused: absolute names, ``..`` components, symbolic or hard links whose target leaves the
tree (also through other links of the archive, earlier or later ones), members written through
a symbolic link (or replacing one, or replaced by one), devices, FIFOs and any other special
member.  Ownership is never restored (the ``data`` filter drops it), so a root-run extraction
gives files owned by the running user.

Extraction goes into a fresh temporary directory beside the destination (a name unique to the
run), which is renamed into place only when everything was extracted and checked; a refused or
failed archive leaves nothing behind.  A full disk is a :class:`~askbuild.errors.NoSpaceError`
(the path and the free space), not a "corrupt archive".

How (issue 9: Python's own extraction was ~3.5x GNU ``tar -x`` on a kernel tree): one
streaming pass with three processes at once.  The decompressor (``xz``/``gzip``/``bzip2 -dc``,
by the archive's magic number; Python's own module when the program is missing) feeds
Python's tar reader, which checks each member as it reaches it (:func:`iter_checked`) and
passes the archive's bytes on to GNU tar (``--no-same-owner``, exact modes, directories' times
restored last) only up to the end of the last member it checked (:class:`_Gate`): GNU tar
never sees a byte of a member before its check, and a refused member stops everything (the
temporary directory with what was extracted so far is removed).  After the last member only
the end-of-archive marker and zero padding may follow: a header Python's reader rejects in the
middle (where it would stop quietly) or a second archive appended is refused, so both readers
have seen the same members.  No decompressed copy is written to disk.  GNU tar itself refuses
``..`` names and makes links whose targets are absolute or hold ``..`` only after every other
member, so no member can be written through them.  Afterwards the tree is walked: a path no
checked member accounts for (a member the two tar readers would see differently) refuses the
archive; modes are made what the ``data`` filter gives (no setuid/setgid/sticky, no
group/other write, owner read+write on files, no execute bits on a file its owner cannot
execute); then :func:`check_links`.  A name GNU tar's ``--strip-components`` would count
differently (``./pkg/x``, ``a//b``) and a host without GNU tar: Python extracts
(:func:`extract_all`), checking each member just before it writes it.
"""

from __future__ import annotations

import bz2
import contextlib
import copy
import gzip
import lzma
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from . import procs
from .download import NO_SPACE, no_space_error, unique_name
from .errors import SourceError, UnsafeInputError

_MAX_LINK_HOPS = 40


def _refuse(what: str, archive: Path, member: str, why: str) -> UnsafeInputError:
    return UnsafeInputError(
        f"source {what}: refusing to extract {archive.name}: member {member!r} {why}",
        fix="the archive is hostile or corrupt; check where it came from (its sha256 is in the "
            "lock) and do not use it",
    )


def _parts(name: str) -> list[str]:
    return [p for p in name.split("/") if p not in ("", ".")]


def _resolve(path: list[str], links: dict[str, str]) -> list[str] | None:
    """Resolve ``path`` (components, relative to the root) through the archive's symlinks.
    Returns the components of the real location, or ``None`` when it leaves the root."""
    hops = 0
    todo = [p for p in path if p not in ("", ".")]
    done: list[str] = []
    while todo:
        part = todo.pop(0)
        if part == "..":
            if not done:
                return None
            done.pop()
            continue
        candidate = "/".join([*done, part])
        target = links.get(candidate)
        if target is None:
            done.append(part)
            continue
        hops += 1
        if hops > _MAX_LINK_HOPS or target.startswith("/"):
            return None
        todo = [p for p in target.split("/") if p not in ("", ".")] + todo
    return done


def _prefixes(parts: list[str]) -> Iterator[str]:
    for i in range(1, len(parts) + 1):
        yield "/".join(parts[:i])


def iter_checked(members: Iterable[tarfile.TarInfo], archive: Path, *, strip_components: int,
                 what: str) -> Iterator[tarfile.TarInfo]:
    """Check members one by one (links are resolved against the links seen so far) and yield
    the copies to extract; raises :class:`UnsafeInputError` at the first offending member.
    Links that only escape together with links that come later are caught afterwards by
    :func:`check_links`."""
    links: dict[str, str] = {}   # stripped symlink name -> target
    seen: set[str] = set()       # every path written so far (members and their parents)
    for m in members:
        name = m.name
        if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
            raise _refuse(what, archive, name, "has an absolute path")
        if "\\" in name or "\0" in name:
            raise _refuse(what, archive, name, "has a backslash or NUL in its name")
        parts = _parts(name)
        if ".." in parts:
            raise _refuse(what, archive, name, "contains '..'")
        if any(p.lower() == ".git" for p in parts):
            raise _refuse(what, archive, name, "is inside a .git directory (it would take over "
                          "the work tree's repository)")
        if m.ischr() or m.isblk():
            raise _refuse(what, archive, name, "is a device node")
        if m.isfifo():
            raise _refuse(what, archive, name, "is a FIFO")
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
            raise _refuse(what, archive, name, f"has an unsupported type {m.type!r}")
        if len(parts) <= strip_components:
            if m.isdir():
                continue
            raise SourceError(
                f"source {what}: {archive.name}: member {name!r} is not inside the "
                f"{strip_components} leading director{'y' if strip_components == 1 else 'ies'} "
                f"that strip_components removes",
                fix="set strip_components for this source in the sources file",
            )
        new_parts = parts[strip_components:]
        new_name = "/".join(new_parts)
        changes: dict = {"name": new_name}
        # Never write through a symbolic link, nor replace one, nor put one over a path that
        # already holds something: extraction writes only plain paths of its own.
        through = next((p for p in _prefixes(new_parts) if p in links), None)
        if through is not None:
            raise _refuse(what, archive, name, f"would be written through the symbolic link "
                          f"{through!r} of the archive")
        if m.issym() and new_name in seen:
            raise _refuse(what, archive, name, "is a symbolic link replacing a path the archive "
                          "already wrote")
        seen.update(_prefixes(new_parts))
        if m.issym():
            target = m.linkname
            if not target or target.startswith("/"):
                raise _refuse(what, archive, name, f"is a symlink to an absolute path {target!r}")
            resolved = _resolve([*new_parts[:-1], *target.split("/")], links)
            if resolved is None:
                raise _refuse(what, archive, name,
                              f"is a symlink to {target!r}, which points outside the tree")
            links[new_name] = target
        elif m.islnk():
            target = m.linkname
            tparts = _parts(target)
            if target.startswith("/") or ".." in tparts:
                raise _refuse(what, archive, name,
                              f"is a hard link to {target!r}, which points outside the tree")
            if len(tparts) <= strip_components:
                raise _refuse(what, archive, name,
                              f"is a hard link to {target!r}, outside the extracted tree")
            stripped = tparts[strip_components:]
            resolved = _resolve(stripped, links)
            if resolved is None:
                raise _refuse(what, archive, name,
                              f"is a hard link to {target!r}, which points outside the tree")
            changes["linkname"] = "/".join(stripped)
        yield _replaced(m, changes)


#: The ``data`` extraction filter arrived in Python 3.11.4 / 3.12; Debian bookworm's 3.11.2
#: lacks it (and ``TarInfo.replace``, ``FilterError``).  There, members are made "data-like"
#: here: owned by whoever extracts, no setuid/setgid/sticky, no group/other write.
HAS_DATA_FILTER = hasattr(tarfile, "data_filter")
FilterError = getattr(tarfile, "FilterError", ())


def _replaced(m: tarfile.TarInfo, changes: dict) -> tarfile.TarInfo:
    new = copy.copy(m)
    for k, v in changes.items():
        setattr(new, k, v)
    return new


def _data_like(m: tarfile.TarInfo) -> tarfile.TarInfo:
    """The ``data`` filter's modes: no setuid/setgid/sticky, no group/other write; a file its
    owner cannot execute loses every execute bit; files are owner read+write."""
    mode = m.mode & 0o755
    if m.isreg():
        if not mode & 0o100:
            mode &= ~0o111
        mode |= 0o600
    return _replaced(m, {"uid": os.geteuid(), "gid": os.getegid(), "uname": "", "gname": "",
                         "mode": mode})


def extract_all(tar: tarfile.TarFile, dest: Path, members) -> None:
    """``tar.extractall(dest, members=...)`` with the ``data`` filter's rules on every Python
    askbuild supports (callers check names and links themselves: :func:`iter_checked`)."""
    if HAS_DATA_FILTER:
        tar.extractall(dest, members=members, filter="data")
    else:
        tar.extractall(dest, members=(_data_like(m) for m in members))


def check_links(root: Path, archive: Path, *, what: str) -> None:
    """Walk the extracted tree ``root`` and resolve every symbolic link in it against all the
    others (the final state, whatever the member order was); raises
    :class:`UnsafeInputError` naming the first link that points outside ``root``."""
    links: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in (*dirnames, *filenames):
            p = Path(dirpath, n)
            if p.is_symlink():
                links[p.relative_to(root).as_posix()] = os.readlink(p)
    for name in sorted(links):
        target = links[name]
        if target.startswith("/") or \
                _resolve([*name.split("/")[:-1], *target.split("/")], links) is None:
            raise _refuse(what, archive, name, f"is a symlink to {target!r}, which (with the "
                          "archive's other links) points outside the tree")


#: Compressions by magic number: the program that decompresses it in a process of its own
#: (so decompressing and checking members take two cores), and Python's module when that
#: program is missing.
_DECOMPRESSORS = ((b"\x1f\x8b", "gzip", gzip.open), (b"BZh", "bzip2", bz2.open),
                  (b"\xfd7zXZ\x00", "xz", lzma.open))


class _NotCanonical(Exception):
    """A member name GNU tar's ``--strip-components`` would count differently."""


def _canonical(name: str) -> bool:
    return all(p not in ("", ".") for p in name.rstrip("/").split("/"))


class _Gate:
    """The archive's bytes on their way from the decompressor to GNU tar: Python's tar reader
    reads them through here, and they are passed on only up to the end of the last member it
    checked (:meth:`allow`), so GNU tar never sees a byte of a member before its check."""

    def __init__(self, src, sink) -> None:
        self._src = src
        self._sink = sink
        self._held: list[bytes] = []   # read by Python, not yet passed on
        self._start = 0                # archive offset of the first held byte
        self._limit = 0                # bytes before this offset may be passed on
        self.eof = False

    def read(self, n: int) -> bytes:
        b = self._src.read(n)
        while b is not None and 0 < len(b) < n:   # a pipe gives what it has
            more = self._src.read(n - len(b))
            if not more:
                break
            b += more
        if not b:
            self.eof = True
            return b""
        self._held.append(b)
        self._pass()
        return b

    def allow(self, upto: int) -> None:
        self._limit = max(self._limit, upto)
        self._pass()

    def _pass(self) -> None:
        held = self._held
        while held and self._start < self._limit:
            chunk = held[0]
            k = min(len(chunk), self._limit - self._start)
            if k < len(chunk):
                self._sink.write(chunk[:k])
                held[0] = chunk[k:]
            else:
                self._sink.write(chunk)
                held.pop(0)
            self._start += k

    def finish(self, end: int) -> int | None:
        """Pass on the rest of the archive after ``end`` (where Python's reader stopped) when
        it is the end-of-archive marker and zero padding; else return the offset of the first
        byte that is not zero (and pass nothing more on)."""
        self.allow(end)
        pos = self._start
        while True:
            if not self._held and not self.read(1 << 16):
                return None
            for chunk in self._held:
                nonzero = chunk.strip(b"\0")
                if nonzero:
                    return pos + chunk.index(nonzero[:1])
                pos += len(chunk)
            self.allow(pos)


def _decompressed(archive: Path, stack: contextlib.ExitStack) -> tuple[object, object]:
    """A readable stream of the plain tar in ``archive`` and the decompressing process (None
    when Python decompresses, or the archive is not compressed)."""
    raw = stack.enter_context(open(archive, "rb", buffering=0))
    magic = os.pread(raw.fileno(), 6, 0)
    found = next(((prog, opener) for m, prog, opener in _DECOMPRESSORS
                  if magic.startswith(m)), None)
    if found is None:
        return raw, None
    prog, opener = found
    if shutil.which(prog) is None:
        return stack.enter_context(opener(raw, "rb")), None
    errfile = stack.enter_context(tempfile.TemporaryFile())
    proc = procs.popen([prog, "-dc"], stdin=raw, stdout=subprocess.PIPE, bufsize=0,
                       stderr=errfile)
    proc.errfile = errfile
    return proc.stdout, proc


def _stderr(proc) -> str:
    proc.errfile.seek(0)
    return proc.errfile.read().decode(errors="replace").strip()


def _child_error(proc, prog: str) -> str:
    """The reason ``proc`` gave on its standard error (a temporary file): its last line but
    GNU tar's closing "Exiting with failure status", else its exit status."""
    lines = [ln for ln in _stderr(proc).splitlines() if "Exiting with failure status" not in ln]
    line = lines[-1] if lines else f"exit status {proc.returncode}"
    argv0 = f"{proc.args[0]}:"
    if line.startswith(argv0):
        line = f"{prog}:{line[len(argv0):]}"
    return line if line.startswith(f"{prog}:") else f"{prog}: {line}"


def _failed(unpack, gate: _Gate) -> bool:
    """Whether the decompressor failed (it has ended when its output did)."""
    if unpack is None:
        return False
    if gate.eof:
        with contextlib.suppress(subprocess.TimeoutExpired):
            unpack.wait(timeout=10)
    return unpack.poll() not in (None, 0)


def _unpack_error(proc, archive: Path, what: str) -> SourceError:
    return SourceError(f"source {what}: cannot extract {archive.name}: "
                       f"{_child_error(proc, proc.args[0])}",
                       fix="the file is corrupt or not a compressed tar archive")


def _stream_extract(tar: str, archive: Path, tmp: Path, *, strip_components: int,
                    what: str) -> set[str]:
    """Decompress ``archive`` (its own process), check each member as Python's tar reader
    reaches it and pass its bytes on to GNU tar extracting into ``tmp`` (:class:`_Gate`).
    Returns the paths extraction may create (the members' stripped names and their parents);
    raises :class:`_NotCanonical` when a name is ``./pkg/x`` or ``a//b`` (``tmp`` then holds
    a partial extraction)."""
    names: set[str] = set()
    with contextlib.ExitStack() as stack:
        src, unpack = _decompressed(archive, stack)
        tar_err = stack.enter_context(tempfile.TemporaryFile())
        untar = procs.popen([tar, "-x", "-f", "-", "-C", str(tmp),
                             f"--strip-components={strip_components}", "--no-same-owner",
                             "--same-permissions", "--delay-directory-restore", "--no-acls",
                             "--no-selinux", "--no-xattrs"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=tar_err,
                            env={**os.environ, "LC_ALL": "C"})
        untar.errfile = tar_err
        children = [p for p in (unpack, untar) if p is not None]
        try:
            gate = _Gate(src, untar.stdin)
            try:
                with tarfile.open(fileobj=gate, mode="r|") as tf:
                    def members() -> Iterator[tarfile.TarInfo]:
                        for m in tf:
                            if not _canonical(m.name):
                                raise _NotCanonical(m.name)
                            yield m
                            # (the reader keeps every member it read, for a random access
                            # this stream never makes: 83k of them were 40 MB for the
                            # kernel; it reads on once its list is shorter than its count)
                            tf.members.clear()
                    for m in iter_checked(members(), archive,
                                          strip_components=strip_components, what=what):
                        names.update(_prefixes(_parts(m.name)))
                        gate.allow(tf.offset)   # this member, its header and its data
                    bad = gate.finish(tf.offset)
                if bad is not None:
                    raise SourceError(
                        f"source {what}: cannot extract {archive.name}: byte {bad} of the tar "
                        "is neither a member header Python's tar reader accepts nor the end of "
                        "the archive (a corrupt header, or data after the end)",
                        fix="the file is corrupt or not a tar archive")
            except BrokenPipeError:
                pass                                # tar stopped reading: its status says why
            except BaseException:
                if _failed(unpack, gate):
                    raise _unpack_error(unpack, archive, what) from None
                raise
            with contextlib.suppress(BrokenPipeError):
                untar.stdin.close()
            if untar.wait() != 0:
                if _failed(unpack, gate):
                    raise _unpack_error(unpack, archive, what)
                err = _stderr(untar)
                if "No space left on device" in err or "Disk quota exceeded" in err:
                    raise OSError(NO_SPACE[0], "No space left on device", str(tmp))
                raise SourceError(f"source {what}: cannot extract {archive.name}: "
                                  f"{_child_error(untar, 'tar')}",
                                  fix="the file is corrupt or not a tar archive")
            if unpack is not None:
                while src.read(1 << 16):            # to its end: the decompressor checks it
                    pass
                if unpack.wait() != 0:
                    raise _unpack_error(unpack, archive, what)
        finally:
            for p in children:
                procs.stop(p)
    return names


def _gnu_tar() -> str | None:
    tar = shutil.which("tar")
    if tar is None:
        return None
    proc = procs.run([tar, "--version"], capture_output=True, text=True)
    return tar if proc.returncode == 0 and "GNU tar" in proc.stdout else None


def _data_mode(st: os.stat_result) -> int | None:
    """The mode the ``data`` filter gives (None: leave it)."""
    mode = stat.S_IMODE(st.st_mode) & 0o755
    if stat.S_ISREG(st.st_mode):
        if not mode & 0o100:
            mode &= ~0o111
        return mode | 0o600
    return mode if stat.S_ISDIR(st.st_mode) else None


def _settle(tmp: Path, names: set[str], archive: Path, *, what: str) -> None:
    """Walk what GNU tar wrote: refuse a path no checked member accounts for; make modes
    those of the ``data`` filter."""
    for dirpath, dirnames, filenames in os.walk(tmp):
        rel = os.path.relpath(dirpath, tmp)
        for n in (*dirnames, *filenames):
            name = n if rel == "." else f"{rel}/{n}"
            if name not in names:
                raise _refuse(what, archive, name, "was extracted by tar but is not a member "
                              "Python's tar reader checked (a malformed or ambiguous header)")
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            mode = _data_mode(st)
            if mode is not None and mode != stat.S_IMODE(st.st_mode):
                os.chmod(p, mode)


def _extract(archive: Path, tmp: Path, *, strip_components: int, what: str) -> None:
    tar = _gnu_tar()
    if tar is not None:
        try:
            names = _stream_extract(tar, archive, tmp, strip_components=strip_components,
                                    what=what)
        except _NotCanonical:
            shutil.rmtree(tmp)
            tmp.mkdir()
        else:
            _settle(tmp, names, archive, what=what)
            return
    # One streaming pass: each member is checked just before Python extracts it.
    with tarfile.open(archive, mode="r|*") as tf:
        extract_all(tf, tmp, iter_checked(
            tf, archive, strip_components=strip_components, what=what))


def safe_extract(archive: Path, dest: Path, *, strip_components: int = 1, what: str) -> Path:
    """Extract ``archive`` (tar, optionally gz/bz2/xz) into the new directory ``dest``.

    ``dest`` must not exist; it appears only when the whole archive was extracted and checked.
    """
    if dest.exists():
        raise SourceError(f"source {what}: {dest} already exists; refusing to extract over it")
    tmp = dest.parent / unique_name(f".{dest.name}.extract-")
    try:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            _extract(archive, tmp, strip_components=strip_components, what=what)
        except FilterError as e:
            raise _refuse(what, archive, getattr(e, "tarinfo", None) and e.tarinfo.name or "?",
                          f"was refused by the tarfile data filter ({e})") from e
        except OSError as e:
            if e.errno in NO_SPACE:
                raise no_space_error(what, f"extract {archive.name}", dest.parent) from e
            raise SourceError(f"source {what}: cannot extract {archive.name}: {e}",
                              fix="the file is corrupt or not a tar archive") from e
        except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error) as e:
            raise SourceError(f"source {what}: cannot extract {archive.name}: {e}",
                              fix="the file is corrupt or not a tar archive") from e
        check_links(tmp, archive, what=what)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
