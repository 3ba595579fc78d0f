"""``inv lock``: resolve refs to exact identities and record them in the sources file.

* git sources: the ref (tag, branch) is fetched into the cache and peeled to its commit
  (``^{commit}``); the lock is the full SHA.
* tarball sources: the file is downloaded; the lock is its sha256 and size.

Without ``update`` only unlocked sources are resolved; locked ones are checked (git: does the
ref still point at the pin?) and a moved ref is reported, never followed.  With ``update`` the
named sources (all when none is named) move to what their refs point at now, and each move is
printed as ``old -> new`` with the upstream log between the two.  A pin the user did not name
never moves.  Writing goes through :func:`askbuild.sources.write_lock` (tomlkit: comments and
layout kept, minimal diff).
"""

from __future__ import annotations

from . import console, runlock
from .errors import ConfigError, NetworkError, OfflineError
from .fetching import (
    fetch_ref,
    record_lock,
    recorded_ref,
    remote_ref,
    resolve_tarball,
    upstream_log,
)
from .gitutil import is_abbrev, is_sha
from .settings import Settings
from .sources import Source, load_sources, select

MAX_LOG_LINES = 50


def _short(sha: str | None) -> str:
    return (sha or "")[:12]


@runlock.exclusive("lock")
def lock(settings: Settings, names: list[str] | tuple[str, ...] | None = None,
         update: bool = False) -> dict[str, str]:
    """Lock the named sources (all when none).  Returns ``{name: identity}``.  Holds the
    work-dir lock: loading a profile may publish the example upstreams into the work dir."""
    selected = select(load_sources(settings), names, settings)
    words = [*(["--update"] if update else []), *(w for n in names or () for w in ("--source", n))]
    if settings.locked and (update or any(not s.locked for s in selected)):
        raise ConfigError(
            "lock with --locked: --locked forbids resolving refs",
            fix="drop --locked (it is for fetch/build runs in CI): "
                f"`{settings.command('lock', *words, without=('--locked',))}`")
    todo = [s for s in selected if update or not s.locked]
    if settings.offline and todo:
        raise OfflineError(
            f"cannot lock {', '.join(s.name for s in todo)} with --offline: refs are resolved "
            "and tarballs hashed upstream",
            fix=f"run `{settings.command('lock', *words, without=('--offline',))}` with "
                "network access (or a mirror)")
    result: dict[str, str] = {}
    for source in selected:
        if source in todo:
            result[source.name] = _lock_one(settings, source)
        else:
            result[source.name] = _check_one(settings, source)
    return result


def _check_one(settings: Settings, source: Source) -> str:
    """A locked source and no --update: keep the pin; say if the ref moved away from it.  A ref
    that is the pinned commit itself (full or abbreviated SHA) cannot move."""
    if source.kind != "git" or settings.offline or _names_commit(source):
        console.info(f"{source.name}: locked at {source.identity} (unchanged)")
        return source.identity
    try:
        now = remote_ref(settings, source, source.ref)
    except NetworkError as e:
        console.warn(f"{source.name}: locked at {source.commit}; could not check its ref "
                     f"upstream ({e.message})")
        return str(source.commit)
    if now is None:
        console.warn(f"{source.name}: ref {source.ref!r} no longer exists upstream; pin "
                     f"{source.commit} kept")
    elif now != source.commit:
        console.warn(
            f"{source.name}: ref {source.ref!r} now points at {now}, not at the locked "
            f"{source.commit} (tag moved or branch advanced upstream); pin kept. To move it: "
            f"`{settings.command('lock', '--update', '--source', source.name)}`")
    else:
        console.info(f"{source.name}: locked at {source.commit} = {source.ref} (unchanged)")
    return str(source.commit)


def _names_commit(source: Source) -> bool:
    """The source's ref is its pinned commit, written as a full or abbreviated SHA."""
    ref, commit = source.ref, source.commit or ""
    return is_sha(ref) and ref == commit or is_abbrev(ref) and commit.startswith(ref)


def _lock_one(settings: Settings, source: Source) -> str:
    console.step(f"lock {source.name} ({source.ref})")
    if source.kind == "git":
        return _lock_git(settings, source)
    return _lock_tarball(settings, source)


def _lock_git(settings: Settings, source: Source) -> str:
    old = source.commit
    new = fetch_ref(settings, source, source.ref)
    abbrev = source.ref
    if recorded_ref(abbrev, new) != abbrev:
        source = record_lock(settings, source, ref=new, commit=new)
        console.info(f"{source.name}: the abbreviated ref {abbrev} is recorded as the full "
                     f"commit SHA {new} in {settings.sources_file}")
    if old == new:
        console.info(f"{source.name}: no change ({source.ref} is {new})")
        return new
    record_lock(settings, source, commit=new)
    if old is None:
        console.info(f"{source.name}: locked {source.ref} at {new}")
        return new
    console.info(f"{source.name}: {old} -> {new} ({source.ref})")
    lines, is_ancestor = upstream_log(settings, source, old, new)
    if not is_ancestor:
        console.warn(f"{source.name}: {new} does not contain the old pin {_short(old)} "
                     "(a moved tag, a rewritten history or an unrelated release line): "
                     "review the change before building on it")
    if lines:
        console.info(f"{source.name}: upstream log {_short(old)}..{_short(new)} "
                     f"({len(lines)} commit{'s' if len(lines) != 1 else ''}):")
        for line in lines[:MAX_LOG_LINES]:
            console.info(f"    {line}")
        if len(lines) > MAX_LOG_LINES:
            console.info(f"    ... and {len(lines) - MAX_LOG_LINES} more")
    return new


def _lock_tarball(settings: Settings, source: Source) -> str:
    sha, size, _ = resolve_tarball(settings, source)
    if source.sha256 == sha and source.size == size:
        console.info(f"{source.name}: no change ({source.filename} sha256 {sha})")
        return sha
    record_lock(settings, source, sha256=sha, size=size)
    if source.sha256 is None:
        console.info(f"{source.name}: locked {source.filename} at sha256 {sha} ({size} bytes)")
    else:
        console.info(f"{source.name}: sha256 {source.sha256} ({source.size} bytes) -> {sha} "
                     f"({size} bytes)")
    return sha
