"""Running the steps of a component: its environment, its log, its processes, its failure.

Every step runs in its own process group under a small supervisor (``procs.supervised_popen``),
registered with the build's :class:`Steps`, so stopping the build -- fail-fast, SIGTERM, SIGINT,
even ``kill -9`` of askbuild -- stops make and every compiler it started.  A step that fails
raises :class:`StepError`, the one failure type of a step: it carries the last lines of the
step's output and the log's path all the way to the message the user reads.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from .. import procs
from ..errors import BuildFailed
from ..settings import Settings
from . import ccache
from .jobserver import JobServer, strip_jobs

TAIL_LINES = 25
#: Inherited environment variables that would silently change a build: dropped, so that only
#: the recipe's ``env`` (part of the key) sets them.
SCRUBBED_ENV = {
    "CFLAGS", "CXXFLAGS", "CPPFLAGS", "LDFLAGS", "LDLIBS", "CC", "CXX", "CPP", "AR", "AS", "LD",
    "NM", "OBJCOPY", "STRIP", "RANLIB", "ARCH", "CROSS_COMPILE", "PKG_CONFIG_PATH",
    "PKG_CONFIG_LIBDIR", "PKG_CONFIG_SYSROOT_DIR", "KCFLAGS", "KCPPFLAGS", "KBUILD_OUTPUT",
    "KBUILD_EXTRA_SYMBOLS", "INSTALL_MOD_PATH", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "O", "M",
    "DESTDIR", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH", "LIBRARY_PATH", "LD_LIBRARY_PATH",
}


class StepError(BuildFailed):
    """A step of a component failed (exit 2): ``message`` says which and how, ``tail`` holds
    the last lines of the step's output (may be empty), ``log`` the component's log."""

    def __init__(self, message: str, *, tail: str = "", log: Path | None = None,
                 fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.tail = tail
        self.log = log


class Cancelled(Exception):
    """Not a failure: the build is stopping (fail-fast or an interrupt), so a component was
    not started or was stopped between two actions; it writes no record."""


def tail(log: Path, lines: int = TAIL_LINES, start: int = 0) -> str:
    """The last ``lines`` lines of ``log`` from byte ``start`` on ("" when there is no log)."""
    try:
        with log.open("rb") as f:
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", "replace").splitlines()
    return "\n".join(text[-lines:])


def base_env(settings: Settings, ccache_bin: Path | None) -> dict[str, str]:
    """The environment of every step: askbuild's own, without :data:`SCRUBBED_ENV` and
    ``KBUILD_BUILD_*``, in the C locale; with ``ccache_bin`` first on PATH for ``--ccache``,
    and then ``settings.ccache_remote`` as ``CCACHE_REMOTE_STORAGE`` (it wins over an
    inherited one; without it, an inherited one passes through)."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV
           and not k.startswith("KBUILD_BUILD_")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    if ccache_bin:
        env["PATH"] = f"{ccache_bin}{os.pathsep}{env.get('PATH', '')}"
        env.setdefault("CCACHE_DIR", str(settings.ccache_dir))
        env.setdefault("CCACHE_BASEDIR", str(settings.work_dir))
        env.update(ccache.remote_env(settings))
    return env


def find_program(args: list[str], cwd: Path, env: dict[str, str]) -> str | None:
    """Why ``args[0]`` cannot be run from ``cwd`` with ``env``'s PATH, or None when it can."""
    prog = args[0] if args else ""
    if not prog:
        return "empty command"
    if "/" in prog:
        p = cwd / prog
        if not p.is_file():
            return f"{p} does not exist"
        return None if os.access(p, os.X_OK) else f"{p} is not executable"
    if shutil.which(prog, path=env.get("PATH", os.defpath)) is None:
        return "not found on PATH"
    return None


class Steps:
    """The running steps of a build, by component, and the switch that stops them all."""

    def __init__(self) -> None:
        self.cancel = threading.Event()
        self.lock = threading.Lock()
        self.procs: dict[str, subprocess.Popen] = {}

    def check_cancel(self) -> None:
        """Raise :class:`Cancelled` once the build is stopping (between any two actions of a
        component, so an interrupted worker ends promptly and writes no record)."""
        if self.cancel.is_set():
            raise Cancelled()

    def start(self, name: str, args: list[str], **kw) -> subprocess.Popen:
        """Start component ``name``'s step ``args`` unless the build is stopping (checked and
        registered atomically with :meth:`stop`)."""
        with self.lock:
            self.check_cancel()
            proc = procs.supervised_popen(args, **kw)
            self.procs[name] = proc
        return proc

    def wait(self, name: str, proc: subprocess.Popen) -> int:
        """Wait for ``proc`` (started by :meth:`start`) and forget it."""
        try:
            return proc.wait()
        finally:
            procs.forget(proc)
            with self.lock:
                self.procs.pop(name, None)

    def stop(self, grace: float = 1.0) -> None:
        """Start nothing new and stop the steps that are running: SIGTERM to each step's whole
        process group (make and every compiler), SIGKILL to what is left after ``grace``
        seconds.  Returns when they are gone (at most ``grace`` + a moment)."""
        with self.lock:
            self.cancel.set()
            running = list(self.procs.values())
        for proc in running:
            procs.kill_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in running:
            procs.kill_group(proc, signal.SIGKILL)


class Runner:
    """Runs the steps of one component, logging to its log file (``settings.log_file``)."""

    def __init__(self, steps: Steps, name: str, log_path: Path, *,
                 jobserver: JobServer | None = None) -> None:
        self.steps = steps
        self.name = name
        self.log_path = log_path
        self.jobserver = jobserver
        self.log = None
        self.step_start = 0

    def __enter__(self) -> Runner:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = self.log_path.open("wb")
        return self

    def __exit__(self, *exc) -> None:
        if self.log:
            self.log.close()

    def note(self, text: str) -> None:
        self.log.write(f"### {text}\n".encode())
        self.log.flush()

    def failed(self, message: str, tail_text: str | None = None) -> StepError:
        """The error for the current step: ``message`` with the step's last lines (or
        ``tail_text``) and this log."""
        if tail_text is None:
            tail_text = tail(self.log_path, start=self.step_start)
        return StepError(message, tail=tail_text, log=self.log_path)

    def run(self, args: list[str], *, cwd: Path, env: dict[str, str]) -> None:
        """Run one step; :class:`StepError` when it cannot start or fails, :class:`Cancelled`
        when the build stopped meanwhile (whatever the step returned, it did not finish)."""
        self.steps.check_cancel()
        self.log.flush()
        self.step_start = self.log.tell()
        extra = {}
        if self.jobserver:
            args, dropped = strip_jobs(args)
            if dropped:
                self.note(f"{' '.join(dropped)} dropped: make takes its jobs from the "
                          "build's jobserver (MAKEFLAGS)")
            extra["pass_fds"] = self.jobserver.fds
        self.note(f"$ {' '.join(args)}   (in {cwd})")
        why = find_program(args, cwd, env)
        if why:
            self.note(f"cannot run {args[0] if args else ''!r}: {why}")
            raise self.failed(f"cannot run {args[0] if args else ''!r}: {why}")
        proc = self.steps.start(self.name, args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=self.log, stderr=subprocess.STDOUT, **extra)
        rc = self.steps.wait(self.name, proc)
        if rc != 0:
            self.note(f"exit status {rc}")
        self.steps.check_cancel()
        if rc != 0:
            raise self.failed(f"`{' '.join(args)}` failed with exit status {rc}")
