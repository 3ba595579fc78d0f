"""Helpers for the fault suite: real processes, real signals, real full disks.

* :func:`inv` runs an askbuild verb as a user would (``python -m invoke``), in its own process
  group, and returns the completed process.
* :func:`kill_after` starts a verb and delivers a signal after a delay (``SIGKILL`` to the
  whole group models a power loss; ``SIGTERM``/``SIGINT`` to askbuild alone model a user or a
  CI runner stopping it), then waits for it.
* :func:`kill_points` gives seeded, bounded delays for "kill at some point of this step".
* :func:`tmpfs` mounts a small real tmpfs (root only) so ENOSPC is the kernel's, not a mock.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INV = [sys.executable, "-m", "invoke", "--search-root", str(ROOT)]


def _env(env: dict | None) -> dict:
    full = dict(os.environ, CI="true", ASKBUILD_PLAIN="1")
    full.pop("ASKBUILD_DEBUG", None)
    full.update(env or {})
    return full


def inv(*args: str, env: dict | None = None, cwd: Path = ROOT,
        timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``inv ARGS`` to completion (stdout/stderr captured as text)."""
    return subprocess.run([*INV, *args], cwd=cwd, env=_env(env), capture_output=True,
                          text=True, timeout=timeout, start_new_session=True)


def start(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.Popen:
    return subprocess.Popen([*INV, *args], cwd=cwd, env=_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def read_until(stream, needle: str) -> str:
    """Lines of a child's text ``stream`` up to and including the first one holding ``needle``
    (all of it when the child ends first): for tests that must act once a child says
    something, whatever the machine's load."""
    seen = []
    for line in iter(stream.readline, ""):
        seen.append(line)
        if needle in line:
            break
    return "".join(seen)


def kill_after(delay: float, *args: str, sig: int = signal.SIGKILL, group: bool | None = None,
               env: dict | None = None, cwd: Path = ROOT,
               timeout: float = 600) -> tuple[subprocess.CompletedProcess, float]:
    """Start ``inv ARGS``, send ``sig`` after ``delay`` seconds (to the whole process group for
    SIGKILL unless ``group`` says otherwise; to askbuild alone for SIGTERM/SIGINT), wait.
    Returns the completed process and how long it took to exit after the signal (``-1`` when
    it finished before the signal)."""
    if group is None:
        group = sig == signal.SIGKILL
    proc = start(*args, env=env, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=delay)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), -1.0
    except subprocess.TimeoutExpired:
        pass
    t0 = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    took = time.monotonic() - t0
    if sig == signal.SIGKILL:
        # A power loss takes every process: make sure nothing of the group survives.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), took


def kill_points(seed: str, n: int, lo: float, hi: float) -> list[float]:
    """``n`` delays in [lo, hi), reproducible for ``seed`` (printed by pytest on failure)."""
    rnd = random.Random(seed)
    return sorted(round(rnd.uniform(lo, hi), 3) for _ in range(n))


def group_alive(pgid: int, wait: float = 2.0) -> bool:
    """True when a live (not zombie) process of group ``pgid`` still exists after ``wait`` s."""
    deadline = time.monotonic() + wait
    while True:
        alive = False
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                alive = True
                break
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def processes_with_cwd_under(path: Path) -> list[str]:
    """Command lines of live processes whose working directory is inside ``path``."""
    found = []
    path = path.resolve()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(d / "cwd"))
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd == path or path in cwd.parents:
            found.append(f"{d.name}: {cmd}")
    return found


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "8m") -> Iterator[Path]:
    """Mount a real tmpfs of ``size`` at ``path`` (skips the test when not root / not
    allowed); unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for ENOSPC needs root")
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path, leave: int = 0) -> Path:
    """Fill the file system holding ``path`` until at most ``leave`` bytes are free."""
    filler = path / ".filler"
    with filler.open("wb") as f:
        block = b"\0" * (1 << 16)
        try:
            while True:
                free = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
                if free <= leave:
                    break
                f.write(block[: max(1, min(len(block), free - leave))])
                f.flush()
        except OSError:
            pass
    return filler


def assert_clean_message(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """askbuild failed with a message, not a traceback, and the message names ``needles``."""
    assert "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in proc.stderr, f"{n!r} not in:\n{proc.stderr}"
