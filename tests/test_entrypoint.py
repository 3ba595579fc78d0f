"""images/cmm/cmm-entrypoint.sh under the real ``sh`` of this host, with a small fake cmm
(a Python program with a shebang): a failed start never looks like a clean exit.

The fake (``FAKE_MODE``) serves in the foreground until SIGTERM/SIGINT, exits with a status,
dies by the forwarded SIGTERM, or daemonizes like the vendor cmm (the parent exits 0 at once;
the daemon serves, dies at start-up -- the ``nfct_open`` failure seen under qemu -- or dies
later).  Its name is unique per test run, so the entrypoint's search for the daemon by process
name never finds anything else on this machine.  The syslog relay is off (no busybox here; the
image tests run the entrypoint with it under busybox in a container).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENTRYPOINT = REPO / "images" / "cmm" / "cmm-entrypoint.sh"

FAKE_CMM = """\
import os, signal, sys, time

env = os.environ.get
got = []


def say(text):
    print(text, flush=True)


def serve(who):
    life = float(env("FAKE_LIFE", "-1"))
    # A background job of a non-interactive shell starts with SIGINT ignored; cmm (like any C
    # program calling signal()) installs its own handlers.
    signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
    signal.signal(signal.SIGINT, lambda s, f: got.append(s))
    say(f"{who} serving")
    end = time.monotonic() + life
    while not got and (life < 0 or time.monotonic() < end):
        time.sleep(0.05)
    if got:
        say(f"{who} got signal {got[0]}")
        return 0
    say(f"{who} ending on its own")
    return 7


def main():
    mode = env("FAKE_MODE", "serve")
    say("fake cmm args: " + " ".join(sys.argv[1:]))
    for a in sys.argv[1:]:
        if a in ("-v", "-h"):
            say("fake cmm 1.0" if a == "-v" else "usage: fake cmm")
            return int(env("FAKE_STATUS", "0"))
    if mode == "serve":
        return serve("fake cmm")
    if mode == "exit":
        return int(env("FAKE_STATUS", "0"))
    if mode == "die-by-term":          # SIGTERM's default action ends it
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        say("fake cmm serving")
        while True:
            time.sleep(1)
    # daemon, daemon-dies: the parent exits 0 at once, as the vendor cmm does
    if os.fork() > 0:
        return 0
    os.setsid()
    if env("FAKE_PIDFILE"):
        with open(env("FAKE_PIDFILE"), "w") as f:
            f.write(f"{os.getpid()}\\n")
    if mode == "daemon-dies":
        say("fake cmm daemon: nfct_open: Protocol not supported")
        return 1
    return serve("fake cmm daemon")


sys.exit(main())
"""


@pytest.fixture(scope="module")
def fake_cmm(tmp_path_factory) -> Path:
    """The fake cmm, under a name no other process on this machine has (<= 15 characters,
    the kernel's process name length; a script's process is named after the script)."""
    exe = tmp_path_factory.mktemp("fake-cmm") / f"fcmm-{uuid.uuid4().hex[:8]}"
    exe.write_text(f"#!{sys.executable}\n{FAKE_CMM}")
    exe.chmod(0o755)
    return exe


class Run:
    """One entrypoint process (its own process group) writing to a log file."""

    def __init__(self, tmp: Path, cmm: Path, *args: str, **env: str) -> None:
        rules = tmp / "fastforward"
        rules.write_text("# rules\n")
        self.pidfile = tmp / "daemon.pid"
        self.log = tmp / "out.log"
        self.cmm = cmm
        full = {**os.environ, "CMM_BIN": str(cmm), "CMM_CONFIG": str(rules),
                "CMM_SYSLOG_RELAY": "0", "CMM_DAEMON_WAIT": "1",
                "FAKE_PIDFILE": str(self.pidfile), **env}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(["sh", str(ENTRYPOINT), *args], env=full, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, limit: float = 10) -> None:
        deadline = time.monotonic() + limit
        while needle not in self.text():
            assert self.proc.poll() is None, f"ended before {needle!r}:\n{self.text()}"
            assert time.monotonic() < deadline, f"{needle!r} never came:\n{self.text()}"
            time.sleep(0.05)

    def status(self, limit: float = 15) -> int:
        return self.proc.wait(timeout=limit)

    def daemon_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text())
        except (OSError, ValueError):
            return None

    def cleanup(self) -> None:
        """Nothing this test started keeps running (the daemon left its group: setsid)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        pid = self.daemon_pid()
        if pid and _comm(pid) == self.cmm.name[:15]:
            os.kill(pid, signal.SIGKILL)


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _gone(pid: int, limit: float = 5) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def run(tmp_path, fake_cmm):
    runs: list[Run] = []

    def start(*args: str, **env: str) -> Run:
        r = Run(tmp_path, fake_cmm, *args, **env)
        runs.append(r)
        return r

    yield start
    for r in runs:
        r.cleanup()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_foreground_cmm_asked_to_stop_ends_the_container_with_0(run, sig):
    r = run(FAKE_MODE="serve")
    r.wait_for("fake cmm serving")
    r.proc.send_signal(sig)
    assert r.status() == 0, r.text()
    out = r.text()
    name = sig.name.removeprefix("SIG")
    assert f"passing SIG{name} on to cmm" in out
    assert f"fake cmm got signal {int(sig)}" in out
    assert f"cmm stopped after SIG{name}" in out
    assert "fake cmm args: -f " in out and " -n 131072" in out


def test_cmm_killed_by_the_forwarded_sigterm_is_a_clean_stop(run):
    r = run(FAKE_MODE="die-by-term")
    r.wait_for("fake cmm serving")
    r.proc.send_signal(signal.SIGTERM)
    assert r.status() == 0, r.text()
    assert "cmm stopped after SIGTERM" in r.text()


def test_cmm_ending_on_its_own_ends_the_container_with_its_status(run):
    r = run(FAKE_MODE="exit", FAKE_STATUS="3")
    assert r.status() == 3
    assert "error: cmm exited with status 3 on its own" in r.text()


def test_cmm_exiting_0_without_a_daemon_is_a_failed_start(run):
    """A cmm that ends with status 0 and leaves no daemon did not serve: exit 1, said why."""
    r = run(FAKE_MODE="exit", FAKE_STATUS="0")
    assert r.status() == 1
    out = r.text()
    assert "error: cmm exited with status 0 and no cmm daemon was found within 1s" in out
    assert "cmm stopped before serving" in out
    assert f"a process named {r.cmm.name}" in out


def test_daemon_dying_at_start_is_a_failed_start(run):
    """The vendor case: the parent exits 0, its daemon dies at nfct_open: never exit 0."""
    r = run(FAKE_MODE="daemon-dies")
    assert r.status() == 1
    out = r.text()
    assert "nfct_open: Protocol not supported" in out
    assert "no cmm daemon was found" in out and "stopped before serving" in out
    assert "supervising" not in out


@pytest.mark.parametrize("by", ["name", "pidfile"])
def test_daemon_is_supervised_and_stops_with_0_on_sigterm(run, tmp_path, by):
    env = {"CMM_PIDFILE": str(tmp_path / "daemon.pid")} if by == "pidfile" else {}
    r = run(FAKE_MODE="daemon", **env)
    r.wait_for("supervising it")
    pid = r.daemon_pid()
    assert f"cmm daemonized (pid {pid}): supervising it" in r.text()
    assert r.proc.poll() is None                      # the container lives with the daemon
    r.proc.send_signal(signal.SIGTERM)
    assert r.status() == 0, r.text()
    out = r.text()
    assert f"passing SIGTERM on to cmm (pid {pid})" in out
    assert "fake cmm daemon got signal 15" in out
    assert f"cmm (pid {pid}) stopped after SIGTERM" in out
    assert _gone(pid)


def test_daemon_dying_on_its_own_ends_the_container_with_1(run):
    r = run(FAKE_MODE="daemon", FAKE_LIFE="1")
    assert r.status() == 1, r.text()
    out = r.text()
    assert "supervising it" in out and "fake cmm daemon ending on its own" in out
    assert f"error: cmm (pid {r.daemon_pid()}) is gone: the container ends with it" in out


@pytest.mark.parametrize("arg,status", [("-v", "0"), ("-v", "5"), ("-h", "2")])
def test_one_shot_queries_exit_with_cmms_own_status(run, arg, status):
    """-h / -v: cmm runs once in the foreground, no daemon is looked for."""
    t0 = time.monotonic()
    r = run(arg, FAKE_MODE="exit", FAKE_STATUS=status, CMM_DAEMON_WAIT="5")
    assert r.status() == int(status)
    assert time.monotonic() - t0 < 4
    out = r.text()
    assert f"fake cmm args: {arg}\n" in out
    assert "daemon" not in out and "error" not in out
