"""``inv image``: the reproducible arm64 ``localhost/monok8s/cmm`` image.

askbuild writes the image itself (see :mod:`askbuild.oci`): a base layer of Debian arm64
packages (:mod:`askbuild.baselayer`) and an application layer holding

* the staging tree of the build (``usr/bin/{cmm,dpa_app,fmc}``,
  ``lib/modules/<release>/extra/*.ko``, any ``etc/...``),
* the vendor files named in ``images/cmm/image.toml`` ``[vendor]`` (the runtime
  ``/etc/config/fastforward``, its unpatched original ``fastforward.vendor.orig``, dpa_app's
  XML files; ``--board`` swaps in a board's files), also as
  ``/etc/monok8s/dpa-configs/<profile>/`` for ``select-dpa-config.sh``,
* the files of ``images/cmm/`` (entrypoint, ``init_dpa.sh``, ``select-dpa-config.sh``, an
  optional runtime ``fastforward``) and ``/usr/share/monok8s/kernel-release``.

All mtimes are clamped to ``SOURCE_DATE_EPOCH`` (environment, else the commit date of the ASK
base commit), so the same inputs give a byte-identical archive and the same image id.  Every
ELF file's libraries are checked to resolve inside the image before anything is written.

With a Docker (or Podman) engine reachable the archive is loaded through the Docker SDK, tagged
``localhost/monok8s/cmm:<tag>`` and checked to be arm64; otherwise the archive is the result and
the command prints how to load it.

The image needs a complete build: every required binary and module in the staging tree,
every vendor file readable and nothing listed under ``missing`` in ``build-manifest.json``
(:func:`staging_missing`); otherwise it is an error naming each missing part.  With
``--partial`` the image is built from what exists and labelled
``io.monok8s.askbuild.partial=true`` / ``io.monok8s.askbuild.missing=<names>`` (never a release
candidate: ``inv image.test`` fails it).

One ``inv image`` at a time per work directory (the work-dir lock).  ``image/image.json``
always describes the archive it names: it is removed before a new archive is written and
written (atomically) only after the archive is complete; :func:`read_record` checks the
archive's digest against it.  Temporary files of killed runs are removed by the next run.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from . import baselayer, console, dockerhost, elfcheck, oci, runlock
from .errors import ConfigError, ImageError, UserError
from .fsutil import read_json, read_toml, sha256_file, stat_sig, write_json_atomic
from .gitutil import GitError
from .gitutil import git as run_git
from .refs import BASE_TAG
from .settings import Settings

REQUIRED_BINARIES = ["usr/bin/cmm", "usr/bin/dpa_app", "usr/bin/fmc"]
REQUIRED_MODULES = ["cdx", "fci", "auto_bridge"]
DEFAULT_TAG = "dev"      # the tag of `inv image` / `inv image.test` without --tag
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
BOARD_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
VENDOR_RE = re.compile(r"^(?P<src>[a-z0-9][a-z0-9_.-]*)(?P<base>@base)?:(?P<path>[^\0]+)$")
DPA_FILES = {"/etc/cdx_cfg.xml": "cdx_cfg.xml", "/etc/cdx_pcd.xml": "cdx_pcd.xml",
             "/etc/cdx_sp.xml": "cdx_sp.xml", "/etc/fmc/config/hxs_pdl_v3.xml": "hxs_pdl_v3.xml"}
DPA_CONFIG_ROOT = "etc/monok8s/dpa-configs"
LABEL_PREFIX = "io.monok8s.askbuild"


@dataclass
class ImageResult:
    """What ``inv image`` produced."""

    archive: Path
    archive_sha256: str
    image_id: str               # sha256:<config digest>
    ref: str                    # localhost/monok8s/cmm:<tag>
    loaded: bool
    layers: list[dict]
    labels: dict[str, str]
    packages: list[dict] = field(default_factory=list)
    kernel_release: str = ""
    epoch: int = 0


# -- inputs -----------------------------------------------------------------------------------

def image_inputs_dir(settings: Settings) -> Path:
    """``images/cmm/`` of the project: ``image.toml``, the entrypoint and the scripts (read
    only; the image askbuild writes lives in ``settings.image_dir``)."""
    return settings.project_root / "images" / "cmm"


def _str_table(value: object, where: str, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError(f"{where}: {what} must map strings to strings (got {value!r:.80})")
    return value


def _str_list(value: object, where: str, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {what} must be a list of strings (got {value!r:.80})")
    return value


def load_image_toml(settings: Settings) -> dict:
    """``images/cmm/image.toml``, every value type-checked (errors name the file and key)."""
    path = image_inputs_dir(settings) / "image.toml"
    data = read_toml(path)
    for key in ("base", "config", "files", "vendor"):
        if not isinstance(data.get(key), dict):
            raise ConfigError(f"{path}: missing table [{key}]")
    base = data["base"]
    pk = base.get("packages", [])
    if not isinstance(pk, list):
        raise ConfigError(f"{path}: [base] packages must be a list of package names")
    baselayer.validate_packages(pk, f"{path}: [base] packages")
    for key in ("suite", "snapshot"):
        if key in base and not isinstance(base[key], str):
            raise ConfigError(f"{path}: [base] {key} must be a string (got {base[key]!r:.80})")
    if "sources" in base:
        _str_list(base["sources"], str(path), "[base] sources")
    _str_table(data["vendor"], str(path), "[vendor]")
    boards = data.get("boards", {})
    if not isinstance(boards, dict):
        raise ConfigError(f"{path}: [boards] must be a table of board tables")
    for name, table in boards.items():
        _str_table(table, str(path), f"[boards.{name}]")
    for name, table in data["files"].items():
        w = f'{path}: [files."{name}"]'
        if not isinstance(table, dict) or not isinstance(table.get("path"), str):
            raise ConfigError(f"{w}: needs path = \"/...\" (and mode)")
        if "mode" in table and not isinstance(table["mode"], str):
            raise ConfigError(f"{w}: mode must be a string of octal digits, e.g. \"0755\"")
        if "optional" in table and not isinstance(table["optional"], bool):
            raise ConfigError(f"{w}: optional must be true or false")
    cfg = data["config"]
    for key in ("entrypoint", "cmd", "env"):
        if key in cfg:
            _str_list(cfg[key], str(path), f"[config] {key}")
    if "labels" in data:
        _str_table(data["labels"], str(path), "[labels]")
    layers = data.get("layers", {})
    if not isinstance(layers, dict) or not isinstance(layers.get("compression", "gzip"), str):
        raise ConfigError(f"{path}: [layers] compression must be \"gzip\" or \"none\"")
    if not isinstance(data.setdefault("repository", "localhost/monok8s/cmm"), str):
        raise ConfigError(f"{path}: repository must be a string")
    return data


def read_manifest(settings: Settings) -> dict:
    """``<work>/build-manifest.json`` or ``{}``; a malformed file is a warning, not a crash."""
    path = settings.build_manifest
    if not path.is_file():
        console.warn(f"{path} not found: labels fall back to what the trees show")
        return {}
    data = read_json(path)
    if data is None:
        console.warn(f"{path}: unreadable or not a JSON object; ignoring it")
        return {}
    return data


def _dig(data, *keys):
    for k in keys:
        if isinstance(data, dict) and k in data:
            data = data[k]
        else:
            return None
    return data


def _build_advice(settings: Settings | None) -> str:
    """The build command to advise: ``inv build`` with this run's options (backticked), or
    the words "the build" for a caller without settings (library use: no command to paste
    that could act on another work directory)."""
    return f"`{settings.command('build')}`" if settings else "the build"


def kernel_release(staging: Path, manifest: dict, *, settings: Settings | None = None) -> str:
    """From the manifest when it says, else the one ``lib/modules/<release>`` directory.
    ``settings``: the run's, for the advice (see :func:`_build_advice`)."""
    release = find_kernel_release(staging, manifest, settings=settings)
    if release is None:
        raise ImageError(f"{staging / 'lib' / 'modules'}: no kernel module directory in the "
                         "staging tree",
                         fix=f"run {_build_advice(settings)} (the kernel modules cdx, fci, "
                             "auto_bridge)")
    return release


def find_kernel_release(staging: Path, manifest: dict, *,
                        settings: Settings | None = None) -> str | None:
    """Like :func:`kernel_release`, but None when the staging tree has no kernel modules
    directory at all (several without a manifest naming one stay an error)."""
    for keys in (("kernel_release",), ("kernel", "release"), ("kernel", "kernel_release"),
                 ("kernelrelease",), ("release",)):
        v = _dig(manifest, *keys)
        if isinstance(v, str) and v.strip():
            rel = v.strip()
            if (staging / "lib" / "modules" / rel).is_dir():
                return rel
    mods = staging / "lib" / "modules"
    releases = sorted(d.name for d in mods.iterdir() if d.is_dir()) if mods.is_dir() else []
    if len(releases) == 1:
        return releases[0]
    if not releases:
        return None
    with_extra = [r for r in releases if (mods / r / "extra").is_dir()]
    if len(with_extra) == 1:
        return with_extra[0]
    raise ImageError(f"{mods}: several kernel releases ({', '.join(releases)}) and the build "
                     "manifest names none of them",
                     fix=f"remove stale releases from the staging tree "
                         f"({_build_advice(settings)})")


def component_of(path: str) -> str:
    """The component whose artifact a required staging path is (``usr/bin/cmm`` -> cmm)."""
    return posixpath.basename(path).removesuffix(".ko")


def staging_missing(staging: Path, release: str | None, manifest: dict) -> dict[str, str]:
    """{component: why the image would lack it}: the required binaries and modules absent from
    the staging tree (no kernel modules directory at all: ``kernel``), and every component the
    build manifest lists under ``missing`` (not built, stale, failed in the last run...)."""
    missing: dict[str, str] = {}
    if release is None:
        missing["kernel"] = (f"the staging tree {staging} lacks: lib/modules/<release> (no "
                             "kernel modules directory)")
    required = list(REQUIRED_BINARIES)
    if release is not None:
        required += [f"lib/modules/{release}/extra/{m}.ko" for m in REQUIRED_MODULES]
    else:
        for m in REQUIRED_MODULES:
            missing[m] = "needs the kernel"
    for p in required:
        if not (staging / p).is_file():
            missing[component_of(p)] = f"the staging tree {staging} lacks: {p}"
    listed = manifest.get("missing")
    if isinstance(listed, dict):
        for name, why in listed.items():
            if isinstance(name, str) and name:
                missing.setdefault(name, f"the build manifest says: {why}")
    return dict(sorted(missing.items()))


def check_modules(settings: Settings, release: str) -> None:
    """Every staged module under ``lib/modules/<release>/extra`` of the staging tree is built
    for ``release``."""
    extra = settings.staging_dir / "lib" / "modules" / release / "extra"
    for ko in sorted(extra.glob("*.ko")):
        magic = module_vermagic(ko)
        if magic is None:
            console.warn(f"{ko}: no vermagic in .modinfo; cannot tell which kernel it is for")
        elif magic.split()[0] != release:
            raise ImageError(f"{ko}: built for kernel {magic.split()[0]!r} (vermagic {magic!r}),"
                             f" but the staging tree's modules directory is {release!r}",
                             fix="rebuild the modules against the kernel in the staging tree "
                                 f"({_build_advice(settings)})")


def check_complete(settings: Settings, missing: dict[str, str], partial: bool) -> None:
    """Without ``--partial`` a missing component is an error naming each one; with it, a
    warning (the image is labelled partial)."""
    if not missing:
        return
    lines = "\n".join(f"  {name}: {why}" for name, why in missing.items())
    if not partial:
        raise ImageError(f"the image would be incomplete; missing: {', '.join(missing)}\n"
                         + lines,
                         fix=f"run {_build_advice(settings)} first (it fills the staging tree), "
                             f"or `{settings.command('image', '--partial')}` for an "
                             f"image of what exists, labelled {LABEL_PREFIX}.partial=true")
    console.warn(f"partial image: missing {', '.join(missing)}\n{lines}")


def module_vermagic(path: Path) -> str | None:
    """The ``vermagic=`` value of a kernel module's ``.modinfo`` section (None if absent)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    try:
        with open(path, "rb") as f:
            sec = ELFFile(f).get_section_by_name(".modinfo")
            data = sec.data() if sec is not None else b""
    except (ELFError, OSError) as e:
        raise ImageError(f"{path}: not a readable ELF kernel module ({e})") from e
    for item in data.split(b"\0"):
        if item.startswith(b"vermagic="):
            return item[len(b"vermagic="):].decode("utf-8", "replace").strip()
    return None


def source_epoch(settings: Settings) -> int:
    env = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if env:
        if not env.isdigit():
            raise UserError(f"SOURCE_DATE_EPOCH={env!r} is not a number of seconds",
                            fix="unset it or give an integer, e.g. $(git log -1 --format=%ct)")
        return int(env)
    ask = settings.source_tree("ask")
    for ref in (BASE_TAG, "HEAD"):
        try:
            out = run_git(["log", "-1", "--format=%ct", ref, "--"], cwd=ask).stdout.strip()
            if out.isdigit():
                return int(out)
        except (GitError, OSError):
            continue
    console.warn("SOURCE_DATE_EPOCH: no ASK tree to take a date from; using 0")
    return 0


def _git_rev(tree: Path, ref: str) -> str:
    try:
        return run_git(["rev-parse", "--verify", "--quiet", ref + "^{commit}"],
                       cwd=tree).stdout.strip()
    except (GitError, OSError):
        return ""


def vendor_bytes(settings: Settings, spec: str, where: str) -> tuple[bytes, str]:
    """Read ``SOURCE[@base]:PATH`` from the source work trees.  Returns (data, description)."""
    m = VENDOR_RE.match(spec)
    if not m or ".." in m.group("path").split("/") or m.group("path").startswith("/"):
        raise ConfigError(f"{where}: {spec!r} is not SOURCE:PATH or SOURCE@base:PATH")
    tree = settings.source_tree(m.group("src"))
    rel = m.group("path")
    if not tree.is_dir():
        raise ImageError(f"{where}: the source tree {tree} does not exist",
                         fix=f"run `{settings.command('fetch')}` (and "
                             f"`{settings.command('patch')}`) first")
    if m.group("base"):
        if _git_rev(tree, BASE_TAG):
            proc = run_git(["cat-file", "blob", f"{BASE_TAG}:{rel}"], cwd=tree, text=False,
                           check=False)
            if proc.returncode != 0:
                raise ImageError(f"{where}: {rel} does not exist in {tree} at {BASE_TAG}",
                                 fix="check the path in images/cmm/image.toml [vendor]")
            return proc.stdout, f"{m.group('src')}@{BASE_TAG}:{rel}"
        console.warn(f"{tree} has no {BASE_TAG} tag: reading {rel} from the work tree")
    f = tree / rel
    if not f.is_file():
        raise ImageError(f"{where}: {f} does not exist",
                         fix=f"run `{settings.command('fetch')}`; check the path in "
                             "images/cmm/image.toml")
    return f.read_bytes(), f"{m.group('src')}:{rel}"


def _patch_rows(source: str, patches) -> list[str]:
    rows = []
    for p in patches if isinstance(patches, list) else []:
        if isinstance(p, dict):
            name = p.get("file") or p.get("name") or p.get("patch") or ""
            rows.append("\t".join(str(x) for x in (source, p.get("layer", ""), name,
                                                   p.get("sha256", ""))))
        elif isinstance(p, str):
            rows.append(f"{source}\t\t{p}\t")
    return rows


def patch_series_hash(settings: Settings, manifest: dict) -> str:
    """sha256 over the applied patches (per source, in order: layer, file, sha256 of each).

    Read from the build manifest (``sources.<name>.patches``, or a top-level ``patches``),
    else from the patch step's ``state/patch-<name>.json``; ``none`` when nothing was applied.
    """
    per_source: dict[str, list[str]] = {}
    srcs = manifest.get("sources")
    if isinstance(srcs, dict):
        for name, rec in srcs.items():
            if isinstance(rec, dict) and isinstance(rec.get("patches"), list):
                per_source[name] = _patch_rows(name, rec["patches"])
    top = manifest.get("patches")
    if not any(per_source.values()) and top:
        if isinstance(top, dict):
            for name, lst in top.items():
                per_source[name] = _patch_rows(name, lst if isinstance(lst, list) else [lst])
        elif isinstance(top, list):
            for p in top:
                src = str(p.get("source", "")) if isinstance(p, dict) else ""
                per_source.setdefault(src, []).extend(_patch_rows(src, [p]))
    if not any(per_source.values()):
        per_source.update(_recorded_patches(settings))
    rows = [r for name in sorted(per_source) for r in per_source[name]]
    if not rows:
        return "none"
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def _recorded_patches(settings: Settings) -> dict[str, list[str]]:
    """Patch rows per source from the patch step's records (``Settings.patch_record``)."""
    pattern = settings.patch_record("*")
    prefix, _, suffix = pattern.name.partition("*")
    out: dict[str, list[str]] = {}
    if not pattern.parent.is_dir():
        return out
    for f in sorted(pattern.parent.glob(pattern.name)):
        st = read_json(f)
        if st is not None:
            name = f.name[len(prefix):len(f.name) - len(suffix)]
            out[name] = _patch_rows(name, st.get("applied") or st.get("patches"))
    return out


def ask_commit(settings: Settings, manifest: dict) -> str:
    c = _git_rev(settings.source_tree("ask"), BASE_TAG)
    if c:
        return c
    for keys in (("sources", "ask", "commit"), ("sources", "ask", "base"),
                 ("sources", "ask", "base_commit")):
        v = _dig(manifest, *keys)
        if isinstance(v, str) and v:
            return v
    srcs = manifest.get("sources")
    if isinstance(srcs, list):
        for s in srcs:
            if isinstance(s, dict) and s.get("name") == "ask":
                return str(s.get("base") or s.get("commit") or "")
    return ""


def ask_version(settings: Settings, manifest: dict) -> str:
    for keys in (("sources", "ask", "ref"), ("sources", "ask", "version")):
        v = _dig(manifest, *keys)
        if isinstance(v, str) and v:
            return v
    try:
        from .sources import load_sources
        src = load_sources(settings).get("ask")
        if src is not None:
            return src.ref
    except Exception:  # noqa: BLE001 - a label falls back, it never fails the image
        pass
    return "unknown"


def project_source_url(settings: Settings, default: str) -> str:
    try:
        url = run_git(["config", "--get", "remote.origin.url"], cwd=settings.project_root,
                      check=False).stdout.strip()
    except OSError:
        url = ""
    # never publish credentials embedded in a remote URL
    url = re.sub(r"//[^/@]+@", "//", url)
    return url or default


# -- the application layer --------------------------------------------------------------------

def _mode(value, where: str) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3,4}", value):
        return int(value, 8)
    raise ConfigError(f"{where}: mode must be octal digits like \"0755\", got {value!r}")


def _image_path(p: str, where: str) -> str:
    if not isinstance(p, str) or not p.startswith("/"):
        raise ConfigError(f"{where}: image path {p!r} must be absolute")
    n = oci.norm_path(p)
    if not n:
        raise ConfigError(f"{where}: image path {p!r} is the root")
    return n


def app_entries(settings: Settings, conf: dict, *, release: str, board: str | None,
                epoch: int, missing: dict[str, str] | None = None,
                ) -> tuple[dict[str, oci.Entry], dict[str, str]]:
    """Entries of the application layer (paths as the build / image.toml name them) and a
    record of where every vendor file came from.  ``missing`` (a partial image): a vendor file
    that cannot be read is left out and added there instead of failing; ``release`` empty:
    no ``kernel-release`` file."""
    entries: dict[str, oci.Entry] = {}
    for e in oci.entries_from_tree(settings.staging_dir):
        e.mtime = epoch         # build times say nothing about the inputs: one time for all
        entries[e.path] = e
    where = f"{image_inputs_dir(settings) / 'image.toml'}"
    vendor: dict[str, bytes] = {}
    origin: dict[str, str] = {}
    for ipath, spec in conf["vendor"].items():
        p = _image_path(ipath, f"{where} [vendor]")
        try:
            vendor[p], origin[p] = vendor_bytes(settings, spec, f"{where} [vendor] {ipath}")
        except ImageError as e:
            if missing is None:
                raise
            missing[ipath] = e.message
            console.warn(f"partial image: leaving out {ipath}: {e.message}")
    boards_conf = conf.get("boards", {}) or {}
    if board is not None:
        if not BOARD_RE.match(board) or board not in boards_conf:
            raise UserError(f"unknown board {board!r}",
                            fix="known boards (images/cmm/image.toml [boards]): "
                                + (", ".join(sorted(boards_conf)) or "none"))
    board_files: dict[str, dict[str, bytes]] = {}
    for name, table in sorted(boards_conf.items()):
        files: dict[str, bytes] = {}
        try:
            for ipath, spec in table.items():
                p = _image_path(ipath, f"{where} [boards.{name}]")
                files[p], origin[f"{name}:{p}"] = vendor_bytes(
                    settings, spec, f"{where} [boards.{name}] {ipath}")
        except ImageError:
            if name == board:
                raise
            console.info(f"board {name}: its files are not in the source trees; not shipped")
            continue
        board_files[name] = files
    chosen = dict(vendor)
    if board is not None:
        chosen.update(board_files[board])
    for p, data in sorted(chosen.items()):
        old = entries.get(p)
        if old is not None and old.kind == oci.FILE and old.source is not None \
                and old.source.read_bytes() != data:
            console.warn(f"staging tree's /{p} differs from {origin.get(p)}; "
                         "the image uses the latter")
        entries[p] = oci.Entry(p, oci.FILE, 0o644, data=data, mtime=epoch)
    # dpa-configs profiles for select-dpa-config.sh
    profiles = {"default": vendor}
    for name, files in board_files.items():
        profiles[name] = {**vendor, **files}
    for prof, files in profiles.items():
        for ipath, fname in DPA_FILES.items():
            p = oci.norm_path(ipath)
            if p in files:
                q = f"{DPA_CONFIG_ROOT}/{prof}/{fname}"
                entries[q] = oci.Entry(q, oci.FILE, 0o644, data=files[p], mtime=epoch)
    # files of images/cmm
    for name, table in sorted(conf["files"].items()):
        w = f"{where} [files.\"{name}\"]"
        if not isinstance(table, dict) or "path" not in table:
            raise ConfigError(f"{w}: needs path (and mode)")
        if "/" in name or name.startswith("."):
            raise ConfigError(f"{w}: must name a file directly in images/cmm/")
        host = image_inputs_dir(settings) / name
        if not host.is_file():
            if table.get("optional"):
                continue
            raise ConfigError(f"{w}: {host} does not exist")
        p = _image_path(table["path"], w)
        entries[p] = oci.Entry(p, oci.FILE, _mode(table.get("mode", "0644"), w),
                               data=host.read_bytes(), mtime=epoch)
    if release:
        q = "usr/share/monok8s/kernel-release"
        entries[q] = oci.Entry(q, oci.FILE, 0o644, data=(release + "\n").encode(), mtime=epoch)
    return entries, origin


def remap(entries: dict[str, oci.Entry], rootfs: elfcheck.RootFs) -> dict[str, oci.Entry]:
    """Place application entries under the base layer's real directories (``lib/...`` becomes
    ``usr/lib/...`` when ``/lib`` is a symlink) so the layer never shadows a base symlink."""
    out: dict[str, oci.Entry] = {}
    for path in sorted(entries):
        e = entries[path]
        node = rootfs.nodes.get(path)
        if e.kind == oci.DIR and node is not None and node.kind == "symlink":
            continue            # the staging tree's lib/ when /lib -> usr/lib in the base
        new = rootfs.canonical_parent(path)
        if new != path:
            e = oci.Entry(new, e.kind, e.mode, e.data, e.source, e.linkname, e.mtime)
        out[new] = e
    return out


def needed_sonames(entries: dict[str, oci.Entry]) -> tuple[set[str], dict[str, dict]]:
    sonames: set[str] = set()
    facts: dict[str, dict] = {}
    for path, e in entries.items():
        if e.kind != oci.FILE:
            continue
        data = e.data if e.data is not None else None
        if data is None and e.source is not None:
            with open(e.source, "rb") as f:
                if f.read(4) != b"\x7fELF":
                    continue
            data = e.source.read_bytes()
        if data is None or data[:4] != b"\x7fELF":
            continue
        fx = baselayer.elf_facts(data)
        if fx is not None:
            facts[path] = fx
            sonames.update(n for n in fx.get("needed", []) if "/" not in n)
    return sonames, facts


# -- loading ----------------------------------------------------------------------------------

def docker_client(timeout: int = 900):
    """A connected Docker SDK client, or None when no engine answers within 10 s (or its
    socket is not there: :func:`~askbuild.dockerhost.no_engine_socket`, without importing
    the SDK).

    ``timeout`` then applies to every request (loading ~100 MB into a vfs engine is slow)."""
    if dockerhost.no_engine_socket():
        return None
    try:
        import docker
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception:  # noqa: BLE001 - any failure means "no engine"
        return None
    client.api.timeout = timeout
    return client


def load_archive(client, archive: Path, ref: str, image_id: str) -> None:
    with open(archive, "rb") as f:
        try:
            client.images.load(f)
        except Exception as e:  # noqa: BLE001 - the engine's words go into the message
            raise ImageError(f"the engine at {dockerhost.engine_host()} refused {archive}: {e}",
                             fix=f"check the engine's log; run `docker load -i "
                                 f"{shlex.quote(str(archive))}` to see the same error") from e
    img = client.images.get(ref)
    arch = img.attrs.get("Architecture")
    if arch != "arm64":
        raise ImageError(f"{ref}: the engine reports Architecture {arch!r}, expected arm64")
    if img.id != image_id:
        raise ImageError(f"{ref}: the engine reports image id {img.id}, expected {image_id} "
                         "(a stale tag?)")


def load_instructions(archive: Path, ref: str) -> str:
    a = shlex.quote(str(archive))
    return "\n".join([
        f"no Docker engine reachable at {dockerhost.engine_host()}: the image archive is the "
        "result",
        f"  archive: {a}",
        "  load it with one of:",
        f"    docker load -i {a}",
        f"    podman load -i {a}",
        f"    ctr -n k8s.io images import --platform linux/arm64 {a}",
        "  side-load onto a node (then use imagePullPolicy: Never):",
        f"    scp {a} NODE:/tmp/cmm.tar && ssh NODE ctr -n k8s.io images import "
        "--platform linux/arm64 /tmp/cmm.tar",
        f"  the image is {ref}",
    ])


# -- the record -------------------------------------------------------------------------------

def read_record(settings: Settings) -> dict | None:
    """``image/image.json`` when it describes the archive it names (same size and sha256),
    else None (missing, damaged, or the archive was replaced or removed since).  The archive
    is hashed only when its stat signature differs from the one the image stamp took right
    after writing it (:func:`_archive_vouched`)."""
    rec = read_json(settings.image_record)
    if not rec or not isinstance(rec.get("archive"), str):
        return None
    if _archive_vouched(settings, rec):
        return rec
    try:
        digest, size = sha256_file(Path(rec["archive"]))
    except OSError:
        return None
    if digest != rec.get("archive_sha256") or size != rec.get("archive_size", size):
        return None
    return rec


def _clean_leftovers(out_dir: Path, dest: Path) -> None:
    """Temporary files of killed ``inv image`` runs (``cmm.tar.part``, ``.cmm.tar.<pid>...``)."""
    removed = oci.clean_partials(out_dir, ["cmm.tar", "app-layer.tar.gz", "app-layer.tar"])
    if dest.parent.resolve() != out_dir.resolve():
        removed += oci.clean_partials(dest.parent, [dest.name])
    for p in removed:
        console.info(f"removed {p} (left by an interrupted run)")


# -- the verb ---------------------------------------------------------------------------------

@dataclass
class _Inputs:
    """What the staging tree and the build manifest say (phase 1 of :func:`image`)."""

    staging: Path
    manifest: dict
    release: str | None
    missing: dict[str, str]      # empty unless ``partial`` (else :func:`check_complete` failed)
    epoch: int


@runlock.exclusive("image")
def image(settings: Settings, tag: str = DEFAULT_TAG, output: str | Path | None = None,
          load: bool = True, board: str | None = None, partial: bool = False) -> ImageResult:
    """Assemble (and load) the image.  See the module docstring.  Holds the work-dir lock.

    A component the staging tree lacks (or that the build manifest lists as missing) is an
    error naming each one; with ``partial`` the image is built from what exists and labelled
    ``io.monok8s.askbuild.partial=true`` and ``io.monok8s.askbuild.missing=<names>``.

    Phases: check the tag, the no-op answer (:func:`unchanged`: nothing the image is made
    from changed since the last one, by stat signatures), read the inputs, collect the
    application entries, the base layer, the library check, the application layer, labels and
    config, archive + record + stamp, load."""
    check_tag(tag)
    conf = load_image_toml(settings)
    ref = f"{conf['repository']}:{tag}"
    dest = Path(output) if output else settings.image_dir / "cmm.tar"
    facts = stamp_facts(settings, conf, tag=tag, dest=dest, board=board, partial=partial)
    done = unchanged(settings, facts, dest)
    if done is not None:
        return _unchanged_result(done, dest, ref, load)
    settings.image_stamp.unlink(missing_ok=True)
    inputs = read_inputs(settings, partial)
    console.step(f"image {ref} (kernel {inputs.release or 'none'}, SOURCE_DATE_EPOCH "
                 f"{inputs.epoch}{', partial' if partial else ''})")
    entries, origin = app_entries(settings, conf, release=inputs.release or "", board=board,
                                  epoch=inputs.epoch,
                                  missing=inputs.missing if partial else None)
    compression = str(conf.get("layers", {}).get("compression", "gzip"))
    base = base_layer(settings, conf, entries, inputs.epoch, compression)
    app = check_libraries(base, entries)
    _clean_leftovers(settings.image_dir, dest)
    suffix = ".gz" if compression == "gzip" else ""
    app_layer = oci.write_layer(
        app.values(), settings.image_dir / f"app-layer.tar{suffix}",
        epoch=inputs.epoch, compression=compression,
        comment="app: askbuild staging tree, vendor configuration, images/cmm")
    created = _dt.datetime.fromtimestamp(inputs.epoch, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    labels = image_labels(settings, conf, inputs, created=created, board=board, base=base)
    config = oci.image_config(
        [base.layer, app_layer], created=created,
        entrypoint=list(conf["config"].get("entrypoint", [])),
        cmd=list(conf["config"].get("cmd", [])) or None,
        env=list(conf["config"].get("env", [])), labels=labels)
    archive, layers = write_archive_and_record(
        settings, dest, [("base", base.layer), ("app", app_layer)], config, ref=ref,
        inputs=inputs, labels=labels,
        extra={"base_packages": base.packages, "vendor_files": origin})
    write_stamp(settings, facts, dest, archive.sha256)
    loaded = load_image(dest, ref, archive.image_id) if load else False
    if not load:
        console.info(f"not loaded (--no-load); load it with: docker load -i "
                     f"{shlex.quote(str(dest))}")
    return ImageResult(dest, archive.sha256, archive.image_id, ref, loaded, layers, labels,
                       base.packages, inputs.release or "", inputs.epoch)


def tag_words(tag: str) -> tuple[str, ...]:
    """The ``--tag`` words of a printed ``inv image``/``inv image.test`` command for image tag
    ``tag`` (none for the default tag)."""
    return () if tag == DEFAULT_TAG else ("--tag", tag)


def check_tag(tag: str) -> None:
    """``--tag``: a valid image tag, else a UserError."""
    if not TAG_RE.match(tag or ""):
        raise UserError(f"--tag {tag!r} is not a valid image tag",
                        fix="use letters, digits, '_', '.', '-' (at most 128, not starting "
                            "with '.' or '-')")


def read_inputs(settings: Settings, partial: bool) -> _Inputs:
    """The staging tree, the build manifest, the kernel release and what is missing (an error
    unless ``partial``), the modules' vermagic checked, and ``SOURCE_DATE_EPOCH``."""
    staging = settings.staging_dir
    if not staging.is_dir():
        raise ImageError(f"the staging tree {staging} does not exist",
                         fix=f"run {_build_advice(settings)} first")
    manifest = read_manifest(settings)
    release = find_kernel_release(staging, manifest, settings=settings)
    missing = staging_missing(staging, release, manifest)
    check_complete(settings, missing, partial)
    if release is not None:
        check_modules(settings, release)
    return _Inputs(staging, manifest, release, missing, source_epoch(settings))


def base_layer(settings: Settings, conf: dict, entries: dict[str, oci.Entry], epoch: int,
               compression: str) -> baselayer.BaseLayer:
    """The Debian base layer: the declared packages plus those owning the libraries the
    application entries need (libraries the build staged itself need no package)."""
    sonames, _ = needed_sonames(entries)
    staged = {posixpath.basename(p) for p, e in entries.items()
              if e.kind in (oci.FILE, oci.SYMLINK) and ".so" in posixpath.basename(p)}
    mapped, unmapped = baselayer.packages_for_sonames(sonames - staged)
    declared = list(conf["base"].get("packages", []))
    packages = sorted(set(declared) | set(mapped.values()))
    if unmapped:
        console.warn("no host package ships " + ", ".join(unmapped)
                     + ": the library check below will tell whether the image has them")
    spec = baselayer.BaseSpec(packages=packages, suite=conf["base"].get("suite", "bookworm"),
                              sources=list(conf["base"].get("sources", [])),
                              snapshot=str(conf["base"].get("snapshot", "") or ""))
    return baselayer.ensure_base(settings, spec, epoch=epoch, compression=compression)


def check_libraries(base: baselayer.BaseLayer,
                    entries: dict[str, oci.Entry]) -> dict[str, oci.Entry]:
    """The application entries placed under the base layer's real directories (:func:`remap`),
    after checking that every ELF file of both layers loads inside the image."""
    nodes = {p: elfcheck.Node(v[0], v[1]) for p, v in base.index.items()}
    app = remap(entries, elfcheck.RootFs(nodes))
    _, app_elf = needed_sonames(app)
    merged = dict(nodes)
    for p, e in app.items():
        merged[p] = elfcheck.Node(e.kind, e.linkname)
    elf_all = {p: f for p, f in base.elf.items() if p not in app}
    elf_all.update(app_elf)
    n = elfcheck.check(elfcheck.RootFs(merged), elf_all, set(app_elf))
    console.info(f"libraries: {n} dynamically linked ELF files resolve inside the image")
    return app


def image_labels(settings: Settings, conf: dict, inputs: _Inputs, *, created: str,
                 board: str | None, base: baselayer.BaseLayer) -> dict[str, str]:
    """image.toml's ``[labels]`` plus the OCI and ``io.monok8s.askbuild.*`` labels (the
    partial ones only when something is missing)."""
    commit = ask_commit(settings, inputs.manifest)
    labels = {k: str(v) for k, v in (conf.get("labels") or {}).items()}
    labels.update({
        "org.opencontainers.image.source": project_source_url(
            settings, labels.get("org.opencontainers.image.source", "askbuild")),
        "org.opencontainers.image.revision": commit or "unknown",
        "org.opencontainers.image.version": ask_version(settings, inputs.manifest),
        "org.opencontainers.image.created": created,
        f"{LABEL_PREFIX}.ask.commit": commit or "unknown",
        f"{LABEL_PREFIX}.kernel.release": inputs.release or "none",
        f"{LABEL_PREFIX}.patches.sha256": patch_series_hash(settings, inputs.manifest),
        f"{LABEL_PREFIX}.board": board or "default",
        f"{LABEL_PREFIX}.base.packages": str(len(base.packages)),
    })
    if inputs.missing:          # only with --partial (check_complete refused it otherwise)
        labels[f"{LABEL_PREFIX}.partial"] = "true"
        labels[f"{LABEL_PREFIX}.missing"] = ",".join(sorted(inputs.missing))
    return labels


def write_archive_and_record(settings: Settings, dest: Path,
                             layers: list[tuple[str, oci.Layer]], config: dict, *, ref: str,
                             inputs: _Inputs, labels: dict[str, str],
                             extra: dict) -> tuple[oci.ImageArchive, list[dict]]:
    """Write the archive, then ``image.json`` describing it.  The record is gone while the
    archive is rewritten and written once the archive is complete (a kill in between leaves no
    record, never a record of another archive).  Returns the archive and the layer rows."""
    settings.image_record.unlink(missing_ok=True)
    archive = oci.write_archive(dest, [la for _, la in layers], config, ref=ref,
                                epoch=inputs.epoch)
    rows = [{"role": role, "digest": la.digest, "diff_id": la.diff_id, "size": la.size}
            for role, la in layers]
    record = {"ref": ref, "image_id": archive.image_id, "archive": str(dest),
              "archive_sha256": archive.sha256, "archive_size": dest.stat().st_size,
              "layers": rows, "labels": labels,
              "kernel_release": inputs.release or "", "source_date_epoch": inputs.epoch,
              "partial": bool(inputs.missing), "missing": inputs.missing, **extra}
    write_json_atomic(settings.image_record, record, indent=1)
    console.info(f"archive: {dest} (sha256 {archive.sha256})")
    console.info(f"image id: {archive.image_id}")
    if inputs.missing:
        console.warn(f"{ref} is a PARTIAL image (label {LABEL_PREFIX}.partial=true), missing: "
                     f"{', '.join(inputs.missing)}; not a release candidate "
                     f"(`{settings.command('image.test', *tag_words(ref.rpartition(':')[2]))}` "
                     "fails it)")
    return archive, rows


def load_image(dest: Path, ref: str, image_id: str) -> bool:
    """Load the archive into the reachable engine (True), or print how to load it (False)."""
    client = docker_client()
    if client is None:
        console.info(load_instructions(dest, ref))
        return False
    try:
        console.step(f"load {ref} into the engine at {dockerhost.engine_host()}")
        load_archive(client, dest, ref, image_id)
        console.info(f"loaded {ref} ({image_id}), Architecture arm64")
        return True
    finally:
        client.close()


# -- the image stamp: a no-op without rebuilding ----------------------------------------------
#
# ``image/image-stamp.json`` (:attr:`Settings.image_stamp`), written right after an archive and
# its record: everything the image is made from, as stat signatures (``[size, mtime_ns,
# ctime_ns, inode]``: ``ctime`` moves on any write, even one restoring size and mtime) and
# loose ref contents, plus the options.  Not seen (as before the stamp, the full path reads
# them only through the inputs above): the host's package database behind the base layer's
# library mapping, and the user's git configuration outside ``~/.gitconfig``.

IMAGE_STAMP_SCHEMA = 1


def _walk_sigs(root: Path) -> dict[str, list[int] | None]:
    """The stat signature of ``root`` and of every file, link and directory under it (links
    not followed)."""
    out = {".": stat_sig(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = stat_sig(Path(p))
    return out


def _loose_ref(tree: Path, ref: str) -> str | None:
    try:
        return (tree / ".git" / ref).read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _vendor_specs(conf: dict) -> list[str]:
    """Every ``SOURCE[@base]:PATH`` the image reads (``[vendor]`` and every board: the full
    path reads all boards, to ship their dpa-configs)."""
    specs = list(conf["vendor"].values())
    for table in (conf.get("boards") or {}).values():
        specs += list(table.values())
    return specs


def stamp_facts(settings: Settings, conf: dict, *, tag: str, dest: Path, board: str | None,
                partial: bool) -> dict | None:
    """What an image made now would be made from, by stats and small reads (no git, no
    hashing): the options, ``SOURCE_DATE_EPOCH``, ``images/cmm/``, the build manifest, the
    staging tree, the patch records and sources file (labels), the project's git config
    (the source label), the base ref of the ASK tree and of every tree a vendor file is read
    from, and each vendor file in its work tree.  None when only git can tell (a tree with
    no loose base ref)."""
    state = settings.patch_record("*")
    facts: dict = {
        "schema": IMAGE_STAMP_SCHEMA,
        "options": {"tag": tag, "output": os.path.abspath(dest), "board": board,
                    "partial": partial},
        "epoch_env": os.environ.get("SOURCE_DATE_EPOCH"),
        "inputs": _walk_sigs(image_inputs_dir(settings)),
        "manifest": stat_sig(settings.build_manifest),
        "staging": _walk_sigs(settings.staging_dir),
        "sources_file": stat_sig(settings.sources_file),
        "patch_records": {p.name: stat_sig(p) for p in sorted(state.parent.glob(state.name))},
        "git_config": [stat_sig(settings.project_root / ".git" / "config"),
                       stat_sig(Path.home() / ".gitconfig")],
        "trees": {}, "vendor": {}}
    names = {"ask"}
    for spec in _vendor_specs(conf):
        m = VENDOR_RE.match(spec)
        if not m:
            return None
        names.add(m.group("src"))
        facts["vendor"][spec] = stat_sig(settings.source_tree(m.group("src")) / m.group("path"))
    for name in sorted(names):
        tree = settings.source_tree(name)
        if not (tree / ".git").exists():
            facts["trees"][name] = None
            continue
        base = _loose_ref(tree, f"refs/tags/{BASE_TAG}")
        if base is None:
            return None
        facts["trees"][name] = base
    return facts


def unchanged(settings: Settings, facts: dict | None, dest: Path) -> dict | None:
    """The image record when the stamp shows the same ``facts`` and the archive and record
    are the very files written with it (stat signatures); else None (then the image is
    made again)."""
    stamp = read_json(settings.image_stamp)
    if facts is None or not stamp or stamp.get("facts") != facts:
        return None
    rec = read_json(settings.image_record)
    if (not rec or rec.get("archive") != str(dest) or stat_sig(dest) != stamp.get("archive")
            or stat_sig(settings.image_record) != stamp.get("record")
            or rec.get("archive_sha256") != stamp.get("archive_sha256")):
        return None
    return rec


def _archive_vouched(settings: Settings, rec: dict) -> bool:
    """Whether the image stamp took the stat of exactly this record and archive."""
    stamp = read_json(settings.image_stamp)
    return bool(stamp) and stamp.get("archive_sha256") == rec.get("archive_sha256") \
        and stamp.get("archive") == stat_sig(Path(rec["archive"])) \
        and stamp.get("record") == stat_sig(settings.image_record)


def write_stamp(settings: Settings, facts: dict | None, dest: Path, sha256: str) -> None:
    """Stamp the archive just written and its record with the ``facts`` taken before the
    image was made (an input that changed meanwhile makes the next run rebuild)."""
    if facts is None:
        settings.image_stamp.unlink(missing_ok=True)
        return
    write_json_atomic(settings.image_stamp,
                      {"facts": facts, "archive": stat_sig(dest), "archive_sha256": sha256,
                       "record": stat_sig(settings.image_record)})


def _unchanged_result(rec: dict, dest: Path, ref: str, load: bool) -> ImageResult:
    """The no-op answer: say so, load the archive when asked (the engine check stays), and
    return what the record says."""
    console.info(f"image {ref} unchanged: {dest} (image id {rec.get('image_id')}; nothing it "
                 "is made from changed since it was written)")
    loaded = load_image(dest, ref, rec["image_id"]) if load else False
    if not load:
        console.info(f"not loaded (--no-load); load it with: docker load -i "
                     f"{shlex.quote(str(dest))}")
    return ImageResult(dest, rec["archive_sha256"], rec["image_id"], ref, loaded,
                       rec.get("layers", []), rec.get("labels", {}),
                       rec.get("base_packages", []), rec.get("kernel_release", ""),
                       rec.get("source_date_epoch", 0))
