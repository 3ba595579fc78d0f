"""The image in a real Docker engine under qemu: load, ``inv image.test``, both cmm variants
under the entrypoint (foreground + stdout; daemon + syslog relayed), SIGTERM, and the archive
imported by containerd's ``ctr``.

A dockerd is started for the session when none is reachable (vfs, no bridge, no iptables) and
stopped by PID at the end.  Images are loaded once per module (vfs is slow).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import imagefixtures as fx
import pytest

from askbuild import imagetest, imaging
from askbuild.errors import ImageError

pytestmark = [pytest.mark.docker, pytest.mark.qemu,
              pytest.mark.skipif(not shutil.which(fx.CC), reason="needs the cross compiler")]


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    return fx.compile_programs(tmp_path_factory.mktemp("programs"))


@pytest.fixture(scope="module")
def client(engine):
    c = engine.client()
    yield c
    c.close()


def _build(tmp_path_factory, programs, cmm: str, tag: str):
    work = tmp_path_factory.mktemp(f"work-{tag}")
    fx.make_work(work, programs, cmm=cmm)
    result = imaging.image(fx.settings_for(work), tag=tag, load=True)
    assert result.loaded
    return work, result


@pytest.fixture(scope="module")
def fg_image(tmp_path_factory, programs, client):
    tag = f"fg-{uuid.uuid4().hex[:8]}"
    work, result = _build(tmp_path_factory, programs, "cmm-foreground", tag)
    yield work, result
    client.images.remove(result.ref, force=True)


@pytest.fixture(scope="module")
def daemon_image(tmp_path_factory, programs, client):
    tag = f"daemon-{uuid.uuid4().hex[:8]}"
    work, result = _build(tmp_path_factory, programs, "cmm-daemon", tag)
    yield work, result
    client.images.remove(result.ref, force=True)


@contextlib.contextmanager
def _container(client, ref, **kw):
    """A detached arm64 container without network, removed afterwards."""
    kw.setdefault("network_mode", "none")
    kw.setdefault("platform", "linux/arm64")
    c = client.containers.run(ref, detach=True, **kw)
    try:
        yield c
    finally:
        c.remove(force=True)


def _stop_promptly(c) -> str:
    """SIGTERM the container (docker stop): it must end within 15 s with status 0; its logs."""
    t0 = time.monotonic()
    c.stop(timeout=20)
    assert time.monotonic() - t0 < 15
    c.reload()
    assert c.attrs["State"]["ExitCode"] == 0
    return _logs(c)


def _logs(container) -> str:
    return container.logs(stdout=True, stderr=True).decode("utf-8", "replace")


def _wait_for(container, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = _logs(container)
        if text in out:
            return out
        container.reload()
        if container.status == "exited":
            break
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not in the logs:\n{_logs(container)}")


def test_loaded_image_is_arm64_with_the_archive_id(client, fg_image):
    _, result = fg_image
    img = client.images.get(result.ref)
    assert img.id == result.image_id
    assert img.attrs["Architecture"] == "arm64"
    assert img.attrs["Os"] == "linux"


def test_image_test_verb_passes_on_the_fixture_image(fg_image):
    work, result = fg_image
    tag = result.ref.rsplit(":", 1)[1]
    report = imagetest.test(fx.settings_for(work), tag=tag)
    assert not report.failed
    names = [c.name for c in report.checks]
    assert len(names) >= 45
    for expected in ("sha256 /etc/config/fastforward.vendor.orig", "cmm -h starts",
                     "init_dpa module order", "init_dpa missing file is a clear error",
                     "select-dpa-config missing directory is a clear error",
                     "entrypoint honours CMM_MAX_CONNECTIONS", "image architecture arm64",
                     "entrypoint fails when cmm ends before serving",
                     "image is complete (not built with --partial)"):
        assert expected in names


def test_image_test_catches_a_vendor_file_mismatch(tmp_path, fg_image, programs):
    _, result = fg_image
    tag = result.ref.rsplit(":", 1)[1]
    other = tmp_path / "work"
    fx.make_work(other, programs)
    # the "vendor" fastforward at askbuild/base differs from what the image holds
    ff = other / "src/ask/config/fastforward"
    ff.write_text("# another vendor release\n")
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "x"],
                   cwd=other / "src/ask", check=True)
    subprocess.run(["git", "tag", "-f", "askbuild/base"], cwd=other / "src/ask", check=True,
                   capture_output=True)
    with pytest.raises(ImageError, match="sha256 /etc/config/fastforward.vendor.orig"):
        imagetest.test(fx.settings_for(other), tag=tag)


def test_image_test_without_the_image(fg_image):
    work, _ = fg_image
    with pytest.raises(ImageError, match="is not loaded"):
        imagetest.test(fx.settings_for(work), tag="never-built")


def test_foreground_cmm_logs_to_stdout_and_stops_on_sigterm(client, fg_image):
    _, result = fg_image
    with _container(client, result.ref, environment={"CMM_MAX_CONNECTIONS": "2048"}) as c:
        out = _wait_for(c, "fixture cmm foreground started")
        assert "rules /etc/config/fastforward, max 2048" in out
        out = _stop_promptly(c)
        assert "passing SIGTERM on to cmm" in out
        assert "fixture cmm got signal 15, exiting" in out
        assert "cmm stopped after SIGTERM" in out


def test_container_ends_with_foreground_cmm_and_its_status(client, fg_image):
    _, result = fg_image
    with _container(client, result.ref, environment={"FIXTURE_EXIT_AFTER": "2"}) as c:
        status = c.wait(timeout=120)
        assert status["StatusCode"] == 7
        out = _logs(c)
        assert "fixture cmm exiting on its own" in out
        assert "error: cmm exited with status 7 on its own" in out


def test_cmm_arguments_pass_through_the_entrypoint(client, fg_image):
    _, result = fg_image
    with _container(client, result.ref, command=["-h"], environment={"CMM_DAEMON_WAIT": "0"}) as c:
        assert c.wait(timeout=120)["StatusCode"] == 0
        assert "usage: cmm" in _logs(c)


def test_daemonizing_cmm_is_supervised_and_its_syslog_relayed(client, daemon_image):
    _, result = daemon_image
    with _container(client, result.ref, environment={"FIXTURE_EXIT_AFTER": "4"}) as c:
        status = c.wait(timeout=120)
        out = _logs(c)
        assert "cmm daemonized (pid" in out
        assert "cmm[" in out and "fixture cmm daemon started: rules /etc/config/fastforward, " \
            "max 131072" in out
        assert "fixture cmm exiting on its own" in out
        assert "error: cmm (pid" in out and "is gone: the container ends with it" in out
        assert status["StatusCode"] == 1


def test_daemon_dying_at_start_is_not_a_clean_exit(client, daemon_image):
    """The vendor case under qemu: the parent exits 0, its daemon dies at once (nfct_open):
    the container must end non-zero, saying why."""
    _, result = daemon_image
    with _container(client, result.ref, environment={"FIXTURE_EXIT_AFTER": "0"}) as c:
        status = c.wait(timeout=120)
        out = _logs(c)
        assert status["StatusCode"] == 1, out
        assert "fixture cmm exiting on its own" in out
        assert ("cmm stopped before serving" in out
                or "is gone: the container ends with it" in out), out


def test_daemonizing_cmm_stops_promptly_on_sigterm(client, daemon_image):
    _, result = daemon_image
    with _container(client, result.ref) as c:
        _wait_for(c, "supervising it")
        _wait_for(c, "fixture cmm daemon started")
        out = _stop_promptly(c)
        assert "fixture cmm got signal 15, exiting" in out     # relayed from syslog
        assert "stopped after SIGTERM" in out


def test_archive_imports_with_ctr(engine, fg_image):
    _, result = fg_image
    if not shutil.which("ctr"):
        pytest.skip("ctr (containerd, from docker.io) is not installed")
    ns = f"askbuildtest{uuid.uuid4().hex[:6]}"
    base = ["ctr", "--address", engine.containerd, "-n", ns]
    try:
        proc = subprocess.run([*base, "images", "import", "--platform", "linux/arm64",
                               str(result.archive)], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        ls = subprocess.run([*base, "images", "ls"], capture_output=True, text=True,
                            check=True).stdout
        assert result.ref in ls
        assert "linux/arm64" in ls
    finally:
        imgs = subprocess.run([*base, "images", "ls", "-q"], capture_output=True,
                              text=True).stdout.split()
        if imgs:
            subprocess.run([*base, "images", "rm", "--sync", *imgs], capture_output=True)
        for _ in range(10):     # content is collected in the background
            if subprocess.run(["ctr", "--address", engine.containerd, "namespaces", "rm", ns],
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.5)


@pytest.fixture
def podman_service(tmp_path):
    """A Podman API service (Docker-compatible) on a private socket, stopped by PID."""
    if not shutil.which("podman"):
        pytest.skip("podman is not installed")
    short = Path(tempfile.mkdtemp(prefix="abpod-"))     # podman: runroot <= 50 characters
    sock = short / "podman.sock"
    proc = subprocess.Popen(
        ["podman", "--root", str(tmp_path / "root"), "--runroot", str(short / "run"),
         "--storage-driver", "vfs", "system", "service", "--time=0", f"unix://{sock}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sock.exists(), "podman service did not start"
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(short, ignore_errors=True)


def test_podman_socket_loads_the_image(tmp_path_factory, programs, podman_service,
                                       monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", podman_service)
    work = tmp_path_factory.mktemp("work-podman")
    fx.make_work(work, programs)
    result = imaging.image(fx.settings_for(work), tag="podman", load=True)
    assert result.loaded        # the same id and Architecture arm64, checked by image()
