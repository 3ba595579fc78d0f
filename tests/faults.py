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


# A `git` first on PATH for deterministic fault points inside `git am`, whatever the
# machine's speed: for every `git am` it swaps askbuild's `core.hooksPath=/dev/null` for a
# hooks directory whose `post-applypatch` counts the commits made by all the ams of the run;
# at the STOP_AT-th it writes the am's pid to MARK and waits for GATE (ending by itself when
# its git am dies).  The am is then really in progress: alive, `.git/rebase-apply` on disk,
# HEAD STOP_AT commits on, one am for the whole series or one per patch alike.
_GATED_GIT = r"""#!/bin/sh
case " $* " in
  *" am "*)
    n=$#
    for a in "$@"; do
      [ "$a" = core.hooksPath=/dev/null ] && a="core.hooksPath=$ASKBUILD_TEST_HOOKS"
      set -- "$@" "$a"
    done
    shift "$n" ;;
esac
exec "$ASKBUILD_TEST_REAL_GIT" "$@"
"""

_POST_APPLYPATCH = r"""#!/bin/sh
n=$(( $(cat "$ASKBUILD_TEST_COUNT" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$ASKBUILD_TEST_COUNT"
[ "$n" -eq "$ASKBUILD_TEST_STOP_AT" ] || exit 0
echo "$PPID" > "$ASKBUILD_TEST_MARK.tmp" && mv "$ASKBUILD_TEST_MARK.tmp" "$ASKBUILD_TEST_MARK"
while [ ! -e "$ASKBUILD_TEST_GATE" ]; do
  read -r _ _ _ pp _ < /proc/$$/stat
  [ "$pp" = "$PPID" ] || exit 1          # the git am died: so does its hook
  sleep 0.02
done
"""


class GatedAm:
    """A gated ``git am`` (see :data:`_GATED_GIT`) for the processes started with
    :attr:`env`: :meth:`wait_inside` blocks until a run's am has made ``stop_at`` commits and
    is held there; :meth:`release` lets it go on."""

    def __init__(self, tmp: Path, stop_at: int) -> None:
        real = next(Path(d) / "git" for d in os.environ["PATH"].split(os.pathsep)
                    if (Path(d) / "git").is_file())
        tmp.mkdir(parents=True, exist_ok=True)
        bindir, hooks = tmp / "bin", tmp / "hooks"
        bindir.mkdir()
        hooks.mkdir()
        for path, text in ((bindir / "git", _GATED_GIT),
                           (hooks / "post-applypatch", _POST_APPLYPATCH)):
            path.write_text(text)
            path.chmod(0o755)
        self.mark, self.gate = tmp / "in-am", tmp / "gate"
        self.env = {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
                    "ASKBUILD_TEST_REAL_GIT": str(real), "ASKBUILD_TEST_HOOKS": str(hooks),
                    "ASKBUILD_TEST_COUNT": str(tmp / "count"),
                    "ASKBUILD_TEST_STOP_AT": str(stop_at),
                    "ASKBUILD_TEST_MARK": str(self.mark), "ASKBUILD_TEST_GATE": str(self.gate)}

    def wait_inside(self, proc: subprocess.Popen, timeout: float = 120) -> int:
        """Wait until ``proc``'s ``git am`` is held at the gate; the am's pid."""
        t0 = time.monotonic()
        while not self.mark.exists():
            if proc.poll() is not None:
                pytest.fail(f"the run ended before its git am reached the gate:\n"
                            f"{proc.communicate()[1]}")
            if time.monotonic() - t0 > timeout:
                pytest.fail(f"no git am at the gate after {timeout} s")
            time.sleep(0.01)
        return int(self.mark.read_text())

    def release(self) -> None:
        self.gate.touch()

    def close(self) -> None:
        """Release the gate and kill a held ``git am`` still alive (a failed test leaves
        nothing running)."""
        self.release()
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(self.mark.read_text()), signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists and is not a zombie."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
