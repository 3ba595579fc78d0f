"""The base layer: runtime libraries and tools from Debian arm64 packages.

Packages are unpacked without running maintainer scripts (``mmdebstrap --variant=extract`` with
the merged-usr and busybox hooks: no qemu, about 10 s).  Which packages: the declared list of
``images/cmm/image.toml`` plus the packages owning the libraries the built binaries need
(``NEEDED`` entries read with pyelftools, mapped with ``dpkg -S`` over the host's arm64
multiarch libraries, e.g. ``libcli.so.1.10`` -> ``libcli1.10``).

The layer is cached under ``<cache>/image/base/<key>/``; the key covers the package set, the
apt sources, the Debian snapshot (when pinned) or else the host's apt lists for those sources
(``apt-get update`` therefore refreshes it), and the format of this module.  What the cache
holds: ``rootfs.tar`` (mmdebstrap's output), ``meta.json`` (package list with versions, file
index, ELF facts) and normalised layer blobs per ``SOURCE_DATE_EPOCH`` and compression.

Normalisation: device nodes under ``/dev``, the downloaded ``.deb`` files, apt's binary caches
(not reproducible), ``/etc/resolv.conf`` and ``/etc/hostname`` are dropped; ``/etc/passwd`` and
``/etc/group`` come from base-passwd's master files; ``/var/lib/dpkg/status`` lists every
unpacked package (so scanners such as trivy or syft see what is inside) and
``/usr/share/monok8s/base-packages.json`` repeats it as JSON.

Checkouts sharing one cache (CI fleets) are safe: each cache entry is filled under its cache
lock (:func:`askbuild.runlock.cache`), every file is written under a unique temporary name and
renamed into place, leftovers of killed runs are removed under the lock, and a blob another run
may still be reading (used in the last :data:`PRUNE_AFTER` seconds) is never pruned.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import console, oci, procs, runlock
from .errors import ConfigError, ImageError, MissingToolError, OfflineError
from .fsutil import read_json, write_bytes_atomic
from .settings import MULTIARCH, Settings

FORMAT = 5                      # bump when the normalisation below changes
HOST_LIB_DIRS = [f"/usr/lib/{MULTIARCH}", f"/lib/{MULTIARCH}", f"/usr/{MULTIARCH}/lib"]
HOOKS = ["/usr/share/mmdebstrap/hooks/merged-usr", "/usr/share/mmdebstrap/hooks/busybox"]
PKG_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
# apt's binary caches (pkgcache.bin, srcpkgcache.bin) differ from one unpacking to the next:
# dropped like the downloaded lists (apt rebuilds them).
DROP_EXACT = {"etc/resolv.conf", "etc/hostname", "var/cache/apt/pkgcache.bin",
              "var/cache/apt/srcpkgcache.bin"}
DROP_PREFIXES = ("dev/", "var/cache/apt/archives/", "var/lib/apt/lists/")
KEEP_DIRS = {"var/cache/apt/archives", "var/lib/apt/lists"}
PRUNE_AFTER = 3600             # seconds: a blob used more recently than this is kept


@dataclass
class BaseSpec:
    """What the base layer is made of (from image.toml + the binaries' needs)."""

    packages: list[str]
    suite: str = "bookworm"
    sources: list[str] = field(default_factory=list)     # "deb URI SUITE COMPONENTS" lines
    snapshot: str = ""                                     # e.g. 20250520T000000Z

    def apt_lines(self) -> list[str]:
        lines = self.sources or [f"deb http://deb.debian.org/debian {self.suite} main"]
        if not self.snapshot:
            return lines
        out = []
        for line in lines:
            parts = line.split()
            uri = parts[1]
            m = re.match(r"^https?://[^/]+/(debian(?:-security)?)/?$", uri)
            if m:
                parts[1] = f"http://snapshot.debian.org/archive/{m.group(1)}/{self.snapshot}/"
            out.append(" ".join(parts))
        return out


@dataclass
class BaseLayer:
    layer: oci.Layer
    packages: list[dict]            # [{"name", "version", "architecture", "source"}]
    index: dict[str, list]          # path -> [kind, linkname, mode]
    elf: dict[str, dict]            # path -> {"needed", "interp", "runpath", "machine"}
    key: str


# -- package set ------------------------------------------------------------------------------

def validate_packages(names: list[str], where: str) -> list[str]:
    for n in names:
        if not isinstance(n, str) or not PKG_RE.match(n):
            raise ConfigError(f"{where}: {n!r} is not a Debian package name",
                              fix="use names like libxml2, libcli1.10, busybox")
    return names


def host_library(soname: str) -> Path | None:
    for d in HOST_LIB_DIRS:
        p = Path(d) / soname
        if p.exists():
            return p
    return None


def _debian_name(owner: str) -> str:
    """``libcli1.10:arm64`` -> ``libcli1.10``; ``libc6-arm64-cross`` -> ``libc6``."""
    name = owner.split(":", 1)[0].strip()
    for suffix in ("-arm64-cross",):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


#: a wildcard of dpkg's search patterns (never in a library path found on the host)
_GLOB = re.compile(r"[*?[\\]")


def packages_for_sonames(sonames: set[str]) -> tuple[dict[str, str], list[str]]:
    """Map sonames to the Debian packages that ship them (host multiarch libraries), with
    ONE ``dpkg -S`` for every path (each call reads the whole dpkg database: one per library
    took 0.7 s of a no-op ``inv all``).  A library found at ``/usr/lib/...`` is also looked
    up at ``/lib/...`` and the other way round (merged /usr), the path itself first.

    Returns ``({soname: package}, [sonames not found on the host])``.
    """
    if not shutil.which("dpkg"):
        raise MissingToolError("dpkg is needed to map libraries to Debian packages",
                               fix="build on Debian or Ubuntu (see `inv doctor`)")
    wanted: dict[str, list[str]] = {}
    missing: list[str] = []
    for soname in sorted(sonames):
        lib = host_library(soname)
        if lib is None:
            missing.append(soname)
            continue
        candidates = [str(lib)]
        if str(lib).startswith("/usr/lib/"):
            candidates.append(str(lib)[4:])
        elif str(lib).startswith("/lib/"):
            candidates.append("/usr" + str(lib))
        wanted[soname] = candidates
    owners: dict[str, str] = {}
    # (absolute paths: dpkg matches them whole, as patterns without a wildcard; "no path
    # found" for some of them is exit 1 and a line on stderr, the others still answered)
    paths = [c for cs in wanted.values() for c in cs if not _GLOB.search(c)]
    if paths:
        proc = procs.run(["dpkg", "-S", "--", *paths], capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            if line.startswith("diversion by "):
                continue
            who, sep, path = line.partition(": ")
            if sep and path not in owners:
                owners[path] = who
    found: dict[str, str] = {}
    for soname, candidates in wanted.items():
        owner = next((owners[c] for c in candidates if c in owners), None)
        if owner is None:
            missing.append(soname)
        else:
            # "pkg1, pkg2: path" (several packages ship it) -> the first package
            found[soname] = _debian_name(owner.split(",")[0])
    return found, sorted(missing)


# -- cache key --------------------------------------------------------------------------------

def _lists_identity(spec: BaseSpec) -> str:
    """Digest of the host's apt InRelease files for ``spec``'s sources (or the snapshot)."""
    if spec.snapshot:
        return "snapshot:" + spec.snapshot
    h = hashlib.sha256()
    lists = Path("/var/lib/apt/lists")
    for line in spec.apt_lines():
        parts = line.split()
        uri, suite = parts[1], parts[2]
        mangled = re.sub(r"^[a-z+]+://", "", uri).rstrip("/").replace("/", "_")
        f = lists / f"{mangled}_dists_{suite}_InRelease"
        h.update(line.encode() + b"\0")
        if f.is_file():
            h.update(hashlib.sha256(f.read_bytes()).digest())
        else:
            h.update(b"no-host-list")
    return "lists:" + h.hexdigest()


def cache_key(spec: BaseSpec) -> str:
    data = {"format": FORMAT, "packages": sorted(set(spec.packages)), "suite": spec.suite,
            "sources": spec.apt_lines(), "index": _lists_identity(spec),
            "hooks": [Path(h).name for h in HOOKS], "arch": "arm64"}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32]


# -- making the rootfs ------------------------------------------------------------------------

def _run_mmdebstrap(spec: BaseSpec, out_tar: Path, log: Path) -> None:
    if not shutil.which("mmdebstrap"):
        raise MissingToolError("mmdebstrap is needed to unpack the arm64 base layer",
                               fix="inv setup   (apt-get install mmdebstrap)")
    cmd = ["mmdebstrap", "--arch=arm64", "--variant=extract", "--mode=auto",
           "--include=" + ",".join(sorted(set(spec.packages))),
           "--skip=cleanup/apt/cache", "--format=tar"]
    for hook in HOOKS:
        if Path(hook).is_dir():
            cmd.append("--hook-dir=" + hook)
    cmd += [spec.suite, str(out_tar), *spec.apt_lines()]
    console.info("$ " + " ".join(cmd))
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as lf:    # its own process group; nothing of it survives askbuild
        proc = procs.supervised_popen(cmd, stdout=lf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        try:
            proc.wait()
        except BaseException:
            procs.kill_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                procs.kill_group(proc, signal.SIGKILL)
                proc.wait()
            raise
        finally:
            procs.forget(proc)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        raise ImageError(
            "mmdebstrap failed to unpack the base layer packages "
            f"({', '.join(sorted(set(spec.packages)))}):\n  " + "\n  ".join(tail),
            fix=f"see {log}; check the package names in images/cmm/image.toml and that the "
                "Debian mirror is reachable (apt-get update)")


def _control_fields(deb_bytes: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".deb") as tmp:
        tmp.write(deb_bytes)
        tmp.flush()
        proc = procs.run(["dpkg-deb", "-f", "--", tmp.name], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageError(f"dpkg-deb could not read a downloaded package: {proc.stderr.strip()}")
    return proc.stdout


def _parse_paragraph(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if line.startswith((" ", "\t")) and key:
            out[key] += "\n" + line
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip()
            out[key] = value.strip()
    return out


STATUS_ORDER = ["Package", "Status", "Priority", "Section", "Installed-Size", "Maintainer",
                "Architecture", "Multi-Arch", "Source", "Version", "Replaces", "Provides",
                "Depends", "Pre-Depends", "Recommends", "Suggests", "Breaks", "Conflicts",
                "Description", "Homepage"]


def _status_paragraph(fields: dict[str, str]) -> str:
    fields = dict(fields)
    fields["Status"] = "install ok installed"
    keys = [k for k in STATUS_ORDER if k in fields] + sorted(
        k for k in fields if k not in STATUS_ORDER)
    return "".join(f"{k}: {fields[k]}\n" for k in keys)


def elf_facts(data: bytes) -> dict | None:
    """NEEDED, interpreter, RUNPATH/RPATH and machine of an ELF image (None if not ELF)."""
    if data[:4] != b"\x7fELF":
        return None
    from elftools.common.exceptions import ELFError
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile
    try:
        elf = ELFFile(io.BytesIO(data))
        facts: dict = {"machine": elf["e_machine"], "type": elf["e_type"], "needed": [],
                       "interp": "", "runpath": []}
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_INTERP":
                facts["interp"] = seg.get_interp_name()
        for sec in elf.iter_sections():
            if isinstance(sec, DynamicSection):
                for tag in sec.iter_tags():
                    if tag.entry.d_tag == "DT_NEEDED":
                        facts["needed"].append(tag.needed)
                    elif tag.entry.d_tag == "DT_RUNPATH":
                        facts["runpath"] += tag.runpath.split(":")
                    elif tag.entry.d_tag == "DT_RPATH":
                        facts["runpath"] += tag.rpath.split(":")
        return facts
    except (ELFError, Exception):  # noqa: BLE001 - a broken ELF is reported by elfcheck
        return {"machine": "?", "type": "?", "needed": [], "interp": "", "runpath": [],
                "broken": True}


@dataclass
class _Unpacked:
    """What :func:`_read_rootfs` found in mmdebstrap's tar."""

    entries: dict[str, oci.Entry] = field(default_factory=dict)
    debs: list[bytes] = field(default_factory=list)     # the downloaded packages
    status: str = ""                                    # var/lib/dpkg/status as unpacked
    masters: dict[str, bytes] = field(default_factory=dict)  # base-passwd's master files


MASTER_FILES = ("usr/share/base-passwd/passwd.master", "usr/share/base-passwd/group.master")


def _normalise(raw_tar: Path) -> tuple[list[oci.Entry], list[dict]]:
    """Entries of the base layer from mmdebstrap's tar, the package list and status file.

    Phases: read the tar (dropping what is not reproducible), the accounts from base-passwd,
    the package list from the downloaded packages, ``var/lib/dpkg/status`` and the SBOM."""
    found = _read_rootfs(raw_tar)
    if not found.debs:
        raise ImageError(f"{raw_tar}: no downloaded packages found in mmdebstrap's output",
                         fix="delete the base layer cache directory and run again")
    _add_accounts(found.entries, found.masters)
    paragraphs = _package_paragraphs(found.status, found.debs)
    packages = _package_list(paragraphs)
    _add_package_records(found.entries, paragraphs, packages)
    return list(found.entries.values()), packages


def _read_rootfs(raw_tar: Path) -> _Unpacked:
    """Every member of mmdebstrap's tar as an entry, except the dropped ones (device nodes,
    apt's caches and lists, ``DROP_EXACT``); the ``.deb`` files, the dpkg status file and
    base-passwd's master files are set aside."""
    found = _Unpacked()
    with tarfile.open(raw_tar) as tf:
        for m in tf:
            path = oci.norm_path(m.name)
            if not path:
                continue
            if path.startswith("var/cache/apt/archives/") and path.endswith(".deb") \
                    and m.isfile():
                found.debs.append(tf.extractfile(m).read())
                continue
            if path == "var/lib/dpkg/status" and m.isfile():
                found.status = tf.extractfile(m).read().decode("utf-8", "replace")
                continue
            if path in DROP_EXACT or (path.startswith(DROP_PREFIXES) and path not in KEEP_DIRS):
                continue
            entry = _entry_of(tf, m, path)
            if entry is None:
                continue        # device nodes outside /dev are not expected; dropped as well
            if path in MASTER_FILES and entry.kind == oci.FILE:
                found.masters[path.rsplit("/", 1)[1]] = entry.data
            found.entries[path] = entry
    return found


def _entry_of(tf: tarfile.TarFile, m: tarfile.TarInfo, path: str) -> oci.Entry | None:
    """The layer entry of one tar member (None for a device node)."""
    if m.isfile():
        return oci.Entry(path, oci.FILE, m.mode, data=tf.extractfile(m).read(), mtime=m.mtime)
    if m.isdir():
        return oci.Entry(path, oci.DIR, m.mode, mtime=m.mtime)
    if m.issym():
        return oci.Entry(path, oci.SYMLINK, 0o777, linkname=m.linkname, mtime=m.mtime)
    if m.islnk():
        return oci.Entry(path, oci.HARDLINK, m.mode, linkname=oci.norm_path(m.linkname),
                         mtime=m.mtime)
    if m.isfifo():
        return oci.Entry(path, oci.FIFO, m.mode, mtime=m.mtime)
    return None


def _add_accounts(entries: dict[str, oci.Entry], masters: dict[str, bytes]) -> None:
    """``/etc/passwd`` and ``/etc/group`` from base-passwd's master files (root's shell is
    busybox's ``/bin/sh`` when the image has no bash)."""
    for name in ("passwd", "group"):
        key = f"{name}.master"
        if key not in masters:
            raise ImageError("base-passwd's master files are missing from the base layer",
                             fix="keep base-passwd in images/cmm/image.toml's packages")
        data = masters[key]
        if name == "passwd" and "bin/bash" not in entries:
            # base-passwd gives root /bin/bash; the image's shell is busybox's /bin/sh
            data = re.sub(rb"^(root:[^\n]*:)/bin/bash$", rb"\1/bin/sh", data, flags=re.M)
        entries[f"etc/{name}"] = oci.Entry(f"etc/{name}", oci.FILE, 0o644, data=data)


def _package_paragraphs(status: str, debs: list[bytes]) -> dict[str, dict[str, str]]:
    """Package name -> control fields: the unpacked status file, then every downloaded
    package's own control fields (they win)."""
    paragraphs: dict[str, dict[str, str]] = {}
    for para in status.split("\n\n"):
        if para.strip():
            f = _parse_paragraph(para)
            if "Package" in f:
                paragraphs[f["Package"]] = f
    for deb in debs:
        f = _parse_paragraph(_control_fields(deb))
        paragraphs[f["Package"]] = f
    return paragraphs


def _package_list(paragraphs: dict[str, dict[str, str]]) -> list[dict]:
    """``[{"name", "version", "architecture", "source"}]`` sorted by name."""
    packages = []
    for name in sorted(paragraphs):
        f = paragraphs[name]
        packages.append({"name": name, "version": f.get("Version", ""),
                         "architecture": f.get("Architecture", ""),
                         "source": f.get("Source", name).split(" ")[0] or name})
    return packages


def _add_package_records(entries: dict[str, oci.Entry], paragraphs: dict[str, dict[str, str]],
                         packages: list[dict]) -> None:
    """``var/lib/dpkg/status`` (every package installed) and
    ``usr/share/monok8s/base-packages.json`` (the same list as JSON)."""
    status = "\n".join(_status_paragraph(paragraphs[n]) for n in sorted(paragraphs))
    entries["var/lib/dpkg/status"] = oci.Entry("var/lib/dpkg/status", oci.FILE, 0o644,
                                               data=status.encode())
    sbom = {"generator": "askbuild", "format": "askbuild-packages/1", "distro": "debian",
            "packages": packages}
    entries["usr/share/monok8s/base-packages.json"] = oci.Entry(
        "usr/share/monok8s/base-packages.json", oci.FILE, 0o644,
        data=(json.dumps(sbom, indent=1, sort_keys=True) + "\n").encode())


def _index_and_elf(entries: list[oci.Entry]) -> tuple[dict[str, list], dict[str, dict]]:
    index: dict[str, list] = {}
    elf: dict[str, dict] = {}
    for e in entries:
        index[e.path] = [e.kind, e.linkname, e.mode]
        if e.kind == oci.FILE and e.data is not None and e.data[:4] == b"\x7fELF":
            facts = elf_facts(e.data)
            if facts is not None:
                elf[e.path] = facts
    return index, elf


def ensure_base(settings: Settings, spec: BaseSpec, *, epoch: int,
                compression: str = "gzip") -> BaseLayer:
    """The cached base layer for ``spec`` (made with mmdebstrap when not cached).  The cache
    entry is read and filled under its cache lock; a damaged entry is made again."""
    validate_packages(spec.packages, "base layer packages")
    key = cache_key(spec)
    root = settings.base_layer_cache / key
    with runlock.cache(settings, f"_image-base-{key}"):
        root.mkdir(parents=True, exist_ok=True)
        _clean_temps(root)
        meta, entries = _ensure_rootfs(settings, spec, root, key)
        layer = _ensure_blob(root, meta, entries, epoch, compression)
        # Used now: pruning (here or by another checkout) leaves it alone for a while.
        os.utime(layer.blob)
        _prune_blobs(root, keep=3, exclude=layer.blob)
    return BaseLayer(layer, meta["packages"], meta["index"], meta["elf"], key)


def _ensure_rootfs(settings: Settings, spec: BaseSpec, root: Path,
                   key: str) -> tuple[dict, list[oci.Entry] | None]:
    """``(meta, entries)`` of the cache entry ``root``: read when cached (entries None), else
    unpacked with mmdebstrap into ``rootfs.tar`` and normalised (``meta.json`` written last)."""
    raw = root / "rootfs.tar"
    meta_file = root / "meta.json"
    meta = read_json(meta_file) if raw.is_file() else None
    if meta is not None and all(k in meta for k in ("packages", "index", "elf", "spec")):
        return meta, None
    if settings.offline:
        raise OfflineError(
            "the base layer for this package set is not cached and --offline is set",
            fix="run once without --offline (needs the Debian mirror)")
    console.step(f"base layer: unpacking {len(set(spec.packages))} Debian arm64 "
                 "packages (mmdebstrap --variant=extract)")
    meta_file.unlink(missing_ok=True)
    tmp = oci.temp_path(raw)
    try:
        _run_mmdebstrap(spec, tmp, settings.log_file("image-base"))
        tmp.replace(raw)
    finally:
        tmp.unlink(missing_ok=True)
    entries, packages = _normalise(raw)
    index, elf = _index_and_elf(entries)
    meta = {"key": key, "spec": {"packages": sorted(set(spec.packages)),
                                 "suite": spec.suite, "sources": spec.apt_lines(),
                                 "snapshot": spec.snapshot},
            "packages": packages, "index": index, "elf": elf}
    write_bytes_atomic(meta_file, json.dumps(meta, sort_keys=True).encode())
    return meta, entries


def _ensure_blob(root: Path, meta: dict, entries: list[oci.Entry] | None, epoch: int,
                 compression: str) -> oci.Layer:
    """The normalised layer blob for ``epoch`` and ``compression`` (its ``.json`` written
    after the blob, so a blob without one is made again)."""
    suffix = ".tar.gz" if compression == "gzip" else ".tar"
    blob = root / f"layer-{epoch}-{compression}{suffix}"
    layer_meta = blob.with_name(blob.name + ".json")
    data = read_json(layer_meta) if blob.is_file() else None
    if data is not None:
        try:
            layer = oci.Layer.from_json({**data, "blob": str(blob)})  # the cache may move
        except (KeyError, TypeError):
            layer = None
        if layer is not None and blob.stat().st_size == layer.size:
            return layer
    if entries is None:
        entries, _ = _normalise(root / "rootfs.tar")
    layer = oci.write_layer(entries, blob, epoch=epoch, compression=compression,
                            comment=_comment(meta))
    write_bytes_atomic(layer_meta, json.dumps(layer.to_json(), sort_keys=True).encode())
    return layer


def _clean_temps(root: Path) -> None:
    """Temporary files of killed runs in a cache entry (called under its lock, so no writer
    is active): every ``*.part*`` and ``.*.tmp`` file."""
    for p in root.iterdir():
        if p.is_file() and (".part" in p.name or (p.name.startswith(".")
                                                  and p.name.endswith(".tmp"))):
            p.unlink(missing_ok=True)


def _prune_blobs(root: Path, keep: int, exclude: Path) -> None:
    """Keep the ``keep`` newest normalised blobs (one per SOURCE_DATE_EPOCH and compression),
    and every blob used in the last :data:`PRUNE_AFTER` seconds (another run may be copying
    it into its archive right now, outside the lock)."""
    blobs = sorted((p for p in root.glob("layer-*") if not p.name.endswith(".json")
                    and ".part" not in p.name and p != exclude),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    for old in blobs[max(0, keep - 1):]:
        if time.time() - old.stat().st_mtime < PRUNE_AFTER:
            continue
        old.with_name(old.name + ".json").unlink(missing_ok=True)
        old.unlink(missing_ok=True)


def _comment(meta: dict) -> str:
    return ("base: Debian " + meta["spec"]["suite"] + " arm64 packages unpacked without "
            "maintainer scripts: " + " ".join(sorted(meta["spec"]["packages"])))


def prune(settings: Settings, keep: int = 3) -> None:
    """Keep only the ``keep`` most recently used base layer cache entries."""
    base = settings.base_layer_cache
    if not base.is_dir():
        return
    dirs = sorted((d for d in base.iterdir() if d.is_dir()),
                  key=lambda d: d.stat().st_mtime, reverse=True)
    for d in dirs[keep:]:
        with runlock.cache(settings, f"_image-base-{d.name}"):
            shutil.rmtree(d, ignore_errors=True)
