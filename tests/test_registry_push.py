"""``inv image.push`` against a real registry (Debian's docker-registry on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from registryfixtures import Registry

from askbuild import oci, registry
from askbuild.errors import UserError
from askbuild.fsutil import write_json_atomic
from askbuild.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SECRET = "pa55-Wh1sper-9f3c"


@pytest.fixture
def reg(tmp_path):
    r = Registry.start(tmp_path / "registry")
    yield r
    r.stop()


def write_image(s: Settings, tag: str = "dev", payload: bytes = b"hello\n") -> Path:
    """An image archive as ``inv image`` writes it (askbuild's writer) and its record."""
    s.image_dir.mkdir(parents=True, exist_ok=True)
    layer = oci.write_layer([oci.Entry("etc/hello", data=payload)], s.image_dir / "app.tar.gz",
                            epoch=1700000000)
    ref = f"localhost/monok8s/cmm:{tag}"
    cfg = oci.image_config([layer], created="2023-11-14T22:13:20Z", entrypoint=["/bin/sh"])
    arc = oci.write_archive(s.image_dir / "cmm.tar", [layer], cfg, ref=ref, epoch=1700000000)
    write_json_atomic(s.image_record, {"ref": ref, "archive": str(arc.path),
                                       "image_id": arc.image_id,
                                       "archive_sha256": arc.sha256})
    return arc.path


def project(tmp_path: Path) -> Settings:
    root = tmp_path / "proj"
    (root / "recipes").mkdir(parents=True)
    (root / "recipes" / "sources.toml").write_text("")
    return Settings(project_root=root, work_dir=tmp_path / "work", cache_dir=tmp_path / "cache")


def inv(*args: str, env: dict | None = None, home: Path | None = None):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("ASKBUILD_", "REGISTRY_AUTH"))}
    e.update({"CI": "true", **(env or {})})
    if home:
        e["HOME"] = str(home)
        e["XDG_RUNTIME_DIR"] = str(home / "run")
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(ROOT), *args],
                          cwd=ROOT, env=e, capture_output=True, text=True, timeout=300)


def test_pushed_manifest_digest_is_the_local_one_and_a_repush_uploads_nothing(tmp_path, reg):
    s = project(tmp_path)
    archive = write_image(s)
    local = registry.local_manifest_digest(archive)
    pinned = registry.push_image(s, f"{reg.address}/monok8s/cmm:1.0", tag="dev", archive=None)
    assert pinned == f"{reg.address}/monok8s/cmm@{local}"
    # The registry's own view: the tag points at the local manifest, whose bytes hash to it.
    assert reg.tag_digest("monok8s/cmm", "1.0") == local
    raw = reg.get("/v2/monok8s/cmm/manifests/1.0")
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == local
    blobs = json.loads(raw)
    assert reg.uploads() == 1 + len(blobs["layers"])         # config + layers
    mtimes = {d: reg.blob_file(d).stat().st_mtime_ns
              for d in [blobs["config"]["digest"], *(la["digest"] for la in blobs["layers"])]}
    before = reg.uploads()
    registry.push_image(s, f"{reg.address}/monok8s/cmm:1.0", tag="dev", archive=None)
    assert reg.uploads() == before                             # nothing uploaded again
    assert {d: reg.blob_file(d).stat().st_mtime_ns for d in mtimes} == mtimes


def test_the_default_tag_is_the_images_and_an_archive_can_be_named(tmp_path, reg):
    s = project(tmp_path)
    other = write_image(s, tag="rc1", payload=b"other\n")
    moved = tmp_path / "elsewhere.tar"
    other.rename(moved)
    registry.push_image(s, f"{reg.address}/monok8s/cmm", tag="rc1", archive=moved)
    assert reg.tag_digest("monok8s/cmm", "rc1") == registry.local_manifest_digest(moved)


@pytest.mark.parametrize("dest", ["-x/monok8s/cmm", "--dest-creds=a:b", "monok8s/cmm",
                                  "reg.example/Upper/cmm", "reg.example/cmm:bad tag",
                                  "reg.example/cmm@sha256:1234", "docker://reg.example/cmm",
                                  "reg.example:5000/cmm:-x", "reg.example/cmm;rm -rf /"])
def test_a_bad_destination_is_refused_before_skopeo_runs(tmp_path, dest):
    s = project(tmp_path)
    write_image(s)
    with pytest.raises(UserError) as e:
        registry.push_image(s, dest, tag="dev", archive=None)
    assert "DESTINATION" in e.value.message and "HOST[:PORT]/REPOSITORY" in e.value.fix


def test_no_archive_for_the_tag_names_the_command_that_makes_it(tmp_path, reg):
    s = project(tmp_path)
    write_image(s, tag="dev")
    with pytest.raises(UserError) as e:
        registry.push_image(s, f"{reg.address}/monok8s/cmm", tag="v2", archive=None)
    assert "no image archive for tag 'v2'" in e.value.message
    assert "inv image --tag v2" in e.value.fix


def test_unreachable_registry_is_a_clear_error(tmp_path):
    s = project(tmp_path)
    write_image(s)
    from registryfixtures import free_port
    with pytest.raises(registry.RegistryError) as e:
        registry.push_image(s, f"127.0.0.1:{free_port()}/monok8s/cmm", tag="dev", archive=None)
    assert e.value.kind == "unreachable" and "cannot reach the registry" in e.value.message


def test_plain_http_needs_insecure_except_on_localhost(tmp_path):
    """127.0.0.2 is this host too, but not one of the names always allowed over HTTP."""
    reg = Registry.start(tmp_path / "registry", host="127.0.0.2")
    try:
        s = project(tmp_path)
        write_image(s)
        with pytest.raises(registry.RegistryError) as e:
            registry.push_image(s, f"{reg.address}/monok8s/cmm", tag="dev", archive=None)
        assert e.value.kind == "plain-http"
        assert f"--insecure {reg.address}" in e.value.fix and "[registry] insecure" in e.value.fix
        assert reg.uploads() == 0
        s.insecure_registries = (reg.address,)
        registry.push_image(s, f"{reg.address}/monok8s/cmm", tag="dev", archive=None)
        assert reg.uploads() > 0
    finally:
        reg.stop()


def test_credentials_come_from_the_auth_file_and_are_never_shown(tmp_path):
    reg = Registry.start(tmp_path / "registry", users={"ci": SECRET})
    try:
        s = project(tmp_path)
        write_image(s)
        home = tmp_path / "home"
        common = ["--work-dir", str(s.work_dir)]
        env = {"ASKBUILD_PROJECT_ROOT": str(s.project_root)}
        # no credentials: refused, with the fix naming how to log in
        no = inv("image.push", f"{reg.address}/monok8s/cmm:1", *common, env=env, home=home)
        assert no.returncode == 1, no.stderr
        assert "refused the credentials" in no.stderr and "skopeo login" in no.stderr
        assert "Traceback" not in no.stderr
        # wrong password: refused the same way
        bad = reg.auth_file(tmp_path / "bad.json", "ci", "wrong-" + SECRET)
        wrong = inv("image.push", f"{reg.address}/monok8s/cmm:1", *common,
                    env={**env, "REGISTRY_AUTH_FILE": str(bad)}, home=home)
        assert wrong.returncode == 1 and "refused the credentials" in wrong.stderr
        # ~/.docker/config.json (the usual Docker config): pushed
        reg.auth_file(home / ".docker" / "config.json", "ci", SECRET)
        ok = inv("image.push", f"{reg.address}/monok8s/cmm:1", *common, env=env, home=home)
        assert ok.returncode == 0, ok.stderr
        assert reg.tag_digest("monok8s/cmm", "1") == registry.local_manifest_digest(
            s.image_dir / "cmm.tar")
        token = json.loads((home / ".docker/config.json").read_text())["auths"][reg.address]
        for proc in (no, wrong, ok):
            for text in (proc.stdout, proc.stderr):
                assert SECRET not in text and token["auth"] not in text
        for f in [*s.work_dir.rglob("*"), reg.log]:
            if f.is_file() and f.suffix != ".tar" and f.stat().st_size < 10_000_000:
                assert SECRET.encode() not in f.read_bytes(), f
                assert token["auth"].encode() not in f.read_bytes(), f
    finally:
        reg.stop()


def test_image_push_verb_pushes_and_prints_the_pinned_reference(tmp_path, reg):
    s = project(tmp_path)
    write_image(s)
    proc = inv("image.push", f"{reg.address}/team/cmm:7", "--work-dir", str(s.work_dir),
               env={"ASKBUILD_PROJECT_ROOT": str(s.project_root)}, home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    digest = registry.local_manifest_digest(s.image_dir / "cmm.tar")
    assert f"{reg.address}/team/cmm@{digest}" in proc.stdout + proc.stderr
