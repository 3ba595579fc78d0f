"""Fetch odds and ends: concurrent runs, progress output, work tree usability."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from upstreams import release_tarball

from askbuild import console, download, fetching, gitutil
from askbuild.errors import NetworkError

REPO = Path(__file__).resolve().parent.parent


def test_two_concurrent_runs_share_the_cache_safely(project, git_upstream, tmp_path):
    up = git_upstream("widget")
    for i in range(3):
        up.release(f"v{i}", {f"f{i}.c": f"{i}\n" * 1000})
    project.add_git("widget", up.url, "v2", up.rev("v2"))
    script = textwrap.dedent("""
        import sys
        from askbuild import fetching
        from askbuild.settings import Settings
        s = Settings.load(project_root=sys.argv[1], work_dir=sys.argv[2], cache_dir=sys.argv[3])
        print(fetching.fetch(s, ["widget"])["widget"])
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(project.root),
                               str(tmp_path / f"work{i}"), str(project.cache)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    for i in range(2):
        tree = tmp_path / f"work{i}" / "src" / "widget"
        assert gitutil.out(["rev-parse", "HEAD"], cwd=tree) == up.rev("v2")
    cache = project.cache / "git" / "widget.git"
    gitutil.git(["fsck", "--no-progress", "--connectivity-only"], cwd=cache)


def test_work_tree_is_a_usable_git_repository(project, git_upstream):
    up = git_upstream("widget")
    up.commit({"a": "1\n"}, "first")
    up.release("v1", {"a": "2\n"})
    project.add_git("widget", up.url, "v1", up.rev("v1"))
    tree = fetching.fetch(project.settings(), ["widget"])["widget"]
    # shallow history is known to the work tree: log/fsck do not trip over missing parents
    assert gitutil.out(["log", "--format=%s"], cwd=tree) == "release v1"
    gitutil.git(["fsck", "--no-progress"], cwd=tree)
    # the patch step can commit on top
    (tree / "b").write_text("patched\n")
    gitutil.git(["add", "b"], cwd=tree)
    gitutil.git(["commit", "-q", "-m", "p"], cwd=tree, env=gitutil.FIXED_IDENTITY)
    assert gitutil.out(["rev-list", "--count", "askbuild/base..HEAD"], cwd=tree) == "1"


def test_plain_progress_lines_when_not_interactive(project, http_server, capsys):
    data = release_tarball("p-1", {"x": "y"})
    url = http_server.add("p-1.tar.gz", data)
    project.add_tarball("p", url, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    fetching.fetch(project.settings(), ["p"])
    err = capsys.readouterr().err
    assert f"download p: {url} ..." in err
    assert f"download p: {url}: done ({len(data)}/{len(data)} bytes)" in err
    assert "\r" not in err and "\x1b[" not in err


def test_rich_progress_on_a_terminal(project, http_server, git_upstream, monkeypatch):
    monkeypatch.setattr(console, "is_interactive", lambda: True)
    console.reset_console()
    data = release_tarball("p-1", {"x": "y" * 100_000})
    url = http_server.add("p-1.tar.gz", data)
    project.add_tarball("p", url, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    up = git_upstream("g")
    up.release("v1", {"x": "y"})
    project.add_git("g", up.url, "v1", up.rev("v1"))
    trees = fetching.fetch(project.settings(), [])
    assert set(trees) == {"p", "g"}


def test_git_progress_reports_objects(tmp_path, git_upstream):
    up = git_upstream("w")
    for i in range(5):
        up.commit({f"f{i}": str(i)}, f"c{i}")
    seen = []
    repo = tmp_path / "c.git"
    gitutil.git(["init", "-q", "--bare", str(repo)])
    gitutil.git_progress(["fetch", "--progress", "--", up.url, "main"], cwd=repo,
                         on_progress=lambda phase, done, total: seen.append((phase, done, total)))
    # (git shows "Receiving objects" only for fetches slower than its progress delay;
    # the remote's counting is reported at once)
    counting = [s for s in seen if s[0] == "Counting objects"]
    assert counting and counting[-1][1] == counting[-1][2] > 0


def test_download_progress_total_and_retries_are_bounded(tmp_path, http_server, monkeypatch):
    monkeypatch.setattr(download, "BACKOFF", 0.01)
    url = http_server.add("f.bin", b"z" * 1000)
    http_server.fail("f.bin", "500", times=10)
    with pytest.raises(NetworkError) as e:
        download.download(url, tmp_path, what="f")
    assert "500" in str(e.value)
    assert http_server.requests["f.bin"] == download.ATTEMPTS
    assert list(tmp_path.iterdir()) == []


HOLD = textwrap.dedent("""
    import sys, time
    from askbuild import runlock
    from askbuild.settings import Settings
    s = Settings.load(project_root=sys.argv[1], work_dir=sys.argv[2], cache_dir=sys.argv[3])
    with runlock.work_dir(s, "build"):
        print("held", flush=True)
        time.sleep(float(sys.argv[4]))
""")


@pytest.mark.parametrize("verb", ["fetch", "lock"])
def test_fetch_and_lock_wait_for_the_work_dir_lock(project, git_upstream, capsys, verb):
    from askbuild import locking
    up = git_upstream("widget")
    up.release("v1", {"a": "1\n"})
    project.add_git("widget", up.url, "v1")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(project.root), str(project.work),
                               str(project.cache), "1.5"], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        if verb == "fetch":
            fetching.fetch(project.settings(), ["widget"])
        else:
            locking.lock(project.settings(), ["widget"])
        waited = time.monotonic() - start
    finally:
        holder.wait(timeout=30)
    assert waited > 0.8
    err = capsys.readouterr().err
    assert "waiting for another askbuild run" in err and "inv build" in err
