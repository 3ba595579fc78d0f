"""Fault suite of ``inv fetch``: real CLI processes, real ``kill -9``, a real full disk.

Every case ends with a PLAIN RE-RUN of the same command that must give what an uninterrupted
run gives (the same tree id, files and status), with no manual step and nothing left behind
(``*.part`` files, ``src/.<name>.tmp-*`` / ``.import-*`` trees, temporary or lock files in the
cache).  Git upstreams are made slow on purpose (``upstreams.slow_git_config``: the upstream's
``upload-pack`` is throttled) so that a fetch is really in flight when the signal arrives;
kill points are seeded (``faults.kill_points``) inside the phases an uninterrupted run of the
same machine measured, or triggered by what appears on disk (the first object in the cache,
the first ``.part`` byte, the import directory).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import faults
import pytest
from upstreams import random_bytes, release_tarball, slow_git_config, tar_bytes

from askbuild import fetching, gitutil

REPO = Path(__file__).resolve().parent.parent
#: bytes per second of the throttled git upstream
RATE = 600_000


# -- helpers ----------------------------------------------------------------------------------

@pytest.fixture
def big(git_upstream):
    """An upstream whose pinned tree holds ~0.75 MB of incompressible files (a few commits)."""
    up = git_upstream("big")
    for i in range(3):
        up.commit({f"data/blob{i}.bin": random_bytes(256 << 10, i),
                   f"src/f{i}.c": f"int f{i}(void) {{ return {i}; }}\n"}, f"commit {i}")
    up.tag("v1")
    return up


def cli_env(project, **extra: str) -> dict[str, str]:
    return {"ASKBUILD_PROJECT_ROOT": str(project.root), "ASKBUILD_WORK_DIR": str(project.work),
            "ASKBUILD_CACHE_DIR": str(project.cache), **extra}


def tree_state(tree: Path) -> tuple[str, str, str, str]:
    """What a user sees of a work tree: HEAD, its tree id, the tracked files, the status."""
    def git(*args: str) -> str:
        return gitutil.out(list(args), cwd=tree)
    return (git("rev-parse", "HEAD"), git("rev-parse", "HEAD^{tree}"), git("ls-files"),
            git("status", "--porcelain", "--untracked-files=all"))


def upstream_state(up, rev: str) -> tuple[str, str, str, str]:
    """The same facts for what an uninterrupted fetch of ``rev`` checks out."""
    commit = up.rev(rev)
    files = gitutil.out(["ls-tree", "-r", "--name-only", commit], cwd=up.bare)
    return commit, gitutil.out(["rev-parse", f"{commit}^{{tree}}"], cwd=up.bare), files, ""


def leftovers(work: Path, cache: Path) -> list[str]:
    """Everything an interrupted run may leave that a finished run must have removed."""
    found: list[Path] = []
    src = work / "src"
    if src.is_dir():
        found += [p for p in src.iterdir() if p.name.startswith(".")]
    found += list(cache.rglob("*.part"))
    found += [p for p in (cache / "tarballs" / ".incoming").rglob("*") if p.is_file()]
    found += list((cache / "tarballs" / "imports").glob(".import.*"))
    git = cache / "git"
    if git.is_dir():
        found += [p for p in git.iterdir() if p.name.startswith(".")]
        for repo in git.glob("*.git"):
            found += list(repo.glob("*.lock")) + list((repo / "refs").rglob("*.lock"))
            found += list(repo.glob("objects/pack/tmp_*")) + list(repo.glob("objects/??/tmp_*"))
    return sorted(str(p) for p in found)


def wait_then_kill(args: list[str], env: dict, ready: Callable[[], bool],
                   limit: float = 60) -> tuple[subprocess.CompletedProcess, bool]:
    """Start ``inv ARGS``; ``kill -9`` its whole process group as soon as ``ready()`` holds
    (polled every few ms).  Returns the completed process and whether the kill happened."""
    proc = faults.start(*args, env=env)
    deadline = time.monotonic() + limit
    fired = False
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)
            fired = True
            break
        time.sleep(0.003)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), fired


def objects_in(repo: Path) -> bool:
    return any(repo.glob("objects/??/*")) or any(repo.glob("objects/pack/*"))


def timeline(env: dict, repo: Path, src: Path) -> dict[str, float]:
    """Run ``inv fetch`` to the end and note when the first object reached the cache and
    when the work tree appeared (seconds after the start)."""
    t0 = time.monotonic()
    proc = faults.start("fetch", env=env)
    seen: dict[str, float] = {}
    while proc.poll() is None:
        now = time.monotonic() - t0
        if "objects" not in seen and objects_in(repo):
            seen["objects"] = now
        if "tree" not in seen and (src / "big").exists():
            seen["tree"] = now
        time.sleep(0.003)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    seen.setdefault("objects", 0.0)
    seen.setdefault("tree", time.monotonic() - t0)
    return seen


def grow(mount: Path, size: str = "64m") -> None:
    """Give the tmpfs at ``mount`` more space (the user freeing some)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)


# -- kill -9 during a git fetch -------------------------------------------------------------------

@pytest.mark.parametrize("points", [3, pytest.param(10, marks=pytest.mark.slow)])
def test_kill_9_at_seeded_points_of_a_git_fetch_then_plain_rerun(project, big, tmp_path,
                                                                 points):
    project.add_git("big", big.url, "v1", big.rev("v1"))
    slow = str(slow_git_config(tmp_path / "slow", RATE))
    ref_work, ref_cache = tmp_path / "ref-work", tmp_path / "ref-cache"
    ref_env = cli_env(project, ASKBUILD_WORK_DIR=str(ref_work),
                      ASKBUILD_CACHE_DIR=str(ref_cache), GIT_CONFIG_GLOBAL=slow)
    phases = timeline(ref_env, ref_cache / "git" / "big.git", ref_work / "src")
    reference = tree_state(ref_work / "src" / "big")
    assert reference == upstream_state(big, "v1")

    env = cli_env(project, GIT_CONFIG_GLOBAL=slow)
    lo, hi = max(0.2, phases["objects"] - 0.3), phases["tree"] + 0.2
    for delay in faults.kill_points(f"git-fetch-{points}", points, lo, hi):
        shutil.rmtree(project.work, ignore_errors=True)
        shutil.rmtree(project.cache, ignore_errors=True)
        killed, _ = faults.kill_after(delay, "fetch", env=env)
        rerun = faults.inv("fetch", env=env)
        assert rerun.returncode == 0, f"killed at {delay}s ({killed.returncode}): {rerun.stderr}"
        assert tree_state(project.work / "src" / "big") == reference, f"killed at {delay}s"
        assert leftovers(project.work, project.cache) == [], f"killed at {delay}s"


def test_kill_9_while_objects_arrive_then_plain_rerun(project, big, tmp_path):
    """The damaged cache of issue #8: the commit object is there, its files are not."""
    project.add_git("big", big.url, "v1", big.rev("v1"))
    env = cli_env(project, GIT_CONFIG_GLOBAL=str(slow_git_config(tmp_path / "slow", RATE)))
    repo = project.cache / "git" / "big.git"
    killed, fired = wait_then_kill(["fetch"], env, lambda: objects_in(repo))
    assert fired and killed.returncode == -signal.SIGKILL, killed.stderr
    commit_was_there = gitutil.git(["cat-file", "-e", big.rev("v1")], cwd=repo,
                                   check=False).returncode == 0

    rerun = faults.inv("fetch", env=env)

    assert rerun.returncode == 0, rerun.stderr
    assert tree_state(project.work / "src" / "big") == upstream_state(big, "v1")
    assert leftovers(project.work, project.cache) == []
    if commit_was_there:
        assert "incomplete" in rerun.stderr and "fetching it again" in rerun.stderr
    again = faults.inv("fetch", env=env)          # and it stays settled
    assert again.returncode == 0 and "fetch big: commit" not in again.stderr, again.stderr


def test_kill_9_while_the_work_tree_is_checked_out_then_plain_rerun(project, big, tmp_path):
    project.add_git("big", big.url, "v1", big.rev("v1"))
    env = cli_env(project)
    src = project.work / "src"
    killed, fired = wait_then_kill(
        ["fetch"], env, lambda: src.is_dir() and any(p.name.startswith(".big.tmp-")
                                                     for p in src.iterdir()))
    assert fired, killed.stderr
    rerun = faults.inv("fetch", env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert tree_state(src / "big") == upstream_state(big, "v1")
    assert leftovers(project.work, project.cache) == []


# -- a full disk ----------------------------------------------------------------------------------

def test_full_disk_during_a_git_fetch_says_so_and_a_rerun_heals(project, big):
    project.add_git("big", big.url, "v1", big.rev("v1"))
    env = cli_env(project)
    with faults.tmpfs(project.cache, "400k"):
        full = faults.inv("fetch", env=env)
        assert full.returncode == 1, full.stderr
        repo = project.cache / "git" / "big.git"
        faults.assert_clean_message(full, "source big", "no space left on device",
                                    str(repo), "free")
        assert "check the network" not in full.stderr
        grow(project.cache)
        rerun = faults.inv("fetch", env=env)
        assert rerun.returncode == 0, rerun.stderr
        assert tree_state(project.work / "src" / "big") == upstream_state(big, "v1")
        assert leftovers(project.work, project.cache) == []


def test_full_disk_while_the_work_tree_is_written_says_so(project, big):
    project.add_git("big", big.url, "v1", big.rev("v1"))
    env = cli_env(project)
    with faults.tmpfs(project.work, "300k"):
        full = faults.inv("fetch", env=env)
        assert full.returncode == 1, full.stderr
        faults.assert_clean_message(full, "source big", "no space left on device",
                                    str(project.work / "src"), "free")
        assert not (project.work / "src" / "big").exists()
        grow(project.work)
        rerun = faults.inv("fetch", env=env)
        assert rerun.returncode == 0, rerun.stderr
        assert tree_state(project.work / "src" / "big") == upstream_state(big, "v1")
        assert leftovers(project.work, project.cache) == []


@pytest.fixture
def heavy_tarball(http_server):
    """A ~600 KB incompressible release tarball served over HTTP (locked)."""
    data = tar_bytes([("dir", "heavy-1.0"),
                      ("file", "heavy-1.0/blob.bin", random_bytes(600 << 10, 7)),
                      ("file", "heavy-1.0/README", "heavy\n")])
    return http_server.add("heavy-1.0.tar.gz", data), data


def test_full_disk_during_a_download_says_so_not_network(project, heavy_tarball):
    url, data = heavy_tarball
    project.add_tarball("heavy", url, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    env = cli_env(project)
    with faults.tmpfs(project.cache, "256k"):
        full = faults.inv("fetch", env=env)
        assert full.returncode == 1, full.stderr
        faults.assert_clean_message(full, "source heavy", "no space left on device",
                                    str(project.cache), "free")
        assert "network" not in full.stderr and "lock --update" not in full.stderr
        assert list(project.cache.rglob("*.part")) == []
        grow(project.cache)
        rerun = faults.inv("fetch", env=env)
        assert rerun.returncode == 0, rerun.stderr
        tree = project.work / "src" / "heavy"
        assert (tree / "blob.bin").read_bytes() == random_bytes(600 << 10, 7)
        assert leftovers(project.work, project.cache) == []


def test_full_disk_during_extraction_says_so_not_corrupt(project, heavy_tarball):
    url, data = heavy_tarball
    project.add_tarball("heavy", url, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    env = cli_env(project)
    with faults.tmpfs(project.work, "300k"):
        full = faults.inv("fetch", env=env)
        assert full.returncode == 1, full.stderr
        faults.assert_clean_message(full, "source heavy", "no space left on device",
                                    str(project.work / "src"), "free")
        assert "corrupt" not in full.stderr
        assert not (project.work / "src" / "heavy").exists()
        grow(project.work)
        rerun = faults.inv("fetch", env=env)
        assert rerun.returncode == 0, rerun.stderr
        assert (project.work / "src" / "heavy" / "README").read_text() == "heavy\n"
        assert tree_state(project.work / "src" / "heavy")[3] == ""
        assert leftovers(project.work, project.cache) == []


# -- kill -9 during a tarball download / extraction ----------------------------------------------

def test_kill_9_during_a_download_then_plain_rerun(project, heavy_tarball, http_server):
    url, data = heavy_tarball
    project.add_tarball("heavy", url, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    env = cli_env(project)
    http_server.rate = 200_000
    killed, fired = wait_then_kill(
        ["fetch"], env, lambda: any(p.stat().st_size > 0 for p in project.cache.rglob("*.part")))
    assert fired, killed.stderr
    assert list(project.cache.rglob("*.part"))          # the kill left a partial file
    http_server.rate = None
    rerun = faults.inv("fetch", env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert (project.work / "src" / "heavy" / "blob.bin").read_bytes() == \
        random_bytes(600 << 10, 7)
    assert leftovers(project.work, project.cache) == []


def test_kill_9_during_extraction_then_plain_rerun(project, http_server, tmp_path):
    files = {f"d{i // 100}/f{i}.c": f"int v{i} = {i};\n" * 20 for i in range(400)}
    data = release_tarball("many-1.0", files)
    url = http_server.add("many-1.0.tar.gz", data)
    project.add_tarball("many", url, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    ref = fetching.fetch(project.settings(work_dir=tmp_path / "ref"), ["many"])["many"]
    expected = tree_state(ref)
    env = cli_env(project)
    src = project.work / "src"
    killed, fired = wait_then_kill(
        ["fetch"], env, lambda: src.is_dir() and any(src.glob(".many.import-*/.tree.extract-*")))
    assert fired, killed.stderr
    assert any(src.glob(".many.import-*"))              # the kill left the import behind
    rerun = faults.inv("fetch", env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert tree_state(src / "many") == expected
    assert leftovers(project.work, project.cache) == []


# -- concurrent runs ---------------------------------------------------------------------------

def _concurrent_project(project, big, git_upstream, http_server) -> dict[str, tuple]:
    project.add_git("big", big.url, "v1", big.rev("v1"))
    small = git_upstream("small")
    small.release("v2", {"x.c": "int x;\n"})
    project.add_git("small", small.url, "v2")                   # unlocked: both resolve it
    data = release_tarball("t-1.0", {"t.c": "int t;\n"})
    url = http_server.add("t-1.0.tar.gz", data)
    project.add_tarball("t", url, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    return {"big": upstream_state(big, "v1"), "small": upstream_state(small, "v2")}


def _run_together(envs: list[dict]) -> list[subprocess.CompletedProcess]:
    procs = [faults.start("fetch", env=e) for e in envs]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


def test_two_concurrent_fetches_of_one_work_dir(project, big, git_upstream, http_server,
                                                 tmp_path):
    expected = _concurrent_project(project, big, git_upstream, http_server)
    env = cli_env(project, GIT_CONFIG_GLOBAL=str(slow_git_config(tmp_path / "slow", RATE)))
    for r in _run_together([env, env]):
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
    for name, state in expected.items():
        assert tree_state(project.work / "src" / name) == state
    assert (project.work / "src" / "t" / "t.c").read_text() == "int t;\n"
    assert leftovers(project.work, project.cache) == []


def test_two_work_dirs_sharing_one_cache_fetch_at_once(project, big, git_upstream, http_server,
                                                        tmp_path):
    expected = _concurrent_project(project, big, git_upstream, http_server)
    slow = str(slow_git_config(tmp_path / "slow", RATE))
    works = [tmp_path / "w1", tmp_path / "w2"]
    envs = [cli_env(project, ASKBUILD_WORK_DIR=str(w), GIT_CONFIG_GLOBAL=slow) for w in works]
    for r in _run_together(envs):
        assert r.returncode == 0, r.stderr
    for w in works:
        for name, state in expected.items():
            assert tree_state(w / "src" / name) == state
        assert leftovers(w, project.cache) == []
    gitutil.git(["fsck", "--no-progress", "--connectivity-only"],
                cwd=project.cache / "git" / "big.git")


PUBLISH = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from askbuild import examples
    from askbuild.settings import Settings
    root = Path(sys.argv[1])
    while not (root / "go").exists():
        time.sleep(0.001)
    s = Settings(project_root=root, work_dir=root / "work", cache_dir=root / "cache")
    up = examples.publish(s)
    print(up["thing"]["commit"], up["lib"]["sha256"])
""")


def test_two_first_time_example_publishes_at_once(tmp_path):
    from test_examples import make_project

    from askbuild import examples
    for round_ in range(3):
        root = tmp_path / f"r{round_}"
        s = make_project(root)
        procs = [subprocess.Popen([sys.executable, "-c", PUBLISH, str(root)], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        time.sleep(0.3)
        (root / "go").touch()
        outs = [p.communicate(timeout=60) for p in procs]
        for p, (_out, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err
        assert outs[0][0] == outs[1][0]
        commit, sha = outs[0][0].split()
        dest = s.example_upstreams_dir
        stamp = examples.read_json(dest / "published.json")
        assert stamp["upstreams"]["thing"]["commit"] == commit
        assert gitutil.out(["rev-parse", "v1.0^{commit}"], cwd=dest / "thing.git") == commit
        gitutil.git(["fsck", "--no-progress"], cwd=dest / "thing.git")
        assert hashlib.sha256((dest / "lib-1.0.tar.xz").read_bytes()).hexdigest() == sha
        assert sorted(p.name for p in dest.iterdir()) == [
            ".publish.lock", "lib-1.0.tar.xz", "published.json", "thing.git"]
