"""A real Debian ``redis-server`` for the tests: 127.0.0.1, a free port, no persistence, its
files in a temporary directory, stopped by PID.  :meth:`RedisServer.command` speaks RESP over
a raw socket (no redis-cli, no client library) so tests can look at what is stored."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from registryfixtures import free_port

REDIS_SERVER = "/usr/bin/redis-server"


class RedisServer:
    """``redis-server`` on ``127.0.0.1:port`` (``password``: ``--requirepass``)."""

    def __init__(self, directory: Path, password: str | None = None) -> None:
        exe = REDIS_SERVER if os.access(REDIS_SERVER, os.X_OK) else shutil.which("redis-server")
        if not exe:
            pytest.skip("redis-server is not installed (inv setup)")
        directory.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.port = free_port()
        args = [exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                "--appendonly", "no", "--dir", str(directory), "--daemonize", "no",
                "--logfile", str(directory / "redis.log")]
        if password:
            args += ["--requirepass", password]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.command("PING") == "PONG":
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start: "
                                   f"{(directory / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}"

    def command(self, *words: str):
        """Send one command (after AUTH when there is a password); the decoded reply (str,
        int or list)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            f = s.makefile("rb")
            if self.password:
                s.sendall(_encode("AUTH", self.password))
                _read(f)
            s.sendall(_encode(*words))
            return _read(f)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _encode(*words: str) -> bytes:
    out = [f"*{len(words)}\r\n".encode()]
    for w in words:
        b = w.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _read(f):
    line = f.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:].decode()
    if kind == b"+":
        return rest
    if kind == b"-":
        raise OSError(f"redis error: {rest}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2].decode("utf-8", "replace")
    if kind == b"*":
        return [_read(f) for _ in range(int(rest))]
    raise OSError(f"unexpected redis reply {line!r}")


@pytest.fixture
def redis_server(tmp_path):
    """Factory: ``redis_server(password=None)`` -> a started :class:`RedisServer` (stopped
    after the test)."""
    started: list[RedisServer] = []

    def start(password: str | None = None) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(started)}", password)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
