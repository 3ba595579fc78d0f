"""Host prerequisites: ``inv doctor`` (report) and ``inv setup`` (install with apt-get).

Every prerequisite is one :class:`Check` (data): what it is, how to test it, which Debian
packages provide it and the fix to print.  ``setup`` installs the packages of every failing
check in one apt-get run (adding the arm64 architecture first), then enables qemu's binfmt
handler.  Without root and without sudo it prints the exact commands instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from . import console, dockerhost, toolchain
from .errors import MissingToolError
from .settings import DEFAULT_CROSS_COMPILE, Settings

ARM64_DEV = ["libxml2-dev:arm64", "libcli-dev:arm64", "libpcap-dev:arm64", "libmnl-dev:arm64"]
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")


@dataclass
class Check:
    name: str
    purpose: str
    test: Callable[[], tuple[bool, str]]
    packages: list[str] = field(default_factory=list)
    fix: str = ""
    required: bool = True       # False: reported, but its absence is not an error


@dataclass
class Result:
    check: Check
    ok: bool
    detail: str


def _installed(packages: list[str]) -> dict[str, bool]:
    if not packages or not shutil.which("dpkg-query"):
        return {p: False for p in packages}
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${binary:Package} ${db:Status-Abbrev}\n", "--", *packages],
        capture_output=True, text=True,
    )
    seen: dict[str, bool] = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            seen[parts[0]] = parts[1].startswith("ii")
    native = subprocess.run(["dpkg", "--print-architecture"], capture_output=True,
                            text=True).stdout.strip()
    out = {}
    for p in packages:
        # Multi-arch packages are printed with their architecture ("libfoo:amd64").
        out[p] = seen.get(p, False) or (":" not in p and seen.get(f"{p}:{native}", False))
    return out


def _packages_check(packages: list[str]) -> Callable[[], tuple[bool, str]]:
    def test() -> tuple[bool, str]:
        state = _installed(packages)
        missing = [p for p, ok in state.items() if not ok]
        if missing:
            return False, "missing: " + " ".join(missing)
        return True, "installed"
    return test


def _python() -> tuple[bool, str]:
    v = sys.version_info
    return (v >= (3, 11)), f"{v.major}.{v.minor}.{v.micro}"


def _tool_version(cmd: list[str]) -> Callable[[], tuple[bool, str]]:
    def test() -> tuple[bool, str]:
        exe = shutil.which(cmd[0])
        if not exe:
            return False, f"{cmd[0]} not found on PATH"
        proc = subprocess.run(cmd, capture_output=True, text=True)
        first = (proc.stdout or proc.stderr).strip().splitlines()[:1]
        return proc.returncode == 0, first[0] if first else exe
    return test


def _binfmt() -> tuple[bool, str]:
    entry = BINFMT_DIR / "qemu-aarch64"
    if not (BINFMT_DIR / "register").exists():
        return False, "binfmt_misc not mounted"
    if not entry.exists():
        return False, "qemu-aarch64 handler not registered"
    text = entry.read_text()
    if not text.startswith("enabled"):
        return False, "qemu-aarch64 handler disabled"
    flags = next((ln.split(":", 1)[1].strip() for ln in text.splitlines()
                  if ln.startswith("flags:")), "")
    return True, f"enabled (flags {flags or '-'})"


def _docker() -> tuple[bool, str]:
    if dockerhost.no_engine_socket():
        return False, f"no engine at {dockerhost.engine_host()} (no such socket)"
    try:
        import docker
        client = docker.from_env(timeout=5)
        info = client.version()
        client.close()
        return True, f"engine {info.get('Version', '?')} API {info.get('ApiVersion', '?')}"
    except Exception as e:  # noqa: BLE001 - any failure means "not reachable"
        return False, f"no engine at {dockerhost.engine_host()} ({type(e).__name__})"


# Every external program askbuild, its recipes and its tests run, with the Debian package that
# provides it and what it is for.  tests/test_hostdeps.py collects the programs named in the
# code and the recipes and fails when one is missing here, so a new call cannot be forgotten.
# (package, purpose, required); required=False: reported by doctor, tests skip without it.
PROGRAMS: dict[str, tuple[str, str, bool]] = {
    "git": ("git", "fetch and patch sources", True),
    "make": ("make", "component and kernel builds", True),
    # The default cross compiler; doctor checks the one actually used (settings.cross_gcc).
    f"{DEFAULT_CROSS_COMPILE}gcc": ("gcc-aarch64-linux-gnu",
                                    "aarch64 userspace and kernel builds", True),
    "pkg-config": ("pkgconf", "finds the arm64 libraries for the components", True),
    "file": ("file", "identifies build outputs (tests)", True),
    "flex": ("flex", "kernel build", True),
    "bison": ("bison", "kernel build", True),
    "bc": ("bc", "kernel build", True),
    "depmod": ("kmod", "modules.dep for the image's kernel modules", True),
    "ccache": ("ccache", "compiler cache (--ccache)", True),
    "mmdebstrap": ("mmdebstrap", "unpacks the arm64 base layer", True),
    "dpkg": ("dpkg", "base layer package facts", True),
    "dpkg-query": ("dpkg", "host package checks", True),
    "dpkg-deb": ("dpkg", "base layer package facts", True),
    "apt-get": ("apt", "inv setup", True),
    "update-binfmts": ("binfmt-support", "registers qemu for aarch64 binaries", True),
    "qemu-aarch64-static": ("qemu-user-static", "runs aarch64 binaries (tests, image.test)",
                            True),
    "mount": ("mount", "binfmt_misc; tmpfs for the fault tests", True),
    "umount": ("mount", "tmpfs for the fault tests", True),
    "taskset": ("util-linux", "fewer CPUs for one run (tests)", True),
    "tar": ("tar", "extracts tarball sources (and archives for the tests)", True),
    # Decompress tarball sources in a process of their own, beside the member checks
    # (askbuild.archive; Python's own modules, on one core, when one is missing).
    "xz": ("xz-utils", "decompresses .tar.xz sources (libnetfilter_conntrack, kernel)", True),
    "gzip": ("gzip", "decompresses .tar.gz sources", True),
    "bzip2": ("bzip2", "decompresses .tar.bz2 sources (libnfnetlink)", True),
    "ln": ("coreutils", "recipe steps", True),
    "sleep": ("coreutils", "a long child for the signal tests", True),
    "stdbuf": ("coreutils", "the rebase dry run's merges answered one by one", True),
    "sh": ("dash", "recipe and image scripts", True),
    "dockerd": ("docker.io", "the Docker engine the tests start", True),
    "ctr": ("containerd", "imports the image archive (tests)", True),
    "docker-registry": ("docker-registry",
                        "the OCI registry the push and shared-cache tests start", True),
    "redis-server": ("redis-server", "the Redis the ccache remote-storage tests start", True),
    "skopeo": ("skopeo", "pushes the image archive to a registry (inv image --push)", True),
    "podman": ("podman", "loads the image archive through Podman (optional test)", False),
    "sudo": ("sudo", "inv setup when not root (optional)", False),
}


def _which(program: str) -> str | None:
    return shutil.which(program) or next(
        (str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d) / program).is_file()), None)


def program_path(program: str) -> str | None:
    """Where ``program`` is (PATH, then the sbin directories a non-root PATH may lack)."""
    return _which(program)


def _programs_check(programs: list[str]) -> Callable[[], tuple[bool, str]]:
    def test() -> tuple[bool, str]:
        missing = [p for p in programs if not _which(p)]
        if missing:
            return False, "not found: " + " ".join(missing)
        return True, " ".join(programs)
    return test


def _program_checks() -> list[Check]:
    by_pkg: dict[str, list[str]] = {}
    for prog, (pkg, _purpose, _req) in PROGRAMS.items():
        by_pkg.setdefault(pkg, []).append(prog)
    out = []
    for pkg, progs in by_pkg.items():
        _, purpose, required = PROGRAMS[progs[0]]
        name = progs[0] if len(progs) == 1 else f"{pkg} ({', '.join(progs)})"
        # Optional programs are reported, never installed by setup.
        out.append(Check(name, purpose, _programs_check(progs), [pkg] if required else [],
                         fix="" if required else f"optional: apt-get install {pkg}",
                         required=required))
    return out


def _cross_check(settings: Settings, default: Check) -> Check:
    """The cross compiler the build will use (``settings.cross_gcc``): found, and reporting
    its version.  Setup installs the default compiler's package; another prefix names a
    toolchain askbuild cannot install, so its fix says what to do instead."""
    gcc = settings.cross_gcc

    def test() -> tuple[bool, str]:
        missing = toolchain.compiler_missing(settings)
        return (False, missing) if missing else _tool_version([gcc, "--version"])()

    default_prefix = settings.cross_compile == DEFAULT_CROSS_COMPILE
    return Check("cross compiler", f"{gcc}: {default.purpose}", test,
                 [toolchain.CROSS_PACKAGE] if default_prefix else [],
                 fix="" if default_prefix else toolchain.compiler_fix(settings))


def checks(settings: Settings) -> list[Check]:
    """Every prerequisite, in the order doctor shows them (the cross compiler is the one
    ``settings`` selects)."""
    by_name = {c.name: c for c in _program_checks()}
    cross = _cross_check(settings, by_name.pop(f"{DEFAULT_CROSS_COMPILE}gcc"))
    git = by_name.pop("git")
    git.test = _tool_version(["git", "--version"])
    return [
        Check("python", "runs askbuild", _python, fix="install Python 3.11 or newer"),
        git,
        cross,
        Check("arm64 dev packages", "cmm, dpa_app, fmc link these",
              _packages_check(ARM64_DEV), ARM64_DEV),
        Check("build packages", "tclap headers (fmc)",
              _packages_check(["libtclap-dev"]), ["libtclap-dev"]),
        Check("kernel build deps", "libelf, libssl headers for the kernel",
              _packages_check(["libelf-dev", "libssl-dev"]), ["libelf-dev", "libssl-dev"]),
        *by_name.values(),
        Check("qemu binfmt", "aarch64 binaries run directly", _binfmt,
              fix="mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; "
                  "update-binfmts --enable qemu-aarch64   (inv setup does this)"),
        Check("docker engine", "loads and tests the image (optional: without it the "
              "image archive is the result)", _docker,
              fix="dockerd --iptables=false --bridge=none --storage-driver=vfs &   "
                  "(or set DOCKER_HOST to a Docker/Podman socket)", required=False),
        Check("kernel source (tests)", "Debian linux-source-6.1 for the real kernel test",
              _packages_check(["linux-source-6.1"]), ["linux-source-6.1"], required=False),
        Check("scratch in RAM", "throw-away repositories of dry runs and checks (optional: "
              "else in the work dir, slower on a busy disk)", lambda: _ram_scratch(settings),
              fix="give /dev/shm room (a tmpfs), or set ASKBUILD_RAM_DIR to a tmpfs of yours",
              required=False),
    ]


def _ram_scratch(settings: Settings) -> tuple[bool, str]:
    from .patchqueue import scratch
    problem = scratch.ram_problem(settings)
    return not problem, problem or str(settings.ram_scratch_dir)


def run_checks(settings: Settings) -> list[Result]:
    results = []
    for c in checks(settings):
        try:
            ok, detail = c.test()
        except Exception as e:  # noqa: BLE001 - a broken probe is a failed check
            ok, detail = False, f"check failed: {e}"
        results.append(Result(c, ok, detail))
    return results


def _fix_text(r: Result) -> str:
    if r.ok:
        return ""
    if r.check.fix:
        return r.check.fix
    return "inv setup   (apt-get install " + " ".join(r.check.packages) + ")"


# the run options `inv doctor` does not take (it checks the host and the cross compiler only)
NOT_DOCTOR_OPTIONS = ("--work-dir", "--cache-dir", "--profile", "--offline", "--locked")


def doctor_command(settings: Settings) -> str:
    """``inv doctor`` as printed in advice: with this run's ``--cross-compile`` (the compiler
    it checks), without the options it does not take.  (``inv setup`` takes none of the run
    options, so it is printed bare.)"""
    return settings.command("doctor", without=NOT_DOCTOR_OPTIONS)


def doctor(settings: Settings) -> bool:
    """Print the prerequisite table; return True when every required check passes."""
    results = run_checks(settings)
    con = console.get_console()
    if console.is_interactive():
        table = Table(title="askbuild host prerequisites", show_lines=False)
        table.add_column("prerequisite", ratio=2)
        table.add_column("status", no_wrap=True)
        table.add_column("detail / fix", ratio=3)
        for r in results:
            status = "[green]ok[/]" if r.ok else ("[red]MISSING[/]" if r.check.required
                                                 else "[yellow]absent[/]")
            detail = escape(r.detail)
            if not r.ok:
                detail += f"\n[bold]fix:[/] {escape(_fix_text(r))}"
            table.add_row(f"{escape(r.check.name)}\n[dim]{escape(r.check.purpose)}[/]",
                          status, detail)
        con.print(table)
    else:
        for r in results:
            status = "ok" if r.ok else ("MISSING" if r.check.required else "absent")
            line = f"{r.check.name:<24} {status:<8} {r.detail}"
            if not r.ok:
                line += f"\n{'':<24} fix: {_fix_text(r)}"
            console.info(line)
    ok = all(r.ok for r in results if r.check.required)
    if not ok:
        missing = [r.check.name for r in results if r.check.required and not r.ok]
        raise MissingToolError("missing host prerequisites: " + ", ".join(missing),
                               fix="run `inv setup` (or the fix column above)")
    console.info("all required prerequisites present")
    return ok


def missing_packages(results: list[Result]) -> list[str]:
    pkgs: list[str] = []
    for r in results:
        if r.ok or not r.check.packages:
            continue
        if r.check.name == "docker engine":
            continue
        state = _installed(r.check.packages)
        pkgs += [p for p in r.check.packages if not state.get(p) and p not in pkgs]
    return pkgs


def _refuse_uninstallable(results: list[Result]) -> None:
    """Required prerequisites missing that no package fixes (a cross compiler named by a
    non-default prefix, an old Python): say so with their fix instead of "all present"."""
    left = [r for r in results if r.check.required and not r.ok and not r.check.packages
            and r.check.name != "qemu binfmt"]
    if left:
        raise MissingToolError(
            "host prerequisites missing that `inv setup` cannot install: "
            + ", ".join(f"{r.check.name} ({r.detail})" for r in left),
            fix="; ".join(_fix_text(r) for r in left))


def _privilege_prefix() -> list[str] | None:
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo"):
        probe = subprocess.run(["sudo", "-n", "true"], capture_output=True)
        if probe.returncode == 0:
            return ["sudo", "-n"]
    return None


def setup_commands(packages: list[str], binfmt: bool) -> list[list[str]]:
    cmds: list[list[str]] = []
    if packages:
        if any(p.endswith(":arm64") for p in packages):
            cmds.append(["dpkg", "--add-architecture", "arm64"])
        cmds.append(["apt-get", "update"])
        cmds.append(["apt-get", "install", "-y", "--no-install-recommends", *packages])
    if binfmt:
        if not (BINFMT_DIR / "register").exists():
            cmds.append(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)])
        cmds.append(["update-binfmts", "--enable", "qemu-aarch64"])
    return cmds


def setup(settings: Settings, *, check_only: bool = False) -> bool:
    """Install whatever required host prerequisite is missing.  Returns True if nothing was
    missing or everything was installed."""
    results = run_checks(settings)
    packages = missing_packages(results)
    binfmt_missing = not next(r.ok for r in results if r.check.name == "qemu binfmt")
    cmds = setup_commands(packages, binfmt_missing)
    if not cmds:
        _refuse_uninstallable(results)
        console.info("host prerequisites: all present")
        return True
    shown = "\n".join("  " + " ".join(c) for c in cmds)
    if check_only:
        console.info("would run:\n" + shown)
        return False
    prefix = _privilege_prefix()
    if prefix is None:
        raise MissingToolError(
            "host packages are missing and askbuild is neither root nor allowed to sudo",
            fix="run these commands as root, then try again:\n" + shown,
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in cmds:
        console.step(" ".join(cmd))
        proc = subprocess.run([*prefix, *cmd], env=env, stdin=subprocess.DEVNULL)
        if proc.returncode != 0 and cmd[0] != "mount":
            raise MissingToolError(f"`{' '.join(cmd)}` failed (exit {proc.returncode})",
                                   fix="see apt-get's output above; run "
                                       f"`{doctor_command(settings)}`")
    still = [r for r in run_checks(settings) if r.check.required and not r.ok]
    if still:
        raise MissingToolError(
            "after setup these prerequisites are still missing: "
            + ", ".join(f"{r.check.name} ({r.detail})" for r in still),
            fix=f"run `{doctor_command(settings)}` and follow the fix column",
        )
    console.info("host prerequisites: installed")
    return True


def ensure(settings: Settings) -> None:
    """Run setup only when a required prerequisite is missing (used by the main job)."""
    if all(r.ok for r in run_checks(settings) if r.check.required):
        return
    setup(settings)
