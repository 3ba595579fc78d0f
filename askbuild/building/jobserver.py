"""One GNU make jobserver for a whole build: the job budget shared by every make, at each moment.

askbuild plays the top-level make: a pipe holds ``jobs - 1`` tokens and askbuild itself holds the
implicit one.  Every running component holds one token (taken with :meth:`JobServer.acquire`
before it starts, given back with :meth:`JobServer.release` however it ends); its steps get
``MAKEFLAGS=-j<jobs> --jobserver-auth=R,W`` with the pipe's descriptors inherited
(:meth:`JobServer.env`, :attr:`JobServer.fds`), so each make (and every recursive make under it)
takes a token from the same pipe for each job beyond its first.  A component alone therefore
uses the whole budget, two running components share it job by job, and a non-make step simply
runs on its component's token.  The form ``--jobserver-auth=R,W`` is the one GNU make 4.3
(Debian bookworm) reads; make 4.4 reads it too.

A make given ``-jN`` on its own command line leaves the jobserver (``-jN forced in submake``) and
would run N jobs on top of everyone else's: :func:`strip_jobs` drops such arguments from a make
step run under the jobserver (the recipes' ``-j{jobs}`` keep working: the jobserver decides).

Tokens are never lost for good: when no component runs, :meth:`JobServer.reconcile` puts the pipe
back to exactly ``jobs - 1`` tokens (a make killed while holding tokens cannot return them).
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

#: The byte GNU make writes as a token.
TOKEN = b"+"
_MAKES = {"make", "gmake"}


class JobServer:
    """The pipe of one build.  ``jobs``: the budget (>= 1).  Use as a context manager (the pipe
    is closed at the end)."""

    def __init__(self, jobs: int) -> None:
        self.jobs = max(1, jobs)
        self.read_fd, self.write_fd = os.pipe()
        # askbuild's own reads never block: a second open file description of the same pipe,
        # non-blocking, so the makes keep the blocking one they expect.
        self._poll_fd = os.open(f"/proc/self/fd/{self.read_fd}", os.O_RDONLY | os.O_NONBLOCK)
        self._lock = threading.Lock()
        self._implicit_free = True
        self._closed = False
        self.lost = 0            # tokens found missing by reconcile (a killed make held them)
        os.write(self.write_fd, TOKEN * (self.jobs - 1))

    def __enter__(self) -> JobServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        for fd in (self._poll_fd, self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    @property
    def fds(self) -> tuple[int, int]:
        """The descriptors a step must inherit (``pass_fds``)."""
        return (self.read_fd, self.write_fd)

    @property
    def wait_fd(self) -> int:
        """Readable when a token is in the pipe (for ``select``)."""
        return self._poll_fd

    def env(self) -> dict[str, str]:
        """The ``MAKEFLAGS`` that puts a make under this jobserver."""
        return {"MAKEFLAGS": f"-j{self.jobs} --jobserver-auth={self.read_fd},{self.write_fd}"}

    def acquire(self) -> bytes | None:
        """A token for a component about to start (askbuild's implicit one first), or None when
        every token is in use right now."""
        with self._lock:
            if self._implicit_free:
                self._implicit_free = False
                return b""
        try:
            data = os.read(self._poll_fd, 1)
        except BlockingIOError:
            return None
        return data or None

    def release(self, token: bytes | None) -> None:
        """Give back a token taken by :meth:`acquire` (b"" is the implicit one)."""
        if token is None:
            return
        with self._lock:        # never into a closed (maybe reused) descriptor
            if not self._closed:
                # The implicit token goes into the pipe too: a make that is still running
                # can take it at once (askbuild gets its implicit one back on reconcile).
                os.write(self.write_fd, token or TOKEN)

    def available(self) -> int:
        """How many tokens are free right now (read out and written back; only meaningful
        when no make runs: the tests and :meth:`reconcile` use it then)."""
        with self._lock:
            implicit = int(self._implicit_free)
        return implicit + len(self._drain_and_restore())

    def _drain(self) -> bytes:
        got = b""
        while True:
            try:
                chunk = os.read(self._poll_fd, 4096)
            except BlockingIOError:
                return got
            if not chunk:
                return got
            got += chunk

    def _drain_and_restore(self) -> bytes:
        got = self._drain()
        if got:
            os.write(self.write_fd, got)
        return got

    def reconcile(self) -> int:
        """With no component running: make the pipe hold exactly ``jobs - 1`` tokens again and
        return how many had been lost (tokens a killed make could not give back)."""
        got = self._drain()
        missing = max(0, self.jobs - 1 - len(got))
        os.write(self.write_fd, TOKEN * (self.jobs - 1))
        with self._lock:
            self._implicit_free = True
        self.lost += missing
        return missing


def is_make(args: list[str]) -> bool:
    """Whether a step runs GNU make directly."""
    return bool(args) and Path(args[0]).name in _MAKES


def strip_jobs(args: list[str]) -> tuple[list[str], list[str]]:
    """(``args`` without its ``-jN`` / ``-j N`` / ``-j`` / ``--jobs[=N]`` options, the options
    dropped) for a make run under the jobserver; other commands are returned unchanged."""
    if not is_make(args):
        return args, []
    out, dropped = [args[0]], []
    i = 1
    while i < len(args):
        a = args[i]
        if a in ("-j", "--jobs"):
            nxt = args[i + 1] if i + 1 < len(args) else ""
            take = 2 if nxt.isdigit() else 1
            dropped += args[i:i + take]
            i += take
            continue
        if (a.startswith("-j") and a[2:].isdigit()) or \
                (a.startswith("--jobs=") and a[7:].isdigit()):
            dropped.append(a)
        else:
            out.append(a)
        i += 1
    return out, dropped
