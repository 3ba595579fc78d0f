"""A real OCI distribution registry for tests: Debian's ``docker-registry`` (CNCF distribution
2.8) on 127.0.0.1 (or another loopback address) with a free port, its storage and log in a
temporary directory, optionally with htpasswd users; stopped by PID.

    reg = Registry.start(tmp_path / "registry", users={"alice": "s3cret"})
    ...
    reg.stop()

``reg.requests(method, path_part)`` reads the registry's own access log (what was uploaded),
``reg.blob_file(digest)`` is where it keeps a blob (for tampering), ``reg.auth_file(user, pw)``
writes a containers-auth.json for skopeo (REGISTRY_AUTH_FILE).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

REGISTRY = "/usr/bin/docker-registry"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _bcrypt(password: str) -> str:
    """A bcrypt hash (cheap cost) the registry's htpasswd accepts (libcrypt via ``crypt``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))


@dataclass
class Registry:
    root: Path
    host: str
    port: int
    proc: subprocess.Popen
    users: dict[str, str]

    @property
    def address(self) -> str:
        """``HOST:PORT`` as a reference names it."""
        return f"{self.host}:{self.port}"

    @property
    def log(self) -> Path:
        return self.root / "registry.log"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @classmethod
    def start(cls, root: Path, *, host: str = "127.0.0.1",
              users: dict[str, str] | None = None) -> Registry:
        root.mkdir(parents=True, exist_ok=True)
        port = free_port(host)
        auth = ""
        if users:
            (root / "htpasswd").write_text(
                "".join(f"{u}:{_bcrypt(p)}\n" for u, p in users.items()))
            auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {root / 'htpasswd'}\n"
        (root / "config.yml").write_text(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'storage'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {host}:{port}\n  secret: askbuild-tests\n{auth}")
        log = open(root / "registry.log", "ab")
        proc = subprocess.Popen([REGISTRY, "serve", str(root / "config.yml")], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        log.close()
        reg = cls(root, host, port, proc, dict(users or {}))
        reg._wait_ready()
        return reg

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://{self.address}/v2/", timeout=1)
                return
            except urllib.error.HTTPError:
                return                  # 401 with auth: up
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("docker-registry did not start listening")

    def stop(self) -> None:
        """Stop this registry (by its PID) and wait for it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    # -- what the registry saw and holds -------------------------------------------------
    def requests(self, method: str, uri_part: str = "") -> list[str]:
        """The request URIs of the registry's "response completed" log lines with
        ``method`` whose URI contains ``uri_part``."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if "response completed" not in line or f"http.request.method={method} " not in line:
                continue
            m = re.search(r'http\.request\.uri="?([^" ]+)', line)
            if m and uri_part in m.group(1):
                out.append(m.group(1))
        return out

    def uploads(self) -> int:
        """How many blob uploads the registry has completed (PUT .../blobs/uploads/...)."""
        return len(self.requests("PUT", "/blobs/uploads/"))

    def blob_file(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def tag_digest(self, repo: str, tag: str) -> str:
        """The manifest digest a tag points at, from the registry's storage."""
        link = (self.storage / "docker/registry/v2/repositories" / repo / "_manifests/tags"
                / tag / "current/link")
        return link.read_text().strip()

    def auth_file(self, path: Path, user: str, password: str) -> Path:
        """A containers-auth.json (also a valid ~/.docker/config.json) for this registry."""
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"auths": {self.address: {"auth": token}}}))
        return path

    def get(self, path: str, *, auth: tuple[str, str] | None = None,
            accept: str = "application/vnd.oci.image.manifest.v1+json") -> bytes:
        """GET ``http://ADDRESS<path>`` (the registry's HTTP API) and return the body."""
        req = urllib.request.Request(f"http://{self.address}{path}", headers={"Accept": accept})
        if auth:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read()


# -- "machines": separate HOME, cache and work directories, driven through the CLI ------------

ROOT = Path(__file__).resolve().parent.parent
PROJECT_DATA = ["recipes", "patches", "kernel", "images", "examples"]
#: The compilers a build of the example profile runs (wrapped on a machine that must not
#: compile: each call is logged, then the real one runs).
COMPILERS = ["aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++", "aarch64-linux-gnu-cc",
             "gcc", "cc", "g++"]
#: Compiler calls that only ask questions (the toolchain check: versions, target).
_QUESTIONS = "-dumpversion|-dumpfullversion|-dumpmachine|--version|-v|-print-*"


@dataclass
class Machine:
    """One CI runner: its own HOME, project checkout, cache and work directory."""

    root: Path
    env: dict[str, str]

    @classmethod
    def make(cls, root: Path, *, project_from: Path | None = None,
             wrap_compilers: bool = False) -> Machine:
        import shutil
        (root / "home").mkdir(parents=True, exist_ok=True)
        project = root / "project"
        if not project.exists():
            for name in PROJECT_DATA:
                shutil.copytree((project_from or ROOT) / name, project / name, symlinks=True)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("ASKBUILD_", "REGISTRY_AUTH", "XDG_"))}
        env.update({"HOME": str(root / "home"), "CI": "true",
                    "XDG_CONFIG_HOME": str(root / "home/.config"),
                    "XDG_CACHE_HOME": str(root / "home/.cache"),
                    "ASKBUILD_PROJECT_ROOT": str(project)})
        m = cls(root, env)
        if wrap_compilers:
            m._wrap_compilers()
        return m

    @property
    def project(self) -> Path:
        return self.root / "project"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def compiler_log(self) -> Path:
        return self.root / "compilers.log"

    def _wrap_compilers(self) -> None:
        """Put logging wrappers of the compilers first on PATH: every compile is recorded."""
        import shutil
        bindir = self.root / "wrap-bin"
        bindir.mkdir(exist_ok=True)
        self.compiler_log.write_text("")
        path = self.env.get("PATH", os.defpath)
        for name in COMPILERS:
            real = shutil.which(name, path=path)
            if real is None:
                continue
            w = bindir / name
            w.write_text("#!/bin/sh\n"
                         f"case \"$1\" in {_QUESTIONS}) ;; *) echo \"{name} $*\" >> "
                         f"'{self.compiler_log}' ;; esac\n"
                         f"exec '{real}' \"$@\"\n")
            w.chmod(0o755)
        self.env["PATH"] = f"{bindir}{os.pathsep}{path}"

    def inv(self, *args: str, extra_env: dict | None = None,
            timeout: int = 3000) -> subprocess.CompletedProcess:
        """``inv ARGS --work-dir W --cache-dir C`` on this machine (``--profile example``)."""
        import sys
        cmd = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), *args]
        if args[0] not in ("image.push",):
            cmd += ["--profile", "example"]
        cmd += ["--work-dir", str(self.work), "--cache-dir", str(self.cache)]
        return subprocess.run(cmd, cwd=ROOT, env={**self.env, **(extra_env or {})},
                              capture_output=True, text=True, timeout=timeout)

    def ok(self, *args: str, **kw) -> subprocess.CompletedProcess:
        proc = self.inv(*args, **kw)
        if proc.returncode != 0:
            raise AssertionError(f"inv {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stderr[-6000:]}")
        return proc

    def manifest(self) -> dict:
        return json.loads((self.work / "build-manifest.json").read_text())
