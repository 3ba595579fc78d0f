"""Publish the example vendor tree as local upstreams for the ``example`` profile.

``examples/upstreams.toml`` says which directory of ``examples/`` becomes which upstream: a bare
git repository with a tagged release, or a release tarball.  Both are built deterministically
(fixed identity and dates; sorted tar entries, owner 0:0, fixed mtimes, no compressor
timestamps), so the commits and sha256 sums in ``recipes/profiles/example.toml`` lock them like
any real upstream: edit the example tree and the lock no longer matches, exactly as if an
upstream had moved a tag (run ``inv lock --update --profile example`` then).

Publishing is idempotent and cheap: a stamp holding the hash of the inputs short-circuits it.
It is also safe when several runs publish at once, and after a kill: one run at a time
publishes (a lock file in the upstreams directory), everything is built in a scratch directory
unique to the run, the old stamp is removed before anything is replaced, each upstream is
renamed into place, and the stamp is written last, so a stamp only ever describes complete
content.  Leftovers of killed runs are removed by the next publisher.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import secrets
import shutil
import stat
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from . import console, gitutil
from .errors import ConfigError
from .fsutil import read_json, read_toml, write_json_atomic
from .settings import Settings

EPOCH_DATE = "2026-01-01T00:00:00Z"
EPOCH = 1767225600  # 2026-01-01T00:00:00Z


def _spec(settings: Settings) -> dict:
    return read_toml(settings.project_root / "examples" / "upstreams.toml")


def _files(tree: Path) -> list[Path]:
    return sorted(p for p in tree.rglob("*") if p.is_file() or p.is_symlink())


def _inputs_hash(settings: Settings, spec: dict) -> str:
    h = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    base = settings.project_root / "examples"
    for entry in spec.values():
        tree = base / entry["tree"]
        for f in _files(tree):
            rel = f.relative_to(tree).as_posix()
            mode = f.lstat().st_mode
            h.update(f"{entry['tree']}/{rel}\0{mode & 0o111 != 0}\0".encode())
            h.update(os.readlink(f).encode() if f.is_symlink() else f.read_bytes())
    return h.hexdigest()


def _publish_git(tree: Path, scratch: Path, name: str, tag: str, message: str) -> str:
    """Build the bare repository ``scratch/<name>.git`` (one tagged commit of ``tree``)."""
    work = scratch / f"{name}.work"
    shutil.copytree(tree, work, symlinks=True)
    env = dict(gitutil.FIXED_IDENTITY, GIT_AUTHOR_DATE=EPOCH_DATE,
               GIT_COMMITTER_DATE=EPOCH_DATE)
    gitutil.git(["init", "-q", "--", str(work)])
    gitutil.git(["add", "-A", "--", "."], cwd=work)
    gitutil.git(["commit", "-q", "--no-gpg-sign", "-m", message], cwd=work, env=env)
    gitutil.git(["tag", "--no-sign", "-a", "-m", message, "--", tag], cwd=work, env=env)
    commit = gitutil.out(["rev-parse", "HEAD"], cwd=work)
    bare = scratch / f"{name}.git"
    gitutil.git(["clone", "-q", "--bare", "--", str(work), str(bare)])
    # Let clients fetch a bare commit id, like GitHub does.
    gitutil.git(["config", "uploadpack.allowAnySHA1InWant", "true"], cwd=bare)
    shutil.rmtree(work)
    return commit


def deterministic_tar(tree: Path, top: str) -> bytes:
    """An uncompressed tar of ``tree`` under ``top/``: sorted, 0:0, fixed mtimes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        paths = sorted([tree, *tree.rglob("*")], key=lambda p: p.relative_to(tree).as_posix())
        for p in paths:
            rel = p.relative_to(tree).as_posix()
            name = top if rel == "." else f"{top}/{rel}"
            info = tar.gettarinfo(str(p), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = EPOCH
            if info.isdir():
                info.mode = 0o755
            elif info.isreg():
                info.mode = 0o755 if p.stat().st_mode & stat.S_IXUSR else 0o644
            if info.isreg():
                with p.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


def _compress(data: bytes, filename: str) -> bytes:
    if filename.endswith((".tar.gz", ".tgz")):
        return gzip.compress(data, compresslevel=9, mtime=0)
    if filename.endswith(".tar.bz2"):
        return bz2.compress(data, 9)
    if filename.endswith(".tar.xz"):
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64)
    if filename.endswith(".tar"):
        return data
    raise ConfigError(f"examples/upstreams.toml: unsupported tarball type {filename!r}")


def _unique(prefix: str) -> str:
    return f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"


_LOCKS: dict[Path, FileLock] = {}
_GUARD = threading.Lock()


@contextlib.contextmanager
def _publish_lock(dest: Path) -> Iterator[None]:
    """One publisher at a time per upstreams directory (``flock``: a killed run's hold goes
    with it)."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / ".publish.lock"
    with _GUARD:
        lock = _LOCKS.setdefault(path, FileLock(str(path), thread_local=False))
    try:
        lock.acquire(timeout=0.5)
    except Timeout:
        console.info(f"example upstreams: waiting for another askbuild run to publish them "
                     f"(lock {path}) ...")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _published(dest: Path, digest: str) -> dict[str, dict] | None:
    """The upstreams the stamp describes, when it is for these inputs and they are there."""
    data = read_json(dest / "published.json")
    if not data or data.get("inputs") != digest or not isinstance(data.get("upstreams"), dict):
        return None
    for up in data["upstreams"].values():
        path = Path(str(up.get("url", "")).removeprefix("file://"))
        if dest not in path.parents:
            return None
        if "commit" in up and not (path / "HEAD").is_file():
            return None
        if "sha256" in up and not (path.is_file() and path.stat().st_size == up.get("size")):
            return None
    return data["upstreams"]


_LEFTOVER = re.compile(r"\.publish-[0-9]+-[0-9a-f]+|\..+\.old-[0-9]+-[0-9a-f]+|\..+\.tmp")


def _clean_leftovers(dest: Path) -> None:
    """Scratch directories and set-aside copies of killed publishers (lock held)."""
    for p in dest.iterdir():
        if _LEFTOVER.fullmatch(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _put_in_place(new: Path, final: Path) -> None:
    """Replace ``final`` by ``new`` (a file: one rename; a directory: the old one is renamed
    aside first, then deleted)."""
    if new.is_dir() and (final.exists() or final.is_symlink()):
        aside = final.with_name(_unique(f".{final.name}.old-"))
        os.replace(final, aside)
        os.replace(new, final)
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink(missing_ok=True)
        return
    os.replace(new, final)


def _build(settings: Settings, spec: dict, dest: Path, scratch: Path) -> tuple[dict, dict]:
    """Every upstream built in ``scratch``: (``{final path: built path}``, the results)."""
    base = settings.project_root / "examples"
    moves: dict[Path, Path] = {}
    result: dict[str, dict] = {}
    for name, entry in spec.items():
        tree = base / entry["tree"]
        if not tree.is_dir():
            raise ConfigError(f"examples/upstreams.toml: [{name}] tree {tree} does not exist")
        if entry["kind"] == "git":
            commit = _publish_git(tree, scratch, name, entry["tag"],
                                  entry.get("message", f"{name} {entry['tag']}"))
            moves[dest / f"{name}.git"] = scratch / f"{name}.git"
            result[name] = {"url": f"file://{dest / f'{name}.git'}", "commit": commit,
                            "ref": entry["tag"]}
        elif entry["kind"] == "tarball":
            data = _compress(deterministic_tar(tree, entry.get("top", tree.name)),
                             entry["file"])
            built = scratch / entry["file"]
            built.write_bytes(data)
            moves[dest / entry["file"]] = built
            result[name] = {"url": f"file://{dest / entry['file']}",
                            "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        else:
            raise ConfigError(f"examples/upstreams.toml: [{name}] kind must be git or tarball")
    return moves, result


def publish(settings: Settings, *, force: bool = False) -> dict[str, dict]:
    """Create (or reuse) the example upstreams; return ``{name: {url, commit|sha256, size}}``.

    Concurrent calls (other runs, other verbs) wait for each other; the published content
    is complete whenever the stamp exists."""
    spec = _spec(settings)
    dest = settings.example_upstreams_dir
    digest = _inputs_hash(settings, spec)
    if not force and (done := _published(dest, digest)) is not None:
        return done
    with _publish_lock(dest):
        if not force and (done := _published(dest, digest)) is not None:
            return done                               # another run published meanwhile
        _clean_leftovers(dest)
        scratch = dest / _unique(".publish-")
        scratch.mkdir()
        try:
            moves, result = _build(settings, spec, dest, scratch)
            (dest / "published.json").unlink(missing_ok=True)   # no stamp while replacing
            for final, built in moves.items():
                _put_in_place(built, final)
            write_json_atomic(dest / "published.json", {"inputs": digest, "upstreams": result})
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return result
