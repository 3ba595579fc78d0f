"""Issue 9: a no-op ``inv patch`` answers from its stamp without spawning git, and every kind of
change still takes the full path and is handled exactly as before (a changed series is applied
again, user work is refused, the build names the problem).  Git calls are counted with a
``git`` wrapper first on PATH that logs each call, in real CLI subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import imagefixtures as fx
import pytest
from faults import inv
from patchfixtures import DEV, make_project

from askbuild import imaging, patchqueue
from askbuild.settings import Settings


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
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return calls


class Patched:
    """A project whose source ``up`` was patched (clean + near), a CLI runner logging git."""

    def __init__(self, tmp_path: Path) -> None:
        self.project = make_project(tmp_path, kinds=["clean", "near"])
        self.s = self.project.settings
        self.tree = self.s.source_tree("up")
        self.series = self.project.root / "patches" / "up"
        self.env, self.log = _git_logger(tmp_path)

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
        proc = inv(*args, "--work-dir", str(self.s.work_dir), "--cache-dir",
                   str(self.s.cache_dir),
                   env={**self.env, "ASKBUILD_PROJECT_ROOT": str(self.project.root)})
        assert (proc.returncode == 0) == ok, proc.stdout + proc.stderr
        return proc

    def patch(self, ok: bool = True) -> tuple[subprocess.CompletedProcess, list[str]]:
        proc = self.run("patch", ok=ok)
        return proc, _calls(self.log)

    def settle(self) -> None:
        """Patch until the no-op spawns no git (the first no-op after applying may have to
        look at racily clean index entries once)."""
        for _ in range(3):
            _, calls = self.patch()
            if not calls:
                return
        pytest.fail(f"a no-op `inv patch` still runs git: {calls[:5]}")

    def head(self) -> str:
        return subprocess.run(["git", "-C", str(self.tree), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()

    def git(self, *args: str) -> None:
        subprocess.run(["git", "-C", str(self.tree), *args], check=True, capture_output=True,
                       env={**os.environ, **DEV})


@pytest.fixture
def patched(tmp_path) -> Patched:
    p = Patched(tmp_path)
    _, calls = p.patch()
    assert calls, "the first patch must run git"
    p.settle()
    return p


def test_noop_patch_spawns_no_git_and_reports_the_same(patched):
    full = patchqueue.tree_state(patched.s, "up")
    head = patched.head()
    proc, calls = patched.patch()
    assert calls == []
    assert "unchanged" in proc.stdout + proc.stderr
    assert patched.head() == head and patchqueue.tree_state(patched.s, "up") == full


def _same_size_edit(path: Path, old: bytes, new: bytes) -> None:
    """Replace ``old`` by ``new`` (same length) in ``path`` keeping its size and mtime (only
    ctime moves)."""
    st = path.stat()
    data = path.read_bytes()
    assert old in data and len(old) == len(new)
    path.write_bytes(data.replace(old, new, 1))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_patch_file_edit_with_same_size_and_mtime_is_applied(patched):
    _same_size_edit(patched.series / "0001-clean.patch", b"OURS", b"MINE")
    _, calls = patched.patch()
    assert any(c.split()[:1] == ["am"] or " am " in f" {c} " for c in calls), calls
    assert "clean line 5 MINE" in (patched.tree / "lib" / "clean.c").read_text()
    patched.settle()
    assert "clean line 5 MINE" in (patched.tree / "lib" / "clean.c").read_text()


EXTRA = """\
From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001
From: Dev <dev@example.org>
Date: Tue, 3 Mar 2026 00:00:00 +0000
Subject: [PATCH] lib: add extra.c

---
diff --git a/lib/extra.c b/lib/extra.c
new file mode 100644
index 0000000..1111111
--- /dev/null
+++ b/lib/extra.c
@@ -0,0 +1 @@
+extra
"""


def test_series_reorder_and_new_patch_are_applied(patched):
    series = patched.series / "series"
    series.write_text("# our series\n0002-near.patch\n0001-clean.patch\n")
    patched.patch()
    rec = patchqueue.tree_state(patched.s, "up")
    assert [p["file"] for p in rec["patches"]] == ["0002-near.patch", "0001-clean.patch"]
    patched.settle()
    (patched.series / "0003-extra.patch").write_text(EXTRA)
    series.write_text(series.read_text() + "0003-extra.patch\n")
    _, calls = patched.patch()
    assert calls
    assert (patched.tree / "lib" / "extra.c").read_text() == "extra\n"
    assert patchqueue.tree_state(patched.s, "up")["patches"][-1]["file"] == "0003-extra.patch"
    patched.settle()


def test_lock_move_takes_the_full_path(patched):
    up = patched.project.upstream
    text = patched.s.sources_file.read_text()
    patched.s.sources_file.write_text(text.replace(up.v1, up.v2).replace('"v1"', '"v2"'))
    _, calls = patched.patch()
    assert calls
    assert patchqueue.tree_state(patched.s, "up")["base"] == up.v2
    assert "near line 10 OURS" in (patched.tree / "lib" / "near.c").read_text()


def test_commit_in_the_tree_is_refused_as_before(patched):
    (patched.tree / "mine.txt").write_text("user work\n")
    patched.git("add", "mine.txt")
    patched.git("commit", "-q", "-m", "mine")
    proc, calls = patched.patch(ok=False)
    assert calls and "commits the patch series did not make" in proc.stderr


def test_uncommitted_edit_is_refused_as_before(patched):
    f = patched.tree / "lib" / "near.c"
    _same_size_edit(f, b"near line 3", b"NEAR LINE 3")
    proc, calls = patched.patch(ok=False)
    assert calls and "uncommitted changes" in proc.stderr and "lib/near.c" in proc.stderr
    assert "NEAR LINE 3" in f.read_text(), "the edit must survive"


def test_untracked_file_is_accepted_by_patch_but_named_by_the_build_check(patched):
    (patched.tree / "notes.txt").write_text("scratch\n")
    proc, calls = patched.patch()       # inv patch does not care about untracked files
    assert calls                         # (but a stat saw the directory change: full path)
    assert "notes.txt" in (patchqueue.patch_state_problem(patched.s, "up") or "")


def test_build_check_answers_without_git_and_sees_edits(patched, tmp_path):
    assert patchqueue.patch_state_problem(patched.s, "up") is None    # full check: stamps
    env = {**patched.env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    code = ("from askbuild.settings import Settings; from askbuild import patchqueue; "
            f"s = Settings(project_root={str(patched.project.root)!r}, "
            f"work_dir={str(patched.s.work_dir)!r}, cache_dir={str(patched.s.cache_dir)!r}); "
            "print(patchqueue.patch_state_problem(s, 'up'))")
    out = subprocess.run([sys.executable, "-c", code],
                         env={**os.environ, **env}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None" and _calls(patched.log) == []
    _same_size_edit(patched.tree / "lib" / "near.c", b"near line 3", b"NEAR LINE 3")
    assert "uncommitted" in (patchqueue.patch_state_problem(patched.s, "up") or "")


# -- inv image --no-load -----------------------------------------------------------------------

def _image_project(tmp_path: Path) -> Path:
    """A project root holding a copy of this project's images/ and recipes/ (edited freely)."""
    root = tmp_path / "project"
    for d in ("images", "recipes"):
        shutil.copytree(fx.ROOT / d, root / d, symlinks=True)
    return root


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    if not shutil.which(fx.CC):
        pytest.skip("needs the cross compiler")
    return fx.compile_programs(tmp_path_factory.mktemp("programs"))


@pytest.fixture
def imaged(tmp_path, programs):
    """A complete work directory, imaged once: (settings, first result)."""
    work = tmp_path / "work"
    fx.make_work(work, programs)
    s = Settings(project_root=_image_project(tmp_path), work_dir=work,
                 cache_dir=fx.shared_cache_dir())
    return s, imaging.image(s, tag="unit", load=False)


def _stat(p: Path) -> tuple[int, int]:
    st = p.stat()
    return st.st_ino, st.st_mtime_ns


def test_noop_image_spawns_no_git_and_keeps_archive_and_record(imaged, tmp_path):
    s, first = imaged
    env, log = _git_logger(tmp_path)
    env.update(CI="true", DOCKER_HOST=f"unix://{tmp_path}/no-such.sock",
               ASKBUILD_PROJECT_ROOT=str(s.project_root))
    args = ("image", "--no-load", "--tag", "unit", "--work-dir", str(s.work_dir),
            "--cache-dir", str(s.cache_dir))
    record, archive = s.image_record.read_bytes(), _stat(first.archive)
    proc = inv(*args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert _calls(log) == []
    assert "unchanged" in proc.stdout + proc.stderr
    assert s.image_record.read_bytes() == record and _stat(first.archive) == archive
    assert imaging.read_record(s)["image_id"] == first.image_id


def _rebuilt(s: Settings, first, **opts) -> imaging.ImageResult:
    """Image again; assert the archive was written anew (not the no-op answer)."""
    before = _stat(first.archive) if first.archive.exists() else None
    result = imaging.image(s, load=False, **{"tag": "unit", **opts})
    assert _stat(result.archive) != before, "the image must be made again"
    return result


def test_changed_staging_file_rebuilds(imaged):
    s, first = imaged
    ko = s.staging_dir / "lib/modules" / fx.RELEASE / "extra" / "fci.ko"
    st = ko.stat()
    ko.chmod(0o600)
    ko.chmod(stat.S_IMODE(st.st_mode))          # same bytes, same mtime: only ctime moved
    again = _rebuilt(s, first)
    assert again.image_id == first.image_id      # same inputs, same image


def test_changed_image_toml_manifest_and_options_rebuild(imaged):
    s, first = imaged
    toml = s.project_root / "images" / "cmm" / "image.toml"
    text = toml.read_text()
    assert "\n[labels]\n" in text
    toml.write_text(text.replace("\n[labels]\n", '\n[labels]\n"org.example.noop" = "yes"\n'))
    labelled = _rebuilt(s, first)
    assert labelled.labels["org.example.noop"] == "yes"
    manifest = json.loads(s.build_manifest.read_text())
    manifest["sources"]["ask"]["ref"] = "fixture-2.0"
    s.build_manifest.write_text(json.dumps(manifest))
    versioned = _rebuilt(s, labelled)
    assert versioned.labels["org.opencontainers.image.version"] == "fixture-2.0"
    tagged = _rebuilt(s, versioned, tag="other")
    assert tagged.ref.endswith(":other")
    assert imaging.image(s, tag="other", load=False).archive_sha256 == tagged.archive_sha256


def test_replaced_archive_is_hashed_again(imaged):
    s, first = imaged
    assert imaging.read_record(s) is not None
    st = first.archive.stat()
    data = bytearray(first.archive.read_bytes())
    data[-1] ^= 0xFF
    first.archive.write_bytes(bytes(data))
    os.utime(first.archive, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert imaging.read_record(s) is None         # stat changed: hashed, and it differs
    again = _rebuilt(s, first)                     # and the image is made again
    assert again.archive_sha256 == first.archive_sha256


def test_the_main_job_checks_each_tree_once(patched, monkeypatch):
    """Within ``one_check_per_run`` (the main job's patch and build steps) a tree found as its
    stamp says is not walked again while its stamp file stays the same; a change of the
    index, the record or the series is still seen (the stamp's facts, compared first, watch
    them and the refs); outside it every call walks the tree."""
    from askbuild.patchqueue import record
    from askbuild.sources import load_sources
    s = patched.s
    sources = load_sources(s)
    layers = patchqueue.load_layers(s, sources)["up"]
    walks = []
    real = record.index_clean
    monkeypatch.setattr(record, "index_clean", lambda t: walks.append(t) or real(t))

    def current() -> bool:
        return record.stamp_current(s, "up", layers, sources) is not None
    assert current() and current() and len(walks) == 2             # no run: every call
    with patchqueue.one_check_per_run():
        assert current() and current() and current() and len(walks) == 3
        for f in (s.source_tree("up") / ".git" / "index", s.patch_record("up")):
            st = f.stat()
            os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
            assert not current()                                   # git's index, the record
            os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        p = patched.series / "0001-clean.patch"
        p.write_bytes(p.read_bytes() + b"\n")
        assert not current()                                       # the series changed
    assert len(walks) == 3
