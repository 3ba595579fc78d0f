"""Reusable upstream fixtures: real git repositories and a real HTTP server on 127.0.0.1.

* :class:`GitUpstream`: a bare repository (served as a ``file://`` URL) with tagged releases,
  fed from a private development clone.  Tags can be moved and history rewritten (old commits
  really disappear: reflogs expired, objects pruned).
* :class:`TarballServer`: a threaded HTTP server serving in-memory files, counting requests,
  able to answer with a cut-off body, an error status, or to stop entirely.
* :func:`tar_bytes`: builds tarballs (also hostile ones) from a list of member specs.
* :class:`Project`: a throwaway askbuild project root (``recipes/sources.toml``) plus work and
  cache directories, and :meth:`Project.settings` to get a ``Settings`` for it.

No vendor code: every tree here is a handful of tiny files written by the tests.
"""

from __future__ import annotations

import collections
import io
import shutil
import sys
import tarfile
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from askbuild import gitutil
from askbuild.settings import Settings


class GitUpstream:
    """A bare upstream repository with tagged releases, URL ``file:///.../<name>.git``.

    Commits are made straight into the bare repository (``--git-dir`` + ``--work-tree`` on a
    scratch directory): no push, few processes, fast fixtures."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.bare = root / f"{name}.git"
        self.dev = root / f"{name}-dev"
        self._tick = 0
        gitutil.git(["init", "-q", "--bare", "--", str(self.bare)])
        gitutil.git(["symbolic-ref", "HEAD", "refs/heads/main"], cwd=self.bare)
        self.dev.mkdir()

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def _env(self) -> dict[str, str]:
        self._tick += 1
        date = f"{1_704_067_200 + 60 * self._tick} +0000"
        return {"GIT_AUTHOR_NAME": "Upstream Dev", "GIT_AUTHOR_EMAIL": "dev@upstream.test",
                "GIT_COMMITTER_NAME": "Upstream Dev", "GIT_COMMITTER_EMAIL": "dev@upstream.test",
                "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}

    def _git(self, *args: str, env: dict[str, str] | None = None) -> str:
        return gitutil.out(["--git-dir", str(self.bare), "--work-tree", str(self.dev), *args],
                           cwd=self.dev, env=env)

    def _write(self, files: dict[str, str | bytes | None]) -> None:
        for rel, content in files.items():
            p = self.dev / rel
            if content is None:
                p.unlink()
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                p.write_bytes(content)
            else:
                p.write_text(content)

    def commit(self, files: dict[str, str | bytes | None], message: str = "change") -> str:
        """Write (or with ``None`` delete) files and commit them on ``main``; return the SHA."""
        self._write(files)
        self._git("add", "-A")
        self._git("commit", "-q", "--allow-empty", "-m", message, env=self._env())
        return self._git("rev-parse", "HEAD")

    def tag(self, name: str, rev: str = "HEAD", *, annotated: bool = True,
            force: bool = False) -> str:
        """Tag ``rev`` (annotated by default); return the tagged commit."""
        args = ["tag"] + (["-f"] if force else [])
        if annotated:
            args += ["-a", "-m", f"release {name}"]
        self._git(*args, "--", name, rev, env=self._env())
        return self.rev(name)

    def release(self, tag: str, files: dict[str, str | bytes | None], *,
                annotated: bool = True) -> str:
        """A commit plus a tag on it; returns the commit."""
        self.commit(files, f"release {tag}")
        return self.tag(tag, annotated=annotated)

    def rewrite(self, tag: str, files: dict[str, str]) -> str:
        """Rewrite history: a new unrelated root commit becomes ``main`` and ``tag`` is moved
        onto it; every other tag goes and old commits are pruned.  Returns the new SHA."""
        for p in self.dev.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        self._write(files)
        self._git("add", "-A")
        tree = self._git("write-tree")
        sha = self._git("commit-tree", "-m", f"rewritten {tag}", tree, env=self._env())
        self._git("update-ref", "refs/heads/main", sha)
        for t in self._git("tag", "--list").split():
            self._git("tag", "-d", t)
        self.tag(tag)
        self._git("reflog", "expire", "--expire=now", "--all")
        self._git("gc", "-q", "--prune=now")
        return sha

    def rev(self, ref: str) -> str:
        return gitutil.out(["rev-parse", f"{ref}^{{commit}}"], cwd=self.bare)

    def remove(self) -> None:
        """The upstream is gone: any network access now fails."""
        shutil.rmtree(self.bare)


# -- HTTP ---------------------------------------------------------------------------------

class TarballServer:
    """Threaded HTTP server on 127.0.0.1 serving ``files`` (path -> bytes).

    ``fail(path, mode, times)`` makes the next ``times`` requests of ``path`` misbehave:
    ``"truncate"`` (announces the full length, sends half, closes), ``"cut"`` (no
    ``Content-Length``, sends half, closes: the client cannot tell it was cut), ``"500"``,
    ``"404"``.  ``rate`` (bytes per second, ``None``: unlimited) slows every body down.
    ``requests[path]`` counts requests; :meth:`stop` shuts the server down for good.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: collections.Counter[str] = collections.Counter()
        self._faults: dict[str, list[str]] = collections.defaultdict(list)
        self._lock = threading.Lock()
        self.rate: int | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                path = self.path.lstrip("/")
                with server._lock:
                    server.requests[path] += 1
                    fault = server._faults[path].pop(0) if server._faults[path] else "ok"
                data = server.files.get(path)
                if data is None or fault == "404":
                    self.send_error(404)
                    return
                if fault == "500":
                    self.send_error(500)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if fault != "cut":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if fault in ("truncate", "cut"):
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if server.rate:
                    step = max(1, server.rate // 20)
                    for i in range(0, len(data), step):
                        self.wfile.write(data[i:i + step])
                        self.wfile.flush()
                        time.sleep(0.05)
                    return
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,),
                                        daemon=True)
        self._thread.start()
        self._running = True

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def add(self, path: str, data: bytes) -> str:
        self.files[path] = data
        return self.url(path)

    def fail(self, path: str, mode: str, times: int = 1) -> None:
        with self._lock:
            self._faults[path].extend([mode] * times)

    def stop(self) -> None:
        if self._running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self._running = False


def slow_git_config(directory: Path, rate: int) -> Path:
    """A git config file that slows down every ``git upload-pack`` (so a ``file://`` fetch
    too) to about ``rate`` bytes per second: ``uploadpack.packObjectsHook`` runs
    ``git pack-objects`` through a throttle.  Point ``GIT_CONFIG_GLOBAL`` at it (the hook is
    only honoured from a global or system config).  For the fault suite: a fetch that takes
    long enough to be killed in the middle."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "throttle.py"
    step = max(1, rate // 20)
    script.write_text(textwrap.dedent(f"""\
        import subprocess, sys, time
        p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE)
        out = sys.stdout.buffer
        while chunk := p.stdout.read({step}):
            out.write(chunk)
            out.flush()
            time.sleep(0.05)
        sys.exit(p.wait())
        """))
    config = directory / "gitconfig"
    config.write_text(f"[uploadpack]\n\tpackObjectsHook = {sys.executable} {script}\n")
    return config


def random_bytes(size: int, seed: int) -> bytes:
    """``size`` incompressible bytes, the same for the same seed."""
    import random
    return random.Random(seed).randbytes(size)


# -- tarballs -----------------------------------------------------------------------------

def tar_bytes(entries: list[tuple], *, compression: str = "gz") -> bytes:
    """A tarball from specs: ``("file", name, data[, mode])``, ``("dir", name)``,
    ``("symlink", name, target)``, ``("hardlink", name, target)``, ``("chr", name)``,
    ``("blk", name)``, ``("fifo", name)``.  Members get uid/gid 1234/4321 (foreign owners)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}" if compression else "w") as tar:
        for kind, name, *rest in entries:
            ti = tarfile.TarInfo(name)
            ti.uid, ti.gid, ti.uname, ti.gname = 1234, 4321, "upstream", "upstream"
            ti.mtime = 1_700_000_000
            if kind == "file":
                data = rest[0].encode() if isinstance(rest[0], str) else rest[0]
                ti.size = len(data)
                ti.mode = rest[1] if len(rest) > 1 else 0o644
                tar.addfile(ti, io.BytesIO(data))
                continue
            if kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                ti.type, ti.linkname = tarfile.SYMTYPE, rest[0]
            elif kind == "hardlink":
                ti.type, ti.linkname = tarfile.LNKTYPE, rest[0]
            elif kind == "chr":
                ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
            elif kind == "blk":
                ti.type, ti.devmajor, ti.devminor = tarfile.BLKTYPE, 8, 0
            elif kind == "fifo":
                ti.type = tarfile.FIFOTYPE
            else:
                raise ValueError(kind)
            tar.addfile(ti)
    return buf.getvalue()


def release_tarball(top: str, files: dict[str, str], *, compression: str = "gz") -> bytes:
    """A well-formed release tarball: everything below ``top/``."""
    entries: list[tuple] = [("dir", top)]
    for name, content in files.items():
        entries.append(("file", f"{top}/{name}", content))
    return tar_bytes(entries, compression=compression)


# -- projects -----------------------------------------------------------------------------

class Project:
    """A throwaway askbuild project: ``root/recipes/sources.toml``, ``work/``, ``cache/``."""

    def __init__(self, base: Path) -> None:
        self.root = base / "project"
        self.work = base / "work"
        self.cache = base / "cache"
        (self.root / "recipes").mkdir(parents=True)

    @property
    def sources_file(self) -> Path:
        return self.root / "recipes" / "sources.toml"

    def write_sources(self, text: str) -> None:
        self.sources_file.write_text(textwrap.dedent(text).lstrip())

    def add_git(self, name: str, url: str, ref: str, commit: str | None = None) -> None:
        text = self.sources_file.read_text() if self.sources_file.exists() else ""
        text += f'\n[{name}]\nkind = "git"\nurl = "{url}"\nref = "{ref}"\n'
        if commit:
            text += f'commit = "{commit}"\n'
        self.sources_file.write_text(text)

    def add_tarball(self, name: str, url: str, ref: str = "1.0", sha256: str | None = None,
                    size: int | None = None, strip_components: int | None = None) -> None:
        text = self.sources_file.read_text() if self.sources_file.exists() else ""
        text += f'\n[{name}]\nkind = "tarball"\nurl = "{url}"\nref = "{ref}"\n'
        if sha256:
            text += f'sha256 = "{sha256}"\nsize = {size}\n'
        if strip_components is not None:
            text += f"strip_components = {strip_components}\n"
        self.sources_file.write_text(text)

    def settings(self, **kw) -> Settings:
        return Settings.load(project_root=self.root, work_dir=kw.pop("work_dir", self.work),
                             cache_dir=kw.pop("cache_dir", self.cache), **kw)
