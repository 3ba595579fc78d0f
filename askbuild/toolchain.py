"""The cross toolchain and the arm64 libraries the recipes link against.

The compiler actually used, ``settings.cross_gcc`` (the prefix ``settings.cross_compile``:
``--cross-compile`` / ``CROSS_COMPILE`` / config key ``cross_compile``, resolved by
:mod:`askbuild.settings`, never read here), is checked up front, before anything is built:
every component needs it (:func:`check_compiler`; ``inv doctor`` checks the same).  The other
preconditions belong to the components that need them and are checked per component
(:mod:`askbuild.building`), so one missing library stops only the components that link it:
every arm64 ``-dev`` package a recipe lists in ``host_libs`` must have its headers under
``/usr/include`` and its library under ``/usr/lib/<multiarch>`` (``settings.multiarch``,
:func:`lib_problems`), and host tools a kernel build needs (``depmod``) must be found
(:func:`find_tool`, :func:`tool_problems`).  A miss is a :class:`MissingToolError` carrying the
command that fixes it.

What those answers depend on is given by stat signatures (:func:`compiler_signature`,
:func:`packages_signature`): the build keeps the answers with them and asks again only when
one differs (:mod:`askbuild.building.stamp`), so a no-op build runs no compiler or dpkg-query.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from . import procs
from .errors import MissingToolError
from .settings import DEFAULT_CROSS_COMPILE, MULTIARCH, Settings

#: The Debian package of the default cross compiler (``<DEFAULT_CROSS_COMPILE>gcc``).
CROSS_PACKAGE = "crossbuild-essential-arm64"
#: Searched after PATH for host tools: a non-root user's PATH often lacks them (depmod).
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")
#: Host tools a build may need -> (Debian package, what for).
HOST_TOOLS = {"depmod": ("kmod", "writes modules.dep for the staged kernel modules")}
MIN_GCC = (8, 0)

#: host_libs name -> (Debian package, headers relative to include dir, library base names)
KNOWN_LIBS: dict[str, tuple[str, list[str], list[str]]] = {
    "libxml2": ("libxml2-dev:arm64", ["libxml2/libxml/parser.h"], ["libxml2"]),
    "libcli": ("libcli-dev:arm64", ["libcli.h"], ["libcli"]),
    "libpcap": ("libpcap-dev:arm64", ["pcap/pcap.h"], ["libpcap"]),
    "libmnl": ("libmnl-dev:arm64", ["libmnl/libmnl.h"], ["libmnl"]),
    "tclap": ("libtclap-dev", ["tclap/CmdLine.h"], []),
}


@dataclass
class Toolchain:
    prefix: str
    gcc: str                      # full path
    gcc_version: str              # e.g. 12.2.0
    versions: dict[str, str] = field(default_factory=dict)  # tool -> first --version line
    packages: dict[str, str] = field(default_factory=dict)  # Debian package -> version

    def to_json(self) -> dict:
        """The fields, for a stamp (:func:`from_json` reads them back)."""
        return {"prefix": self.prefix, "gcc": self.gcc, "gcc_version": self.gcc_version,
                "versions": dict(self.versions), "packages": dict(self.packages)}

    @classmethod
    def from_json(cls, data: object) -> Toolchain | None:
        """A toolchain from :meth:`to_json` data; None when it is not that."""
        try:
            tc = cls(prefix=data["prefix"], gcc=data["gcc"], gcc_version=data["gcc_version"],
                     versions=dict(data["versions"]), packages=dict(data["packages"]))
        except (TypeError, KeyError, ValueError):
            return None
        fields = [tc.prefix, tc.gcc, tc.gcc_version, *tc.versions, *tc.versions.values(),
                  *tc.packages, *tc.packages.values()]
        return tc if all(isinstance(f, str) for f in fields) else None

    def identity(self, host_libs: list[str] = ()) -> dict:
        """What goes into a component's content key: the compiler and tools, and the versions
        of the packages of *its* ``host_libs`` only (so a key never depends on which other
        components were selected)."""
        wanted = {KNOWN_LIBS[n][0] for n in host_libs}
        return {"prefix": self.prefix, "gcc": self.gcc_version, "versions": self.versions,
                "packages": {p: v for p, v in self.packages.items() if p in wanted}}


def _install_fix(packages: list[str]) -> str:
    pre = ""
    if any(p.endswith(":arm64") for p in packages):
        pre = "dpkg --add-architecture arm64 && apt-get update && "
    return f"{pre}apt-get install {' '.join(packages)}   (or: inv setup)"


def find_tool(name: str, search_path: str | None = None) -> str | None:
    """The path of host tool ``name``: looked up in ``search_path`` when given (os.pathsep
    separated), else in ``$PATH`` followed by the sbin directories.  None when absent."""
    if search_path is None:
        dirs = os.environ.get("PATH", os.defpath).split(os.pathsep)
        search_path = os.pathsep.join([*dirs, *(d for d in SBIN_DIRS if d not in dirs)])
    return shutil.which(name, path=search_path)


def tool_problems(tools: list[str], search_path: str | None = None) -> list[str]:
    """The host tools of ``tools`` that are not found."""
    return [t for t in tools if find_tool(t, search_path) is None]


def tools_error(missing: list[str], who: str = "") -> MissingToolError:
    """The error for missing host tools (``who``: e.g. "kernel needs ", put first)."""
    detail = "; ".join(f"{t} (package {HOST_TOOLS[t][0]}: {HOST_TOOLS[t][1]})" for t in missing)
    pkgs = " ".join(dict.fromkeys(HOST_TOOLS[t][0] for t in missing))
    return MissingToolError(f"{who or ''}host tool(s) not found: {detail}",
                            fix=f"inv setup   (or: apt-get install {pkgs})")


def _first_lines(cmds: list[list[str]]) -> list[str]:
    """The first output line of each command (\"\" when it cannot run), the commands run at
    the same time (short read-only probes such as ``--version``: quick children)."""
    started: list[subprocess.Popen | None] = []
    for cmd in cmds:
        try:
            started.append(procs.popen(cmd, quick=True, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True))
        except OSError:
            started.append(None)
    lines = []
    for proc in started:
        if proc is None:
            lines.append("")
            continue
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            procs.kill_group(proc, signal.SIGKILL)
            proc.communicate()
            out = err = ""
        finally:
            procs.forget(proc)
        text = (out or err).strip().splitlines()
        lines.append(text[0] if text else "")
    return lines


def package_versions(packages: list[str]) -> dict[str, str]:
    """{Debian package: installed version} for those of ``packages`` that are installed."""
    if not packages or not shutil.which("dpkg-query"):
        return {}
    proc = procs.run(["dpkg-query", "-W", "-f=${binary:Package} ${Version}\n", "--",
                      *packages], capture_output=True, text=True, quick=True)
    out = {}
    for line in proc.stdout.splitlines():
        name, _, version = line.partition(" ")
        if version:
            out[name] = version
    return out


#: Where the prefix can be set (for messages).
PREFIX_SETTING = "--cross-compile / CROSS_COMPILE / config key cross_compile"


def compiler_fix(settings: Settings) -> str:
    """How to get the cross compiler ``settings`` names: install its package (the default
    prefix) or install the toolchain the prefix points at / go back to the default."""
    if settings.cross_compile == DEFAULT_CROSS_COMPILE:
        return _install_fix([CROSS_PACKAGE])
    return (f"install the toolchain that provides {settings.cross_gcc}, or set the prefix "
            f"({PREFIX_SETTING}) to an installed one; the default {DEFAULT_CROSS_COMPILE} "
            f"comes with: {_install_fix([CROSS_PACKAGE])}")


def compiler_missing(settings: Settings) -> str | None:
    """Why ``settings.cross_gcc`` cannot be run (``None`` when it is found)."""
    if shutil.which(settings.cross_gcc):
        return None
    where = "" if "/" in settings.cross_gcc else " on PATH"
    return (f"{settings.cross_gcc} not found{where} "
            f"(prefix {settings.cross_compile!r}: {PREFIX_SETTING})")


def check_compiler(settings: Settings) -> Toolchain:
    """The cross compiler ``settings.cross_gcc``, found and usable (GCC >= :data:`MIN_GCC`,
    targeting aarch64), with the versions of its tools (for the content keys)."""
    prefix = settings.cross_compile
    missing = compiler_missing(settings)
    if missing:
        raise MissingToolError(f"cross compiler {missing}", fix=compiler_fix(settings))
    gcc = str(shutil.which(settings.cross_gcc))
    proc = procs.run([gcc, "-dumpfullversion", "-dumpversion"], capture_output=True, text=True,
                     quick=True)
    version = proc.stdout.strip()
    m = re.match(r"(\d+)\.(\d+)", version)
    if proc.returncode != 0 or not m:
        raise MissingToolError(f"{gcc} does not report a version ({proc.stderr.strip()})",
                               fix=compiler_fix(settings))
    if (int(m.group(1)), int(m.group(2))) < MIN_GCC:
        raise MissingToolError(
            f"{gcc} is version {version}; askbuild needs GCC "
            f"{MIN_GCC[0]}.{MIN_GCC[1]} or newer",
            fix=compiler_fix(settings))
    machine = procs.run([gcc, "-dumpmachine"], capture_output=True, text=True,
                        quick=True).stdout
    if not machine.strip().startswith("aarch64"):
        raise MissingToolError(f"{gcc} targets {machine.strip()!r}, not aarch64",
                               fix=f"set the prefix ({PREFIX_SETTING}) to an aarch64 "
                                   "toolchain")
    tc = Toolchain(prefix=prefix, gcc=gcc, gcc_version=version)
    tools = [prefix + t for t in ("gcc", "g++", "ld", "ar")] + ["make"]
    tc.versions.update(zip(tools, _first_lines([[t, "--version"] for t in tools]), strict=True))
    return tc


# -- what the checks above depend on, by stat (a no-op build runs none of them) ------------

#: The package database: any package installed, upgraded or removed rewrites it.
DPKG_STATUS = Path("/var/lib/dpkg/status")


def stat_sig(path: str | Path | None) -> list | None:
    """``[path, size, mtime_ns, ctime_ns, inode]`` of ``path`` (symlinks followed: a link
    moved to another compiler shows), None when absent.  ``ctime`` moves on every write, even
    one that restores size and mtime."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def compiler_signature(settings: Settings) -> dict:
    """What :func:`check_compiler`'s answer depends on: the prefix, PATH, and the stat
    signature of every tool it runs as resolved on PATH (the compiler, binutils, make) and of
    ``ccache`` and the package database.  Equal signatures: the same answer."""
    prefix = settings.cross_compile
    tools = [settings.cross_gcc, *(prefix + t for t in ("g++", "ld", "ar")), "make", "ccache"]
    return {"prefix": prefix, "path": os.environ.get("PATH", os.defpath),
            "tools": {t: stat_sig(shutil.which(t)) for t in tools},
            "dpkg_status": stat_sig(DPKG_STATUS)}


def packages_signature(packages: list[str]) -> dict:
    """What :func:`package_versions` of ``packages`` depends on (the package database,
    ``dpkg-query`` itself, PATH)."""
    return {"packages": sorted(packages), "path": os.environ.get("PATH", os.defpath),
            "dpkg_query": stat_sig(shutil.which("dpkg-query")),
            "dpkg_status": stat_sig(DPKG_STATUS)}


def lib_problems(names: list[str], *, root: Path = Path("/"),
                 multiarch: str = MULTIARCH) -> list[tuple[str, str, str]]:
    """(library, package, what is missing) for every arm64 library of ``names`` not installed
    (libraries under ``/usr/lib/<multiarch>``: pass ``settings.multiarch``)."""
    missing: list[tuple[str, str, str]] = []
    for name in sorted(set(names)):
        package, headers, libs = KNOWN_LIBS[name]
        for h in headers:
            if not (root / "usr/include" / h).is_file():
                missing.append((name, package, f"header /usr/include/{h}"))
                break
        else:
            libdir = root / "usr/lib" / multiarch
            for lib in libs:
                if not any((libdir / f"{lib}{ext}").exists() for ext in (".so", ".a")):
                    missing.append((name, package, f"library {libdir}/{lib}.so"))
                    break
    return missing


def libs_error(problems: list[tuple[str, str, str]], who: str = "") -> MissingToolError:
    """The error for :func:`lib_problems` (``who``: e.g. "cmm needs ", put first)."""
    pkgs = list(dict.fromkeys(p for _, p, _ in problems))
    detail = "; ".join(f"{n} ({what} missing)" for n, _, what in problems)
    return MissingToolError(f"{who or ''}arm64 development packages missing: {detail}",
                            fix=_install_fix(pkgs))


def check_libs(names: list[str], *, root: Path = Path("/"), multiarch: str = MULTIARCH) -> None:
    """Raise MissingToolError naming every missing arm64 library and the install command."""
    problems = lib_problems(names, root=root, multiarch=multiarch)
    if problems:
        raise libs_error(problems)
