"""The kernel: configuration merging and checks (fast), and a real build of Debian's
linux-source-6.1 with a tiny config followed by the fixture cdx/fci/auto_bridge modules built
against it, their vermagic checked (slow)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from buildfixtures import (
    FAKE_RELEASE,
    KERNEL_PATCHES,
    MODULE_C,
    REPO,
    apply_patch,
    elf_machine,
    fake_kernel,
    make_fixture_sources,
    make_project,
    settings_for,
)
from filelock import FileLock

from askbuild import building, kernel, manifest, toolchain
from askbuild.errors import BuildFailed, MissingToolError
from askbuild.gitutil import FIXED_IDENTITY, git

LINUX_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
CACHE_ROOT = Path(os.environ.get("ASKBUILD_TEST_CACHE", "/tmp/askbuild-test-cache"))
FIXTURE_DEFCONFIG = REPO / "examples/vendor/ask/config/kernel/defconfig"
TEST_FRAGMENT = "CONFIG_MODULE_UNLOAD=y\nCONFIG_CRC_CCITT=m\n"


# ----------------------------------------------------------------------- fast tests --
def test_parse_and_merge_config(tmp_path):
    base = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\n# comment\n"
    frag = tmp_path / "f.config"
    frag.write_text("CONFIG_B=m\n# CONFIG_A is not set\nCONFIG_D=y\n")
    merged = kernel.merge_config(base, [frag])
    cfg = kernel.parse_config(merged)
    assert cfg == {"CONFIG_A": "n", "CONFIG_B": "m", "CONFIG_C": "\"x\"", "CONFIG_D": "y"}
    assert merged.count("CONFIG_A") == 1 and "# comment" in merged


def test_missing_symbols_lists_each_with_its_origin(tmp_path):
    wants = [kernel.Wanted("CONFIG_NF_CONNTRACK", "m", "frag.config"),
             kernel.Wanted("CONFIG_MODULES", None, "recipe"),
             kernel.Wanted("CONFIG_NET", "y", "frag.config"),
             kernel.Wanted("CONFIG_DEBUG", "n", "frag.config")]
    missing = kernel.missing_symbols({"CONFIG_NET": "y", "CONFIG_DEBUG": "y"}, wants)
    assert missing == [
        "CONFIG_NF_CONNTRACK: wanted m or y (available: built-in accepted), got not set "
        "(asked by frag.config)",
        "CONFIG_MODULES: wanted enabled, got not set (asked by recipe)",
        "CONFIG_DEBUG: wanted n, got y (asked by frag.config)",
    ]
    assert kernel.require_wants(["CONFIG_X=m", "CONFIG_Y", "CONFIG_Z=m!"], "r") == [
        kernel.Wanted("CONFIG_X", "m", "r"), kernel.Wanted("CONFIG_Y", None, "r"),
        kernel.Wanted("CONFIG_Z", "m", "r", exact=True)]


def test_m_means_available_and_bang_means_exact():
    """A fragment's (or a require's) =m is met by a module or a built-in; =m! only by a
    module; every other value exactly; a bare symbol by anything but n."""
    config = {"CONFIG_SELECTED": "y", "CONFIG_MOD": "m", "CONFIG_OFF": "n", "CONFIG_S": '"x"'}
    wants = kernel.require_wants(
        ["CONFIG_SELECTED=m", "CONFIG_MOD=m", "CONFIG_MOD=m!", "CONFIG_SELECTED", "CONFIG_MOD",
         "CONFIG_OFF=n", 'CONFIG_S="x"'], "r")
    assert kernel.missing_symbols(config, wants) == []
    bad = kernel.require_wants(["CONFIG_SELECTED=m!", "CONFIG_MOD=y", "CONFIG_OFF=m",
                                "CONFIG_OFF", 'CONFIG_S="y"', "CONFIG_MOD=n"], "r")
    assert [line.split(":")[0] for line in kernel.missing_symbols(config, bad)] == [
        "CONFIG_SELECTED", "CONFIG_MOD", "CONFIG_OFF", "CONFIG_OFF", "CONFIG_S", "CONFIG_MOD"]
    assert kernel.missing_symbols(config, bad)[0] == (
        "CONFIG_SELECTED: wanted exactly m (a module; exact requirement), got y (asked by r)")
    # A fragment's =m is the "available" kind: a built-in y passes.
    frag = kernel.Wanted("CONFIG_SELECTED", "m", "frag.config")
    assert frag.satisfied("y") and frag.satisfied("m") and not frag.satisfied("n")


def test_fragment_globs_must_match(tmp_path):
    with pytest.raises(Exception, match="matches no file"):
        kernel.fragment_files(tmp_path, ["kernel/fragments/*.config"], "kernel.toml")


def test_build_timestamp_from_base_commit(tmp_path):
    (tmp_path / "f").write_text("x")
    git(["init", "-q"], cwd=tmp_path)
    git(["add", "-A"], cwd=tmp_path)
    git(["commit", "-qm", "base"], cwd=tmp_path,
        env={**FIXED_IDENTITY, "GIT_COMMITTER_DATE": "2024-05-06T07:08:09Z"})
    git(["tag", "askbuild/base"], cwd=tmp_path)
    git(["commit", "-q", "--allow-empty", "-m", "patch"], cwd=tmp_path, env=FIXED_IDENTITY)
    env = kernel.kbuild_env(tmp_path)
    assert env["KBUILD_BUILD_TIMESTAMP"] == "Mon, 6 May 2024 07:08:09 +0000"
    assert env["KBUILD_BUILD_USER"] == "askbuild" and env["KBUILD_BUILD_HOST"] == "askbuild"


# ------------------------------------------------------ depmod (a stand-in kernel, fast) --
needs_cc = pytest.mark.skipif(not shutil.which("aarch64-linux-gnu-gcc"),
                              reason="needs the cross compiler")


def _modules(tmp_path: Path) -> Path:
    """A staging tree with one aarch64 module of release FAKE_RELEASE."""
    staging = tmp_path / "staging"
    moddir = staging / "lib/modules" / FAKE_RELEASE / "extra"
    moddir.mkdir(parents=True)
    src = tmp_path / "m.c"
    src.write_text(MODULE_C)
    subprocess.run(["aarch64-linux-gnu-gcc", "-c", f'-DRELEASE="{FAKE_RELEASE}"',
                    '-DNAME="m"', "-o", str(moddir / "m.ko"), str(src)], check=True)
    return staging


@needs_cc
def test_depmod_writes_modules_dep(tmp_path):
    staging = _modules(tmp_path)
    building.run_depmod(staging, FAKE_RELEASE)
    dep = staging / "lib/modules" / FAKE_RELEASE / "modules.dep"
    assert dep.read_text() == "extra/m.ko:\n"


@needs_cc
def test_missing_depmod_is_an_error_not_a_silent_skip(tmp_path):
    staging = _modules(tmp_path)
    empty = tmp_path / "bin"
    empty.mkdir()
    with pytest.raises(MissingToolError) as ei:
        building.run_depmod(staging, FAKE_RELEASE, search_path=str(empty))
    msg = str(ei.value)
    assert "depmod not found (package kmod)" in msg and "inv setup" in msg
    assert str(staging / "lib/modules" / FAKE_RELEASE) in msg
    assert not (staging / "lib/modules" / FAKE_RELEASE / "modules.dep").exists()


@needs_cc
def test_failing_depmod_is_a_build_failure_with_its_stderr(tmp_path):
    staging = _modules(tmp_path)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "depmod").write_text("#!/bin/sh\necho 'depmod: ERROR: fixture cannot read' >&2\n"
                                 "exit 1\n")
    (fake / "depmod").chmod(0o755)
    with pytest.raises(BuildFailed) as ei:
        building.run_depmod(staging, FAKE_RELEASE, search_path=str(fake))
    assert "depmod: ERROR: fixture cannot read" in str(ei.value)
    assert f"depmod -b {staging} -a {FAKE_RELEASE} failed" in str(ei.value)


@needs_cc
def test_kernel_build_stages_modules_with_modules_dep(tmp_path):
    """A stand-in kernel component (configure, build, modules_install through the kernel
    recipe interface) and an out-of-tree module: both staged, depmod run; a modules.dep that
    went missing is written again by the next (cached) build."""
    s = fake_kernel(tmp_path)
    man = building.build(s, [], prepare=False)
    assert man["kernel"] == {"component": "kernel", "release": FAKE_RELEASE}
    dep = s.staging_dir / "lib/modules" / FAKE_RELEASE / "modules.dep"
    assert sorted(dep.read_text().splitlines()) == ["extra/mod.ko:", "kernel/fake.ko:"]
    dep.unlink()
    man = building.build(s, [], prepare=False)
    assert {c["status"] for c in man["components"].values()} == {"cached"}
    assert dep.is_file()


@needs_cc
def test_kernel_build_without_depmod_fails_before_building(tmp_path, monkeypatch):
    """PATH without depmod (and no sbin fallback): refused up front, nothing built."""
    s = fake_kernel(tmp_path)
    monkeypatch.setattr(toolchain, "SBIN_DIRS", ())
    monkeypatch.setenv("PATH", "/usr/local/bin:/usr/bin:/bin")
    assert shutil.which("depmod") is None
    with pytest.raises(MissingToolError) as ei:
        building.build(s, [], prepare=False)
    assert "depmod (package kmod" in str(ei.value) and "inv setup" in str(ei.value)
    assert manifest.read(s) is None
    assert not s.build_record("kernel").exists()
    assert not s.staging_dir.exists()


# ----------------------------------------------------------------------- slow tests --
def _import_kernel_tree(dest: Path) -> None:
    """linux-source-6.1 as a patched work tree (like fetch + patch would make it)."""
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    subprocess.run(["tar", "-xJf", str(LINUX_TARBALL), "-C", str(tmp), "--strip-components=1",
                    "--no-same-owner"], check=True)
    git(["init", "-q"], cwd=tmp)
    # Debian's linux-source .gitignore ignores everything ("/*"): force the import.
    git(["add", "-A", "-f"], cwd=tmp)
    git(["commit", "-q", "-m", "linux-source-6.1"], cwd=tmp, env=FIXED_IDENTITY)
    git(["tag", "askbuild/base"], cwd=tmp)
    for p in KERNEL_PATCHES:
        apply_patch(tmp, p)
    tmp.rename(dest)


@pytest.fixture(scope="session")
def linux_tree() -> Path:
    """The imported kernel tree, cached across sessions (import only, never build output)."""
    if not LINUX_TARBALL.is_file():
        pytest.skip(f"{LINUX_TARBALL} missing (apt-get install linux-source-6.1)")
    st = LINUX_TARBALL.stat()
    patches = "-".join(p.stem[:4] for p in KERNEL_PATCHES)
    dest = CACHE_ROOT / f"linux-6.1-{st.st_size}-{int(st.st_mtime)}-{patches}"
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if not (dest / ".git").is_dir():
            _import_kernel_tree(dest)
    return dest


@pytest.fixture(scope="module")
def kernel_build(tmp_path_factory, linux_tree):
    tmp = tmp_path_factory.mktemp("kernel-build")
    project = make_project(tmp / "project")
    for f in (project / "kernel/fragments").glob("*"):
        f.unlink()
    (project / "kernel/fragments/test.config").write_text(TEST_FRAGMENT)
    s = settings_for(tmp, project)
    make_fixture_sources(s, linux=linux_tree)
    os.symlink(linux_tree, s.src_dir / "linux")
    t0 = time.monotonic()
    man = building.build(s, ["cdx", "fci", "auto_bridge"], prepare=False)
    return s, man, time.monotonic() - t0


@pytest.mark.slow
def test_kernel_and_modules(kernel_build, linux_tree):
    s, man, _ = kernel_build
    assert man["status"] == "success"
    assert {n: c["status"] for n, c in man["components"].items()} == dict.fromkeys(
        ["kernel", "cdx", "fci", "auto_bridge"], "built")
    release = man["kernel"]["release"]
    assert release.startswith("6.1.")
    build = s.out_dir / "kernel/build"
    image = (build / "arch/arm64/boot/Image").read_bytes()
    assert image[56:60] == b"ARM\x64"                   # arm64 Image header magic
    dtb = build / "arch/arm64/boot/dts/freescale/fsl-ls1046a-rdb.dtb"
    assert dtb.read_bytes()[:4] == bytes.fromhex("d00dfeed")
    arts = {a["path"]: a for a in man["components"]["kernel"]["artifacts"]}
    assert arts["arch/arm64/boot/Image"]["size"] == len(image)

    moddir = s.staging_dir / "lib/modules" / release
    mods = {p.relative_to(moddir).as_posix(): p for p in moddir.rglob("*.ko")}
    assert set(mods) == {"extra/cdx.ko", "extra/fci.ko", "extra/auto_bridge.ko",
                         "kernel/lib/crc-ccitt.ko"}
    for p in mods.values():
        assert elf_machine(p) == "EM_AARCH64"
        assert kernel.module_vermagic(p).split()[0] == release
    kernel.check_vermagic(list(mods.values()), release)
    with pytest.raises(BuildFailed, match="do not match the kernel release '6.0.0'"):
        kernel.check_vermagic([mods["extra/fci.ko"]], "6.0.0")
    # fci resolved cdx's exported symbol through KBUILD_EXTRA_SYMBOLS.
    from elftools.elf.elffile import ELFFile
    with mods["extra/fci.ko"].open("rb") as f:
        modinfo = ELFFile(f).get_section_by_name(".modinfo").data()
    assert b"depends=cdx\0" in modinfo
    assert "extra/fci.ko: extra/cdx.ko" in (moddir / "modules.dep").read_text()
    assert not (moddir / "build").exists() and not (moddir / "source").exists()

    # Reproducible identity: timestamp from the base commit, fixed user and host.
    base_date = git(["log", "-1", "--format=%cD", "askbuild/base"], cwd=linux_tree).stdout
    uts = (build / "include/generated/utsversion.h").read_text()
    assert base_date.strip() in uts
    compile_h = (build / "include/generated/compile.h").read_text()
    assert '"askbuild"' in compile_h and "LINUX_COMPILE_HOST\t\"askbuild\"" in compile_h


@pytest.mark.slow
def test_kernel_noop_rebuild(kernel_build):
    s, _, _ = kernel_build
    man = building.build(s, ["cdx", "fci", "auto_bridge"], prepare=False)
    assert {c["status"] for c in man["components"].values()} == {"cached"}


NET_PREFIXES = ("CONFIG_NET", "CONFIG_INET", "CONFIG_NF_", "CONFIG_IP_NF")


def defconfig_without_networking(tmp_path: Path, extra: str = "") -> Path:
    """The fixture defconfig (tiny) without any networking symbol, plus ``extra``: the tests
    say themselves what the base enables (the example tree's defconfig may change)."""
    lines = [ln for ln in FIXTURE_DEFCONFIG.read_text().splitlines()
             if not ln.lstrip("# ").startswith(NET_PREFIXES)]
    path = tmp_path / "defconfig"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


@pytest.mark.slow
def test_required_symbols_that_do_not_survive_are_listed(tmp_path, linux_tree):
    frag = tmp_path / "monok8s-broken.config"
    # Conntrack without networking: olddefconfig drops these.
    frag.write_text("CONFIG_MODULES=y\nCONFIG_NF_CONNTRACK=m\nCONFIG_NF_CT_NETLINK=m\n")
    log = tmp_path / "log"

    def run(args):
        with log.open("ab") as f:
            subprocess.run(args, check=True, stdout=f, stderr=subprocess.STDOUT)

    with pytest.raises(BuildFailed) as ei:
        kernel.configure(run, src=linux_tree, build=tmp_path / "o", arch="arm64",
                         cross="aarch64-linux-gnu-",
                         defconfig=defconfig_without_networking(tmp_path, "# CONFIG_NET is "
                                                                "not set\n"),
                         fragments=[frag], require=kernel.require_wants(
                             ["CONFIG_BLOCK=y"], "kernel.toml: require"),
                         where="kernel.toml")
    msg = str(ei.value)
    assert "3 required kernel symbol(s) did not survive olddefconfig" in msg
    assert f"CONFIG_NF_CONNTRACK: wanted m or y (available: built-in accepted), got not set " \
        f"(asked by {frag})" in msg
    assert "CONFIG_NF_CT_NETLINK: wanted m" in msg
    assert "CONFIG_BLOCK: wanted y, got not set (asked by kernel.toml: require)" in msg
    assert "CONFIG_MODULES" not in msg


@pytest.mark.slow
def test_project_fragment_survives_on_the_fixture_defconfig(tmp_path, linux_tree):
    """The shipped monok8s fragment is coherent: every symbol survives olddefconfig."""
    frags = sorted((REPO / "kernel/fragments").glob("*.config"))
    assert frags

    def run(args):
        subprocess.run(args, check=True, capture_output=True)

    config = kernel.configure(run, src=linux_tree, build=tmp_path / "o", arch="arm64",
                              cross="aarch64-linux-gnu-", defconfig=FIXTURE_DEFCONFIG,
                              fragments=frags, require=[], where="kernel.toml")
    assert config["CONFIG_NF_CONNTRACK"] == "m"
    assert config["CONFIG_NETFILTER_XT_MATCH_CONNTRACK"] == "m"
    assert config["CONFIG_MODULES"] == "y"


#: What ASK's defconfig does to the fragment: these built-ins select NETFILTER_NETLINK and
#: NETFILTER_XTABLES as =y while the fragment asks for them as =m.
SELECTS_BUILT_IN = ("CONFIG_NET=y\nCONFIG_INET=y\nCONFIG_NETFILTER=y\n"
                    "CONFIG_NETFILTER_ADVANCED=y\nCONFIG_NF_TABLES=y\n"
                    "CONFIG_NETFILTER_NETLINK_LOG=y\nCONFIG_IP_NF_IPTABLES=y\n")


@pytest.mark.slow
def test_fragment_m_accepts_a_built_in_forced_by_selects_but_exact_m_does_not(tmp_path,
                                                                            linux_tree):
    """Real kconfig (olddefconfig only): a defconfig whose selects force the fragment's =m
    symbols to =y is accepted; an exact requirement (require "CONFIG_X=m!") on one of them
    fails naming it."""
    defconfig = defconfig_without_networking(tmp_path, SELECTS_BUILT_IN)
    frags = [REPO / "kernel/fragments/monok8s.config"]
    assert "CONFIG_NETFILTER_XTABLES=m" in frags[0].read_text()

    def run(args):
        subprocess.run(args, check=True, capture_output=True)

    kw = dict(src=linux_tree, build=tmp_path / "o", arch="arm64", cross="aarch64-linux-gnu-",
              defconfig=defconfig, fragments=frags, where="kernel.toml")
    config = kernel.configure(run, require=kernel.require_wants(
        ["CONFIG_MODULES=y", "CONFIG_NETFILTER_NETLINK=m"], "kernel.toml: require"), **kw)
    assert config["CONFIG_NETFILTER_NETLINK"] == "y"
    assert config["CONFIG_NETFILTER_XTABLES"] == "y"
    assert config["CONFIG_NF_CONNTRACK"] == "m"          # what nothing selects stays a module
    with pytest.raises(BuildFailed) as ei:
        kernel.configure(run, require=kernel.require_wants(
            ["CONFIG_NETFILTER_XTABLES=m!", "CONFIG_NF_CONNTRACK=m!"], "kernel.toml: require"),
            **kw)
    msg = str(ei.value)
    assert "kernel.toml: 1 required kernel symbol(s) did not survive olddefconfig" in msg
    assert ("CONFIG_NETFILTER_XTABLES: wanted exactly m (a module; exact requirement), got y "
            "(asked by kernel.toml: require)") in msg
    assert "drop the '!'" in msg

