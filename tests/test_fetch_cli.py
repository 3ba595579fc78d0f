"""`inv fetch` / `inv lock` through the real command line: exit codes and messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from askbuild import gitutil

REPO = Path(__file__).resolve().parent.parent
INV = Path(sys.executable).parent / "inv"


def run_inv(project, *args: str, env: dict[str, str] | None = None):
    full_env = {**os.environ, "ASKBUILD_PROJECT_ROOT": str(project.root),
                "ASKBUILD_WORK_DIR": str(project.work), "ASKBUILD_CACHE_DIR": str(project.cache),
                "CI": "true", **(env or {})}
    full_env.pop("ASKBUILD_PLAIN", None)
    return subprocess.run([str(INV), "--search-root", str(REPO), *args], env=full_env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def upstream(git_upstream):
    up = git_upstream("widget")
    up.release("v1.0", {"main.c": "int main;\n"})
    return up


def test_cli_locked_with_an_unlocked_source_exits_1_with_one_paragraph(project, upstream):
    project.add_git("widget", upstream.url, "v1.0")
    r = run_inv(project, "fetch", "--source", "widget", "--locked")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert r.stderr.startswith("error: source(s) widget have no lock entry")
    assert "fix: run `inv lock --source widget`" in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 3
    assert not (project.work / "src" / "widget").exists()


def test_cli_fetch_then_lock_update(project, upstream):
    project.add_git("widget", upstream.url, "v1.0")
    r = run_inv(project, "fetch")
    assert r.returncode == 0, r.stderr
    assert "not locked; resolved v1.0" in r.stderr
    tree = project.work / "src" / "widget"
    v1 = upstream.rev("v1.0")
    assert gitutil.out(["rev-parse", "HEAD"], cwd=tree) == v1

    upstream.commit({"main.c": "int main2;\n"}, "widget: second take")
    upstream.tag("v1.0", force=True)
    r = run_inv(project, "lock", "--update", "--source", "widget")
    assert r.returncode == 0, r.stderr
    assert f"widget: {v1} -> {upstream.rev('v1.0')}" in r.stderr
    assert "widget: second take" in r.stderr


def test_cli_unreachable_upstream_exits_1_without_traceback(project, tmp_path):
    project.add_git("widget", f"file://{tmp_path}/gone.git", "v1.0", "2" * 40)
    r = run_inv(project, "fetch")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "error: source widget: cannot fetch" in r.stderr and "ASKBUILD_MIRRORS" in r.stderr


def test_cli_debug_shows_the_traceback(project, tmp_path):
    project.add_git("widget", f"file://{tmp_path}/gone.git", "v1.0", "2" * 40)
    r = run_inv(project, "fetch", "--debug")
    assert r.returncode == 1 and "Traceback" in r.stderr
