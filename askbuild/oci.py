"""A deterministic image writer: layer tars and one archive that is both a docker-archive and
an OCI image layout.

Nothing here asks a container engine for anything: the bytes are produced by this module, so the
same inputs always give the same archive (and so the same image id, which engines take from the
config digest).  Rules applied to every tar written here:

* entries sorted by path, every parent directory present (synthesised 0755 when missing);
* owners ``0:0`` with empty user/group names; mtimes clamped to ``SOURCE_DATE_EPOCH``;
* PAX format only where ustar cannot hold a field (long names), no access/change times;
* gzip with a zero timestamp and no file name in the header, or no compression.

The archive holds, sorted: ``blobs/sha256/<layers, config, manifest>``, ``<config-hex>.json``,
``index.json`` (with ``io.containerd.image.name`` and ``org.opencontainers.image.ref.name``
annotations), ``manifest.json`` (docker-archive, ``RepoTags``), ``oci-layout`` and
``repositories``.  ``docker load``, ``podman load`` and ``ctr images import`` accept it.

Every file is written under a temporary name unique to the writing process
(``.<name>.<pid>.<random>.part``), flushed to disk and renamed into place, so a reader sees the
old file or the complete new one; :func:`clean_partials` removes what killed writers left.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import posixpath
import re
import secrets
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import procs
from .errors import ImageError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
LAYER_TYPES = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
               "none": "application/vnd.oci.image.layer.v1.tar"}
CHUNK = 1 << 20
#: ``.<name>.<pid>.<8 hex>.part`` (this module) and ``.<name>.<pid>.<thread>.tmp``
#: (:func:`askbuild.fsutil.write_bytes_atomic`).
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?:[0-9a-f]{8}\.part|\d+\.tmp)$")


def temp_path(dest: Path) -> Path:
    """A temporary name beside ``dest``, unique to this process and call."""
    return dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.part")




def clean_partials(directory: Path, names: Iterable[str] = ()) -> list[Path]:
    """Delete, in ``directory``, the temporary files of writers that are gone (killed runs):
    ``.<name>.<pid>.*`` temporaries whose process no longer exists and the fixed
    ``<name>.part`` of each of ``names`` (older versions' temporary names).  Returns them."""
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        m = _TEMP_RE.match(p.name)
        stale = (m is not None and not procs.pid_alive(int(m.group("pid")))) or \
            any(p.name == f"{n}.part" for n in names)
        if stale and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _about(e: OSError, dest: Path) -> OSError:
    """A write error without a file name (a full disk while writing) names ``dest``."""
    if e.filename is None and e.errno is not None:
        return type(e)(e.errno, e.strerror, str(dest))
    return e


def _finish(tmp: Path, f, dest: Path) -> None:
    """Flush ``f`` (open on ``tmp``) to disk and rename ``tmp`` to ``dest``."""
    f.flush()
    os.fsync(f.fileno())
    tmp.replace(dest)

FILE, DIR, SYMLINK, HARDLINK, CHAR, BLOCK, FIFO = (
    "file", "dir", "symlink", "hardlink", "char", "block", "fifo")
_TAR_TYPES = {FILE: tarfile.REGTYPE, DIR: tarfile.DIRTYPE, SYMLINK: tarfile.SYMTYPE,
              HARDLINK: tarfile.LNKTYPE, CHAR: tarfile.CHRTYPE, BLOCK: tarfile.BLKTYPE,
              FIFO: tarfile.FIFOTYPE}


@dataclass
class Entry:
    """One file system object of a layer.  ``path`` is relative, posix, no leading ``./``.

    File content is either ``data`` (bytes) or ``source`` (a host file read when writing).
    """

    path: str
    kind: str = FILE
    mode: int = 0o644
    data: bytes | None = None
    source: Path | None = None
    linkname: str = ""
    mtime: int = 0
    devmajor: int = 0
    devminor: int = 0

    def size(self) -> int:
        if self.kind != FILE:
            return 0
        if self.data is not None:
            return len(self.data)
        if self.source is not None:
            return self.source.stat().st_size
        return 0


def norm_path(path: str) -> str:
    """``./usr//bin/`` -> ``usr/bin``; refuses ``..`` and empty names."""
    if any(part == ".." for part in path.split("/")):
        raise ImageError(f"refusing path with '..' in an image layer: {path!r}")
    p = posixpath.normpath("/" + path.strip()).lstrip("/")
    return "" if p in ("", ".") else p


def entry_from_host(path: str, host: Path) -> Entry:
    """An entry describing a host file / dir / symlink (content read lazily)."""
    st = host.lstat()
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return Entry(path, SYMLINK, 0o777, linkname=os.readlink(host), mtime=int(st.st_mtime))
    if stat.S_ISDIR(st.st_mode):
        return Entry(path, DIR, mode, mtime=int(st.st_mtime))
    if stat.S_ISREG(st.st_mode):
        return Entry(path, FILE, mode, source=host, mtime=int(st.st_mtime))
    raise ImageError(f"{host}: only regular files, directories and symlinks can go into the "
                     "image from a host tree", fix="remove the special file from the tree")


def entries_from_tree(root: Path, prefix: str = "") -> list[Entry]:
    """Every object under ``root`` (not ``root`` itself), paths relative to it."""
    out: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        d = Path(dirpath)
        for name in sorted(dirnames + filenames):
            host = d / name
            rel = host.relative_to(root).as_posix()
            out.append(entry_from_host(norm_path(posixpath.join(prefix, rel)), host))
    return out


def complete_parents(entries: dict[str, Entry], mtime: int) -> None:
    """Add a 0755 directory entry for every missing parent directory."""
    for path in list(entries):
        parent = posixpath.dirname(path)
        while parent and parent not in entries:
            entries[parent] = Entry(parent, DIR, 0o755, mtime=mtime)
            parent = posixpath.dirname(parent)


def _tarinfo(e: Entry, epoch: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(e.path)
    ti.type = _TAR_TYPES[e.kind]
    ti.mode = e.mode & 0o7777
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mtime = min(int(e.mtime), epoch) if e.mtime >= 0 else epoch
    if e.kind in (SYMLINK, HARDLINK):
        ti.linkname = e.linkname
    if e.kind in (CHAR, BLOCK):
        ti.devmajor, ti.devminor = e.devmajor, e.devminor
    ti.size = e.size()
    return ti


class _HashWriter(io.RawIOBase):
    """A write-only file that hashes and counts what passes through to ``target``."""

    def __init__(self, target) -> None:
        self.target = target
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        self.target.write(b)
        return len(b)


@dataclass
class Layer:
    """A written layer: the blob (compressed or not) and its identities."""

    blob: Path
    digest: str            # sha256:<hex> of the blob
    size: int              # blob size
    diff_id: str           # sha256:<hex> of the uncompressed tar
    media_type: str
    comment: str = ""
    paths: list[str] = field(default_factory=list, repr=False)

    def to_json(self) -> dict:
        return {"blob": str(self.blob), "digest": self.digest, "size": self.size,
                "diff_id": self.diff_id, "media_type": self.media_type,
                "comment": self.comment}

    @classmethod
    def from_json(cls, data: dict) -> Layer:
        return cls(Path(data["blob"]), data["digest"], data["size"], data["diff_id"],
                   data["media_type"], data.get("comment", ""))


def _link_hardlinks(ordered: list[Entry]) -> list[Entry]:
    """Hardlinks must follow their target in the tar: the first path (in sorted order) of a
    hardlinked group holds the data, the others link to it."""
    by_path = {e.path: e for e in ordered}
    root_of: dict[str, str] = {}
    for e in ordered:
        if e.kind != HARDLINK:
            continue
        root, seen = e.linkname, {e.path}
        while root in by_path and by_path[root].kind == HARDLINK and root not in seen:
            seen.add(root)
            root = by_path[root].linkname
        if root not in by_path or by_path[root].kind != FILE:
            raise ImageError(f"hardlink {e.path} points at {e.linkname}, which is not a "
                             "regular file in the layer")
        root_of[e.path] = root
        root_of[root] = root
    if not root_of:
        return ordered
    first: dict[str, str] = {}
    for p in sorted(root_of):
        first.setdefault(root_of[p], p)
    out = []
    for e in ordered:
        if e.path not in root_of:
            out.append(e)
            continue
        src = by_path[root_of[e.path]]
        head = first[root_of[e.path]]
        if e.path == head:
            out.append(Entry(e.path, FILE, src.mode, data=src.data, source=src.source,
                             mtime=src.mtime))
        else:
            out.append(Entry(e.path, HARDLINK, src.mode, linkname=head, mtime=src.mtime))
    return out


def write_layer(entries: Iterable[Entry], dest: Path, *, epoch: int,
                compression: str = "gzip", level: int = 6, comment: str = "") -> Layer:
    """Write ``entries`` as one deterministic layer blob at ``dest``.

    Returns its digest (of the blob), diff id (of the tar) and size.
    """
    if compression not in LAYER_TYPES:
        raise ImageError(f"unknown layer compression {compression!r}",
                         fix=f"use one of: {', '.join(LAYER_TYPES)}")
    table: dict[str, Entry] = {}
    for e in entries:
        p = norm_path(e.path)
        if not p:
            continue
        e.path = p
        table[p] = e
    complete_parents(table, epoch)
    ordered = _link_hardlinks([table[p] for p in sorted(table)])
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dest)
    try:
        with open(tmp, "wb") as raw:
            blob_hw, tar_hw = _write_layer_tar(ordered, raw, epoch, compression, level)
            _finish(tmp, raw, dest)
    except OSError as e:
        raise _about(e, dest) from e
    finally:
        tmp.unlink(missing_ok=True)
    return Layer(dest, "sha256:" + blob_hw.sha.hexdigest(), blob_hw.size,
                 "sha256:" + tar_hw.sha.hexdigest(), LAYER_TYPES[compression], comment,
                 paths=[e.path for e in ordered])


def _write_layer_tar(ordered: list[Entry], raw, epoch: int, compression: str,
                     level: int) -> tuple[_HashWriter, _HashWriter]:
    """The layer tar of ``ordered`` into the open file ``raw``: (blob, tar) hash writers."""
    blob_hw = _HashWriter(raw)
    gz = (gzip.GzipFile(filename="", mode="wb", fileobj=blob_hw, compresslevel=level,
                        mtime=0) if compression == "gzip" else None)
    tar_hw = _HashWriter(gz if gz is not None else blob_hw)
    with tarfile.open(fileobj=tar_hw, mode="w|", format=tarfile.PAX_FORMAT,
                      encoding="utf-8") as tf:
        for e in ordered:
            ti = _tarinfo(e, epoch)
            if e.kind == FILE:
                if e.data is not None:
                    tf.addfile(ti, io.BytesIO(e.data))
                elif e.source is not None:
                    with open(e.source, "rb") as f:
                        tf.addfile(ti, f)
                else:
                    tf.addfile(ti, io.BytesIO(b""))
            else:
                tf.addfile(ti)
    if gz is not None:
        gz.close()
    return blob_hw, tar_hw


def _json_bytes(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class ImageArchive:
    path: Path
    sha256: str           # of the archive file
    image_id: str         # sha256:<config digest> (what engines report as the image id)
    manifest_digest: str
    config: dict
    layers: list[Layer]
    ref: str


def image_config(layers: list[Layer], *, created: str, entrypoint: list[str],
                 cmd: list[str] | None = None, env: list[str] | None = None,
                 labels: dict[str, str] | None = None, workdir: str = "/",
                 architecture: str = "arm64", variant: str | None = "v8",
                 os_name: str = "linux", stop_signal: str = "SIGTERM") -> dict:
    cfg: dict = {
        "architecture": architecture,
        "os": os_name,
        "created": created,
        "config": {
            "Entrypoint": entrypoint,
            "Cmd": cmd or None,
            "Env": env or [],
            "Labels": dict(sorted((labels or {}).items())),
            "WorkingDir": workdir,
            "StopSignal": stop_signal,
        },
        "rootfs": {"type": "layers", "diff_ids": [la.diff_id for la in layers]},
        "history": [{"created": created, "created_by": "askbuild",
                     "comment": la.comment or "layer"} for la in layers],
    }
    if cfg["config"]["Cmd"] is None:
        del cfg["config"]["Cmd"]
    if variant:
        cfg["variant"] = variant
    return cfg


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes, epoch: int) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = 0o644
    ti.mtime = epoch
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    tf.addfile(ti, io.BytesIO(data))


def _add_dir(tf: tarfile.TarFile, name: str, epoch: int) -> None:
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE
    ti.mode = 0o755
    ti.mtime = epoch
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    tf.addfile(ti)


def _add_file(tf: tarfile.TarFile, name: str, src: Path, epoch: int) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = src.stat().st_size
    ti.mode = 0o644
    ti.mtime = epoch
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    with open(src, "rb") as f:
        tf.addfile(ti, f)


def write_archive(dest: Path, layers: list[Layer], config: dict, *, ref: str,
                  epoch: int, annotations: dict[str, str] | None = None) -> ImageArchive:
    """Write the docker-archive + OCI layout tar for one image ``ref`` (``repo:tag``).

    Phases: the OCI manifest of the config and layers, the small metadata files of both
    layouts (:func:`_layout_files`), then the tar itself (:func:`_write_archive_tar`)."""
    repo, _, tag = ref.rpartition(":")
    if not repo or not tag or "/" in tag:
        raise ImageError(f"image reference {ref!r} must be REPOSITORY:TAG")
    config_bytes = _json_bytes(config)
    config_digest = _digest(config_bytes)
    manifest_bytes = _json_bytes(_oci_manifest(config_digest, len(config_bytes), layers,
                                               annotations))
    manifest_digest = _digest(manifest_bytes)
    small = _layout_files(config, config_bytes, manifest_bytes, layers, ref)
    big: dict[str, Path] = {}
    for la in layers:
        big.setdefault(_blob_name(la.digest), la.blob)
    sha = _write_archive_tar(dest, small, big, epoch)
    return ImageArchive(dest, sha, config_digest, manifest_digest, config, layers, ref)


def _blob_name(digest: str) -> str:
    """``sha256:<hex>`` -> ``blobs/sha256/<hex>`` (the OCI layout's path of a blob)."""
    return f"blobs/sha256/{digest.split(':', 1)[1]}"


def _oci_manifest(config_digest: str, config_size: int, layers: list[Layer],
                  annotations: dict[str, str] | None) -> dict:
    """The OCI image manifest: the config and the layers by digest."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": la.media_type, "digest": la.digest, "size": la.size}
                   for la in layers],
    }
    if annotations:
        manifest["annotations"] = dict(sorted(annotations.items()))
    return manifest


def _layout_files(config: dict, config_bytes: bytes, manifest_bytes: bytes,
                  layers: list[Layer], ref: str) -> dict[str, bytes]:
    """Archive name -> bytes of every small file: the OCI layout (``oci-layout``,
    ``index.json``, the config and manifest blobs) and the docker-archive (``manifest.json``,
    ``repositories``, ``<config>.json``)."""
    repo, _, tag = ref.rpartition(":")
    config_digest = _digest(config_bytes)
    manifest_digest = _digest(manifest_bytes)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": len(manifest_bytes),
            "platform": {"architecture": config["architecture"], "os": config["os"],
                         **({"variant": config["variant"]} if config.get("variant") else {})},
            "annotations": {"io.containerd.image.name": ref,
                            "org.opencontainers.image.ref.name": tag},
        }],
    }
    config_hex = config_digest.split(":", 1)[1]
    docker_manifest = [{
        "Config": f"{config_hex}.json",
        "RepoTags": [ref],
        "Layers": [_blob_name(la.digest) for la in layers],
    }]
    repositories = {repo: {tag: layers[-1].diff_id.split(":", 1)[1] if layers else config_hex}}
    return {
        _blob_name(config_digest): config_bytes,
        _blob_name(manifest_digest): manifest_bytes,
        f"{config_hex}.json": config_bytes,
        "index.json": _json_bytes(index),
        "manifest.json": _json_bytes(docker_manifest),
        "oci-layout": _json_bytes({"imageLayoutVersion": "1.0.0"}),
        "repositories": _json_bytes(repositories),
    }


def _write_archive_tar(dest: Path, small: dict[str, bytes], big: dict[str, Path],
                       epoch: int) -> str:
    """The archive tar at ``dest`` (written under a temporary name, then renamed): the
    ``blobs`` directories, the ``small`` files and the ``big`` layer blobs, in name order.
    Returns its sha256."""
    names = sorted(set(small) | set(big) | {"blobs", "blobs/sha256"})
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dest)
    try:
        with open(tmp, "wb") as raw:
            hw = _HashWriter(raw)
            with tarfile.open(fileobj=hw, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                for name in names:
                    if name in ("blobs", "blobs/sha256"):
                        _add_dir(tf, name, epoch)
                    elif name in small:
                        _add_bytes(tf, name, small[name], epoch)
                    else:
                        _add_file(tf, name, big[name], epoch)
            _finish(tmp, raw, dest)
    except OSError as e:
        raise _about(e, dest) from e
    finally:
        tmp.unlink(missing_ok=True)
    return hw.sha.hexdigest()


def read_archive_index(path: Path) -> dict:
    """The docker ``manifest.json``, OCI ``index.json`` and config of an archive (tests, tools)."""
    with tarfile.open(path) as tf:
        def load(name: str):
            f = tf.extractfile(name)
            if f is None:
                raise ImageError(f"{path}: {name} missing")
            return json.loads(f.read())
        docker_manifest = load("manifest.json")
        index = load("index.json")
        config = load(docker_manifest[0]["Config"])
        oci_manifest = load("blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1])
    return {"manifest.json": docker_manifest, "index.json": index, "config": config,
            "oci_manifest": oci_manifest}
