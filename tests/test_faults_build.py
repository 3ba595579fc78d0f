"""Fault suite of ``inv build``: real CLI processes, real signals, a real full disk.

Every case ends with a PLAIN RE-RUN that must give the same artifacts (sha256) as an
uninterrupted build, with no manual step.  The fixture (buildfixtures.FAULT_*) cross-compiles
a small library whose one slow unit waits ``FIXTURE_SLEEP`` seconds, so a step is running when
the signal arrives; ``FIXTURE_SLEEP`` is not part of any key.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import faults
import pytest
from buildfixtures import (
    fault_project,
    fault_sources,
    shell_project,
    shell_recipe,
)

from askbuild import building
from askbuild.errors import ConfigError
from askbuild.fsutil import sha256_file

pytestmark = pytest.mark.skipif(not shutil.which("aarch64-linux-gnu-gcc"),
                                reason="needs the cross compiler")
COMPONENTS = ["data", "liba", "app"]


def build(work: Path, project: Path, *, sleep: float = 0, jobs: int = 2,
          timeout: float = 120) -> subprocess.CompletedProcess:
    return faults.inv("build", "--work-dir", str(work), "--cache-dir", str(work.parent / "cache"),
                      "--jobs", str(jobs), env=_env(project, sleep), timeout=timeout)


def _env(project: Path, sleep: float) -> dict:
    return {"ASKBUILD_PROJECT_ROOT": str(project), "FIXTURE_SLEEP": str(sleep)}


def start_build(work: Path, project: Path, sleep: float) -> subprocess.Popen:
    return faults.start("build", "--work-dir", str(work), "--cache-dir",
                        str(work.parent / "cache"), "--jobs", "2", env=_env(project, sleep))


def manifest(work: Path) -> dict:
    return json.loads((work / "build-manifest.json").read_text())


def artifacts(work: Path) -> dict[str, list[tuple[str | None, str]]]:
    """component -> [(staged path, sha256)] from the manifest, checked against the files."""
    out = {}
    for name, c in manifest(work)["components"].items():
        out[name] = sorted((a["staged"], a["sha256"]) for a in c["artifacts"])
        for a in c["artifacts"]:
            if a["staged"]:
                staged = work / "staging" / a["staged"]
                assert sha256_file(staged)[0] == a["sha256"], staged
    return out


def wait_for_process(work: Path, needle: str, proc: subprocess.Popen, limit: float = 30) -> None:
    """Until a process whose command line holds ``needle`` runs with its cwd under ``work``."""
    deadline = time.monotonic() + limit
    while not any(needle in p for p in faults.processes_with_cwd_under(work)):
        if proc.poll() is not None:
            raise AssertionError(f"the build ended first: {proc.communicate()}")
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.05)


def kill_leftovers(work: Path, proc: subprocess.Popen | None = None) -> None:
    """After a test (also a failed one): nothing it started keeps running."""
    if proc is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for line in faults.processes_with_cwd_under(work):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)


@pytest.fixture
def reaper():
    """Register (work dir, process) pairs to clean up whatever the test's outcome."""
    started: list[tuple[Path, subprocess.Popen | None]] = []
    yield lambda work, proc=None: started.append((work, proc))
    for work, proc in started:
        kill_leftovers(work, proc)


def survivors(work: Path, limit: float = 3.0) -> list[str]:
    """Processes still running under ``work`` once ``limit`` seconds have passed (or none)."""
    deadline = time.monotonic() + limit
    while (left := faults.processes_with_cwd_under(work)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    """The project, and the artifacts of an uninterrupted build (the reference)."""
    tmp = tmp_path_factory.mktemp("faults-build")
    project = fault_project(tmp / "project")
    ref = tmp / "reference" / "work"
    fault_sources(ref)
    proc = build(ref, project)
    assert proc.returncode == 0, proc.stderr
    return project, artifacts(ref)


def fresh_work(tmp_path: Path) -> Path:
    work = tmp_path / "w" / "work"
    fault_sources(work)
    return work


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                           (signal.SIGINT, 130, "interrupted (SIGINT)")])
def test_signal_stops_the_build_at_once_and_a_rerun_heals(tmp_path, fixture, reaper, sig, code,
                                                          word):
    project, reference = fixture
    work = fresh_work(tmp_path)
    proc = start_build(work, project, sleep=60)
    reaper(work, proc)
    wait_for_process(work, "sleep 60", proc)
    t0 = time.monotonic()
    proc.send_signal(sig)                          # to askbuild alone, as a user or CI does
    out, err = proc.communicate(timeout=15)
    took = time.monotonic() - t0
    assert proc.returncode == code, err
    print(f"TOOK {took:.2f}")
    assert took < 2.5, f"took {took:.1f}s to stop"
    assert word in err and "Traceback" not in err, err
    assert survivors(work, limit=0.5) == []        # make, sh, sleep: all gone
    man = manifest(work)
    assert man["status"] == "interrupted"
    st = {n: c["status"] for n, c in man["components"].items()}
    assert st == {"data": "built", "liba": "interrupted", "app": "pending"}
    assert _settings(work, project).build_record("data").exists()
    assert not _settings(work, project).build_record("liba").exists()
    # A plain re-run: finishes exactly what was left, same bytes as the uninterrupted build.
    again = build(work, project)
    assert again.returncode == 0, again.stderr
    st = {n: c["status"] for n, c in manifest(work)["components"].items()}
    assert st == {"data": "cached", "liba": "built", "app": "built"}
    assert artifacts(work) == reference


def _settings(work: Path, project: Path):
    from askbuild.settings import Settings
    return Settings(project_root=project, work_dir=work, cache_dir=work.parent / "cache")


def test_kill_9_of_askbuild_alone_takes_every_step_process_with_it(tmp_path, fixture, reaper):
    """``kill -9`` of askbuild only (its steps run in their own process groups): make and the
    command make runs die too (PDEATHSIG + the step supervisor), nothing is left writing into
    the work dir, and a plain re-run finishes the build."""
    project, reference = fixture
    work = fresh_work(tmp_path)
    proc = start_build(work, project, sleep=60)
    reaper(work, proc)
    wait_for_process(work, "sleep 60", proc)
    proc.kill()
    proc.communicate()
    assert survivors(work, limit=1.5) == []
    again = build(work, project)
    assert again.returncode == 0, again.stderr
    st = {n: c["status"] for n, c in manifest(work)["components"].items()}
    assert st == {"data": "cached", "liba": "built", "app": "built"}
    assert artifacts(work) == reference


def test_kill_9_of_the_group_at_seeded_points_then_rerun_heals(tmp_path, fixture, reaper):
    """Power loss (``kill -9`` of askbuild's whole process group) at seeded moments of a ~2 s
    build: the re-run rebuilds exactly the components without a done record and gives the same
    artifacts."""
    project, reference = fixture
    seed = "kill9-group"
    for i, delay in enumerate(faults.kill_points(seed, 3, 0.3, 2.6)):
        work = tmp_path / f"k{i}" / "work"
        fault_sources(work)
        reaper(work)
        faults.kill_after(delay, "build", "--work-dir", str(work), "--cache-dir",
                          str(work.parent / "cache"), "--jobs", "2", env=_env(project, 1),
                          sig=signal.SIGKILL)
        assert survivors(work) == [], f"seed {seed} delay {delay}"
        s = _settings(work, project)
        unfinished = {n for n in COMPONENTS if not s.build_record(n).exists()}
        again = build(work, project)
        assert again.returncode == 0, (seed, delay, again.stderr)
        st = {n: c["status"] for n, c in manifest(work)["components"].items()}
        assert {n for n, v in st.items() if v == "built"} == unfinished, (seed, delay, st)
        assert artifacts(work) == reference, (seed, delay)


def test_two_builds_at_once_one_waits(tmp_path, fixture, reaper):
    project, reference = fixture
    work = fresh_work(tmp_path)
    gate = tmp_path / "gate"            # the first build's step runs until the gate exists
    first = faults.start("build", "--work-dir", str(work), "--cache-dir",
                         str(work.parent / "cache"), "--jobs", "2",
                         env={**_env(project, 0), "FIXTURE_GATE": str(gate)})
    reaper(work, first)
    wait_for_process(work, "sleep 0.1", first)
    second = faults.start("build", "--work-dir", str(work), "--cache-dir",
                          str(work.parent / "cache"), "--jobs", "2", env=_env(project, 0))
    said = faults.read_until(second.stderr, "waiting for another askbuild run")
    gate.touch()
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    _, rest = second.communicate(timeout=120)
    assert second.returncode == 0, said + rest
    assert "waiting for another askbuild run" in said
    assert f"pid {first.pid}" in said
    st = {n: c["status"] for n, c in manifest(work)["components"].items()}
    assert set(st.values()) == {"cached"}            # the second found everything done
    assert artifacts(work) == reference


# -- a full disk ------------------------------------------------------------------------------

BIG = 3 << 20
BIG_RECIPES = {"big": f"""\
source = "app"
inputs = ["conf"]
steps = [["sh", "-c", "head -c {BIG} /dev/zero > big.bin"]]
[[artifacts]]
path = "big.bin"
stage = "usr/share/big.bin"
"""}


def test_full_disk_while_staging_then_rerun_with_space(tmp_path):
    """The step's 3 MiB artifact fits, its copy into staging does not: a clear message naming
    the staging path and the free space (exit 1), no done record, no partial staged file; with
    space again a plain re-run builds it completely."""
    project = fault_project(tmp_path / "project", BIG_RECIPES)
    with faults.tmpfs(tmp_path / "small", "16m") as mnt:
        work = mnt / "work"
        fault_sources(work)
        filler = faults.fill(mnt, leave=BIG + (1 << 20))
        proc = faults.inv("build", "--work-dir", str(work), "--cache-dir",
                          str(tmp_path / "cache"), env={"ASKBUILD_PROJECT_ROOT": str(project)},
                          timeout=120)
        assert proc.returncode == 1, proc.stderr
        faults.assert_clean_message(proc, "no space left on device", "MiB free",
                                    str(work / "staging" / "usr/share/big.bin"))
        s = _settings(work, project)
        assert not s.build_record("big").exists()
        staged = list((work / "staging").rglob("*")) if (work / "staging").exists() else []
        assert [p for p in staged if p.is_file()] == []
        filler.unlink()
        again = faults.inv("build", "--work-dir", str(work), "--cache-dir",
                           str(tmp_path / "cache"), env={"ASKBUILD_PROJECT_ROOT": str(project)},
                           timeout=120)
        assert again.returncode == 0, again.stderr
        assert (work / "staging/usr/share/big.bin").read_bytes() == b"\0" * BIG
        assert manifest(work)["status"] == "success"
        assert sorted(p.name for p in (work / "staging/usr/share").iterdir()) == ["big.bin"]


def test_full_disk_inside_a_step_fails_with_its_log(tmp_path):
    """A step that hits ENOSPC itself fails like any step: exit 2 with its last lines."""
    project = fault_project(tmp_path / "project", BIG_RECIPES)
    with faults.tmpfs(tmp_path / "small", "16m") as mnt:
        work = mnt / "work"
        fault_sources(work)
        filler = faults.fill(mnt, leave=1 << 20)
        proc = faults.inv("build", "--work-dir", str(work), "--cache-dir",
                          str(tmp_path / "cache"), env={"ASKBUILD_PROJECT_ROOT": str(project)},
                          timeout=120)
        assert proc.returncode == 2, proc.stderr
        faults.assert_clean_message(proc, "big: `sh -c head -c", "No space left on device",
                                    str(work / "logs/big.log"))
        assert not _settings(work, project).build_record("big").exists()
        filler.unlink()
        again = faults.inv("build", "--work-dir", str(work), "--cache-dir",
                           str(tmp_path / "cache"), env={"ASKBUILD_PROJECT_ROOT": str(project)},
                           timeout=120)
        assert again.returncode == 0, again.stderr
        assert (work / "staging/usr/share/big.bin").stat().st_size == BIG


# -- containment: nothing is written or deleted outside the staging tree ----------------------

def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def test_placeholder_holding_an_absolute_path_is_refused_up_front(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    marker = tmp_path / "step-ran"
    shared = f'[vars]\ndest = "{outside}"\n'
    s = shell_project(tmp_path, {
        "a": shell_recipe(script=f"touch {marker}; echo x > out.txt", stage="{dest}/evil",
                          extra='')}, shared=shared)
    with pytest.raises(ConfigError) as ei:
        building.build(s, [], prepare=False)
    msg = str(ei.value)
    assert str(s.recipes_dir / "components/a.toml") in msg and "artifacts[0]" in msg
    assert f"{outside}/evil" in msg and "is an absolute path" in msg
    assert ei.value.exit_code == 1
    assert list(outside.iterdir()) == [] and not marker.exists()   # refused before building


def test_symlink_in_staging_pointing_out_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("precious\n")
    s = shell_project(tmp_path, {"a": shell_recipe(script="echo x > out.txt")})
    (s.staging_dir / "usr").mkdir(parents=True)
    (s.staging_dir / "usr/share").symlink_to(outside)
    with pytest.raises(ConfigError) as ei:
        building.build(s, [], prepare=False)
    assert "usr/share/t/a.txt" in str(ei.value) and "through a symlink" in str(ei.value)
    assert _tree(outside) == {"keep.txt": b"precious\n"}
    # Without the link the same build works.
    (s.staging_dir / "usr/share").unlink()
    building.build(s, [], prepare=False)
    assert (s.staging_dir / "usr/share/t/a.txt").read_text() == "x\n"
    assert _tree(outside) == {"keep.txt": b"precious\n"}


def test_symlink_made_while_building_is_refused_before_copying(tmp_path):
    """The step itself plants the link (after the up-front check): the copy is refused."""
    outside = tmp_path / "outside"
    outside.mkdir()
    s = shell_project(tmp_path, {"a": shell_recipe(
        script=f"mkdir -p {tmp_path}/work/staging/usr && ln -s {outside} "
               f"{tmp_path}/work/staging/usr/share; echo x > out.txt")})
    with pytest.raises(ConfigError) as ei:
        building.build(s, [], prepare=False)
    assert str(s.recipes_dir / "components/a.toml") in str(ei.value)
    assert list(outside.iterdir()) == []
    assert not s.build_record("a").exists()


@pytest.mark.parametrize("same_key", [False, True])
def test_tampered_record_deletes_and_writes_nothing_outside(tmp_path, capsys, same_key):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("precious\n")
    s = shell_project(tmp_path, {"a": shell_recipe(script="echo x > out.txt")})
    building.build(s, [], prepare=False)
    rec_path = s.build_record("a")
    rec = json.loads(rec_path.read_text())
    rec["artifacts"][0]["staged"] = str(victim) if same_key else "../../outside/victim.txt"
    if not same_key:
        rec["key"] = "0" * 64                      # not up to date: the rebuild unstages
    rec["staged_tree"] = {"from": str(outside), "dest": f"../../{outside.name}"}
    rec_path.write_text(json.dumps(rec))
    (s.staging_dir / "usr/share/t/a.txt").unlink()  # up to date: it would be re-staged
    man = building.build(s, [], prepare=False)
    assert man["components"]["a"]["status"] == "built"
    assert victim.read_text() == "precious\n"
    assert _tree(outside) == {"victim.txt": b"precious\n"}
    err = capsys.readouterr().err
    assert f"ignoring {rec_path}" in err
    assert err.count(f"ignoring {rec_path}") == 1          # said once, however often asked
    assert (s.staging_dir / "usr/share/t/a.txt").read_text() == "x\n"
    assert json.loads(rec_path.read_text())["artifacts"][0]["staged"] == "usr/share/t/a.txt"


def test_in_staging_rules(tmp_path):
    st = tmp_path / "staging"
    st.mkdir()
    assert building.in_staging(st, "usr/bin/x") == st / "usr/bin/x"
    for bad in ("/etc/passwd", "../x", "usr/../../x", "", ".", "./", None):
        with pytest.raises(building.OutsideStaging):
            building.in_staging(st, bad)
    (st / "lnk").symlink_to("/")
    with pytest.raises(building.OutsideStaging, match="through a symlink"):
        building.in_staging(st, "lnk/tmp/x")
    (st / "inner").symlink_to("usr")                 # a link that stays inside is fine
    assert building.in_staging(st, "inner/bin/x") == st / "inner/bin/x"
    os.symlink(tmp_path / "elsewhere", st / "file")  # a final link pointing out is refused
    with pytest.raises(building.OutsideStaging):
        building.in_staging(st, "file")


def test_link_planted_before_restaging_is_refused(tmp_path):
    """Up to date, its staged file gone, and a link now leads out where it would go back: the
    copy is refused, nothing is written outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    s = shell_project(tmp_path, {"a": shell_recipe(script="echo x > out.txt")})
    building.build(s, [], prepare=False)
    shutil.rmtree(s.staging_dir / "usr/share")
    (s.staging_dir / "usr/share").symlink_to(outside)
    with pytest.raises(ConfigError) as ei:
        building.build(s, [], prepare=False)
    assert str(s.recipes_dir / "components/a.toml") in str(ei.value)
    assert "through a symlink" in str(ei.value)
    assert list(outside.iterdir()) == []


def test_restage_and_unstage_never_follow_a_link_out(tmp_path, capsys):
    """The record-driven copies and deletions check each path at the moment they act."""
    from askbuild.settings import Settings
    s = Settings(project_root=tmp_path, work_dir=tmp_path / "work", cache_dir=tmp_path / "c")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("precious\n")
    artifact = tmp_path / "artifact"
    artifact.write_text("new\n")
    (s.staging_dir / "usr").mkdir(parents=True)
    (s.staging_dir / "usr/share").symlink_to(outside)
    rec = {"component": "a", "artifacts": [{"file": str(artifact), "size": 4,
                                             "staged": "usr/share/victim", "mode": None}]}
    with pytest.raises(ConfigError, match="build-a.json: cannot put back a staged file"):
        building.records.restage(s, rec)
    building.records.unstage(s, rec)
    assert (outside / "victim").read_text() == "precious\n"
    assert "not deleting the old staged 'usr/share/victim'" in capsys.readouterr().err
