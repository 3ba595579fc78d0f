"""``inv manifests.rehearse``: the generated pod spec run under a real Docker engine with qemu,
against an image assembled from the fixture staging tree (tests/imagefixtures: fixture cmm in
the foreground, fixture dpa_app, modules with the fixture release) and loaded into the engine.

Proves, from outside: both selection modes pass (init container picks the right set with the
dry run and exits 0, cmm serves with its output in ``docker logs``, SIGTERM ends it with 0), a
node with no set fails in the init container with the seed's error; a wrong image script is a
failed check named in the error; an image without the dry run is refused before any container
runs; nothing is left behind (containers, temporary directories), also after Ctrl-C.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import uuid
from pathlib import Path

import faults
import imagefixtures as fx
import pytest

from askbuild import imaging, manifests, manifests_rehearsal
from askbuild.errors import ImageError
from askbuild.settings import Settings

pytestmark = [pytest.mark.docker, pytest.mark.qemu, pytest.mark.slow,
              pytest.mark.skipif(not shutil.which(fx.CC), reason="needs the cross compiler")]

PROJECT_DATA = ("recipes", "examples", "patches", "kernel", "images")
SELECT = "images/cmm/select-dpa-config.sh"
INIT = "images/cmm/init_dpa.sh"


@pytest.fixture(scope="module")
def client(engine):
    c = engine.client()
    yield c
    c.close()


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    return fx.compile_programs(tmp_path_factory.mktemp("programs"))


def _project(root: Path) -> Path:
    for d in PROJECT_DATA:
        shutil.copytree(fx.ROOT / d, root / d, symlinks=True)
    return root


def _build(client, tmp: Path, programs, project: Path = fx.ROOT) -> tuple[Settings, str]:
    """A work directory from the fixture staging tree and its image, loaded; returns the
    settings and the tag."""
    fx.make_work(tmp / "work", programs)
    settings = Settings(project_root=project, work_dir=tmp / "work",
                        cache_dir=fx.shared_cache_dir())
    tag = f"rehearse-{uuid.uuid4().hex[:8]}"
    assert imaging.image(settings, tag=tag, load=True).loaded
    return settings, tag


@pytest.fixture(scope="module")
def image(client, programs, tmp_path_factory):
    settings, tag = _build(client, tmp_path_factory.mktemp("img"), programs)
    yield settings, tag
    client.images.remove(f"localhost/monok8s/cmm:{tag}", force=True)


def _left(client) -> list:
    return client.containers.list(all=True, filters={"label": manifests_rehearsal.REHEARSAL_LABEL})


@pytest.fixture
def scratch_tmp(tmp_path, monkeypatch):
    """Temporary directories of the rehearsal go here, so the test can see them all."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def test_rehearsal_passes_in_both_modes_and_leaves_nothing(client, image, scratch_tmp, capfd):
    settings, tag = image
    report = manifests_rehearsal.rehearse(settings, tag=tag)
    names = [c.name for c in report.checks]
    assert not report.failed
    assert names == [
        "node-name mode: init container dpa-app picks rehearsal-node's DPA set and exits 0",
        "node-name mode: main container keeps cmm serving until it is stopped",
        "node-name mode: cmm's output is in docker logs",
        "node-name mode: SIGTERM ends the main container with status 0",
        "node without a DPA set: init container exits non-zero saying "
        "NODE_NAME=node-without-dpa-config has no configuration",
        "by-label mode: init container dpa-app picks gateway-dk's DPA set and exits 0",
        "by-label mode: main container keeps cmm serving until it is stopped",
        "by-label mode: cmm's output is in docker logs",
        "by-label mode: SIGTERM ends the main container with status 0"]
    err = capfd.readouterr().err
    assert "DaemonSet cmm-gateway-dk" in err
    assert "all 9 rehearsal checks passed" in err
    assert _left(client) == []
    assert list(scratch_tmp.iterdir()) == []


def test_rehearsal_with_user_sets_selects_the_first_node(client, image, tmp_path, scratch_tmp):
    settings, tag = image
    cfg = tmp_path / "cfg"
    for node in ("edge-1.example.com", "edge-2"):
        (cfg / node).mkdir(parents=True)
        for f in manifests.DPA_FILES:
            (cfg / node / f).write_text(f"<!-- {node} {f} -->\n")
    report = manifests_rehearsal.rehearse(settings, tag=tag, dpa_configs=cfg)
    assert not report.failed
    assert report.checks[0].name.startswith(
        "node-name mode: init container dpa-app picks edge-1.example.com's DPA set")
    assert list(scratch_tmp.iterdir()) == []


def test_a_wrong_selection_fails_the_check_named(client, programs, tmp_path, scratch_tmp):
    """An image whose wrapper ignores MONOK8S_HW_PROFILE: by-label mode selects by node name,
    finds no set for the node, and the rehearsal fails naming that check."""
    project = _project(tmp_path / "project")
    script = project / SELECT
    text = script.read_text()
    assert 'if [ -n "${MONOK8S_HW_PROFILE:-}" ]; then' in text
    script.write_text(text.replace('if [ -n "${MONOK8S_HW_PROFILE:-}" ]; then', "if false; then"))
    settings, tag = _build(client, tmp_path / "b", programs, project)
    try:
        with pytest.raises(ImageError) as e:
            manifests_rehearsal.rehearse(settings, tag=tag)
    finally:
        client.images.remove(f"localhost/monok8s/cmm:{tag}", force=True)
    msg = str(e.value)
    assert "1 of 6 checks failed: by-label mode: init container dpa-app picks gateway-dk's " \
        "DPA set and exits 0" in msg
    assert _left(client) == []
    assert list(scratch_tmp.iterdir()) == []


def test_an_image_without_the_dry_run_is_refused_before_anything_runs(client, programs,
                                                                      tmp_path, scratch_tmp):
    project = _project(tmp_path / "project")
    init = project / INIT
    init.write_text(init.read_text().replace("DPA_DRY_RUN", "NO_SUCH_SWITCH"))
    settings, tag = _build(client, tmp_path / "b", programs, project)
    try:
        with pytest.raises(manifests_rehearsal.RehearsalError) as e:
            manifests_rehearsal.rehearse(settings, tag=tag)
    finally:
        client.images.remove(f"localhost/monok8s/cmm:{tag}", force=True)
    assert "/bin/init_dpa.sh has no DPA_DRY_RUN dry run" in str(e.value)
    assert _left(client) == []
    assert list(scratch_tmp.iterdir()) == []


def test_ctrl_c_leaves_no_container_and_no_directory(client, image, tmp_path):
    settings, tag = image
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = faults.start("manifests.rehearse", "--tag", tag, "--work-dir", str(settings.work_dir),
                        "--cache-dir", str(settings.cache_dir), env={"TMPDIR": str(tmp)})
    try:
        seen = faults.read_until(proc.stderr, "main container cmm")
        assert "main container cmm" in seen, seen
        assert _left(client), "a container runs when the rehearsal is interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert _left(client) == []
    assert list(tmp.iterdir()) == []


def test_no_engine_is_a_clear_error(image, tmp_path):
    settings, tag = image
    proc = faults.inv("manifests.rehearse", "--tag", tag, "--work-dir", str(settings.work_dir),
                      "--cache-dir", str(settings.cache_dir),
                      env={"DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    assert proc.returncode == 1
    faults.assert_clean_message(proc, "no Docker engine reachable at unix://", "DOCKER_HOST")
