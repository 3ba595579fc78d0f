"""``inv image.test`` checks that the patched cmm stays in the foreground without the syslog
relay: it runs the image's entrypoint in a container (no network, ``CMM_SYSLOG_RELAY=0``, cmm's
``-F`` when its usage offers it), checks cmm still serves after a while and wrote on stdout,
then stops it with SIGTERM and checks the clean stop.

The passing image holds the example profile's cmm, built from the example vendor tree with its
local series (``examples/patches/ask/cmm``: ``-F``); the rest of the staging tree (dpa_app, fmc,
modules) comes from tests/imagefixtures.  The failing images are the same staging tree behind an
entrypoint that drops cmm's arguments (so cmm daemonizes like the vendor's), and a cmm that
ends on its own before being asked to stop.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import imagefixtures as fx
import pytest

from askbuild import building, fetching, imagetest, imaging
from askbuild import patchqueue as pq
from askbuild.errors import ImageError
from askbuild.refs import BASE_TAG
from askbuild.settings import Settings

pytestmark = [pytest.mark.docker, pytest.mark.qemu,
              pytest.mark.skipif(not shutil.which(fx.CC), reason="needs the cross compiler")]

PROJECT_DATA = ("recipes", "examples", "patches", "kernel", "images")
ENTRYPOINT = "images/cmm/cmm-entrypoint.sh"
RUN_CMM = '"$CMM_BIN" -f "$CMM_CONFIG" -n "$MAX" "$@" &'
CHECKS = [imagetest.FOREGROUND, imagetest.STDOUT, imagetest.CLEAN_STOP]


def _project(root: Path) -> Path:
    for d in PROJECT_DATA:
        shutil.copytree(fx.ROOT / d, root / d, symlinks=True)
    return root


@pytest.fixture(scope="module")
def client(engine):
    c = engine.client()
    yield c
    c.close()


@pytest.fixture(scope="module")
def example_work(tmp_path_factory):
    """A work directory whose staging tree holds the example cmm (fetched, patched with the
    example profile's series, cross-compiled) and the fixture dpa_app, fmc and modules."""
    tmp = tmp_path_factory.mktemp("example")
    project = _project(tmp / "project")
    s = Settings.load(project_root=project, work_dir=tmp / "work", cache_dir=tmp / "cache",
                      profile="example")
    names = ["ask", "fmc", "libnfnetlink", "libnetfilter_conntrack"]
    fetching.fetch(s, names)
    rows = pq.patch(s, names).rows
    assert "0001-cmm-F-stays-in-the-foreground-and-logs-on-stdout.patch" in \
        [r["patch"] for r in rows if r["source"] == "ask"]
    building.build(s, ["cmm"], prepare=False)
    programs = fx.compile_programs(tmp / "programs")
    staging = s.staging_dir
    for name in ("dpa_app", "fmc"):
        shutil.copy2(programs[name], staging / "usr/bin" / name)
    extra = staging / "lib/modules" / fx.RELEASE / "extra"
    extra.mkdir(parents=True)
    for name in ("cdx", "fci", "auto_bridge"):
        shutil.copy2(programs[name], extra / f"{name}.ko")
    commit = subprocess.run(["git", "rev-parse", BASE_TAG], cwd=s.source_tree("ask"),
                            capture_output=True, text=True, check=True).stdout.strip()
    fx.write_manifest(s.work_dir, commit)   # the kernel release of the fixture modules
    return project, s.work_dir


def _image(client, project: Path, work: Path, name: str):
    settings = Settings(project_root=project, work_dir=work, cache_dir=fx.shared_cache_dir())
    result = imaging.image(settings, tag=f"{name}-{uuid.uuid4().hex[:8]}", load=True)
    assert result.loaded
    return settings, result


@pytest.fixture(scope="module")
def example_image(client, example_work):
    project, work = example_work
    settings, result = _image(client, project, work, "fg-example")
    yield settings, result
    client.images.remove(result.ref, force=True)


def test_image_test_passes_on_the_example_image(example_image):
    settings, result = example_image
    report = imagetest.test(settings, tag=result.ref.rsplit(":", 1)[1])
    assert not report.failed
    names = [c.name for c in report.checks]
    for name in CHECKS:
        assert name in names


def test_example_cmm_serves_in_the_foreground_with_logs_on_stdout(client, example_image):
    """What the check relies on, seen from outside: -F, stdout, SIGTERM, status 0."""
    _, result = example_image
    c = client.containers.run(result.ref, command=["-F"], detach=True, network_mode="none",
                              platform="linux/arm64", environment={"CMM_SYSLOG_RELAY": "0"})
    try:
        deadline = time.monotonic() + 120
        while "cmm: serving" not in (out := c.logs(stdout=True, stderr=False).decode()) \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "cmm fixture: 5 rules from /etc/config/fastforward" in out
        c.stop(timeout=20)
        c.reload()
        assert c.attrs["State"]["ExitCode"] == 0
        stdout = c.logs(stdout=True, stderr=False).decode()
        assert "cmm: serving in the foreground (pid" in stdout and ", 5 rules" in stdout
        assert "cmm: stopping on signal 15" in stdout
        assert imagetest.DAEMONIZED not in c.logs().decode()
    finally:
        c.remove(force=True)


def test_image_test_fails_when_the_entrypoint_lets_cmm_daemonize(tmp_path, client,
                                                                 example_work, capfd):
    """The entrypoint drops cmm's arguments: without -F the example cmm daemonizes like the
    vendor's (and its syslog output is lost with the relay off)."""
    _, work = example_work
    project = _project(tmp_path / "project")
    entry = project / ENTRYPOINT
    assert RUN_CMM in entry.read_text()
    entry.write_text(entry.read_text().replace(RUN_CMM, '"$CMM_BIN" -f "$CMM_CONFIG" -n "$MAX" &'))
    settings, result = _image(client, project, work, "daemonizing")
    capfd.readouterr()
    try:
        with pytest.raises(ImageError) as e:
            imagetest.test(settings, tag=result.ref.rsplit(":", 1)[1])
    finally:
        client.images.remove(result.ref, force=True)
    assert f"{imagetest.FOREGROUND}; {imagetest.CLEAN_STOP}" in str(e.value)
    assert "2 of " in str(e.value)              # nothing else failed
    err = capfd.readouterr().err
    assert f"FAIL {imagetest.FOREGROUND}: cmm daemonized (cmm-entrypoint: cmm daemonized " \
        "(pid" in err
    assert "must stay in the foreground (cmm -F" in err
    assert f"ok   {imagetest.STDOUT}" in err       # "cmm fixture: 5 rules" before daemon()


def test_foreground_check_fails_when_cmm_ends_on_its_own(tmp_path, client):
    """A cmm that stops serving by itself (here: the fixture cmm told to exit after 1 s by the
    image's environment) ends the container before SIGTERM: the check says so, with the
    status."""
    project = _project(tmp_path / "project")
    other = tmp_path / "work"
    fx.make_work(other, fx.compile_programs(tmp_path / "programs"))
    toml = project / "images/cmm/image.toml"
    text = toml.read_text()
    assert 'env = ["PATH=' in text
    toml.write_text(text.replace('env = ["PATH=', 'env = ["FIXTURE_EXIT_AFTER=1", "PATH='))
    _, result = _image(client, project, other, "exiting")
    try:
        checks = {c.name: c for c in imagetest.foreground_checks(client, result.ref)}
        assert not checks[imagetest.FOREGROUND].ok
        assert "the container ended with status 7 before it was asked to stop" in \
            checks[imagetest.FOREGROUND].detail
        assert "fixture cmm exiting on its own" in checks[imagetest.FOREGROUND].detail
        assert checks[imagetest.CLEAN_STOP].detail == "not tried: cmm was not serving"
    finally:
        client.images.remove(result.ref, force=True)
