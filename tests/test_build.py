"""The build engine on the fixture vendor tree with the real recipes and the real cross
compiler: AArch64 artifacts that run under qemu, staging, manifest, incremental rebuilds."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from buildfixtures import (
    USERSPACE,
    apply_patch,
    commit_all,
    elf_machine,
    make_fixture_sources,
    make_project,
    run_aarch64,
    settings_for,
)

from askbuild import building, gitutil, manifest
from askbuild.errors import UserError

pytestmark = pytest.mark.qemu

USERSPACE_CLOSURE = {"cmm", "dpa_app", "fmc", "fmlib", "libfci", "libnfnetlink",
                     "libnetfilter_conntrack"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One fixture build shared by the read-only tests of this module."""
    tmp = tmp_path_factory.mktemp("fixture-build")
    project = make_project(tmp / "project")
    s = settings_for(tmp, project)
    make_fixture_sources(s)
    man = building.build(s, USERSPACE, prepare=False)
    return s, man


def statuses(man: dict) -> dict[str, str]:
    return {n: c["status"] for n, c in man["components"].items()}


def test_artifacts_are_aarch64_and_staged(built):
    s, man = built
    st = s.staging_dir
    for rel in ("usr/bin/cmm", "usr/bin/dpa_app", "usr/bin/fmc"):
        assert elf_machine(st / rel) == "EM_AARCH64", rel
        assert (st / rel).stat().st_mode & 0o777 == 0o755
    for rel in ("etc/config/fastforward", "etc/cdx_cfg.xml", "etc/cdx_pcd.xml", "etc/cdx_sp.xml",
                "etc/fmc/config/hxs_pdl_v3.xml",
                "usr/share/ask/boards/gateway-dk/cdx_cfg.xml"):
        assert (st / rel).is_file(), rel
        assert (st / rel).stat().st_mode & 0o777 == 0o644
    # fmc's CRLF data file is staged byte for byte.
    assert b"\r\n" in (st / "etc/fmc/config/hxs_pdl_v3.xml").read_bytes()
    # Static libraries went into the pipeline's own sysroot.
    assert (s.work_dir / "sysroot/lib/libnetfilter_conntrack.a").is_file()
    assert (s.work_dir / "sysroot/lib/pkgconfig/libnfnetlink.pc").is_file()
    assert statuses(man) == {n: "built" for n in USERSPACE_CLOSURE}


def test_userspace_runs_under_qemu(built):
    s, _ = built
    st = s.staging_dir
    v = run_aarch64(st / "usr/bin/cmm", "-v")
    assert v.returncode == 0, v.stderr
    # libfci, the patched conntrack library and its patched libnfnetlink, libpcap all linked in.
    assert "cmm fixture 1.0 (fci-fixture-2.2, conntrack-fixture-1.1.0(nfnetlink-fixture-1.0.2)" \
        in v.stdout
    assert "fast path: comcerto-fp nonblocking" in v.stdout
    assert "libpcap version" in v.stdout
    # -t: load and check the rules, then exit (without it the example cmm daemonizes).
    r = run_aarch64(st / "usr/bin/cmm", "-t", "-f", str(st / "etc/config/fastforward"), "-n",
                    "131072")
    assert r.returncode == 0, r.stderr
    assert f"cmm fixture: 5 rules from {st}/etc/config/fastforward, max 131072 connections" \
        in r.stdout
    usage = run_aarch64(st / "usr/bin/cmm", "-h").stdout
    assert "usage: cmm" in usage
    assert "-F  stay in the foreground" in usage           # the example profile's local series
    # The example profile's local patch: dpa_app reads the CDX_*_FILE variables.
    d = run_aarch64(st / "usr/bin/dpa_app", cwd=st, env={
        "CDX_CFG_FILE": "etc/cdx_cfg.xml", "CDX_PCD_FILE": "etc/cdx_pcd.xml",
        "CDX_SP_FILE": "etc/cdx_sp.xml", "CDX_PDL_FILE": "etc/fmc/config/hxs_pdl_v3.xml"})
    assert d.returncode == 0, d.stderr
    assert "dpa_app fixture: cfg etc/cdx_cfg.xml <cfgdata> 1 entries" in d.stdout
    assert "dpa_app fixture: pcd etc/cdx_pcd.xml <netpcd> 3 entries" in d.stdout
    assert "dpa_app fixture: fmc pdl=netpdl fm=fm0-port1/LS1046A/ioctl-7" in d.stdout
    # The shared ASK feature set reached dpa_app.
    assert "features: AUTO_BRIDGE LS1043" in run_aarch64(st / "usr/bin/dpa_app", "-v").stdout
    f = run_aarch64(st / "usr/bin/fmc", "-d", "etc/fmc/config/hxs_pdl_v3.xml", cwd=st)
    assert "fmc fixture machine=ls1046 pdl=netpdl" in f.stdout
    assert "ask-ext=42" in f.stdout   # the vendor fmlib/fmc patches are in


def test_manifest_contents(built):
    s, man = built
    on_disk = json.loads((s.work_dir / "build-manifest.json").read_text())
    assert on_disk == man
    assert man["schema"] == manifest.SCHEMA and man["status"] == "success"
    assert man["toolchain"]["cross_compile"] == "aarch64-linux-gnu-"
    assert man["toolchain"]["gcc_version"].split(".")[0].isdigit()
    assert "libcli-dev:arm64" in man["toolchain"]["packages"]
    src = man["sources"]["libnfnetlink"]
    assert len(src["head"]) == 40 and len(src["base"]) == 40 and src["head"] != src["base"]
    assert [p["subject"] for p in src["patches"]] == [
        "apply 01-nxp-ask-nonblocking-heap-buffer.patch"]
    assert set(man["sources"]) == {"ask", "fmlib", "fmc", "libnfnetlink",
                                   "libnetfilter_conntrack", "linux"}
    cmm = man["components"]["cmm"]
    assert cmm["recipe"] == "recipes/components/cmm.toml"
    assert len(cmm["key"]) == 64 and cmm["duration_s"] >= 0
    assert set(cmm["inputs"]) == {"cmm", "auto_bridge/include", "config/fastforward"}
    assert cmm["depends"] == ["libfci", "libnetfilter_conntrack"]
    arts = {a["staged"]: a for a in cmm["artifacts"]}
    binary = s.staging_dir / "usr/bin/cmm"
    assert arts["usr/bin/cmm"]["sha256"] == hashlib.sha256(binary.read_bytes()).hexdigest()
    assert arts["usr/bin/cmm"]["size"] == binary.stat().st_size
    assert man["components"]["fmlib"]["uses"] == {
        "linux": {"include/uapi/linux/fmd": man["components"]["fmlib"]["uses"]["linux"][
            "include/uapi/linux/fmd"]}}
    assert (s.logs_dir / "cmm.log").is_file()
    assert "aarch64-linux-gnu-gcc" in (s.logs_dir / "cmm.log").read_text()
    assert man["duration_s"] > 0 and man["finished"]


def _snapshot(s) -> dict[str, float]:
    files = [*s.logs_dir.glob("*.log"), *s.state_dir.glob("build-*.json"),
             *s.staging_dir.rglob("*")]
    return {str(p): p.stat().st_mtime_ns for p in files if p.is_file()}


def test_incremental_rebuilds_exactly_the_dependent_set(tmp_path):
    project = make_project(tmp_path / "project")
    s = settings_for(tmp_path, project)
    make_fixture_sources(s)
    first = building.build(s, USERSPACE, prepare=False)
    assert set(statuses(first).values()) == {"built"}

    # No-op: nothing runs and nothing is rewritten (its speed: benchmarks/bench_build.py).
    before = _snapshot(s)
    again = building.build(s, USERSPACE, prepare=False)
    assert set(statuses(again).values()) == {"cached"}
    assert _snapshot(s) == before
    assert {n: c["key"] for n, c in again["components"].items()} == \
        {n: c["key"] for n, c in first["components"].items()}

    # A new patch in the cmm series (one more commit touching cmm/): cmm only.
    ask = s.src_dir / "ask"
    patch = tmp_path / "0001-cmm-banner.patch"
    src = (ask / "cmm/src/cmm.c").read_text()
    (ask / "cmm/src/cmm.c").write_text(src.replace('"1.0"', '"1.0-patched"'))
    diff = gitutil.git(["diff"], cwd=ask).stdout
    gitutil.git(["checkout", "--", "."], cwd=ask)
    patch.write_text(diff)
    apply_patch(ask, patch)
    r = building.build(s, USERSPACE, prepare=False)
    assert {n for n, st in statuses(r).items() if st == "built"} == {"cmm"}
    assert "cmm fixture 1.0-patched" in run_aarch64(s.staging_dir / "usr/bin/cmm", "-v").stdout

    # A patch to libnfnetlink: it, the conntrack library that links it, and cmm.
    nfnl = s.src_dir / "libnfnetlink"
    (nfnl / "src/libnfnetlink.c").write_text(
        (nfnl / "src/libnfnetlink.c").read_text().replace("nfnetlink-fixture-1.0.2",
                                                          "nfnetlink-fixture-1.0.2+p"))
    commit_all(nfnl, "another vendor patch")
    r = building.build(s, USERSPACE, prepare=False)
    assert {n for n, st in statuses(r).items() if st == "built"} == {
        "libnfnetlink", "libnetfilter_conntrack", "cmm"}
    assert "nfnetlink-fixture-1.0.2+p" in run_aarch64(s.staging_dir / "usr/bin/cmm",
                                                      "-v").stdout

    # A kernel-source patch outside include/uapi/linux/fmd does not touch fmlib...
    linux = s.src_dir / "linux"
    (linux / "README").write_text("unrelated\n")
    commit_all(linux, "unrelated kernel patch")
    r = building.build(s, USERSPACE, prepare=False)
    assert set(statuses(r).values()) == {"cached"}
    # ...one inside it rebuilds fmlib, and fmc and dpa_app that link it.
    hdr = linux / "include/uapi/linux/fmd/fm_ioctls.h"
    hdr.write_text(hdr.read_text().replace("VERSION 7", "VERSION 8"))
    commit_all(linux, "FMan UAPI change")
    r = building.build(s, USERSPACE, prepare=False)
    assert {n for n, st in statuses(r).items() if st == "built"} == {"fmlib", "fmc", "dpa_app"}
    assert "ioctl-8" in run_aarch64(s.staging_dir / "usr/bin/fmc", "-d",
                                    "etc/fmc/config/hxs_pdl_v3.xml", cwd=s.staging_dir).stdout

    # A recipe edit rebuilds that component and its dependents.
    rec = project / "recipes/components/libfci.toml"
    rec.write_text(rec.read_text().replace('description = "', 'description = "edited: '))
    r = building.build(s, USERSPACE, prepare=False)
    assert {n for n, st in statuses(r).items() if st == "built"} == {"libfci", "cmm"}

    # A shared variable: every component using it.
    shared = project / "recipes/components/_shared.toml"
    shared.write_text(shared.read_text().replace('"-DWIFI_ENABLE"', '"-DWIFI_ENABLE", "-DX1"'))
    r = building.build(s, USERSPACE, prepare=False)
    assert {n for n, st in statuses(r).items() if st == "built"} == {"cmm", "dpa_app"}

    # A wiped staging tree is put back without rebuilding.
    shutil.rmtree(s.staging_dir)
    r = building.build(s, USERSPACE, prepare=False)
    assert set(statuses(r).values()) == {"cached"}
    assert (s.staging_dir / "usr/bin/cmm").is_file()
    assert (s.staging_dir / "etc/cdx_cfg.xml").is_file()

    # A deleted artifact in a build tree: that component is rebuilt.
    (s.out_dir / "libfci/src/fci/lib/libfci.a").unlink()
    r = building.build(s, USERSPACE, prepare=False)
    assert {n for n, st in statuses(r).items() if st == "built"} == {"libfci"}


def test_missing_work_tree_is_a_clear_error(tmp_path):
    project = make_project(tmp_path / "project")
    s = settings_for(tmp_path, project)
    with pytest.raises(UserError) as ei:
        building.build(s, ["libfci"], prepare=False)
    assert "inv fetch && inv patch" in str(ei.value)
    assert str(s.src_dir / "ask") in str(ei.value)


def test_inherited_compiler_flags_do_not_leak(tmp_path, monkeypatch):
    project = make_project(tmp_path / "project")
    s = settings_for(tmp_path, project)
    make_fixture_sources(s)
    monkeypatch.setenv("CFLAGS", "-DBROKEN_BY_CALLER -Werror=this-does-not-exist")
    monkeypatch.setenv("MAKEFLAGS", "-j99")
    man = building.build(s, ["libfci"], prepare=False)
    assert man["components"]["libfci"]["status"] == "built"
    assert "BROKEN_BY_CALLER" not in (s.logs_dir / "libfci.log").read_text()


def test_ccache_counts_hits_and_misses(tmp_path, monkeypatch):
    project = make_project(tmp_path / "project")
    s = settings_for(tmp_path, project)
    make_fixture_sources(s)
    monkeypatch.setenv("CCACHE_DIR", str(tmp_path / "ccache"))
    man = building.build(s, ["libfci"], prepare=False, ccache=True)
    assert man["ccache"]["enabled"] is True
    assert man["ccache"]["misses"] >= 1
    (s.out_dir / "libfci/src/fci/lib/libfci.a").unlink()
    man = building.build(s, ["libfci"], prepare=False, ccache=True)
    assert man["ccache"]["hits"] >= 1
    assert Path(s.work_dir / "ccache-bin/aarch64-linux-gnu-gcc").is_symlink()
