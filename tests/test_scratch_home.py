"""Where the throw-away scratch repositories go (``scratch.scratch_home``).

* in RAM (a directory of the user's own, ``<ram_dir>/askbuild-<uid>``, mode 0700), each named
  after its work dir, when that file system has room;
* in the work dir when the RAM directory is off, missing, not a real directory of this user
  (a link, another owner, open to others: the RAM file system is shared by every user) or
  short of room;
* a dry run or an ``inv patch --check`` whose RAM scratch runs full (a real tmpfs, filled) is
  done again in the work dir: the same rows as a run on disk, nothing left in either place;
* ``ASKBUILD_RAM_DIR``: empty turns RAM off, a missing directory is a clear error; ``inv
  doctor`` says where the scratches go, or why not in RAM;
* scratches killed runs left in RAM are removed by the next run of the same work dir, those
  of other work dirs are left alone;
* a scratch repository is made without a git process (``scratch.init_repo``): the files and
  the config ``git init --template=`` makes, and a repository git works in.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess

import faults
import pytest
from patchfixtures import (
    add_release_v2,
    left_scratches,
    make_long_project,
)

from askbuild import hostdeps, rebasing
from askbuild import patchqueue as pq
from askbuild.errors import ConfigError
from askbuild.patchqueue import graft, patching, scratch
from askbuild.settings import Settings


def _settings(tmp_path, name: str = "work", ram: str | None = "ram") -> Settings:
    if ram is not None:
        (tmp_path / ram).mkdir(exist_ok=True)
    return Settings(work_dir=tmp_path / name, cache_dir=tmp_path / "cache",
                    ram_dir=None if ram is None else tmp_path / ram)


def test_scratches_go_to_ram_named_after_their_work_dir(tmp_path):
    one, two = _settings(tmp_path, "one"), _settings(tmp_path, "two")
    home = scratch.scratch_home(one)
    assert home.in_ram and home.parent == tmp_path / "ram" / f"askbuild-{os.geteuid()}"
    assert stat.S_IMODE(home.parent.stat().st_mode) == 0o700
    other = scratch.scratch_home(two)
    assert other.parent == home.parent and other.prefix != home.prefix
    assert scratch.scratch_home(one, ram=False) == (one.work_dir, scratch.SCRATCH_PREFIX, False)
    assert _doctor_line(one) == (True, str(home.parent))


@pytest.mark.parametrize("what", ["off", "missing", "a link", "open to others",
                                  "another user's", "short of room"])
def test_a_ram_dir_that_is_not_safe_or_has_no_room_is_not_used(tmp_path, what):
    settings = _settings(tmp_path, ram=None if what == "off" else "ram")
    mine = settings.ram_scratch_dir
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    with contextlib.ExitStack() as stack:
        if what == "missing":
            settings.ram_dir = tmp_path / "no-such-dir"
        elif what == "a link":
            mine.symlink_to(elsewhere)
        elif what == "open to others":
            mine.mkdir(mode=0o700)
            mine.chmod(0o755)
        elif what == "another user's":
            if os.geteuid() != 0:
                pytest.skip("giving a directory to another user needs root")
            mine.mkdir(mode=0o700)
            os.chown(mine, 65534, 65534)
        elif what == "short of room":                   # (8 MB: less than RAM_ROOM)
            settings.ram_dir = stack.enter_context(faults.tmpfs(tmp_path / "tmpfs", "8m"))
        assert scratch.scratch_home(settings) == (settings.work_dir, scratch.SCRATCH_PREFIX,
                                                  False)
        assert list(elsewhere.iterdir()) == []
        # inv doctor says why
        ok, detail = _doctor_line(settings)
        assert not ok and WHY[what] in detail


WHY = {"off": "off (ASKBUILD_RAM_DIR is empty)", "missing": "cannot be made",
       "a link": "not a directory of this user's own", "open to others": "(mode 0700)",
       "another user's": "not a directory of this user's own", "short of room": "MB free, less "
       "than 256 MB"}


def _doctor_line(settings: Settings) -> tuple[bool, str]:
    """What ``inv doctor``'s "scratch in RAM" line says: ok, detail."""
    check, = [c for c in hostdeps.checks(settings) if c.name == "scratch in RAM"]
    assert not check.required
    return check.test()


def _long(tmp_path, name: str):
    project = make_long_project(tmp_path / name, 40)
    add_release_v2(project)
    return project


def _rows(report) -> list[tuple]:
    return [(r["patch"], r["status"], r["commit"], r["detail"]) for r in report.rows]


@pytest.fixture
def homes(monkeypatch):
    """The place of each scratch a run made (its parent directory), the small repositories
    of a graft too."""
    made: list = []
    real, real_graft = scratch.scratch_worktree, graft.grafted_queue

    def spy(tree, base, parent, **kw):
        made.append(parent)
        return real(tree, base, parent, **kw)

    @contextlib.contextmanager
    def spy_graft(tree, base, inputs, paths, parent, **kw):
        made.append(parent)
        with real_graft(tree, base, inputs, paths, parent, **kw) as grafted:
            made.append("grafted" if grafted else "not grafted")
            yield grafted
    monkeypatch.setattr("askbuild.patchqueue.scratch_worktree", spy)
    monkeypatch.setattr(patching, "scratch_worktree", spy)
    monkeypatch.setattr(patching, "grafted_queue", spy_graft)
    return made


@pytest.mark.parametrize("verb", ["rebase --dry-run", "patch --check", "patch, grafted"])
def test_a_ram_scratch_that_runs_full_is_done_again_in_the_work_dir(tmp_path, monkeypatch,
                                                                     capsys, homes, verb):
    """A real tmpfs with room at the start that the scratch fills: the run is done again in
    the work dir (``inv patch`` on a big tree: the series applied on the tree itself, as when
    the small repository cannot stand for it), with the rows (and patch record) of a run on
    disk, and leaves no scratch anywhere."""
    if verb == "patch, grafted":
        monkeypatch.setattr(scratch, "SPARSE_FROM", 0)      # (a big tree: inv patch grafts)

    def run(project):
        if verb == "rebase --dry-run":
            return rebasing.rebase(project.settings, "up", onto="v2", dry_run=True)
        return patching.patch(project.settings, ["up"], check=verb == "patch --check")
    on_disk = _long(tmp_path, "disk")
    on_disk.settings.ram_dir = None
    want = _rows(run(on_disk))
    assert homes and set(homes) - {"grafted"} == {on_disk.settings.work_dir}
    assert ("grafted" in homes) == (verb == "patch, grafted")

    project = _long(tmp_path, "full")
    with faults.tmpfs(tmp_path / "ram", "512k") as ram:
        monkeypatch.setattr(scratch, "RAM_ROOM", 256 << 10)
        project.settings.ram_dir = ram
        homes.clear()
        assert _rows(run(project)) == want
        assert homes[0] == project.settings.ram_scratch_dir      # (tried in RAM first)
        if verb == "patch, grafted":                            # (then on the tree itself)
            assert homes == [project.settings.ram_scratch_dir, "not grafted"]
            assert pq.tree_state(project.settings, "up") == pq.tree_state(on_disk.settings,
                                                                          "up")
        else:                                                   # (done again on disk)
            assert homes[-1] == project.settings.work_dir
        assert left_scratches(project.settings) == []
    capsys.readouterr()


def test_ram_dir_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ASKBUILD_RAM_DIR", "")
    monkeypatch.setenv("ASKBUILD_WORK_DIR", str(tmp_path / "work"))
    assert Settings.load().ram_dir is None
    monkeypatch.setenv("ASKBUILD_RAM_DIR", str(tmp_path))
    assert Settings.load().ram_dir == tmp_path
    monkeypatch.setenv("ASKBUILD_RAM_DIR", str(tmp_path / "nope"))
    with pytest.raises(ConfigError) as exc:
        Settings.load()
    assert f"ASKBUILD_RAM_DIR: {tmp_path / 'nope'} is not a directory" in exc.value.message
    monkeypatch.delenv("ASKBUILD_RAM_DIR")
    assert Settings.load().ram_dir == Settings().ram_dir


def test_scratches_killed_runs_left_in_ram_go_with_the_next_run(tmp_path, capsys):
    """Only those of this work dir: another work dir's may belong to a live run."""
    project = make_long_project(tmp_path / "p", 3)
    project.settings.ram_dir = tmp_path / "ram"
    project.settings.ram_dir.mkdir()
    home = scratch.scratch_home(project.settings)
    ours = home.parent / f"{home.prefix}4242-killed"
    theirs = home.parent / f"{scratch.SCRATCH_PREFIX}0123456789abcdef-4243-live"
    for d in (ours, theirs):
        (d / ".git").mkdir(parents=True)
    assert left_scratches(project.settings) == [ours]
    assert patching.patch(project.settings, ["up"]).ok
    assert left_scratches(project.settings) == [] and theirs.is_dir()
    capsys.readouterr()


def test_a_scratch_repository_is_the_one_git_init_makes(tmp_path):
    """``scratch.init_repo`` makes what ``git init --template=`` makes in a directory beside
    it (the same files, HEAD and config, with git's probes of the file system), and git
    takes it as a repository: a commit made there is read back."""
    def git(repo, *args) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              check=True).stdout

    ours, gits = tmp_path / "ours", tmp_path / "gits"
    ours.mkdir()
    scratch.init_repo(ours)
    git(tmp_path, "init", "-q", "--template=", "--", str(gits))

    def made(repo) -> list:
        gd = repo / ".git"
        return sorted((p.relative_to(gd).as_posix(), p.is_dir()) for p in gd.rglob("*"))
    assert made(ours) == made(gits)
    assert (ours / ".git/HEAD").read_text() == (gits / ".git/HEAD").read_text()
    assert git(ours, "config", "--local", "--list") == git(gits, "config", "--local", "--list")
    assert (ours / ".git/config").stat().st_mode == (gits / ".git/config").stat().st_mode
    (ours / "f.c").write_text("x\n")
    git(ours, "add", "--", "f.c")
    git(ours, "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-q", "-m", "one")
    assert git(ours, "show", "HEAD:f.c") == "x\n"
    git(ours, "fsck", "--strict", "--no-progress")
