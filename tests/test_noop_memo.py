"""A no-op verb through ``askbuild`` (``python -m askbuild``, what ``./run`` runs) is answered
from its record without importing the engine, and any change the verb itself would have seen
makes the next run do the work again (askbuild/noopmemo.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import patchfixtures as pf
import pytest
from test_noop_build import Project as BuildProject
from test_noop_build import needs_toolchain

ROOT = Path(__file__).resolve().parent.parent
ASKBUILD = [sys.executable, "-m", "askbuild"]


def _env(project: pf.Project, xdg: Path, **extra: str) -> dict:
    env = dict(os.environ, CI="true", ASKBUILD_PLAIN="1", ASKBUILD_MEMO_DEBUG="1",
               ASKBUILD_PROJECT_ROOT=str(project.root), XDG_CACHE_HOME=str(xdg))
    env.pop("ASKBUILD_NO_MEMO", None)
    env.update(extra)
    return env


def _patch(project: pf.Project, env: dict, *flags: str) -> subprocess.CompletedProcess:
    s = project.settings
    return subprocess.run([sys.executable, *flags, "-m", "askbuild", "patch", "--work-dir",
                           str(s.work_dir), "--cache-dir", str(s.cache_dir)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _memo_line(proc: subprocess.CompletedProcess) -> str:
    """What the run said about its record: whether it replayed, or why not, then whether it
    recorded, or why not."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("askbuild memo:")]
    assert lines, proc.stderr
    return " / ".join(lines)


def _output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + "".join(ln + "\n" for ln in proc.stderr.splitlines()
                                 if not ln.startswith("askbuild memo:"))


def _settle() -> None:
    time.sleep(0.15)            # past the racy window (noopmemo.RACY_NS) of the last change


def _recorded(project: pf.Project, env: dict) -> subprocess.CompletedProcess:
    """Patch until a no-op run is recorded; return that run."""
    for _ in range(4):
        _settle()
        proc = _patch(project, env)
        assert proc.returncode == 0, proc.stderr
        if _memo_line(proc).endswith(" witnesses)") and "memo: recorded" in proc.stderr:
            return proc
    raise AssertionError(f"no run was recorded: {proc.stderr}")


@pytest.fixture
def project(tmp_path: Path) -> pf.Project:
    return pf.make_project(tmp_path, kinds=["clean", "near"])


@pytest.fixture
def xdg(tmp_path_factory) -> Path:
    """The records' home (``$XDG_CACHE_HOME``), outside the project's directories."""
    return tmp_path_factory.mktemp("xdg")


def test_noop_replays_same_output_without_the_engine(project, xdg):
    env = _env(project, xdg)
    first = _patch(project, env)
    assert first.returncode == 0 and "not recorded" in _memo_line(first)   # it applied
    noop = _recorded(project, env)
    assert "unchanged" in noop.stderr
    again = _patch(project, env, "-X", "importtime")
    assert again.returncode == 0
    assert _memo_line(again).startswith("askbuild memo: replayed")
    imported = {ln.rsplit("|", 1)[1].strip() for ln in again.stderr.splitlines()
                if ln.startswith("import time:")}
    assert "askbuild.noopmemo" in imported
    assert not imported & {"askbuild.patchqueue", "askbuild.settings", "askbuild.cli"}
    assert _output(_patch(project, env)) == _output(noop)
    off = _patch(project, {**env, "ASKBUILD_NO_MEMO": "1"})
    assert "askbuild memo" not in off.stderr and _output(off) == _output(noop)


def test_one_patch_edit_is_applied_not_replayed(project, xdg):
    env = _env(project, xdg)
    _patch(project, env)
    noop = _recorded(project, env)
    patch = project.series_dir / "0002-near.patch"
    patch.write_text(patch.read_text().replace("\nSubject: ", "\nSubject: (edited) ", 1))
    edited = _patch(project, env)
    assert "not replayed" in edited.stderr and "0002-near.patch" in edited.stderr
    assert _output(edited) != _output(noop)
    row = [ln for ln in edited.stderr.splitlines() if ln.startswith("up ") and "0002" in ln]
    assert len(row) == 1 and "unchanged" not in row[0] and "applied" in row[0], edited.stderr


def test_a_write_that_restores_size_and_mtime_is_seen(project, xdg):
    env = _env(project, xdg)
    _patch(project, env)
    _recorded(project, env)
    f = project.series_dir / "0001-clean.patch"
    st = f.stat()
    data = f.read_bytes()
    f.write_bytes(data.replace(b"clean", b"CLEAN", 1))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))   # same size, same mtime: ctime moved
    assert f.stat().st_mtime_ns == st.st_mtime_ns and f.stat().st_size == st.st_size
    run = _patch(project, env)
    assert "not replayed" in run.stderr and "0001-clean.patch" in _memo_line(run) + run.stderr
    assert "memo: replayed" not in run.stderr


def test_a_new_file_in_a_listed_directory_is_seen(project, xdg):
    env = _env(project, xdg)
    _patch(project, env)
    _recorded(project, env)
    (project.series_dir / "0003-stray.patch").write_text("not in the series\n")
    run = _patch(project, env)
    assert "not replayed" in _memo_line(run)


def test_environment_and_options_are_part_of_the_key(project, xdg):
    env = _env(project, xdg)
    _patch(project, env)
    _recorded(project, env)
    other = _patch(project, {**env, "ASKBUILD_SOMETHING": "1"})
    assert "memo: replayed" not in other.stderr
    s = project.settings
    with_source = subprocess.run([*ASKBUILD, "patch", "--source", "up", "--work-dir",
                                  str(s.work_dir), "--cache-dir", str(s.cache_dir)],
                                 cwd=ROOT, env=env, capture_output=True, text=True)
    assert with_source.returncode == 0
    assert "memo: replayed" not in with_source.stderr
    if len(os.sched_getaffinity(0)) > 1:            # fewer CPUs: another default job budget
        one_cpu = subprocess.run(["taskset", "-c", str(min(os.sched_getaffinity(0))),
                                  *ASKBUILD, "patch", "--work-dir", str(s.work_dir),
                                  "--cache-dir", str(s.cache_dir)],
                                 cwd=ROOT, env=env, capture_output=True, text=True)
        assert one_cpu.returncode == 0 and "memo: replayed" not in one_cpu.stderr
    assert "memo: replayed" in _patch(project, env).stderr


def test_a_witness_changed_just_before_the_run_is_not_trusted(project, xdg):
    env = _env(project, xdg)
    _patch(project, env)
    _settle()
    sources = project.root / "recipes" / "sources.toml"
    future = time.time_ns() + 3_600 * 10**9
    os.utime(sources, ns=(future, future))          # "changed" after the run starts
    run = _patch(project, env)
    assert run.returncode == 0
    assert "not recorded" in _memo_line(run) and "sources.toml" in _memo_line(run)
    assert "memo: replayed" not in _patch(project, env).stderr


def test_a_failing_run_is_not_recorded(project, xdg):
    env = _env(project, xdg)
    _patch(project, env)
    _recorded(project, env)
    sources = project.root / "recipes" / "sources.toml"
    good = sources.read_text()
    sources.write_text(good + "\n[broken\n")
    _settle()
    for _ in range(2):
        bad = _patch(project, env)
        assert bad.returncode != 0
        assert "not recorded: exit" in _memo_line(bad)


def test_list_is_replayed_as_invoke_prints_it(tmp_path):
    env = dict(os.environ, ASKBUILD_MEMO_DEBUG="1", XDG_CACHE_HOME=str(tmp_path / "xdg"))
    env.pop("ASKBUILD_NO_MEMO", None)
    runs = [subprocess.run([*ASKBUILD, "--list"], cwd=ROOT, env=env, capture_output=True,
                           text=True) for _ in range(3)]
    plain = subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(ROOT),
                            "--list"], cwd=ROOT, capture_output=True, text=True)
    assert all(r.returncode == 0 and r.stdout == plain.stdout for r in runs)
    assert any("memo: replayed" in r.stderr for r in runs[1:]), [r.stderr for r in runs]


@needs_toolchain
def test_noop_build_keeps_its_manifest_and_is_replayed(tmp_path, xdg):
    proj = BuildProject(tmp_path)
    env = dict(os.environ, CI="true", ASKBUILD_PLAIN="1", ASKBUILD_MEMO_DEBUG="1",
               XDG_CACHE_HOME=str(xdg), **proj.env)
    env.pop("ASKBUILD_NO_MEMO", None)
    argv = [*ASKBUILD, "build", "--work-dir", str(proj.work), "--cache-dir", str(proj.cache)]

    def build() -> subprocess.CompletedProcess:
        _settle()
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc

    assert "built 1" in build().stderr
    manifest = proj.work / "build-manifest.json"
    first_noop = build()
    assert json.loads(manifest.read_text())["components"]["app"]["status"] == "cached"
    built = manifest.read_bytes(), manifest.stat().st_ino
    runs = [first_noop, *(build() for _ in range(3))]
    # a repeated no-op leaves the manifest as the first no-op wrote it (same bytes, same file)
    assert (manifest.read_bytes(), manifest.stat().st_ino) == built
    assert all("build app: cached" in r.stderr and "built 0, up to date 1" in r.stderr
               for r in runs)
    assert "memo: replayed" in runs[-1].stderr, [r.stderr for r in runs]
    proj.recipe.write_text(proj.recipe.read_text().replace("cat lib/*.c > out.txt",
                                                           "cat lib/*.c lib/*.c > out.txt"))
    edited = build()
    assert "not replayed" in edited.stderr and "app.toml" in edited.stderr
    assert "built 1" in edited.stderr
    assert manifest.read_bytes() != built[0]


def test_a_tainted_recorder_stops_tracing(tmp_path):
    """A run that will not be recorded (it spawned, wrote...) pays nothing more for it."""
    from askbuild import noopmemo
    (tmp_path / "f").write_text("x")
    with noopmemo.Recorder(["patch"]) as rec:
        os.stat(tmp_path / "f")
        assert os.stat is not noopmemo._REAL["stat"] and len(rec.witnesses) == 1
        rec.taint("spawned git")
        assert all(getattr(os, n) is fn for n, fn in noopmemo._REAL.items())
        os.stat(tmp_path)
        (tmp_path / "g").write_text("y")
        assert len(rec.witnesses) == 1 and rec.impure == "spawned git"
    assert all(getattr(os, n) is fn for n, fn in noopmemo._REAL.items())
