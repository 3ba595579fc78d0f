"""Shared pytest set-up: an isolated environment for every test, plus the upstream fixtures
of :mod:`tests.upstreams`.  Keep this small: put reusable helpers in their own modules."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from upstreams import GitUpstream, Project, TarballServer  # noqa: E402

from askbuild import console  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    """No user config, no ASKBUILD_* from the caller, plain console output."""
    for key in list(os.environ):
        if key.startswith("ASKBUILD_") and key != "ASKBUILD_DEBUG":
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg-config")))
    monkeypatch.setenv("ASKBUILD_PLAIN", "1")
    console.reset_console()
    yield
    console.reset_console()


@pytest.fixture
def project(tmp_path) -> Project:
    """A throwaway project root with work and cache dirs (see upstreams.Project)."""
    return Project(tmp_path)


@pytest.fixture
def git_upstream(tmp_path):
    """Factory: ``git_upstream("name")`` -> a new bare upstream repository (file:// URL)."""
    root = tmp_path / "upstreams"
    root.mkdir(exist_ok=True)
    return lambda name: GitUpstream(root, name)


@pytest.fixture
def http_server():
    """A TarballServer on 127.0.0.1 (stopped after the test)."""
    server = TarballServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    """A reachable Docker engine for the whole session: the running one, or a dockerd started
    here (vfs, no bridge, no iptables) and stopped at the end (see imagefixtures)."""
    import imagefixtures as fx

    eng = fx.start_or_reuse_engine(tmp_path_factory.mktemp("dockerd"))
    if eng is None:
        pytest.skip("no Docker engine reachable and dockerd is not installed (inv setup)")
    yield eng
    eng.stop()
