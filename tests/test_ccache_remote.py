"""ccache across machines on a real ``redis-server``: machine A compiles and fills Redis,
machine B (its own HOME, cache, ccache store and work directory) compiles the same component
from Redis; the manifest counts it.  The password of the Redis URL never shows.  Real
cross compiler, real ccache, the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from buildfixtures import fault_project, fault_sources
from faults import INV, ROOT
from redisfixtures import redis_server  # noqa: F401  (fixture)

from askbuild.building import ccache

UNITS = 5          # compile units of the fixture's liba (lib/u1..u4.c, slow.c)


def _machine(tmp_path: Path, name: str) -> dict[str, Path]:
    base = tmp_path / name
    m = {"home": base / "home", "work": base / "work", "cache": base / "cache"}
    m["home"].mkdir(parents=True)
    fault_sources(m["work"])
    return m


def _build(project: Path, m: dict[str, Path], *words: str) -> tuple[subprocess.CompletedProcess,
                                                                      dict]:
    """``inv build --component liba WORDS`` on machine ``m`` (no CCACHE_* from the caller)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CCACHE_", "ASKBUILD_"))}
    env.update(HOME=str(m["home"]), CI="true", ASKBUILD_PLAIN="1",
               ASKBUILD_PROJECT_ROOT=str(project))
    proc = subprocess.run([*INV, "build", "--component", "liba", "--work-dir", str(m["work"]),
                           "--cache-dir", str(m["cache"]), *words], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, start_new_session=True)
    path = m["work"] / "build-manifest.json"
    man = json.loads(path.read_text()) if path.exists() else {}
    return proc, man


def test_machine_b_compiles_from_what_machine_a_put_in_redis(tmp_path, redis_server):  # noqa: F811
    redis = redis_server()
    project = fault_project(tmp_path / "project")
    a, b = _machine(tmp_path, "a"), _machine(tmp_path, "b")

    proc, man = _build(project, a, "--ccache", "--ccache-remote", redis.url)
    assert proc.returncode == 0, proc.stderr
    assert man["ccache"]["enabled"] is True
    assert man["ccache"]["misses"] == UNITS and man["ccache"]["remote_misses"] == UNITS
    assert man["ccache"]["remote_writes"] >= UNITS and man["ccache"]["remote_errors"] == 0
    assert redis.command("DBSIZE") >= UNITS             # the results are in Redis ...
    keys = redis.command("KEYS", "*")
    assert keys and all(k.startswith("ccache:") for k in keys)   # ... written by ccache

    proc, man = _build(project, b, "--ccache", "--ccache-remote", redis.url)
    assert proc.returncode == 0, proc.stderr
    assert (b["cache"] / "ccache").is_dir()             # B's own, new, local store
    assert man["ccache"]["remote_hits"] == UNITS, man["ccache"]
    assert man["ccache"]["hits"] == UNITS and man["ccache"]["misses"] == 0


def test_the_password_is_used_but_never_shown(tmp_path, redis_server):  # noqa: F811
    secret = "s3cr3t-do-not-print"
    redis = redis_server(password=secret)
    project = fault_project(tmp_path / "project")
    a, b = _machine(tmp_path, "a"), _machine(tmp_path, "b")
    # redis-cli's spelling redis://:PASSWORD@HOST works (ccache itself would refuse it)
    proc, man = _build(project, a, "--ccache", "--ccache-remote", redis.url)
    assert proc.returncode == 0, proc.stderr
    assert man["ccache"]["remote_writes"] >= UNITS and man["ccache"]["remote_errors"] == 0
    assert redis.command("DBSIZE") >= UNITS
    proc_b, man_b = _build(project, b, "--ccache", "--ccache-remote", redis.url)
    assert man_b["ccache"]["remote_hits"] == UNITS
    for p in (proc, proc_b):
        assert secret not in p.stdout + p.stderr
    for m in (a, b):
        for f in m["work"].rglob("*"):
            if f.is_file() and not f.is_relative_to(m["work"] / "src"):
                assert secret.encode() not in f.read_bytes(), f


def test_remote_alone_implies_ccache_names_the_remote_and_warns_when_it_fails(
        tmp_path, redis_server):  # noqa: F811
    """Needs the engine lines of the report (``remote implies --ccache``, ``ccache.report``)."""
    redis = redis_server(password="right")
    project = fault_project(tmp_path / "project")
    a = _machine(tmp_path, "a")
    wrong = f"redis://:wrong-pass@127.0.0.1:{redis.port}"
    proc, man = _build(project, a, "--ccache-remote", wrong)
    assert proc.returncode == 0, proc.stderr             # compiled locally: right, only slower
    assert man["ccache"]["enabled"] is True
    assert man["ccache"]["remote"] == f"redis://:***@127.0.0.1:{redis.port}"
    assert man["ccache"]["remote_errors"] >= 1
    assert "remote storage redis://:***@" in proc.stderr and "wrong-pass" not in proc.stderr
    assert redis.command("DBSIZE") == 0


@pytest.mark.parametrize("url, shown", [
    ("redis://:pw@h:6379", "redis://:***@h:6379"),
    ("redis://user:pw@h/2", "redis://user:***@h/2"),
    ("redis://pw@h", "redis://***@h"),
    ("redis://h:6379|connect-timeout=50", "redis://h:6379|connect-timeout=50"),
    ("error talking to http://u:p@cache.example/x", "error talking to http://u:***@cache.example/x"),
])
def test_redact(url, shown):
    assert ccache.redact(url) == shown
