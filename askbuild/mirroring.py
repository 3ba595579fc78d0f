"""``inv mirror --output DIR``: the locked sources of a profile as a mirror for a fleet.

``DIR`` is laid out by URL, as ``inv rehearse --mirrors`` reads it: ``https://HOST/PATH`` (and
``http://``, ``git://``, ``ssh://[user@]HOST/PATH``, scp-like ``user@HOST:PATH``) is written to
``DIR/HOST/PATH``; ``file:///PATH`` to ``DIR/file/PATH``.

* git sources: ``DIR/HOST/PATH`` is a bare repository holding each locked commit with its
  **whole history** (kept by ``refs/askbuild/keep/<sha>``) and the source's ref as a tag
  pointing at the locked commit, plus ``git update-server-info``: any static HTTP server can
  serve it ("dumb" HTTP, which cannot serve shallow history), as can a file share.  The commit
  comes from the shared cache (no network when the cache holds it; else it is fetched first,
  :func:`askbuild.fetching.fetch_commit`); history the cache lacks (a shallow cache) is
  fetched from upstream (mirrors honoured).
* tarball sources: ``DIR/HOST/PATH`` is the file, verified against the lock (sha256 and size)
  on the way in and after the copy (:func:`askbuild.fetching.fetch_tarball` first).

Unlocked sources are refused (a mirror is what the lock says, nothing else).  Each entry is
written under a temporary name and renamed into place when complete; an existing git entry is
updated in place by ``git fetch`` (objects first, refs last: a reader never sees a ref to a
missing object).  Leftovers of a killed run are removed by the next one.  Re-running is
idempotent; ``DIR/askbuild-mirror.json`` lists what the mirror holds (merged over runs), and
the printed ``ASKBUILD_MIRRORS`` line, one prefix per scheme and host, covers all of it.

A fleet runner with that line needs no other network: ``inv fetch --locked`` contacts only the
mirror, and then every verb works with ``--offline`` (docs/mirror.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from . import console, fetching, gitutil, runlock
from .download import unique_name
from .errors import (
    ConfigError,
    OfflineError,
    SourceError,
    UnlockedSourceError,
    VerificationError,
)
from .fsutil import read_json, sha256_file, write_json_atomic
from .gitutil import GitError, is_abbrev, is_sha
from .refs import KEEP_PREFIX
from .settings import Settings, absolute, check_dir_path
from .sources import Source, load_sources, select
from .urls import _SCP_LIKE, scheme_of

INDEX = "askbuild-mirror.json"
LOCK = ".askbuild-mirror.lock"
SCHEMA = 1
#: A leftover of a killed run: ``.<entry>.tmp-<pid>-<random>`` next to the entry.
_LEFTOVER = re.compile(r"\..+\.tmp-[0-9]+-[0-9a-f]+")
_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9._~+@:=,-]+")


@dataclass(frozen=True)
class Place:
    """Where a URL lives in a mirror: ``prefix`` (scheme and host, as the URL spells them),
    ``root`` (the host's directory below DIR) and ``path`` below it (``/``-separated)."""

    prefix: str
    root: str
    path: str

    @property
    def rel(self) -> str:
        return f"{self.root}/{self.path}"


def place(url: str, what: str) -> Place:
    """The mirror place of ``url`` (:class:`ConfigError` naming ``what`` when the URL cannot
    be laid out: no host or path, or a path segment that could leave the mirror)."""
    if _SCP_LIKE.match(url):
        user_host, _, path = url.partition(":")
        prefix, root = f"{user_host}:", user_host.rpartition("@")[2]
    else:
        scheme = scheme_of(url)
        parts = urlsplit(url)
        if scheme == "file":
            prefix, root, path = "file:///", "file", parts.path
        else:
            host = parts.hostname or ""
            netloc = parts.netloc
            prefix = f"{url[:url.index('://') + 3]}{netloc}/"
            root = host + (f":{parts.port}" if parts.port else "")
            path = url[len(prefix):] if url.startswith(prefix) else ""
    segments = path.strip("/").split("/")
    bad = not root or not _SAFE_SEGMENT.fullmatch(root) or not path.strip("/") or any(
        s in ("", ".", "..") or not _SAFE_SEGMENT.fullmatch(s) for s in segments)
    if bad:
        raise ConfigError(f"{what}: URL {url!r} cannot be laid out in a mirror (it needs a "
                          "host and a path of plain names: letters, digits, ._~+@:=,-)",
                          fix="mirror the other sources with --source, and serve this one "
                              "yourself (ASKBUILD_MIRRORS)")
    return Place(prefix, root, "/".join(segments))


# -- the output directory --------------------------------------------------------------------

def _inside(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


def check_output(settings: Settings, output: str | os.PathLike | None) -> Path:
    """The mirror directory: absolute, a directory (or creatable), outside the work dir, the
    cache and the project, no whitespace (the ``ASKBUILD_MIRRORS`` line is space-separated)."""
    if not output:
        raise ConfigError("--output: a directory to write the mirror into is required",
                          fix=f"`{settings.command('mirror', '--output', '/srv/askbuild-mirror')}`")
    out = absolute(output)
    check_dir_path(out, "--output")
    for name, place_ in (("work directory", settings.work_dir), ("cache", settings.cache_dir),
                         ("project", settings.project_root)):
        if _inside(out.resolve(), place_.resolve()):
            raise ConfigError(f"--output: {out} is inside the {name} {place_}: a mirror is "
                              "served to other machines and must live on its own",
                              fix="name a directory outside it, e.g. /srv/askbuild-mirror")
    if any(c.isspace() for c in str(out)):
        raise ConfigError(f"--output: {str(out)!r} contains whitespace, which the "
                          "space-separated ASKBUILD_MIRRORS line cannot hold",
                          fix="name a directory without spaces")
    return out


@contextlib.contextmanager
def _mirror_lock(out: Path) -> Iterator[None]:
    """One writer per mirror directory (a ``flock``: dropped when the process dies)."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            console.info(f"waiting for another `inv mirror` writing {out} ...")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _clean_leftovers(directory: Path) -> None:
    """Remove the temporary entries a killed run left in ``directory`` (mirror lock held)."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for p in directory.iterdir():
            if _LEFTOVER.fullmatch(p.name):
                console.info(f"removing {p} (left by an interrupted `inv mirror`)")
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)


# -- git entries -------------------------------------------------------------------------------

def _git(repo: Path, args: list[str], source: Source, url: str, **kw):
    try:
        return gitutil.git(["-c", "transfer.unpackLimit=1", *args], cwd=repo, **kw)
    except GitError as e:
        detail = "; ".join(e.stderr.strip().splitlines()[-2:]) or f"exit status {e.returncode}"
        raise SourceError(f"source {source.name} ({url}): git {' '.join(args[:2])} failed in "
                          f"{repo}: {detail}",
                          fix="run the same command again; if it fails the same way, fix what "
                              "git reports") from e


def _complete(repo: Path, sha: str) -> bool:
    """``repo`` holds ``sha`` with its whole history (not shallow)."""
    return not (repo / "shallow").exists() and fetching.has_commit(repo, sha)


def _fill_git(settings: Settings, source: Source, repo: Path) -> None:
    """Bring the locked commit (whole history), its keep ref and its ref tag into ``repo``."""
    sha = str(source.commit)
    cache = fetching.cache_repo(settings, source)
    if not _complete(repo, sha):
        with runlock.cache(settings, source.name):
            _git(repo, ["fetch", "-q", "--no-tags", "--update-shallow", "--",
                        str(cache), f"+{KEEP_PREFIX}{sha}:{KEEP_PREFIX}{sha}"],
                 source, str(cache))
    if (repo / "shallow").exists():
        _unshallow(settings, source, repo, sha)
    _git(repo, ["update-ref", f"{KEEP_PREFIX}{sha}", sha], source, str(repo))
    if not (is_sha(source.ref) or is_abbrev(source.ref) and sha.startswith(source.ref)):
        _git(repo, ["update-ref", f"refs/tags/{source.ref}", sha], source, str(repo))
    _git(repo, ["update-server-info"], source, str(repo))
    (repo / "FETCH_HEAD").unlink(missing_ok=True)      # names this machine's cache: not served


def _unshallow(settings: Settings, source: Source, repo: Path, sha: str) -> None:
    """The cache held a shallow copy: fetch the rest of the history from upstream."""
    url = fetching.remote_url(settings, source)
    if settings.offline:
        raise OfflineError(
            f"source {source.name}: the cache holds only the last commit(s) of {sha[:12]} "
            f"(a shallow copy), and a mirror needs its whole history (\"dumb\" HTTP cannot "
            f"serve shallow history); --offline forbids fetching it from {url}",
            fix="run the same `inv mirror` without --offline, with network access (or "
                "ASKBUILD_MIRRORS pointing at a complete mirror)")
    console.info(f"source {source.name}: fetching the whole history of {sha[:12]} from {url} "
                 "(the cache holds a shallow copy)")
    _git(repo, ["fetch", "-q", "--no-tags", "--unshallow", "--", url, sha], source, url)
    if not _complete(repo, sha):
        raise SourceError(f"source {source.name}: the history of {sha} fetched from {url} is "
                          "still incomplete",
                          fix="the upstream (or mirror) repository is shallow or damaged; "
                              "mirror from a complete one (ASKBUILD_MIRRORS)")


def _valid_bare(repo: Path) -> bool:
    return (repo / "HEAD").is_file() and (repo / "objects").is_dir() and \
        (repo / "refs").is_dir()


def write_git(settings: Settings, source: Source, dest: Path) -> None:
    """The mirror entry of a locked git source at ``dest`` (new: built aside, renamed in)."""
    fetching.fetch_commit(settings, source, str(source.commit))
    if dest.exists():
        if not _valid_bare(dest):
            raise ConfigError(f"source {source.name}: {dest} exists and is not a bare git "
                              "repository; refusing to write the mirror entry over it",
                              fix="move it away, then run again")
        _fill_git(settings, source, dest)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / unique_name(f".{dest.name}.tmp-")
    try:
        gitutil.git(["init", "-q", "--bare", "--", str(tmp)])
        _fill_git(settings, source, tmp)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- tarball entries ---------------------------------------------------------------------------

def _matches(path: Path, source: Source) -> bool:
    return path.is_file() and sha256_file(path) == (source.sha256, source.size)


def write_tarball(settings: Settings, source: Source, dest: Path) -> None:
    """The mirror entry of a locked tarball source: the verified file at ``dest``."""
    if dest.exists() or dest.is_symlink():
        if dest.is_dir() and not dest.is_symlink():
            raise ConfigError(f"source {source.name}: {dest} is a directory; refusing to "
                              "write the tarball over it", fix="move it away, then run again")
        if _matches(dest, source):
            return
        console.warn(f"source {source.name}: {dest} does not match the lock; replacing it")
    cached = fetching.fetch_tarball(settings, source)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / unique_name(f".{dest.name}.tmp-")
    try:
        shutil.copyfile(cached, tmp)
        if not _matches(tmp, source):
            raise VerificationError(
                f"source {source.name}: the copy of {cached} at {tmp} does not match the lock "
                f"(sha256 {source.sha256}, {source.size} bytes)",
                fix="run the same command again (the cache is checked first)")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


# -- the index and the ASKBUILD_MIRRORS line ---------------------------------------------------

def read_index(out: Path) -> dict:
    data = read_json(out / INDEX) or {}
    entries = data.get("entries") if data.get("schema") == SCHEMA else None
    return {"schema": SCHEMA, "entries": entries if isinstance(entries, dict) else {}}


def _record(index: dict, source: Source, where: Place) -> None:
    entry = index["entries"].setdefault(source.url, {})
    entry.update(kind=source.kind, prefix=where.prefix, root=where.root, path=where.path)
    if source.kind == "git":
        commits = set(entry.get("commits", [])) | {str(source.commit)}
        entry["commits"] = sorted(commits)
        entry.setdefault("refs", {})[source.ref] = source.commit
    else:
        entry.update(sha256=source.sha256, size=source.size)


def _common_dir(paths: list[str]) -> str:
    """The directory segments every path in ``paths`` starts with ("" when none)."""
    split = [p.split("/")[:-1] for p in paths]
    common: list[str] = []
    for segs in zip(*split, strict=False):
        if len(set(segs)) != 1:
            break
        common.append(segs[0])
    return "".join(f"{s}/" for s in common)


def mirror_map(index: dict, base: str) -> dict[str, str]:
    """``{URL prefix: replacement}``: one entry per scheme and host of the mirrored URLs,
    narrowed to the directory they all share (``file://`` URLs: one per directory), pointing
    below ``base`` (``file:///DIR/`` or the URL a static HTTP server serves ``DIR`` at, with a
    trailing ``/``)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for entry in index["entries"].values():
        groups.setdefault((entry["prefix"], entry["root"]), []).append(entry["path"])
    result = {}
    for (prefix, root), paths in sorted(groups.items()):
        # Local paths are the machine's own (a work dir, /usr/src): one entry per directory,
        # never a prefix as wide as "file:///" that would take over every other file:// URL.
        local = prefix.startswith("file:")
        for common in sorted({_common_dir([p]) for p in paths}) if local \
                else [_common_dir(paths)]:
            result[f"{prefix}{common}"] = f"{base}{root}/{common}"
    return result


def mirrors_line(out: Path, base: str | None = None) -> str:
    """``ASKBUILD_MIRRORS="PREFIX=REPLACEMENT ..."`` for the mirror in ``out`` (``base``:
    where it is served; default ``file://<out>/``)."""
    base = base or f"file://{out}/"
    pairs = mirror_map(read_index(out), base if base.endswith("/") else base + "/")
    return "ASKBUILD_MIRRORS=\"" + " ".join(f"{p}={r}" for p, r in pairs.items()) + "\""


# -- the verb ----------------------------------------------------------------------------------

def _refuse_unlocked(settings: Settings, selected: list[Source]) -> None:
    missing = [s.name for s in selected if not s.locked]
    if missing:
        words = [w for m in missing for w in ("--source", m)]
        raise UnlockedSourceError(
            f"source(s) {', '.join(missing)} have no lock entry in {settings.sources_file}: "
            "a mirror holds exactly the locked commits and tarballs",
            fix=f"run `{settings.command('lock', *words, without=('--locked', '--offline'))}`"
                " (online), commit the sources file, then mirror again")


def _places(selected: list[Source], out: Path) -> dict[str, tuple[Place, Path]]:
    """Every source's place; two sources that need different things at one path refused."""
    seen: dict[Path, Source] = {}
    places = {}
    for s in selected:
        where = place(s.url, f"source {s.name}")
        dest = out / where.root / where.path
        other = seen.get(dest)
        if other and (other.kind != s.kind or s.kind == "tarball" and other.sha256 != s.sha256):
            raise ConfigError(f"sources {other.name} and {s.name} both need {dest} in the "
                              "mirror, with different contents",
                              fix="mirror them into different directories (--source)")
        seen[dest] = s
        places[s.name] = (where, dest)
    return places


@runlock.exclusive("mirror")
def write_mirror(settings: Settings, output: str | os.PathLike | None,
                 names: list[str] | tuple[str, ...] | None = None) -> dict[str, str]:
    """``inv mirror --output DIR [--source S]``: write the named locked sources (all when
    none) into the mirror ``DIR`` and print the ``ASKBUILD_MIRRORS`` line that points a
    runner at it.  Returns ``{source: path in DIR}``."""
    out = check_output(settings, output)
    selected = select(load_sources(settings), names, settings)
    _refuse_unlocked(settings, selected)
    places = _places(selected, out)
    written: dict[str, str] = {}
    with _mirror_lock(out):
        index = read_index(out)
        for s in selected:
            where, dest = places[s.name]
            console.step(f"mirror {s.name} -> {where.rel}")
            _clean_leftovers(dest.parent)
            if s.kind == "git":
                write_git(settings, s, dest)
            else:
                write_tarball(settings, s, dest)
            _record(index, s, where)
            if index != read_index(out):
                write_json_atomic(out / INDEX, index)
            written[s.name] = where.rel
    console.info(f"mirror {out}: {len(written)} source(s) written, "
                 f"{len(read_index(out)['entries'])} in the mirror; on a runner (file share):")
    print(mirrors_line(out), flush=True)
    console.info(f"served by a static HTTP server whose root is {out} (e.g. `python3 -m "
                 f"http.server -d {out}`): the same line with file://{out}/ replaced by the "
                 "server's URL; see docs/mirror.md")
    return written
