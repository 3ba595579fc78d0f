"""Image assembly pieces without an engine: the deterministic tar writer, the ELF check, the
defensive reading of the build manifest, the package mapping."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from askbuild import baselayer, elfcheck, imaging, oci
from askbuild.errors import ConfigError, ImageError, UserError
from askbuild.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _entries(tmp: Path) -> list[oci.Entry]:
    f = tmp / "host.txt"
    f.write_text("from the host\n")
    return [
        oci.Entry("usr/bin/tool", oci.FILE, 0o755, data=b"#!/bin/sh\necho hi\n",
                  mtime=2_000_000_000),
        oci.Entry("./etc//conf", oci.FILE, 0o644, source=f, mtime=5),
        oci.Entry("lib", oci.SYMLINK, 0o777, linkname="usr/lib", mtime=2_000_000_000),
        oci.Entry("usr/lib/a", oci.FILE, 0o644, data=b"same", mtime=7),
        oci.Entry("usr/lib/b", oci.HARDLINK, 0o644, linkname="usr/lib/a", mtime=7),
        oci.Entry("aaa/zlink", oci.HARDLINK, 0o644, linkname="usr/lib/a", mtime=7),
    ]


def test_layer_is_deterministic_sorted_owned_by_root_and_clamped(tmp_path):
    a = oci.write_layer(_entries(tmp_path), tmp_path / "a.tar.gz", epoch=1_000_000)
    b = oci.write_layer(_entries(tmp_path), tmp_path / "b.tar.gz", epoch=1_000_000)
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    assert a.digest == b.digest and a.diff_id == b.diff_id
    raw = gzip.decompress((tmp_path / "a.tar.gz").read_bytes())
    assert a.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert a.digest == "sha256:" + hashlib.sha256((tmp_path / "a.tar.gz").read_bytes()).hexdigest()
    # gzip header: no name, mtime 0
    assert (tmp_path / "a.tar.gz").read_bytes()[4:8] == b"\0\0\0\0"
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        members = tf.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names)
        # parents synthesised
        assert {"usr", "usr/bin", "usr/lib", "etc", "aaa"} <= set(names)
        for m in members:
            assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "")
            assert m.mtime <= 1_000_000
        by = {m.name: m for m in members}
        assert by["etc/conf"].mtime == 5
        assert by["usr/bin/tool"].mtime == 1_000_000
        assert by["usr/bin/tool"].mode == 0o755
        # the first path of a hardlinked group holds the data, the others link to it
        assert by["aaa/zlink"].isfile() and tf.extractfile("aaa/zlink").read() == b"same"
        assert by["usr/lib/a"].islnk() and by["usr/lib/a"].linkname == "aaa/zlink"
        assert by["usr/lib/b"].islnk() and by["usr/lib/b"].linkname == "aaa/zlink"
        assert by["lib"].issym() and by["lib"].linkname == "usr/lib"


def test_uncompressed_layer_and_path_safety(tmp_path):
    la = oci.write_layer([oci.Entry("x", data=b"1")], tmp_path / "l.tar", epoch=0,
                         compression="none")
    assert la.digest == la.diff_id
    assert la.media_type.endswith("layer.v1.tar")
    with pytest.raises(ImageError, match=r"'\.\.'"):
        oci.norm_path("usr/../../etc/passwd")
    with pytest.raises(ImageError, match="compression"):
        oci.write_layer([], tmp_path / "z", epoch=0, compression="zstd")


def test_archive_is_docker_archive_and_oci_layout(tmp_path):
    la = oci.write_layer(_entries(tmp_path), tmp_path / "l.tar.gz", epoch=100)
    cfg = oci.image_config([la], created="1970-01-01T00:01:40Z", entrypoint=["/x"],
                           labels={"b": "2", "a": "1"})
    ar1 = oci.write_archive(tmp_path / "one.tar", [la], cfg, ref="localhost/x/y:t", epoch=100)
    ar2 = oci.write_archive(tmp_path / "two.tar", [la], cfg, ref="localhost/x/y:t", epoch=100)
    assert ar1.sha256 == ar2.sha256
    assert ar1.sha256 == hashlib.sha256((tmp_path / "one.tar").read_bytes()).hexdigest()
    idx = oci.read_archive_index(tmp_path / "one.tar")
    assert idx["manifest.json"][0]["RepoTags"] == ["localhost/x/y:t"]
    assert idx["index.json"]["manifests"][0]["annotations"]["io.containerd.image.name"] == \
        "localhost/x/y:t"
    assert idx["config"]["architecture"] == "arm64" and idx["config"]["os"] == "linux"
    assert idx["config"]["rootfs"]["diff_ids"] == [la.diff_id]
    assert idx["oci_manifest"]["layers"][0]["digest"] == la.digest
    assert ar1.image_id == "sha256:" + hashlib.sha256(
        json.dumps(idx["config"], sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    with tarfile.open(tmp_path / "one.tar") as tf:
        names = tf.getnames()
        assert names == sorted(names)
        assert {"oci-layout", "index.json", "manifest.json", "repositories"} <= set(names)
        assert all(m.mtime == 100 and m.uid == 0 for m in tf.getmembers())
    with pytest.raises(ImageError, match="REPOSITORY:TAG"):
        oci.write_archive(tmp_path / "bad.tar", [la], cfg, ref="notag", epoch=0)


def _fs() -> elfcheck.RootFs:
    N = elfcheck.Node
    return elfcheck.RootFs({
        "lib": N("symlink", "usr/lib"), "usr": N("dir"), "usr/lib": N("dir"),
        "usr/lib/aarch64-linux-gnu": N("dir"),
        "usr/lib/aarch64-linux-gnu/libc.so.6": N("file"),
        "usr/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1": N("file"),
        "usr/lib/ld-linux-aarch64.so.1": N("symlink", "aarch64-linux-gnu/ld-linux-aarch64.so.1"),
        "usr/lib/aarch64-linux-gnu/libxml2.so.2": N("symlink", "libxml2.so.2.9.14"),
        "usr/lib/aarch64-linux-gnu/libxml2.so.2.9.14": N("file"),
        "usr/bin": N("dir"), "usr/bin/cmm": N("file"), "opt": N("dir"), "opt/lib": N("dir"),
        "opt/lib/libown.so": N("file"), "loop": N("symlink", "loop"),
    })


def test_rootfs_resolves_symlinks_and_canonical_parents():
    fs = _fs()
    assert fs.resolve("/lib/ld-linux-aarch64.so.1") == \
        "usr/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1"
    assert fs.resolve("lib/aarch64-linux-gnu/libxml2.so.2") == \
        "usr/lib/aarch64-linux-gnu/libxml2.so.2.9.14"
    assert fs.resolve("loop") is None
    assert fs.resolve("nope/x") is None
    assert fs.canonical_parent("lib/modules/6.1/extra/cdx.ko") == \
        "usr/lib/modules/6.1/extra/cdx.ko"
    assert fs.canonical_parent("usr/bin/cmm") == "usr/bin/cmm"


def _facts(needed, machine="EM_AARCH64", runpath=(), interp="/lib/ld-linux-aarch64.so.1"):
    return {"machine": machine, "type": "ET_DYN", "needed": list(needed), "interp": interp,
            "runpath": list(runpath)}


def test_elfcheck_accepts_resolvable_and_names_binary_and_library():
    fs = _fs()
    assert elfcheck.check(fs, {"usr/bin/cmm": _facts(["libc.so.6", "libxml2.so.2"])},
                          {"usr/bin/cmm"}) == 1
    own = _facts(["libown.so"], runpath=["$ORIGIN/../../opt/lib"])
    assert elfcheck.check(fs, {"usr/bin/cmm": own}, {"usr/bin/cmm"}) == 1
    with pytest.raises(ImageError) as e:
        elfcheck.check(fs, {"usr/bin/cmm": _facts(["libc.so.6", "libcli.so.1.10"])},
                       {"usr/bin/cmm"})
    assert "/usr/bin/cmm needs libcli.so.1.10" in str(e.value)
    assert "fix:" in str(e.value)
    with pytest.raises(ImageError, match="built for EM_X86_64"):
        elfcheck.check(fs, {"usr/bin/cmm": _facts([], machine="EM_X86_64")}, {"usr/bin/cmm"})
    with pytest.raises(ImageError, match="interpreter /lib/ld-musl"):
        elfcheck.check(fs, {"usr/bin/cmm": _facts([], interp="/lib/ld-musl-aarch64.so.1")},
                       {"usr/bin/cmm"})


@pytest.mark.skipif(not shutil.which("dpkg"), reason="needs dpkg")
def test_sonames_map_to_debian_packages(monkeypatch):
    """Every library looked up with ONE dpkg -S (a library dpkg does not know, and one the
    host lacks, are missing; the others mapped by their path)."""
    from askbuild import procs
    calls = []
    real = procs.run
    monkeypatch.setattr(procs, "run", lambda cmd, **kw: calls.append(cmd) or real(cmd, **kw))
    orphan = baselayer.host_library("libc.so.6").parent / "libaskbuild-orphan-test.so.7"
    monkeypatch.setattr(baselayer, "host_library", lambda so, real=baselayer.host_library:
                        orphan if so == orphan.name else real(so))
    found, missing = baselayer.packages_for_sonames(
        {"libcli.so.1.10", "libc.so.6", "libxml2.so.2", "libdoesnotexist.so.9", orphan.name})
    assert found == {"libcli.so.1.10": "libcli1.10", "libc.so.6": "libc6",
                     "libxml2.so.2": "libxml2"}
    assert missing == ["libaskbuild-orphan-test.so.7", "libdoesnotexist.so.9"]
    assert [c[:2] for c in calls] == [["dpkg", "-S"]]


def test_package_names_are_validated():
    with pytest.raises(ConfigError, match="not a Debian package name"):
        baselayer.validate_packages(["busybox", "--foo"], "x")


def test_snapshot_rewrites_sources_and_key_changes():
    spec = baselayer.BaseSpec(["busybox"], sources=[
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian-security bookworm-security main"])
    pinned = baselayer.BaseSpec(["busybox"], sources=spec.sources, snapshot="20250520T000000Z")
    assert pinned.apt_lines() == [
        "deb http://snapshot.debian.org/archive/debian/20250520T000000Z/ bookworm main",
        "deb http://snapshot.debian.org/archive/debian-security/20250520T000000Z/ "
        "bookworm-security main"]
    assert baselayer.cache_key(spec) != baselayer.cache_key(pinned)
    more = baselayer.BaseSpec(["busybox", "kmod"], sources=spec.sources)
    assert baselayer.cache_key(spec) != baselayer.cache_key(more)
    assert baselayer.cache_key(spec) == baselayer.cache_key(
        baselayer.BaseSpec(["busybox", "busybox"], sources=spec.sources))


def test_kernel_release_reads_manifest_defensively(tmp_path):
    st = tmp_path / "staging"
    (st / "lib/modules/6.6.1-x/extra").mkdir(parents=True)
    assert imaging.kernel_release(st, {}) == "6.6.1-x"
    assert imaging.kernel_release(st, {"kernel": {"release": "6.6.1-x"}}) == "6.6.1-x"
    # a manifest naming a release the staging tree lacks does not win
    assert imaging.kernel_release(st, {"kernel_release": "9.9"}) == "6.6.1-x"
    assert imaging.kernel_release(st, {"kernel_release": 42, "patches": "junk"}) == "6.6.1-x"
    (st / "lib/modules/6.6.2-y").mkdir()
    assert imaging.kernel_release(st, {}) == "6.6.1-x"        # the one with extra/
    (st / "lib/modules/6.6.2-y/extra").mkdir()
    with pytest.raises(ImageError, match="several kernel releases"):
        imaging.kernel_release(st, {})
    assert imaging.kernel_release(st, {"kernel_release": "6.6.2-y"}) == "6.6.2-y"


def test_manifest_garbage_is_a_warning(tmp_path):
    s = Settings(project_root=ROOT, work_dir=tmp_path, cache_dir=tmp_path / "c")
    assert imaging.read_manifest(s) == {}
    (tmp_path / "build-manifest.json").write_text("{not json")
    assert imaging.read_manifest(s) == {}
    (tmp_path / "build-manifest.json").write_text("[1, 2]")
    assert imaging.read_manifest(s) == {}


def test_patch_series_hash_from_manifest_or_state(tmp_path):
    s = Settings(project_root=ROOT, work_dir=tmp_path, cache_dir=tmp_path / "c")
    assert imaging.patch_series_hash(s, {}) == "none"
    m1 = {"patches": [{"source": "ask", "layer": "local", "file": "0001.patch", "sha256": "a"}]}
    m2 = {"patches": [{"source": "ask", "layer": "local", "file": "0001.patch", "sha256": "b"}]}
    h1, h2 = imaging.patch_series_hash(s, m1), imaging.patch_series_hash(s, m2)
    assert len(h1) == 64 and h1 != h2
    assert imaging.patch_series_hash(s, {"patches": {"ask": [{"file": "x", "sha256": "a"}]}}) \
        != "none"
    # the build manifest's schema: sources.<name>.patches; same rows => same hash
    m3 = {"sources": {"ask": {"base": "x", "patches": [
        {"layer": "local", "file": "0001.patch", "sha256": "a"}]}, "fmc": {"patches": []}}}
    assert imaging.patch_series_hash(s, m3) == h1
    assert imaging.patch_series_hash(s, {"sources": {"ask": {"patches": []}}}) == "none"
    (tmp_path / "state").mkdir()
    (tmp_path / "state/patch-ask.json").write_text(json.dumps(
        {"applied": [{"layer": "vendor", "file": "0001.patch", "sha256": "c"}]}))
    assert imaging.patch_series_hash(s, {}) not in ("none", h1)


def _git(*args, cwd):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                   check=True, capture_output=True)


def test_vendor_files_base_and_work_tree(tmp_path):
    s = Settings(project_root=ROOT, work_dir=tmp_path, cache_dir=tmp_path / "c")
    ask = tmp_path / "src/ask"
    (ask / "config").mkdir(parents=True)
    (ask / "config/fastforward").write_text("vendor\n")
    _git("init", "-q", cwd=ask)
    _git("add", "-A", cwd=ask)
    _git("commit", "-qm", "up", cwd=ask)
    _git("tag", "askbuild/base", cwd=ask)
    (ask / "config/fastforward").write_text("patched\n")
    assert imaging.vendor_bytes(s, "ask@base:config/fastforward", "t")[0] == b"vendor\n"
    assert imaging.vendor_bytes(s, "ask:config/fastforward", "t")[0] == b"patched\n"
    with pytest.raises(ImageError, match="does not exist"):
        imaging.vendor_bytes(s, "ask:config/nope", "t")
    with pytest.raises(ImageError, match="at askbuild/base"):
        imaging.vendor_bytes(s, "ask@base:config/nope", "t")
    with pytest.raises(ConfigError):
        imaging.vendor_bytes(s, "ask:../etc/passwd", "t")
    with pytest.raises(ImageError, match="inv fetch"):
        imaging.vendor_bytes(s, "fmc:etc/x", "t")


def test_bad_tag_is_a_user_error(tmp_path):
    s = Settings(project_root=ROOT, work_dir=tmp_path, cache_dir=tmp_path / "c")
    with pytest.raises(UserError, match="not a valid image tag"):
        imaging.image(s, tag="-x;rm", load=False)
    with pytest.raises(ImageError, match="inv build"):
        imaging.image(s, tag="dev", load=False)


def test_image_toml_declares_the_contract():
    s = Settings(project_root=ROOT)
    conf = imaging.load_image_toml(s)
    assert conf["repository"] == "localhost/monok8s/cmm"
    for pkg in ("busybox", "kmod", "iproute2", "libstdc++6", "base-passwd"):
        assert pkg in conf["base"]["packages"]
    assert conf["vendor"]["/etc/config/fastforward.vendor.orig"] == "ask@base:config/fastforward"
    assert conf["files"]["init_dpa.sh"]["path"] == "/bin/init_dpa.sh"
    assert "gateway-dk" in conf["boards"]


def test_writers_leave_no_temporary_file_behind_even_when_failing(tmp_path):
    """A failing write (here: an entry whose source vanished) removes its temporary file and
    leaves the previous blob in place."""
    dest = tmp_path / "l.tar"
    oci.write_layer([oci.Entry("x", data=b"1")], dest, epoch=0, compression="none")
    before = dest.read_bytes()
    gone = tmp_path / "gone.txt"
    with pytest.raises(FileNotFoundError):
        oci.write_layer([oci.Entry("y", oci.FILE, 0o644, source=gone)], dest, epoch=0,
                        compression="none")
    assert dest.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.tar"]


def test_base_blobs_in_use_are_never_pruned(tmp_path):
    """Only blobs beyond the newest ``keep`` AND unused for an hour go (another checkout may be
    copying a recently used one into its archive)."""
    import os
    import time
    now = time.time()
    ages = {"layer-1-gzip.tar.gz": 10, "layer-2-gzip.tar.gz": 7200, "layer-3-gzip.tar.gz": 9000,
            "layer-4-gzip.tar.gz": 100, "layer-5-gzip.tar.gz": 60, "layer-6-gzip.tar.gz": 200}
    for name, age in ages.items():
        for p in (tmp_path / name, tmp_path / f"{name}.json"):
            p.write_text("x")
            os.utime(p, (now - age, now - age))
    baselayer._prune_blobs(tmp_path, keep=3, exclude=tmp_path / "layer-1-gzip.tar.gz")
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".json"))
    # layer-1 (this run's), the two newest others (5, 4), and 6 (beyond keep but used within
    # the hour) stay; 2 and 3 are old and beyond keep: pruned
    assert left == [f"layer-{i}-gzip.tar.gz" for i in (1, 4, 5, 6)]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".json")) == \
        [f"{n}.json" for n in left]
