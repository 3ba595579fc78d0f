"""``inv image`` from a fixture staging tree (real cross compiler, real Debian arm64 packages
unpacked by mmdebstrap, cached across runs): reproducibility, layer split, contract files,
errors, and the no-engine path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import imagefixtures as fx
import pytest

from askbuild import imaging, oci
from askbuild.errors import ImageError, UserError
from askbuild.settings import Settings

pytestmark = pytest.mark.skipif(not shutil.which(fx.CC), reason="needs the cross compiler")


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    return fx.compile_programs(tmp_path_factory.mktemp("programs"))


@pytest.fixture(scope="module")
def built(tmp_path_factory, programs):
    work = tmp_path_factory.mktemp("work-a")
    fx.make_work(work, programs)
    result = imaging.image(fx.settings_for(work), tag="unit", load=False)
    return work, result


def _layer_members(archive: Path, digest: str) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    out = {}
    with tarfile.open(archive) as outer:
        blob = outer.extractfile("blobs/sha256/" + digest.split(":")[1])
        with tarfile.open(fileobj=blob, mode="r:*") as tf:
            for m in tf:
                data = tf.extractfile(m).read() if m.isfile() else b""
                out[m.name.rstrip("/")] = (m, data)
    return out


def test_rebuild_is_byte_identical(tmp_path, built, programs):
    work, first = built
    again = imaging.image(fx.settings_for(work), tag="unit", output=tmp_path / "again.tar",
                          load=False)
    assert again.archive_sha256 == first.archive_sha256
    assert again.image_id == first.image_id
    # a second work directory made the same way gives the same bytes too
    other = tmp_path / "work-b"
    fx.make_work(other, programs)
    third = imaging.image(fx.settings_for(other), tag="unit", load=False)
    assert third.archive_sha256 == first.archive_sha256
    assert (other / "image/cmm.tar").read_bytes() == first.archive.read_bytes()


def test_changing_cmm_changes_only_the_application_layer(tmp_path, built, programs):
    work, first = built
    other = tmp_path / "work-daemon"
    fx.make_work(other, programs, cmm="cmm-daemon")
    changed = imaging.image(fx.settings_for(other), tag="unit", load=False)
    assert changed.layers[0]["digest"] == first.layers[0]["digest"]        # base
    assert changed.layers[1]["digest"] != first.layers[1]["digest"]        # app
    assert changed.image_id != first.image_id


def test_epoch_labels_and_config(built):
    work, result = built
    assert result.epoch == fx.EPOCH
    idx = oci.read_archive_index(result.archive)
    cfg = idx["config"]
    assert cfg["created"] == "2025-01-15T10:00:00Z"
    assert (cfg["architecture"], cfg["os"]) == ("arm64", "linux")
    assert cfg["config"]["Entrypoint"] == ["/usr/share/monok8s/cmm-entrypoint.sh"]
    labels = cfg["config"]["Labels"]
    ask = subprocess.run(["git", "rev-parse", "askbuild/base"], cwd=work / "src/ask",
                         capture_output=True, text=True, check=True).stdout.strip()
    assert labels["org.opencontainers.image.revision"] == ask
    assert labels["io.monok8s.askbuild.ask.commit"] == ask
    assert labels["org.opencontainers.image.version"] == "fixture-1.0"
    assert labels["org.opencontainers.image.created"] == "2025-01-15T10:00:00Z"
    assert labels["io.monok8s.askbuild.kernel.release"] == fx.RELEASE
    assert len(labels["io.monok8s.askbuild.patches.sha256"]) == 64
    assert labels["org.opencontainers.image.source"]
    assert idx["manifest.json"][0]["RepoTags"] == ["localhost/monok8s/cmm:unit"]
    with tarfile.open(result.archive) as tf:
        assert all(m.mtime <= fx.EPOCH and m.uid == 0 and m.gid == 0 for m in tf)
    record = json.loads((work / "image/image.json").read_text())
    assert record["image_id"] == result.image_id and record["ref"] == result.ref


def test_application_layer_holds_the_contract(built):
    work, result = built
    app = _layer_members(result.archive, result.layers[1]["digest"])
    rel = fx.RELEASE
    for p in ("usr/bin/cmm", "usr/bin/dpa_app", "usr/bin/fmc"):
        assert app[p][0].mode == 0o755
    for m in ("cdx", "fci", "auto_bridge"):
        # /lib is a symlink to usr/lib in the base: the layer must not shadow it
        assert f"usr/lib/modules/{rel}/extra/{m}.ko" in app
    assert "lib" not in app
    assert app["etc/config/fastforward.vendor.orig"][1] == \
        fx.ASK_FILES["config/fastforward"].encode()
    assert app["etc/config/fastforward"][1] == fx.ASK_PATCHED["config/fastforward"].encode()
    assert app["etc/cdx_cfg.xml"][1] == fx.ASK_FILES["dpa_app/files/etc/cdx_cfg.xml"].encode()
    assert app["etc/cdx_pcd.xml"][1] == fx.ASK_FILES["dpa_app/files/etc/cdx_pcd.xml"].encode()
    assert app["etc/cdx_sp.xml"][1] == fx.ASK_FILES["dpa_app/files/etc/cdx_sp.xml"].encode()
    assert app["etc/fmc/config/hxs_pdl_v3.xml"][1] == \
        fx.FMC_FILES["etc/fmc/config/hxs_pdl_v3.xml"].encode()
    # /bin/init_dpa.sh: under usr/bin when /bin -> usr/bin in the base (merged /usr)
    init = app.get("bin/init_dpa.sh") or app["usr/bin/init_dpa.sh"]
    assert init[0].mode == 0o755 and init[1].startswith(b"#!/bin/sh")
    assert app["usr/share/monok8s/select-dpa-config.sh"][0].mode == 0o755
    assert app["usr/share/monok8s/cmm-entrypoint.sh"][0].mode == 0o755
    assert app["usr/share/monok8s/kernel-release"][1] == f"{rel}\n".encode()
    assert app["etc/monok8s/dpa-configs/gateway-dk/cdx_cfg.xml"][1] == \
        fx.ASK_FILES["config/gateway-dk/cdx_cfg.xml"].encode()
    assert app["etc/monok8s/dpa-configs/default/cdx_cfg.xml"][1] == \
        fx.ASK_FILES["dpa_app/files/etc/cdx_cfg.xml"].encode()
    assert app["etc/monok8s/dpa-configs/default/hxs_pdl_v3.xml"][1] == \
        fx.FMC_FILES["etc/fmc/config/hxs_pdl_v3.xml"].encode()


def test_base_layer_has_packages_users_and_no_device_nodes(built):
    work, result = built
    base = _layer_members(result.archive, result.layers[0]["digest"])
    status = base["var/lib/dpkg/status"][1].decode()
    for pkg in ("busybox", "kmod", "iproute2", "libcli1.10", "libxml2", "libpcap0.8",
                "libmnl0", "libstdc++6", "libc6"):
        assert f"Package: {pkg}\nStatus: install ok installed\n" in status, pkg
    sbom = json.loads(base["usr/share/monok8s/base-packages.json"][1])
    assert {p["name"] for p in sbom["packages"]} >= {"busybox", "libcli1.10"}
    assert {p["name"] for p in result.packages} >= {"busybox", "libcli1.10"}
    assert base["etc/passwd"][1].startswith(b"root:*:0:0:root:/root:/bin/sh\n")
    assert b"root:*:0:" in base["etc/group"][1]
    assert base["lib"][0].issym()
    assert not [n for n in base if n.startswith("dev/")]
    assert not [n for n in base if n.endswith(".deb")]
    assert "etc/resolv.conf" not in base


def test_board_profile_swaps_cdx_cfg(tmp_path, built):
    work, _ = built
    out = tmp_path / "gw.tar"
    result = imaging.image(fx.settings_for(work), tag="gw", output=out, load=False,
                           board="gateway-dk")
    app = _layer_members(out, result.layers[1]["digest"])
    assert app["etc/cdx_cfg.xml"][1] == fx.ASK_FILES["config/gateway-dk/cdx_cfg.xml"].encode()
    assert result.labels["io.monok8s.askbuild.board"] == "gateway-dk"
    with pytest.raises(UserError, match="unknown board 'nope'"):
        imaging.image(fx.settings_for(work), tag="gw", output=out, load=False, board="nope")


def test_source_date_epoch_from_the_environment(tmp_path, built, monkeypatch):
    work, _ = built
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    result = imaging.image(fx.settings_for(work), tag="sde", output=tmp_path / "s.tar",
                           load=False)
    assert oci.read_archive_index(result.archive)["config"]["created"] == "2023-11-14T22:13:20Z"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(UserError, match="SOURCE_DATE_EPOCH"):
        imaging.image(fx.settings_for(work), tag="sde", output=tmp_path / "s.tar", load=False)


def test_runtime_fastforward_from_images_dir(tmp_path, built):
    work, _ = built
    project = tmp_path / "project"
    shutil.copytree(fx.ROOT / "images", project / "images")
    (project / "images/cmm/fastforward").write_text("# monok8s runtime rules\n")
    s = Settings(project_root=project, work_dir=work, cache_dir=fx.shared_cache_dir())
    result = imaging.image(s, tag="ff", output=tmp_path / "ff.tar", load=False)
    app = _layer_members(result.archive, result.layers[1]["digest"])
    assert app["etc/config/fastforward"][1] == b"# monok8s runtime rules\n"
    assert app["etc/config/fastforward.vendor.orig"][1] == \
        fx.ASK_FILES["config/fastforward"].encode()


def test_missing_needed_library_is_a_clear_error(tmp_path, programs, capsys):
    work = tmp_path / "work"
    fx.make_work(work, programs)
    lib = tmp_path / "libfixturex.c"
    lib.write_text("int fixturex(void) { return 1; }\n")
    subprocess.run([fx.CC, "-shared", "-fPIC", "-Wl,-soname,libfixturex.so.1", "-o",
                    str(tmp_path / "libfixturex.so.1"), str(lib)], check=True)
    (tmp_path / "main.c").write_text("int fixturex(void); int main(void){return fixturex();}\n")
    subprocess.run([fx.CC, "-o", str(work / "staging/usr/bin/fmc"), str(tmp_path / "main.c"),
                    str(tmp_path / "libfixturex.so.1")], check=True)
    with pytest.raises(ImageError) as e:
        imaging.image(fx.settings_for(work), tag="bad", load=False)
    assert "/usr/bin/fmc needs libfixturex.so.1, which is not in the image" in str(e.value)
    assert e.value.exit_code == 2
    assert "no host package ships libfixturex.so.1" in capsys.readouterr().err


def test_host_architecture_binary_is_refused(tmp_path, programs):
    work = tmp_path / "work"
    fx.make_work(work, programs)
    shutil.copy("/bin/true", work / "staging/usr/bin/dpa_app")
    with pytest.raises(ImageError, match=r"/usr/bin/dpa_app: built for EM_X86_64, not AArch64"):
        imaging.image(fx.settings_for(work), tag="bad", load=False)


def test_missing_artifact_names_it(tmp_path, programs):
    work = tmp_path / "work"
    fx.make_work(work, programs)
    (work / f"staging/lib/modules/{fx.RELEASE}/extra/fci.ko").unlink()
    (work / "build-manifest.json").unlink()           # and no manifest at all: still works
    with pytest.raises(ImageError, match=rf"lacks: lib/modules/{fx.RELEASE}/extra/fci.ko"):
        imaging.image(fx.settings_for(work), tag="bad", load=False)


def test_no_engine_writes_the_archive_and_says_how_to_load(tmp_path, built):
    work, first = built
    env = dict(os.environ, CI="true", DOCKER_HOST=f"unix://{tmp_path}/no-such.sock",
               ASKBUILD_CACHE_DIR=str(fx.shared_cache_dir()))
    out = tmp_path / "cli.tar"
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(fx.ROOT), "image", "--tag",
         "unit", "--output", str(out), "--work-dir", str(work)],
        cwd=fx.ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    assert "no Docker engine reachable" in text
    assert f"docker load -i {out}" in text
    assert f"podman load -i {out}" in text
    assert "ctr -n k8s.io images import" in text
    assert "imagePullPolicy: Never" in text
    assert out.read_bytes() == first.archive.read_bytes()


def test_module_for_another_kernel_is_refused(tmp_path, programs):
    work = tmp_path / "work"
    fx.make_work(work, programs)
    src = tmp_path / "m.c"
    src.write_text(fx.MODULE_C)
    subprocess.run([fx.CC, "-c", '-DRELEASE="5.10.0-other"', '-DNAME="fci"', "-o",
                    str(work / f"staging/lib/modules/{fx.RELEASE}/extra/fci.ko"), str(src)],
                   check=True)
    with pytest.raises(ImageError, match=r"fci.ko: built for kernel '5.10.0-other'"):
        imaging.image(fx.settings_for(work), tag="bad", load=False)


def test_library_staged_by_the_build_satisfies_needed(tmp_path, programs, capsys):
    work = tmp_path / "work"
    fx.make_work(work, programs)
    libdir = work / "staging/usr/lib/aarch64-linux-gnu"
    libdir.mkdir(parents=True)
    (tmp_path / "l.c").write_text("int fixturey(void) { return 0; }\n")
    subprocess.run([fx.CC, "-shared", "-fPIC", "-Wl,-soname,libfixturey.so.3", "-o",
                    str(libdir / "libfixturey.so.3.0.1"), str(tmp_path / "l.c")], check=True)
    os.symlink("libfixturey.so.3.0.1", libdir / "libfixturey.so.3")
    (tmp_path / "main.c").write_text("int fixturey(void); int main(void){return fixturey();}\n")
    subprocess.run([fx.CC, "-o", str(work / "staging/usr/bin/fmc"), str(tmp_path / "main.c"),
                    str(libdir / "libfixturey.so.3")], check=True)
    result = imaging.image(fx.settings_for(work), tag="staged", load=False)
    app = _layer_members(result.archive, result.layers[1]["digest"])
    assert app["usr/lib/aarch64-linux-gnu/libfixturey.so.3"][0].issym()
    assert "no host package ships" not in capsys.readouterr().err


# -- missing components: an error, or with --partial an image labelled as incomplete ----------

def _without_kernel_and_dpa_app(work: Path) -> None:
    shutil.rmtree(work / "staging/lib")
    (work / "staging/usr/bin/dpa_app").unlink()


def test_missing_components_are_an_error_that_lists_them(tmp_path, programs):
    work = tmp_path / "work"
    fx.make_work(work, programs)
    _without_kernel_and_dpa_app(work)
    with pytest.raises(ImageError) as e:
        imaging.image(fx.settings_for(work), tag="bad", load=False)
    msg = str(e.value)
    assert "the image would be incomplete; missing: auto_bridge, cdx, dpa_app, fci, kernel" in msg
    assert f"dpa_app: the staging tree {work / 'staging'} lacks: usr/bin/dpa_app" in msg
    assert "run `inv build` first" in msg and "`inv image --partial`" in msg
    assert not (work / "image/cmm.tar").exists()


def _as_loaded(archive: Path):
    """What an engine reports about the loaded archive (``img.attrs``), from its own config."""
    from types import SimpleNamespace
    cfg = oci.read_archive_index(archive)["config"]
    return SimpleNamespace(attrs={"Architecture": cfg["architecture"], "Os": cfg["os"],
                                  "Config": cfg["config"]})


def test_partial_image_is_labelled_with_what_is_missing(tmp_path, programs, capsys):
    from askbuild import imagetest
    work = tmp_path / "work"
    fx.make_work(work, programs)
    _without_kernel_and_dpa_app(work)
    shutil.rmtree(work / "src/fmc")                  # a vendor file's tree is not there either
    man = json.loads((work / "build-manifest.json").read_text())
    man["missing"] = {"libfci": "stale: built from other inputs than the current ones"}
    (work / "build-manifest.json").write_text(json.dumps(man))
    result = imaging.image(fx.settings_for(work), tag="partial", load=False, partial=True)
    missing = "/etc/fmc/config/hxs_pdl_v3.xml,auto_bridge,cdx,dpa_app,fci,kernel,libfci"
    assert result.labels["io.monok8s.askbuild.partial"] == "true"
    assert result.labels["io.monok8s.askbuild.missing"] == missing
    assert result.labels["io.monok8s.askbuild.kernel.release"] == "none"
    app = _layer_members(result.archive, result.layers[1]["digest"])
    assert "usr/bin/cmm" in app and "etc/config/fastforward" in app
    for absent in ("usr/bin/dpa_app", "usr/share/monok8s/kernel-release",
                   "etc/fmc/config/hxs_pdl_v3.xml"):
        assert absent not in app
    record = json.loads((work / "image/image.json").read_text())
    assert record["partial"] is True and ",".join(sorted(record["missing"])) == missing
    err = capsys.readouterr().err
    assert "partial image: missing auto_bridge, cdx, dpa_app, fci, kernel, libfci" in err
    assert "libfci: the build manifest says: stale: built from other inputs" in err
    assert "is a PARTIAL image" in err and "not a release candidate" in err
    # image.test's verdict, from the archive's own config: not a release candidate.
    checks = {c.name: c for c in imagetest._config_checks(_as_loaded(result.archive), None)}
    complete = checks["image is complete (not built with --partial)"]
    assert not complete.ok and missing in complete.detail


def test_partial_changes_nothing_when_nothing_is_missing(tmp_path, built):
    from askbuild import imagetest
    work, first = built
    again = imaging.image(fx.settings_for(work), tag="unit", output=tmp_path / "p.tar",
                          load=False, partial=True)
    assert again.archive_sha256 == first.archive_sha256
    assert "io.monok8s.askbuild.partial" not in again.labels
    assert all(c.ok for c in imagetest._config_checks(_as_loaded(again.archive), None))
