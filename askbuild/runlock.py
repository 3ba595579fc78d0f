"""Mutual exclusion between askbuild runs: one owner for every lock file.

* The **work-dir lock** (``<work>/state/askbuild.lock``): every verb that writes into a work
  directory (fetch, patch, patches.edit/export, rebase, build, image, the main job) holds it for
  its whole run, so two runs never interleave on one work tree, record or archive.  A second
  run waits, saying which run (pid, verb) holds the lock.
* The **cache locks** (``<cache>/locks/<name>.lock``): one per source, held while a source's
  cache entry (bare repository, tarball) is read or changed, so checkouts sharing one cache
  (CI fleets) never corrupt it.  ``_``-prefixed names are for the cache's own shared files.

Both are ``flock`` locks (taken here with :mod:`fcntl`: the ``filelock`` package cost every
verb ~40 ms of imports): the kernel drops them when a process dies, even under ``kill -9``, so
a stale lock never blocks the next run.  They are re-entrant within one
process (the main job takes the work-dir lock once and calls the verbs, which take it again).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from . import console, fsutil, noopmemo
from .settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


class Timeout(Exception):
    """The lock was not acquired within the timeout."""


class _Flock:
    """A re-entrant ``flock`` on one file, shared by every thread of this process (the
    build's worker threads share the main thread's hold); released when the outermost hold
    ends (or the process dies)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.count = 0
        self.guard = threading.Lock()

    @property
    def is_locked(self) -> bool:
        return self.count > 0

    def acquire(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self.guard:
                if self.count:
                    self.count += 1
                    return
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                else:
                    self.fd, self.count = fd, 1
                    return
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(str(self.path))
            time.sleep(0.05)

    def release(self) -> None:
        with self.guard:
            self.count -= 1
            if self.count == 0 and self.fd is not None:
                fd, self.fd = self.fd, None
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)


_LOCKS: dict[Path, _Flock] = {}
_GUARD = threading.Lock()


def _lock_for(path: Path) -> _Flock:
    with _GUARD:
        lock = _LOCKS.get(path)
        if lock is None:
            lock = _LOCKS[path] = _Flock(path)
        return lock


def _holder(info: Path) -> str:
    try:
        text = info.read_text().strip()
    except OSError:
        return "another askbuild run"
    return f"another askbuild run ({text})" if text else "another askbuild run"


@contextlib.contextmanager
def _hold(path: Path, info: Path | None, what: str, who: str) -> Iterator[None]:
    noopmemo.bookkeeping(*(p for p in (path, info) if p is not None))
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
