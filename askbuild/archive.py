"""Safe extraction of release tarballs.

Three layers: our own member checks (:func:`iter_checked`) run on every member before it is
written, then :mod:`tarfile`'s PEP 706 ``data`` filter runs as it is extracted, then the
extracted tree is walked and every symbolic link resolved against all the others
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

How (issue 9: Python's own extraction was ~3.5x GNU ``tar -x`` on a kernel tree): a compressed
archive is decompressed once, by Python, into a temporary plain tar beside the destination;
*every* member of it is checked first (:func:`iter_checked`, reading headers only), and only
then does GNU tar extract it (``--no-same-owner``, exact modes, directories' times restored
last).  GNU tar itself refuses ``..`` names and makes links whose targets are absolute or hold
``..`` only after every other member, so no member can be written through them.  Afterwards
the tree is walked: a path no checked member accounts for (a member the two tar readers would
see differently) refuses the archive; modes are made what the ``data`` filter gives (no
setuid/setgid/sticky, no group/other write, owner read+write on files, no execute bits on a
file its owner cannot execute); then :func:`check_links`.  Without GNU tar, Python extracts
(:func:`extract_all`).
"""

from __future__ import annotations

import bz2
import copy
import gzip
import lzma
import os
import shutil
import stat
import tarfile
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


_OPENERS = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ\x00", lzma.open))


def _plain_tar(archive: Path, scratch: Path) -> Path:
    """``archive`` itself when it is an uncompressed tar, else ``scratch``: the archive
    decompressed (gzip, bzip2 or xz, by their magic numbers; Python's own decompressors)."""
    with open(archive, "rb") as f:
        magic = f.read(6)
    opener = next((o for m, o in _OPENERS if magic.startswith(m)), None)
    if opener is None:
        return archive
    with opener(archive, "rb") as src, open(scratch, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    return scratch


def _checked_names(plain: Path, archive: Path, *, strip_components: int,
                   what: str) -> set[str] | None:
    """Check every member of the plain tar ``plain`` (:func:`iter_checked`; headers only) and
    return the paths extraction may create: the members' stripped names and their parents.
    None when a name is not canonical (``./pkg/x``, ``a//b``): GNU tar's
    ``--strip-components`` counts the ``.`` that the checks ignore, so Python extracts it."""
    names: set[str] = set()
    canonical = True
    with tarfile.open(plain, mode="r:") as tar:
        for m in tar:
            canonical = canonical and all(p not in ("", ".")
                                          for p in m.name.rstrip("/").split("/"))
        for m in iter_checked(tar.getmembers(), archive, strip_components=strip_components,
                              what=what):
            names.update(_prefixes(_parts(m.name)))
    return names if canonical else None


def _gnu_tar() -> str | None:
    tar = shutil.which("tar")
    if tar is None:
        return None
    proc = procs.run([tar, "--version"], capture_output=True, text=True)
    return tar if proc.returncode == 0 and "GNU tar" in proc.stdout else None


def _tar_extract(tar: str, plain: Path, tmp: Path, archive: Path, *, strip_components: int,
                 what: str) -> None:
    """GNU tar extracts the checked plain tar into ``tmp``."""
    proc = procs.run([tar, "-x", "-f", str(plain), "-C", str(tmp),
                      f"--strip-components={strip_components}", "--no-same-owner",
                      "--same-permissions", "--delay-directory-restore", "--no-acls",
                      "--no-selinux", "--no-xattrs"],
                     capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
    if proc.returncode != 0:
        err = proc.stderr.strip()
        if "No space left on device" in err or "Disk quota exceeded" in err:
            raise OSError(NO_SPACE[0], "No space left on device", str(tmp))
        raise SourceError(f"source {what}: cannot extract {archive.name}: tar: "
                          f"{err.splitlines()[-1] if err else f'exit status {proc.returncode}'}",
                          fix="the file is corrupt or not a tar archive")


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
    if tar is None:
        # One streaming pass: each member is checked just before Python extracts it.
        with tarfile.open(archive, mode="r|*") as tf:
            extract_all(tf, tmp, iter_checked(
                tf, archive, strip_components=strip_components, what=what))
        return
    scratch = tmp.parent / unique_name(f".{tmp.name}.tar-")
    try:
        plain = _plain_tar(archive, scratch)
        names = _checked_names(plain, archive, strip_components=strip_components, what=what)
        if names is None:
            with tarfile.open(plain, mode="r:") as tf:
                extract_all(tf, tmp, iter_checked(
                    tf.getmembers(), archive, strip_components=strip_components, what=what))
            return
        _tar_extract(tar, plain, tmp, archive, strip_components=strip_components, what=what)
    finally:
        scratch.unlink(missing_ok=True)
    _settle(tmp, names, archive, what=what)


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
