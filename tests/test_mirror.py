"""``inv mirror``: a mirror written from a fixture project feeds a fresh machine that has only
``ASKBUILD_MIRRORS`` (over file:// and over a real static HTTP server), with the upstreams
gone; then ``--offline`` works from what that fetch brought.  Real git, real HTTP, the CLI."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faults import assert_clean_message, inv, read_until, start
from registryfixtures import free_port
from upstreams import random_bytes, release_tarball, slow_git_config

from askbuild import gitutil, locking, mirroring


def _fixture(project, git_upstream, http_server):
    """A git source (tag v1 in a 3-commit history, a later commit on main) and a tarball
    source, both locked."""
    up = git_upstream("alpha")
    up.commit({"a.c": "int a;\n"}, "first")
    up.commit({"a.c": "int a = 1;\n"}, "second")
    sha = up.release("v1", {"b.c": "int b;\n"})
    up.commit({"a.c": "int a = 2;\n"}, "after v1")
    data = release_tarball("beta-1.0", {"beta.c": "int beta;\n"})
    url = http_server.add("files/beta-1.0.tar.gz", data)
    project.add_git("alpha", up.url, "v1")
    project.add_tarball("beta", url)
    locking.lock(project.settings())
    return up, sha, data


def _env(project, **extra) -> dict:
    return {"ASKBUILD_PROJECT_ROOT": str(project.root), **extra}


def _mirror(project, out: Path, *words: str) -> subprocess.CompletedProcess:
    proc = inv("mirror", "--output", str(out), "--work-dir", str(project.work),
               "--cache-dir", str(project.cache), *words, env=_env(project), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def _line_value(proc: subprocess.CompletedProcess) -> str:
    m = re.search(r'^ASKBUILD_MIRRORS="([^"]*)"$', proc.stdout, re.MULTILINE)
    assert m, proc.stdout
    return m.group(1)


def _machine_b(tmp_path: Path, project, mirrors: str, *words: str, name: str = "b"):
    work, cache = tmp_path / f"{name}-work", tmp_path / f"{name}-cache"
    return inv("fetch", "--work-dir", str(work), "--cache-dir", str(cache), *words,
               env=_env(project, ASKBUILD_MIRRORS=mirrors, HOME=str(tmp_path / "b-home")),
               timeout=300), work


def _assert_trees(work: Path, sha: str) -> None:
    head = gitutil.out(["rev-parse", "HEAD"], cwd=work / "src" / "alpha")
    assert head == sha
    assert (work / "src" / "alpha" / "b.c").read_text() == "int b;\n"
    assert (work / "src" / "beta" / "beta.c").read_text() == "int beta;\n"


@pytest.fixture
def static_http():
    """Factory: ``static_http(DIR)`` -> base URL of ``python -m http.server`` serving DIR
    (a real process on 127.0.0.1; stopped by its PID after the test)."""
    started: list[subprocess.Popen] = []

    def start(directory: Path) -> str:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                                 "127.0.0.1", "--directory", str(directory)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return f"http://127.0.0.1:{port}/"
            time.sleep(0.05)
        raise RuntimeError("http.server did not start")

    yield start
    for proc in started:
        os.kill(proc.pid, 15)
        proc.wait(timeout=10)


def test_mirror_feeds_a_fresh_machine_over_file_and_then_offline(tmp_path, project,
                                                                git_upstream, http_server):
    up, sha, data = _fixture(project, git_upstream, http_server)
    out = tmp_path / "mirror"
    proc = _mirror(project, out)
    line = _line_value(proc)
    # one prefix per scheme+host: the git upstreams' directory and the tarball server
    pairs = dict(p.split("=", 1) for p in line.split())
    assert len(pairs) == 2, pairs
    repo = out / "file" / str(up.bare).lstrip("/")
    assert (repo / "info" / "refs").is_file()                    # served by dumb HTTP too
    assert not (repo / "shallow").exists()                       # whole history
    assert gitutil.out(["rev-parse", "v1^{commit}"], cwd=repo) == sha
    assert gitutil.out(["rev-list", "--count", sha], cwd=repo) == "3"
    tar = out / f"127.0.0.1:{http_server.port}" / "files" / "beta-1.0.tar.gz"
    assert tar.read_bytes() == data
    assert not list(out.rglob("FETCH_HEAD"))       # nothing that names machine A's cache

    up.remove()                       # no upstream is reachable any more
    http_server.stop()
    fetched, work = _machine_b(tmp_path, project, line, "--locked")
    assert fetched.returncode == 0, fetched.stderr
    _assert_trees(work, sha)
    # the mirror's own transport is gone as well: --offline works from the cache alone
    os.rename(out, tmp_path / "mirror-gone")
    offline, _ = _machine_b(tmp_path, project, line, "--offline")
    assert offline.returncode == 0, offline.stderr
    _assert_trees(work, sha)


def test_offline_reads_a_file_mirror_and_nothing_else(tmp_path, project, git_upstream,
                                                      http_server, static_http):
    """A runner with the mirror on a share and ``--offline`` from its first run: the locked
    commit and tarball come from the file:// mirror; an http:// mirror is network, which
    --offline refuses (naming the source and the cache)."""
    up, sha, _ = _fixture(project, git_upstream, http_server)
    out = tmp_path / "mirror"
    line = _line_value(_mirror(project, out))
    up.remove()
    http_server.stop()
    fetched, work = _machine_b(tmp_path, project, line, "--offline", "--locked", name="c")
    assert fetched.returncode == 0, fetched.stderr
    _assert_trees(work, sha)
    served = static_http(out)
    over_http = " ".join(f"{prefix}={served}{Path(repl.removeprefix('file://')).relative_to(out)}/"
                         for prefix, repl in (p.split("=", 1) for p in line.split()))
    refused, _ = _machine_b(tmp_path, project, over_http, "--offline", name="d")
    assert refused.returncode != 0
    assert_clean_message(refused, "--offline", "not in the cache")


def test_mirror_served_by_a_static_http_server(tmp_path, project, git_upstream, http_server,
                                               static_http):
    up, sha, _ = _fixture(project, git_upstream, http_server)
    out = tmp_path / "mirror"
    _mirror(project, out)
    base = static_http(out)
    line = mirroring.mirrors_line(out, base).split("=", 1)[1].strip('"')
    assert all(pair.split("=", 1)[1].startswith(base) for pair in line.split())
    up.remove()
    http_server.stop()
    fetched, work = _machine_b(tmp_path, project, line, "--locked")
    assert fetched.returncode == 0, fetched.stderr
    _assert_trees(work, sha)


def test_rerun_is_idempotent_and_needs_no_upstream(tmp_path, project, git_upstream,
                                                   http_server):
    up, _, _ = _fixture(project, git_upstream, http_server)
    out = tmp_path / "mirror"
    first = _line_value(_mirror(project, out))

    def snapshot() -> dict[str, tuple[int, int]]:
        return {str(p.relative_to(out)): (p.stat().st_ino, p.stat().st_mtime_ns)
                for p in sorted(out.rglob("*")) if p.is_file()}

    before = snapshot()
    # a killed run's leftover next to an entry is removed, never served
    leftover = out / "file" / str(up.bare.parent).lstrip("/") / ".alpha.git.tmp-99-deadbeef"
    leftover.mkdir()
    up.remove()
    http_server.stop()
    again = _mirror(project, out)
    assert _line_value(again) == first
    assert not leftover.exists()
    after = snapshot()
    assert after == before          # not one file rewritten: same inodes, same mtimes


def test_refusals(tmp_path, project, git_upstream, http_server):
    up = git_upstream("gamma")
    up.release("v1", {"g.c": "int g;\n"})
    project.add_git("gamma", up.url, "v1")
    # unlocked: named, with the inv lock to run
    proc = inv("mirror", "--output", str(tmp_path / "m"), "--work-dir", str(project.work),
               "--cache-dir", str(project.cache), env=_env(project))
    assert proc.returncode == 1
    assert_clean_message(proc, "gamma", "no lock entry", "inv lock")
    assert not (tmp_path / "m" / "file").exists()
    locking.lock(project.settings())
    # inside the work directory / a file
    for bad, needle in ((project.work / "mirror", "inside the work directory"),
                        (tmp_path / "afile", "is a file")):
        if needle == "is a file":
            bad.write_text("x")
        proc = inv("mirror", "--output", str(bad), "--work-dir", str(project.work),
                   "--cache-dir", str(project.cache), env=_env(project))
        assert proc.returncode == 1, proc.stderr
        assert_clean_message(proc, str(bad), needle)


def test_a_killed_mirror_run_leaves_no_entry_and_a_rerun_completes_it(tmp_path, project,
                                                                     git_upstream,
                                                                     http_server):
    """SIGKILL to the whole process group while the git entry is being written (the
    transfer is throttled): nothing half-written has the entry's name, and a plain re-run
    gives what an uninterrupted run gives."""
    up = git_upstream("alpha")
    up.commit({"big.bin": random_bytes(300_000, 1)}, "big")
    up.release("v1", {"b.c": "int b;\n"})
    project.add_git("alpha", up.url, "v1")
    locking.lock(project.settings())
    out, ref_out = tmp_path / "mirror", tmp_path / "reference"
    slow = str(slow_git_config(tmp_path / "slow", 100_000))
    proc = start("mirror", "--output", str(out), "--work-dir", str(project.work),
                 "--cache-dir", str(project.cache),
                 env=_env(project, GIT_CONFIG_GLOBAL=slow))
    try:
        read_until(proc.stderr, "mirror alpha")
        time.sleep(1.0)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.communicate(timeout=60)
    entry = out / "file" / str(up.bare).lstrip("/")
    assert not entry.exists()
    assert list(entry.parent.glob(".alpha.git.tmp-*"))         # killed while writing it
    assert mirroring.read_index(out)["entries"] == {}          # and not listed

    again = _mirror(project, out)
    reference = _mirror(project, ref_out)
    assert not list(entry.parent.glob(".alpha.git.tmp-*"))
    ref_entry = ref_out / "file" / str(up.bare).lstrip("/")
    refs = ["for-each-ref", "--format=%(refname) %(objectname)"]
    assert gitutil.out(refs, cwd=entry) == gitutil.out(refs, cwd=ref_entry)
    assert _line_value(again).replace(str(out), "") == \
        _line_value(reference).replace(str(ref_out), "")
    assert mirroring.read_index(out) == mirroring.read_index(ref_out)


def test_local_paths_get_one_entry_per_directory_never_file_root():
    """Sources under unrelated local directories (a work dir, /usr/src) must not make the line
    map ``file:///`` (every file:// URL on the runner, its own work dir's included)."""
    index = {"entries": {
        "a": {"prefix": "file:///", "root": "file", "path": "work/example-upstreams/ask.git"},
        "b": {"prefix": "file:///", "root": "file", "path": "usr/src/linux.tar.xz"},
        "c": {"prefix": "https://github.com/", "root": "github.com", "path": "nxp/fmc.git"},
        "d": {"prefix": "https://github.com/", "root": "github.com", "path": "nxp/fmlib.git"},
    }}
    assert mirroring.mirror_map(index, "file:///m/") == {
        "file:///usr/src/": "file:///m/file/usr/src/",
        "file:///work/example-upstreams/": "file:///m/file/work/example-upstreams/",
        "https://github.com/nxp/": "file:///m/github.com/nxp/"}
