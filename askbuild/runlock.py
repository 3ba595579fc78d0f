"""Mutual exclusion between askbuild runs: one owner for every lock file.

* The **work-dir lock** (``<work>/state/askbuild.lock``): every verb that writes into a work
  directory (fetch, patch, patches.edit/export, rebase, build, image, the main job) holds it for
  its whole run, so two runs never interleave on one work tree, record or archive.  A second
  run waits, saying which run (pid, verb) holds the lock.
* The **cache locks** (``<cache>/locks/<name>.lock``): one per source, held while a source's
  cache entry (bare repository, tarball) is read or changed, so checkouts sharing one cache
  (CI fleets) never corrupt it.  ``_``-prefixed names are for the cache's own shared files.

Both are :mod:`filelock` locks (``flock``): the kernel drops them when a process dies, even
under ``kill -9``, so a stale lock never blocks the next run.  They are re-entrant within one
process (the main job takes the work-dir lock once and calls the verbs, which take it again).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock, Timeout

from . import console, fsutil
from .settings import Settings

_LOCKS: dict[Path, FileLock] = {}
_GUARD = threading.Lock()
F = TypeVar("F", bound=Callable[..., Any])


def _lock_for(path: Path) -> FileLock:
    with _GUARD:
        lock = _LOCKS.get(path)
        if lock is None:
            # thread_local=False: the build's worker threads share the main thread's hold.
            lock = _LOCKS[path] = FileLock(str(path), thread_local=False)
        return lock


def _holder(info: Path) -> str:
    try:
        text = info.read_text().strip()
    except OSError:
        return "another askbuild run"
    return f"another askbuild run ({text})" if text else "another askbuild run"


@contextlib.contextmanager
def _hold(path: Path, info: Path | None, what: str, who: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = _lock_for(path)
    first = not lock.is_locked
    try:
        lock.acquire(timeout=0.5)
    except Timeout:
        holder = _holder(info) if info else "another askbuild run"
        console.info(f"{what}: waiting for {holder} to finish (lock {path}) ...")
        lock.acquire()
    try:
        if first and info is not None:
            with contextlib.suppress(OSError):
                info.write_text(who + "\n")
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def work_dir(settings: Settings, verb: str) -> Iterator[None]:
    """Hold the work-dir lock of ``settings.work_dir`` for ``verb``.  The owner file names
    the holder as ``pid N, inv VERB <its options>`` (:meth:`Settings.command`), so a waiting
    run shows which run, on which work directory, it waits for."""
    path = settings.run_lock
    first = not _lock_for(path).is_locked
    with _hold(path, path.with_name("askbuild.lock.owner"), f"work directory {settings.work_dir}",
               f"pid {os.getpid()}, {settings.command(verb)}"):
        if first:  # records half-written by a killed run: nobody else can be writing now
            for d in (settings.work_dir, settings.state_dir):
                fsutil.sweep_temps(d)
        yield


def cache(settings: Settings, name: str) -> contextlib.AbstractContextManager[None]:
    """Hold the cache lock of source ``name`` (or of a ``_``-prefixed shared cache file)."""
    path = settings.cache_lock(name)
    return _hold(path, None, f"source {name}", "")


def exclusive(verb: str) -> Callable[[F], F]:
    """Decorator for engine entry points whose first argument is the Settings: the whole call
    holds the work-dir lock."""
    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(settings: Settings, *args: Any, **kwargs: Any) -> Any:
            with work_dir(settings, verb):
                return fn(settings, *args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return deco
