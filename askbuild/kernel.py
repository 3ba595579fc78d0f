"""The kernel: configure, check, build, install modules; module vermagic checks.

Configuration = the base defconfig (a recipe path, e.g. ASK's ``config/kernel/defconfig``) with
every fragment of the recipe (``kernel/fragments/*.config`` in this project) merged on top, then
``olddefconfig``.  Every symbol a fragment sets (and every ``require`` of the recipe) must survive
``olddefconfig``; otherwise the build stops with the list of symbols that did not (usually a
missing dependency).

What "survive" means (:meth:`Wanted.satisfied`): ``=m`` asks for the feature to be *available*, so a
built-in ``=y`` satisfies it (a defconfig's ``select`` often forces a symbol to ``y``: ASK's
``NF_TABLES=y`` selects ``NETFILTER_NETLINK``); every other value must be there exactly
(``=y``, ``=n``/``is not set``, strings, numbers).  A recipe's ``require`` item ending in ``!``
(``CONFIG_X=m!``) is exact even for ``m``: a built-in ``y`` then fails, naming the symbol.

The build runs out of tree (``O=<work>/out/kernel/build``), with
``KBUILD_BUILD_TIMESTAMP`` from the source's base commit date and fixed
``KBUILD_BUILD_USER``/``KBUILD_BUILD_HOST``, so the same inputs give the same Image.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import gitutil
from .errors import BuildFailed, ConfigError
from .fsutil import write_bytes_atomic
from .refs import BASE_REF
from .settings import Settings

BUILD_USER = "askbuild"
BUILD_HOST = "askbuild"
_SET_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET_RE = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


#: Suffix of a recipe ``require`` value that asks for exactly that value (``CONFIG_X=m!``).
EXACT = "!"


@dataclass(frozen=True)
class Wanted:
    symbol: str
    value: str | None      # "y", "m", "n", a literal; None: any value but "n"
    origin: str            # file or recipe key that asked for it
    exact: bool = False    # True: "m" means a module, not built-in (require "CONFIG_X=m!")

    def satisfied(self, got: str) -> bool:
        """Whether the final value ``got`` (``n`` when not set) meets this requirement."""
        if self.value is None:
            return got != "n"
        if self.value == "m" and not self.exact:
            return got in ("m", "y")
        return got == self.value

    def describe(self) -> str:
        """What was asked for, in words for the error message."""
        if self.value is None:
            return "enabled"
        if self.value == "m":
            return "exactly m (a module; exact requirement)" if self.exact \
                else "m or y (available: built-in accepted)"
        return self.value


def parse_config(text: str) -> dict[str, str]:
    """``.config`` text -> {symbol: value} (``n`` for ``# CONFIG_X is not set``)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        m = _SET_RE.match(line)
        if m:
            out[m.group(1)] = m.group(2)
            continue
        m = _UNSET_RE.match(line)
        if m:
            out[m.group(1)] = "n"
    return out


def fragment_wants(path: Path) -> list[Wanted]:
    return [Wanted(k, v, str(path)) for k, v in parse_config(path.read_text()).items()]


def require_wants(require: list[str], origin: str) -> list[Wanted]:
    """A recipe's ``require`` list: ``CONFIG_X`` (enabled: m or y), ``CONFIG_X=VALUE`` (like a
    fragment line: ``=m`` accepts ``y``), ``CONFIG_X=VALUE!`` (exactly VALUE)."""
    out = []
    for item in require:
        sym, sep, value = item.partition("=")
        exact = bool(sep) and value.endswith(EXACT)
        if exact:
            value = value[:-len(EXACT)]
        out.append(Wanted(sym, value if sep else None, origin, exact))
    return out


def merge_config(base: str, fragments: list[Path]) -> str:
    """The base config with each fragment's symbols replacing the base's (later wins)."""
    lines = base.splitlines()
    for frag in fragments:
        values = parse_config(frag.read_text())
        keep = []
        for line in lines:
            s = line.strip()
            m = _SET_RE.match(s) or _UNSET_RE.match(s)
            if m and m.group(1) in values:
                continue
            keep.append(line)
        keep.append(f"# --- {frag.name} (merged by askbuild)")
        for sym, value in values.items():
            keep.append(f"# {sym} is not set" if value == "n" else f"{sym}={value}")
        lines = keep
    return "\n".join(lines) + "\n"


def missing_symbols(config: dict[str, str], wants: list[Wanted]) -> list[str]:
    """Human-readable lines for every wanted symbol that did not survive."""
    out = []
    for w in wants:
        got = config.get(w.symbol, "n")
        if not w.satisfied(got):
            shown = "not set" if got == "n" else got
            out.append(f"{w.symbol}: wanted {w.describe()}, got {shown} (asked by {w.origin})")
    return out


def fragment_files(project_root: Path, patterns: list[str], where: str) -> list[Path]:
    files: list[Path] = []
    for pat in patterns:
        matched = sorted(project_root.glob(pat))
        if not matched:
            raise ConfigError(f"{where}: fragments: {pat!r} matches no file under "
                              f"{project_root}")
        files += [m for m in matched if m not in files]
    return files


def build_timestamp(src: Path) -> str:
    """The source's base commit date (RFC 2822), HEAD's when there is no base tag."""
    for ref in (BASE_REF, "HEAD"):
        proc = gitutil.git(["log", "-1", "--format=%cD", ref, "--"], cwd=src, check=False)
        if proc.returncode == 0 and proc.stdout.strip():
            return proc.stdout.strip()
    return "Thu, 01 Jan 1970 00:00:00 +0000"


def kbuild_env(src: Path) -> dict[str, str]:
    return {"KBUILD_BUILD_TIMESTAMP": build_timestamp(src), "KBUILD_BUILD_USER": BUILD_USER,
            "KBUILD_BUILD_HOST": BUILD_HOST}


def make_base(src: Path, build: Path, arch: str, cross: str) -> list[str]:
    return ["make", "-C", str(src), f"O={build}", f"ARCH={arch}", f"CROSS_COMPILE={cross}"]


def configure(run: Callable[[list[str]], None], *, src: Path, build: Path, arch: str,
              cross: str, defconfig: Path, fragments: list[Path], require: list[Wanted],
              where: str) -> dict[str, str]:
    """Write ``.config`` from defconfig + fragments, olddefconfig, check required symbols."""
    if not defconfig.is_file():
        raise BuildFailed(f"{where}: defconfig {defconfig} does not exist",
                          fix="check the recipe's 'defconfig' and the source tree")
    build.mkdir(parents=True, exist_ok=True)
    merged = merge_config(defconfig.read_text(), fragments)
    cfg = build / ".config"
    marker = build / ".askbuild-config-input"
    if not cfg.exists() or not marker.exists() or marker.read_text() != merged:
        # Rewritten only when the inputs changed, so kbuild sees an unchanged .config.  The
        # marker goes first and comes back last: a kill in between means "rewrite".
        marker.unlink(missing_ok=True)
        write_bytes_atomic(cfg, merged.encode())
        write_bytes_atomic(marker, merged.encode())
    run([*make_base(src, build, arch, cross), "olddefconfig"])
    config = parse_config(cfg.read_text())
    wants = [w for f in fragments for w in fragment_wants(f)] + require
    missing = missing_symbols(config, wants)
    if missing:
        raise BuildFailed(
            f"{where}: {len(missing)} required kernel symbol(s) did not survive olddefconfig:\n"
            + "\n".join("  " + m for m in missing),
            fix="enable their dependencies in the fragment (see `make menuconfig` help for "
                "each symbol), or drop them; a plain =m is met by a built-in y, so a symbol "
                "listed with 'exactly m' is forced built-in (by a select or the defconfig): "
                "drop the '!' of that require item unless it must be a module",
        )
    return config


def kernel_release(build: Path) -> str:
    path = build / "include/config/kernel.release"
    if not path.is_file():
        raise BuildFailed(f"{path} missing: the kernel build did not complete")
    return path.read_text().strip()


def modules_install(run: Callable[[list[str]], None], *, src: Path, build: Path, arch: str,
                    cross: str, dest: Path) -> Path:
    """Install the kernel's modules under ``dest/lib/modules/<release>`` (no build links)."""
    release = kernel_release(build)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    run([*make_base(src, build, arch, cross), f"INSTALL_MOD_PATH={dest}", "modules_install"])
    moddir = dest / "lib/modules" / release
    moddir.mkdir(parents=True, exist_ok=True)
    for link in ("build", "source"):
        p = moddir / link
        if p.is_symlink() or p.exists():
            p.unlink()
    return moddir


def module_vermagic(path: Path) -> str:
    """The ``vermagic`` string of a kernel module (``.modinfo`` section)."""
    from elftools.elf.elffile import ELFFile  # (only here: ~0.1 s on every build's start)
    with path.open("rb") as f:
        elf = ELFFile(f)
        sec = elf.get_section_by_name(".modinfo")
        if sec is None:
            raise BuildFailed(f"{path}: no .modinfo section: not a kernel module")
        for item in sec.data().split(b"\0"):
            if item.startswith(b"vermagic="):
                return item[len(b"vermagic="):].decode("utf-8", "replace")
    raise BuildFailed(f"{path}: .modinfo has no vermagic")


def check_vermagic(modules: list[Path], release: str, *,
                   settings: Settings | None = None) -> None:
    """Every module must have been built for ``release``.  ``settings``: the run's, so the
    advice names the build command with its options (without them: in words)."""
    bad = []
    for m in modules:
        vm = module_vermagic(m)
        if vm.split(" ", 1)[0] != release:
            bad.append(f"{m}: vermagic {vm!r}")
    if bad:
        raise BuildFailed(
            f"{len(bad)} module(s) do not match the kernel release {release!r}:\n"
            + "\n".join("  " + b for b in bad),
            fix="rebuild the modules against this kernel"
                + (f" (`{settings.command('build')}`)" if settings else "")
                + " or rebuild the kernel",
        )
