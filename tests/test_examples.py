"""Example upstreams are deterministic, so a profile can lock them like real upstreams; the
example vendor tree has the real vendor tree's layout and traps."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from askbuild import examples, fetching, gitutil
from askbuild import patchqueue as pq
from askbuild.errors import ConfigError
from askbuild.refs import BASE_TAG
from askbuild.settings import Settings
from askbuild.sources import load_sources


def make_project(root: Path) -> Settings:
    ex = root / "examples"
    (ex / "vendor" / "thing" / "src").mkdir(parents=True)
    (ex / "vendor" / "thing" / "src" / "main.c").write_text("int main(void){return 0;}\n")
    (ex / "vendor" / "thing" / "build.sh").write_text("#!/bin/sh\necho hi\n")
    (ex / "vendor" / "thing" / "build.sh").chmod(0o755)
    (ex / "vendor" / "lib-1.0").mkdir(parents=True)
    (ex / "vendor" / "lib-1.0" / "configure").write_text("#!/bin/sh\n")
    (ex / "vendor" / "lib-1.0" / "configure").chmod(0o755)
    (ex / "vendor" / "lib-1.0" / "crlf.txt").write_bytes(b"a\r\nb\r\n")
    (ex / "upstreams.toml").write_text(
        '[thing]\nkind = "git"\ntree = "vendor/thing"\ntag = "v1.0"\n\n'
        '[lib]\nkind = "tarball"\ntree = "vendor/lib-1.0"\nfile = "lib-1.0.tar.xz"\n'
        'top = "lib-1.0"\n')
    (root / "recipes").mkdir()
    (root / "recipes" / "sources.toml").write_text("")
    return Settings(project_root=root, work_dir=root / "work", cache_dir=root / "cache")


def test_publish_is_deterministic_across_places(tmp_path):
    a = examples.publish(make_project(tmp_path / "a"))
    b = examples.publish(make_project(tmp_path / "b"))
    assert a["thing"]["commit"] == b["thing"]["commit"]
    assert gitutil.is_sha(a["thing"]["commit"])
    assert a["lib"]["sha256"] == b["lib"]["sha256"]
    data = Path(a["lib"]["url"].removeprefix("file://")).read_bytes()
    assert hashlib.sha256(data).hexdigest() == a["lib"]["sha256"] and len(data) == a["lib"]["size"]


def test_published_tarball_is_clean(tmp_path):
    s = make_project(tmp_path)
    up = examples.publish(s)
    data = Path(up["lib"]["url"].removeprefix("file://")).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names) and names[0] == "lib-1.0"
        assert all(m.uid == 0 and m.gid == 0 and m.mtime == examples.EPOCH for m in members)
        assert tar.getmember("lib-1.0/configure").mode == 0o755
        assert tar.extractfile("lib-1.0/crlf.txt").read() == b"a\r\nb\r\n"


def test_published_repo_has_tag_and_serves_shas(tmp_path):
    s = make_project(tmp_path)
    up = examples.publish(s)
    repo = Path(up["thing"]["url"].removeprefix("file://"))
    assert gitutil.out(["rev-parse", "v1.0^{commit}"], cwd=repo) == up["thing"]["commit"]
    assert gitutil.out(["config", "uploadpack.allowAnySHA1InWant"], cwd=repo) == "true"
    mode = gitutil.out(["ls-tree", "HEAD", "--", "build.sh"], cwd=repo).split()[0]
    assert mode == "100755"


def test_publish_is_skipped_when_inputs_unchanged_and_redone_when_changed(tmp_path):
    s = make_project(tmp_path)
    first = examples.publish(s)
    stamp = s.example_upstreams_dir / "published.json"
    mtime = stamp.stat().st_mtime_ns
    assert examples.publish(s) == first
    assert stamp.stat().st_mtime_ns == mtime
    (tmp_path / "examples" / "vendor" / "thing" / "src" / "main.c").write_text("int x;\n")
    second = examples.publish(s)
    assert second["thing"]["commit"] != first["thing"]["commit"]
    assert second["lib"] == first["lib"]


def test_a_damaged_stamp_means_publish_again(tmp_path):
    s = make_project(tmp_path)
    first = examples.publish(s)
    stamp = s.example_upstreams_dir / "published.json"
    stamp.write_text('{"inputs": ')          # a run killed mid-write on a non-atomic fs
    assert examples.publish(s) == first
    assert "upstreams" in stamp.read_text()


def test_a_stamp_whose_content_is_gone_means_publish_again(tmp_path):
    import shutil
    s = make_project(tmp_path)
    first = examples.publish(s)
    dest = s.example_upstreams_dir
    shutil.rmtree(dest / "thing.git")                 # a run killed while replacing it
    (dest / "lib-1.0.tar.xz").write_bytes(b"half")
    assert examples.publish(s) == first
    assert gitutil.out(["rev-parse", "v1.0^{commit}"], cwd=dest / "thing.git") == \
        first["thing"]["commit"]
    assert hashlib.sha256((dest / "lib-1.0.tar.xz").read_bytes()).hexdigest() == \
        first["lib"]["sha256"]


def test_leftovers_of_a_killed_publisher_are_removed(tmp_path):
    s = make_project(tmp_path)
    dest = s.example_upstreams_dir
    dead = [dest / ".publish-4242-deadbeef" / "thing.work" / "x",
            dest / ".thing.git.old-4242-deadbeef" / "HEAD", dest / ".published.json.1.2.tmp"]
    for f in dead:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("half\n")
    examples.publish(s)
    assert sorted(p.name for p in dest.iterdir()) == [
        ".publish.lock", "lib-1.0.tar.xz", "published.json", "thing.git"]


# -- the example vendor tree has the real tree's layout and traps (issue #14) ----------------

REPO = Path(__file__).resolve().parent.parent
ASK = REPO / "examples" / "vendor" / "ask"
KERNEL_002 = "002-example-ask-kernel_linux_6_1.patch"
KERNEL_999 = "999-example-ask-kernel_linux_5_4.patch"


def test_vendor_patch_directories_have_no_version_subdirectories():
    """ASK keeps patches/<name>/NN-*.patch: so does the example tree."""
    dirs = sorted(p.name for p in (ASK / "patches").iterdir())
    assert {"fmc", "fmlib", "kernel", "libnetfilter-conntrack", "libnfnetlink"} <= set(dirs)
    for d in dirs:
        entries = list((ASK / "patches" / d).iterdir())
        assert entries and all(e.is_file() and re.fullmatch(r"[0-9]+-.+\.patch", e.name)
                               for e in entries), d


def test_the_kernel_directory_holds_two_competing_generations_of_the_port():
    kernel = sorted(p.name for p in (ASK / "patches" / "kernel").iterdir())
    assert kernel == [KERNEL_002, KERNEL_999]
    new, old = (pq.patch_files((ASK / "patches" / "kernel" / n).read_bytes()) for n in kernel)
    assert "include/uapi/linux/fmd/fm_ioctls.h" in new.created & old.created
    assert pq.competing(new, old)
    # fmlib needs that header, which only the vendor kernel patch provides
    assert "$(KERNEL_SRC)/include/uapi/linux/fmd" in (REPO / "examples/vendor/fmlib/Makefile"
                                                      ).read_text()


def test_the_defconfig_forces_the_fragment_modules_to_built_in():
    """ASK's defconfig sets NF_TABLES=y, NETFILTER_NETLINK_LOG=y, IP_NF_IPTABLES=y, which
    select NETFILTER_NETLINK and NETFILTER_XTABLES built-in; the fragment asks for them =m."""
    defconfig = (ASK / "config/kernel/defconfig").read_text().splitlines()
    for sym in ("NF_TABLES", "NETFILTER_NETLINK_LOG", "IP_NF_IPTABLES", "NET", "INET",
                "NETFILTER"):
        assert f"CONFIG_{sym}=y" in defconfig, sym
    fragment = (REPO / "kernel/fragments/monok8s.config").read_text().splitlines()
    assert {"CONFIG_NETFILTER_NETLINK=m", "CONFIG_NETFILTER_XTABLES=m"} <= set(fragment)


def example_settings(tmp_path: Path) -> Settings:
    root = tmp_path / "project"
    for d in ("recipes", "examples", "patches", "kernel"):
        shutil.copytree(REPO / d, root / d, symlinks=True)
    return Settings.load(project_root=root, work_dir=tmp_path / "work",
                         cache_dir=tmp_path / "cache", profile="example")


def test_example_profile_layers_pick_one_kernel_generation_and_the_real_layout(tmp_path):
    s = example_settings(tmp_path)
    assert pq.layers_file(s) == s.project_root / "recipes/profiles/example/patches.toml"
    sources = load_sources(s)
    ask = fetching.fetch(s, ["ask"])["ask"]
    layers = pq.load_layers(s, sources)
    picked = pq.collect_inputs(s, layers["linux"], sources, trees={"ask": ask})
    assert [p.name for p in picked] == [KERNEL_002]
    # all of patches/kernel: the two generations are refused, naming both
    everything = pq.Layer("linux", "vendor", "patches/kernel", "ask")
    with pytest.raises(ConfigError, match=f"{KERNEL_002} and {KERNEL_999}: both create "):
        pq.collect_inputs(s, [everything], sources, trees={"ask": ask})
    # the old default data (a version directory) matches nothing, loudly
    versioned = pq.Layer("libnfnetlink", "vendor", "patches/libnfnetlink/1.0.2", "ask")
    with pytest.raises(ConfigError) as e:
        pq.collect_inputs(s, [versioned], sources, trees={"ask": ask})
    assert "patches/libnfnetlink/ holds: 01-nxp-ask-nonblocking-heap-buffer.patch" in str(e.value)
    # every vendor directory of the DEFAULT data exists with patches in the example tree (the
    # same layout as ASK's), except linux's, which names the real 6.12 port
    default = Settings.load(project_root=s.project_root, work_dir=s.work_dir,
                            cache_dir=s.cache_dir)
    for name, lys in pq.load_layers(default, sources).items():
        for ly in lys:
            if ly.kind == "vendor" and name != "linux":
                got = pq.collect_inputs(default, [ly], sources, trees={"ask": ask})
                assert got, ly.id
    linux_default = [ly for ly in pq.load_layers(default, sources)["linux"]
                     if ly.kind == "vendor"]
    assert linux_default[0].patches == ("002-mono-gateway-ask-kernel_linux_6_12.patch",)


def _daemon_pids(binary: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if str(binary).encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.qemu
def test_example_cmm_daemonizes_like_the_vendor_and_the_local_series_adds_foreground(tmp_path):
    from askbuild import building
    s = example_settings(tmp_path)
    names = ["ask", "libnfnetlink", "libnetfilter_conntrack"]
    fetching.fetch(s, names)
    report = pq.patch(s, names)
    assert [r["patch"] for r in report.rows if r["source"] == "ask"] == [
        "0001-cmm-F-stays-in-the-foreground-and-logs-on-stdout.patch",
        "0001-cdx-do-not-start-dpa_app-when-the-module-loads.patch",
        "0001-dpa_app-read-the-CDX_-_FILE-variables.patch"]
    tree = s.src_dir / "ask"
    base_cdx = gitutil.out(["show", f"{BASE_TAG}:cdx/cdx.c"], cwd=tree)
    assert "call_usermodehelper" in base_cdx                  # the vendor's cdx starts dpa_app
    assert "call_usermodehelper" not in (tree / "cdx/cdx.c").read_text()
    assert "CDX_PCD_FILE" not in gitutil.out(["show", f"{BASE_TAG}:dpa_app/main.c"],
                                                cwd=tree)
    assert 'getenv(var)' in (tree / "dpa_app/main.c").read_text()
    building.build(s, ["cmm"], prepare=False)
    cmm = s.staging_dir / "usr/bin/cmm"
    rules = s.staging_dir / "etc/config/fastforward"
    # -F: stays in the foreground, logs on stdout, stops on SIGTERM with status 0
    fg = subprocess.Popen([str(cmm), "-F", "-f", str(rules)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        seen = [fg.stdout.readline(), fg.stdout.readline()]
        assert re.match(r"cmm: serving in the foreground \(pid \d+\), logs on stdout, 5 rules",
                        seen[1]), seen
        assert fg.poll() is None
        fg.send_signal(signal.SIGTERM)
        rest = fg.communicate(timeout=30)[0]
    finally:
        if fg.poll() is None:
            fg.kill()
    assert fg.returncode == 0 and "cmm: stopping on signal 15" in rest
    # without -F: the vendor's behaviour, the first process exits 0 and a daemon stays
    proc = subprocess.run([str(cmm), "-f", str(rules)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=60)
    assert proc.returncode == 0
    deadline = time.monotonic() + 10
    while not (pids := _daemon_pids(cmm)) and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        assert len(pids) == 1, "cmm left no daemon"
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
