"""Issue 9: a no-op verb answers from stamps without spawning git, and every kind of change
still takes the full path.  Git calls are counted with a ``git`` wrapper first on PATH that
logs each call, in a real CLI subprocess."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from faults import inv

from askbuild import fetching, sources


def _git_logger(tmp_path: Path) -> tuple[dict, Path]:
    """An environment whose PATH starts with a ``git`` that logs its arguments to a file."""
    bindir = tmp_path / "logbin"
    bindir.mkdir()
    log = tmp_path / "git-calls.log"
    real = shutil.which("git")
    wrapper = bindir / "git"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}, log


def _calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _fetch(project, env: dict) -> subprocess.CompletedProcess:
    proc = inv("fetch", "--work-dir", str(project.work), "--cache-dir", str(project.cache),
               env={**env, "ASKBUILD_PROJECT_ROOT": str(project.root)})
    assert proc.returncode == 0, proc.stderr
    return proc


def _one_git_source(project, git_upstream):
    up = git_upstream("g")
    up.release("v1", {"a.c": "int a;\n"})
    up.release("v2", {"a.c": "int a = 2;\n"})
    project.add_git("g", up.url, "v1", up.rev("v1"))
    return up


def test_noop_fetch_spawns_no_git(project, git_upstream, tmp_path):
    _one_git_source(project, git_upstream)
    env, log = _git_logger(tmp_path)
    first = _fetch(project, env)
    assert _calls(log), "the first fetch must run git"
    log.unlink()
    again = _fetch(project, env)
    assert _calls(log) == []
    tree = project.work / "src" / "g"
    assert first.stderr.splitlines()[-1] == again.stderr.splitlines()[-1]   # same report
    assert (tree / "a.c").read_text() == "int a;\n"


def test_lock_move_takes_the_full_path(project, git_upstream, tmp_path):
    up = _one_git_source(project, git_upstream)
    env, log = _git_logger(tmp_path)
    _fetch(project, env)
    _fetch(project, env)      # stamped
    text = project.sources_file.read_text().replace(up.rev("v1"), up.rev("v2"))
    project.sources_file.write_text(text.replace('"v1"', '"v2"'))
    log.unlink(missing_ok=True)
    _fetch(project, env)
    assert _calls(log), "a moved lock must be checked with git"
    assert (project.work / "src" / "g" / "a.c").read_text() == "int a = 2;\n"


def test_base_tag_moved_by_hand_is_seen(project, git_upstream):
    up = _one_git_source(project, git_upstream)
    s = project.settings()
    src = sources.load_sources(s)["g"]
    fetching.fetch(s, [])
    tree = s.source_tree("g")
    assert sources.fetched(s, src) == up.rev("v1")
    subprocess.run(["git", "-C", str(tree), "commit", "-q", "--allow-empty", "-m", "x"],
                   check=True, env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL":
                                    "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})
    subprocess.run(["git", "-C", str(tree), "tag", "-f", "askbuild/base", "HEAD"], check=True,
                   capture_output=True)
    assert sources.fetched(s, src) is None


def test_deleted_cache_is_seen(project, git_upstream):
    _one_git_source(project, git_upstream)
    s = project.settings()
    src = sources.load_sources(s)["g"]
    fetching.fetch(s, [])
    assert sources.fetched(s, src)
    shutil.rmtree(s.git_cache_repo("g"))
    assert sources.fetched(s, src) is None
    fetching.fetch(s, [])          # the full path rebuilds the cache the tree borrows from
    assert sources.fetched(s, src)
    assert (s.source_tree("g") / "a.c").read_text() == "int a;\n"


def test_pending_base_move_marker_is_seen(project, git_upstream):
    _one_git_source(project, git_upstream)
    s = project.settings()
    src = sources.load_sources(s)["g"]
    fetching.fetch(s, [])
    marker = s.source_tree("g") / ".git" / fetching.MOVE_MARKER
    marker.write_text("{}")
    assert sources.fetched(s, src) is None
