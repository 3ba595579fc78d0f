"""The shared build cache: a component's outputs as an OCI artifact in a registry, addressed by
its content key (``settings.cache_remote`` = ``oci://HOST[:PORT]/REPO``; docs/fleet.md).

One artifact per (component, key), tagged :func:`tag_for` (``<component>-s<schema>-<key>``):

* the manifest (``artifactType`` :data:`ARTIFACT_TYPE`, annotations naming the component, the
  key and the askbuild version) references
* a config blob (:data:`CONFIG_TYPE`: the same facts, plus the files the layer holds) and
* one layer (:data:`LAYER_TYPE`): a deterministic gzip tar (:mod:`askbuild.oci`) of the
  component's outputs: ``out/...`` (relative to ``settings.out_tree(c)``: its artifacts, its
  ``install`` tree, and for a kernel the parts of its build tree that modules are built
  against, :data:`KERNEL_PARTS`) and ``sysroot/...`` (what it installed into the shared sysroot
  while it ran, and its artifacts there).

Outputs are made relocatable on the way out: in text files (no NUL byte) and symlink targets
the work directory and the project root become :data:`WORK_MARK` / :data:`PROJECT_MARK`, and on
the way in the taking machine's own paths (what its local build would have written: a
``.pc`` file's prefix, the kernel build tree's ``Makefile``).

Taking an artifact (:meth:`RemoteCache.take`): skopeo copies it into a scratch OCI layout; the
manifest, config and layer are checked against their digests here (skopeo checks blobs too),
the config must name this component and key; a mismatch is refused with a warning naming the
component, the key and the remote, and the component is built locally.  An unreachable remote
(or refused credentials) is one warning for the run; everything is then built locally.  An
upload failure is a warning: the local build stands.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import secrets
import shutil
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .. import __version__, console, oci, procs
from ..errors import AskbuildError
from ..registry import Client, RegistryError, digest_of, parse_cache_remote
from ..settings import Settings

SCHEMA = 1
ARTIFACT_TYPE = "application/vnd.askbuild.build.v1"
CONFIG_TYPE = "application/vnd.askbuild.build.config.v1+json"
LAYER_TYPE = "application/vnd.askbuild.build.layer.v1.tar+gzip"
ANNOTATION = "io.askbuild"
WORK_MARK = "@@ASKBUILD_WORK_DIR@@"
PROJECT_MARK = "@@ASKBUILD_PROJECT_ROOT@@"
#: What external modules are built against in a kernel's build tree (O=): the configuration,
#: the generated headers, the built host tools, the symbol versions (cf. the kernel's
#: scripts/package/install-extmod-build).
KERNEL_PARTS = (".config", "Makefile", "Module.symvers", "System.map", "source", "include",
                "arch/arm64/include", "scripts")
_SKIP_SUFFIXES = (".o", ".cmd", ".d", ".tmp")
#: Files larger than this are never searched for paths (an Image, a big library).
_TEXT_MAX = 16 << 20
EPOCH = 0


class Unusable(Exception):
    """An artifact that cannot be used (the reason is the message)."""


def tag_for(name: str, key: str) -> str:
    """The tag of component ``name``'s artifact for ``key`` (within the OCI tag grammar)."""
    tag = f"{name}-s{SCHEMA}-{key}"
    if len(tag) > 128:
        tag = f"c{hashlib.sha256(name.encode()).hexdigest()[:16]}-s{SCHEMA}-{key}"
    return tag[:128]


# -- relocation -------------------------------------------------------------------------------

def _marks(settings: Settings) -> list[tuple[bytes, bytes]]:
    """(this machine's path, its mark), the longest path first."""
    pairs = [(str(settings.work_dir).encode(), WORK_MARK.encode()),
             (str(settings.project_root).encode(), PROJECT_MARK.encode())]
    return sorted(pairs, key=lambda p: -len(p[0]))


def relocatable(settings: Settings, data: bytes) -> bytes:
    """``data`` with this machine's paths replaced by their marks (text only)."""
    return _swap(settings, data, to_marks=True)


def localised(settings: Settings, data: bytes) -> bytes:
    """``data`` with the marks replaced by this machine's paths (text only)."""
    return _swap(settings, data, to_marks=False)


def _swap(settings: Settings, data: bytes, *, to_marks: bool) -> bytes:
    if b"\0" in data:                  # binary: left as it is
        return data
    for path, mark in _marks(settings):
        data = data.replace(path, mark) if to_marks else data.replace(mark, path)
    return data


# -- what a component's artifact holds --------------------------------------------------------

def sysroot_snapshot(settings: Settings) -> dict[str, tuple[int, int, int]]:
    """{path relative to the sysroot: (size, mtime_ns, inode)} of every file and link in it."""
    root = settings.sysroot_dir
    out: dict[str, tuple[int, int, int]] = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with contextlib.suppress(OSError):
                st = os.lstat(p)
                out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def sysroot_changes(settings: Settings, before: dict) -> list[str]:
    """The sysroot files created or rewritten since ``before`` (:func:`sysroot_snapshot`)."""
    after = sysroot_snapshot(settings)
    return sorted(p for p, sig in after.items() if before.get(p) != sig)


def _under(path: Path, root: Path) -> str | None:
    """``path`` relative to ``root`` (posix), or None when it is not inside."""
    try:
        rel = Path(os.path.normpath(path)).relative_to(os.path.normpath(root))
    except ValueError:
        return None
    return rel.as_posix() if rel.parts else None


def _walk(root: Path, *, kernel: bool) -> list[Path]:
    """Every file and link under ``root`` (``root`` itself when it is one); in a kernel build
    tree without objects, dependency and command files."""
    if root.is_symlink() or root.is_file():
        return [root]
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for n in sorted(files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]):
            if kernel and (n.endswith(_SKIP_SUFFIXES) or n.startswith(".")):
                continue
            out.append(Path(dirpath) / n)
    return out


def output_files(settings: Settings, rec: dict, *, kernel_build: Path | None,
                 install: Path) -> dict[str, Path]:
    """{layer path: file} of a component's outputs (its done record ``rec``); raises
    :class:`Unusable` when an artifact lies outside its output tree and the sysroot."""
    out = settings.out_tree(rec["component"])
    files: dict[str, Path] = {}
    for a in rec.get("artifacts", []):
        p = Path(a["file"])
        rel = _under(p, out)
        srel = _under(p, settings.sysroot_dir)
        if rel is not None:
            files[f"out/{rel}"] = p
        elif srel is not None:
            files[f"sysroot/{srel}"] = p
        else:
            raise Unusable(f"artifact {a['path']} ({p}) is outside {out} and the sysroot")
    for rel in rec.get("sysroot_files", []):
        p = settings.sysroot_dir / rel
        if p.is_file() or p.is_symlink():
            files[f"sysroot/{rel}"] = p
    roots = [(install, False)] + [(kernel_build / part, True) for part in KERNEL_PARTS
                                  if kernel_build is not None]
    for root, kernel in roots:
        if not (root.exists() or root.is_symlink()):
            continue
        for p in _walk(root, kernel=kernel):
            rel = _under(p, out)
            if rel is not None:
                files.setdefault(f"out/{rel}", p)
    return files


def layer_entries(settings: Settings, files: dict[str, Path]) -> list[oci.Entry]:
    """The layer entries of ``files``, relocated (:func:`relocatable`)."""
    entries = []
    for path, host in sorted(files.items()):
        st = host.lstat()
        if host.is_symlink():
            target = relocatable(settings, os.readlink(host).encode()).decode()
            entries.append(oci.Entry(path, oci.SYMLINK, 0o777, linkname=target))
        elif st.st_size <= _TEXT_MAX:
            data = relocatable(settings, host.read_bytes())
            entries.append(oci.Entry(path, oci.FILE, st.st_mode & 0o777, data=data))
        else:
            entries.append(oci.Entry(path, oci.FILE, st.st_mode & 0o777, source=host))
    return entries


# -- the OCI layout ----------------------------------------------------------------------------

def _blob(layout: Path, data: bytes) -> tuple[str, int]:
    d = digest_of(data)
    (layout / "blobs/sha256" / d.split(":")[1]).write_bytes(data)
    return d, len(data)


def _json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def write_layout(layout: Path, *, name: str, key: str, tag: str,
                 entries: list[oci.Entry]) -> str:
    """An OCI layout at ``layout`` holding the artifact of ``name``/``key`` under ``tag``.
    Returns its manifest digest."""
    (layout / "blobs/sha256").mkdir(parents=True)
    layer = oci.write_layer(entries, layout / "layer.tmp", epoch=EPOCH, compression="gzip")
    hexd = layer.digest.split(":")[1]
    (layout / "layer.tmp").rename(layout / "blobs/sha256" / hexd)
    facts = {"schema": SCHEMA, "component": name, "key": key, "askbuild": __version__}
    config = {**facts, "files": layer.paths}
    cd, cs = _blob(layout, _json(config))
    annotations = {f"{ANNOTATION}.{k}": str(v) for k, v in facts.items()}
    manifest = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
                "config": {"mediaType": CONFIG_TYPE, "digest": cd, "size": cs},
                "layers": [{"mediaType": LAYER_TYPE, "digest": layer.digest,
                            "size": layer.size}],
                "annotations": annotations}
    md, ms = _blob(layout, _json(manifest))
    index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX,
             "manifests": [{"mediaType": oci.OCI_MANIFEST, "digest": md, "size": ms,
                            "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (layout / "index.json").write_bytes(_json(index))
    (layout / "oci-layout").write_bytes(_json({"imageLayoutVersion": "1.0.0"}))
    return md


def _read_blob(layout: Path, desc: dict, what: str) -> bytes:
    """A blob of the pulled layout, checked against its descriptor's digest and size."""
    digest = desc.get("digest", "")
    if not isinstance(digest, str) or not digest.startswith("sha256:") or "/" in digest:
        raise Unusable(f"the {what} descriptor names no sha256 digest")
    path = layout / "blobs/sha256" / digest.split(":", 1)[1]
    try:
        data = path.read_bytes()
    except OSError:
        raise Unusable(f"the {what} blob {digest} is missing") from None
    if digest_of(data) != digest or len(data) != desc.get("size", len(data)):
        raise Unusable(f"the {what} blob does not match its digest {digest} "
                       f"(got {digest_of(data)})")
    return data


@dataclass
class Pulled:
    """A verified artifact in a scratch layout."""

    location: str        # oci://HOST/REPO:TAG
    digest: str          # the manifest digest
    config: dict
    layer: bytes         # the gzip tar


def verify_layout(layout: Path, *, name: str, key: str) -> tuple[str, dict, bytes]:
    """(manifest digest, config, layer bytes) of the pulled layout, every blob checked against
    its digest and the config naming ``name`` and ``key``; :class:`Unusable` otherwise."""
    try:
        index = json.loads((layout / "index.json").read_text())
        mdesc = index["manifests"][0]
        manifest = json.loads(_read_blob(layout, mdesc, "manifest"))
        config = json.loads(_read_blob(layout, manifest["config"], "config"))
        layers = manifest["layers"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise Unusable(f"not an askbuild cache artifact ({type(e).__name__}: {e})") from None
    if manifest.get("artifactType") != ARTIFACT_TYPE or len(layers) != 1 \
            or layers[0].get("mediaType") != LAYER_TYPE:
        raise Unusable("not an askbuild cache artifact (another artifact type or layout)")
    if config.get("schema") != SCHEMA or config.get("component") != name \
            or config.get("key") != key:
        raise Unusable(f"its config names component {config.get('component')!r} key "
                       f"{config.get('key')!r} (schema {config.get('schema')!r})")
    return mdesc["digest"], config, _read_blob(layout, layers[0], "layer")


# -- unpacking --------------------------------------------------------------------------------

def _target(settings: Settings, out: Path, name: str) -> Path:
    """Where layer path ``name`` goes: under ``out`` (``out/...``) or the sysroot."""
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or len(pure.parts) < 2 \
            or pure.parts[0] not in ("out", "sysroot"):
        raise Unusable(f"layer member {name!r} is outside out/ and sysroot/")
    root = out if pure.parts[0] == "out" else settings.sysroot_dir
    dest = root.joinpath(*pure.parts[1:])
    real_parent = dest.parent.resolve()
    if real_parent != root.resolve() and root.resolve() not in real_parent.parents:
        raise Unusable(f"layer member {name!r} leads out of {root} through a symlink")
    return dest


def unpack(settings: Settings, layer: bytes, out: Path) -> list[str]:
    """Write the layer's files under ``out`` and the sysroot, with this machine's paths
    (:func:`localised`).  Returns the sysroot files it wrote (relative)."""
    sysroot_files = []
    with tarfile.open(fileobj=gzip.GzipFile(fileobj=_bytes_io(layer)), mode="r|") as tf:
        for m in tf:
            if m.isdir():
                _target(settings, out, m.name.rstrip("/") + "/x").parent.mkdir(
                    parents=True, exist_ok=True)
                continue
            dest = _target(settings, out, m.name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_symlink() or dest.is_file():
                dest.unlink()
            if m.issym():
                os.symlink(localised(settings, m.linkname.encode()).decode(), dest)
            elif m.isfile():
                f = tf.extractfile(m)
                data = f.read() if f else b""
                tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
                tmp.write_bytes(localised(settings, data) if m.size <= _TEXT_MAX else data)
                os.chmod(tmp, m.mode & 0o777)
                tmp.replace(dest)
            else:
                raise Unusable(f"layer member {m.name!r} is not a file, directory or link")
            if m.name.startswith("sysroot/"):
                sysroot_files.append(m.name[len("sysroot/"):])
    return sorted(sysroot_files)


def _bytes_io(data: bytes):
    import io
    return io.BytesIO(data)


# -- the remote --------------------------------------------------------------------------------

@dataclass
class Layout:
    """The OCI layout of one artifact (``tag``, at ``location`` in the remote) in a scratch
    directory of its own (``<out>/.remote-<pid>-<random>``, removed by :meth:`discard`; one a
    killed run left is removed by the next run's :meth:`RemoteCache._scratch`): what
    :meth:`RemoteCache.download` fills, what :meth:`RemoteCache.put` writes and uploads."""

    tag: str
    location: str        # oci://HOST/REPO:TAG
    scratch: Path

    @property
    def layout(self) -> Path:
        return self.scratch / "l"

    def discard(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


def _refuse(name: str, key: str, location: str, why: str) -> None:
    console.warn(f"refusing the shared build cache's artifact of {name} (key {key}) "
                 f"at {location}: {why}; building {name} locally")


class RemoteCache:
    """``settings.cache_remote`` for one build: lookups, uploads, and the one warning when it
    cannot be reached (then it is not asked again in this run)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.repo = parse_cache_remote(settings.cache_remote)
        self.client = Client(settings, self.repo.host)
        self.down: str | None = None
        self.lock = threading.Lock()

    def location(self, tag: str) -> str:
        return f"oci://{self.repo.with_tag(tag)}"

    def _scratch(self) -> Path:
        """A new scratch directory for one OCI layout (removed by the caller)."""
        base = self.settings.out_dir
        base.mkdir(parents=True, exist_ok=True)
        for old in base.glob(".remote-*"):      # left by killed runs
            pid = old.name.split("-")[1] if old.name.count("-") >= 2 else ""
            if pid.isdigit() and not procs.pid_alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        d = base / f".remote-{os.getpid()}-{secrets.token_hex(4)}"
        d.mkdir()
        return d

    def _unreachable(self, e: RegistryError) -> None:
        with self.lock:
            if self.down is None:
                self.down = e.message
                console.warn(f"shared build cache {self.settings.cache_remote} not used: "
                             f"{e.message}; building locally"
                             + (f" (fix: {e.fix})" if e.fix else ""))

    def _layout(self, name: str, key: str) -> Layout:
        """A new scratch layout for ``name``/``key`` (the caller discards it)."""
        tag = tag_for(name, key)
        return Layout(tag, self.location(tag), self._scratch())

    def take(self, name: str, key: str) -> Pulled | None:
        """The verified artifact of ``name``/``key``, or None (absent, refused with a
        warning, or the remote is down)."""
        return self.verify(self.download(name, key), name, key)

    def download(self, name: str, key: str) -> Layout | None:
        """The artifact of ``name``/``key`` copied into a new scratch layout (not verified
        yet: :meth:`verify`, which removes the scratch), or None: absent, refused with a
        warning (a blob skopeo found tampered), or the remote is down."""
        if self.down is not None:
            return None
        done = self._layout(name, key)
        try:
            self.client.copy(self.repo.with_tag(done.tag).docker(),
                             f"oci:{done.layout}:{done.tag}",
                             what=f"take {name} from {done.location}", src_remote=True)
        except RegistryError as e:
            done.discard()
            if e.kind == "tampered":
                _refuse(name, key, done.location, e.message)
            elif e.kind != "absent":
                self._unreachable(e)
            return None
        except BaseException:
            done.discard()
            raise
        return done

    def verify(self, done: Layout | None, name: str, key: str) -> Pulled | None:
        """The artifact :meth:`download` put in ``done``, checked (:func:`verify_layout`),
        or None (refused with a warning); the scratch is removed either way."""
        if done is None:
            return None
        try:
            digest, config, layer = verify_layout(done.layout, name=name, key=key)
            return Pulled(done.location, digest, config, layer)
        except Unusable as e:
            _refuse(name, key, done.location, str(e))
            return None
        finally:
            done.discard()

    def has(self, name: str, key: str) -> bool | None:
        """Whether the remote holds ``name``/``key`` (None when it cannot be asked)."""
        if self.down is not None:
            return None
        ref = self.repo.with_tag(tag_for(name, key))
        try:
            return self.client.manifest(ref, what=f"look up {name}") is not None
        except RegistryError as e:
            self._unreachable(e)
            return None

    def put(self, name: str, key: str, entries: list[oci.Entry]) -> str | None:
        """Upload the artifact of ``name``/``key``; its manifest digest, or None (a warning
        said why)."""
        if self.down is not None:
            return None
        out = self._layout(name, key)
        tag, loc, layout = out.tag, out.location, out.layout
        try:
            digest = write_layout(layout, name=name, key=key, tag=tag, entries=entries)
            self.client.copy(f"oci:{layout}:{tag}", self.repo.with_tag(tag).docker(),
                             what=f"upload {name} to {loc}", dest_remote=True, retries=1)
            return digest
        except (RegistryError, OSError, AskbuildError) as e:
            msg = e.message if isinstance(e, AskbuildError) else str(e)
            console.warn(f"could not upload {name} (key {key}) to {loc}: {msg}; the local "
                         "build is unaffected")
            if isinstance(e, RegistryError) and e.kind in ("unreachable", "auth",
                                                            "plain-http", "tls"):
                with self.lock:
                    self.down = self.down or e.message
            return None
        finally:
            out.discard()
