"""Publish the example vendor tree as local upstreams for the ``example`` profile.

``examples/upstreams.toml`` says which directory of ``examples/`` becomes which upstream: a bare
git repository with a tagged release, or a release tarball.  Both are built deterministically
(fixed identity and dates; sorted tar entries, owner 0:0, fixed mtimes, no compressor
timestamps), so the commits and sha256 sums in ``recipes/profiles/example.toml`` lock them like
any real upstream: edit the example tree and the lock no longer matches, exactly as if an
upstream had moved a tag (run ``inv lock --update --profile example`` then).

Publishing is idempotent and cheap: a stamp holding the hash of the inputs short-circuits it.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import tomllib
from pathlib import Path

from . import gitutil
from .errors import ConfigError
from .fsutil import read_json, write_bytes_atomic, write_json_atomic
from .settings import Settings

EPOCH_DATE = "2026-01-01T00:00:00Z"
EPOCH = 1767225600  # 2026-01-01T00:00:00Z


def upstreams_dir(settings: Settings) -> Path:
    return settings.work_dir / "example-upstreams"


def _spec(settings: Settings) -> dict:
    path = settings.project_root / "examples" / "upstreams.toml"
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: missing (the example profile needs it)") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e


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


def _publish_git(tree: Path, dest: Path, tag: str, message: str) -> str:
    with tempfile.TemporaryDirectory(prefix="askbuild-example-") as tmp:
        work = Path(tmp) / "w"
        shutil.copytree(tree, work, symlinks=True)
        env = dict(gitutil.FIXED_IDENTITY, GIT_AUTHOR_DATE=EPOCH_DATE,
                   GIT_COMMITTER_DATE=EPOCH_DATE)
        gitutil.git(["init", "-q", "--", str(work)])
        gitutil.git(["add", "-A", "--", "."], cwd=work)
        gitutil.git(["commit", "-q", "--no-gpg-sign", "-m", message], cwd=work, env=env)
        gitutil.git(["tag", "--no-sign", "-a", "-m", message, "--", tag], cwd=work, env=env)
        commit = gitutil.out(["rev-parse", "HEAD"], cwd=work)
        if dest.exists():
            shutil.rmtree(dest)
        gitutil.git(["clone", "-q", "--bare", "--", str(work), str(dest)])
        # Let clients fetch a bare commit id, like GitHub does.
        gitutil.git(["config", "uploadpack.allowAnySHA1InWant", "true"], cwd=dest)
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


def publish(settings: Settings, *, force: bool = False) -> dict[str, dict]:
    """Create (or reuse) the example upstreams; return ``{name: {url, commit|sha256, size}}``."""
    spec = _spec(settings)
    dest = upstreams_dir(settings)
    stamp = dest / "published.json"
    digest = _inputs_hash(settings, spec)
    data = None if force else read_json(stamp)
    if data and data.get("inputs") == digest and "upstreams" in data:
        return data["upstreams"]
    dest.mkdir(parents=True, exist_ok=True)
    base = settings.project_root / "examples"
    result: dict[str, dict] = {}
    for name, entry in spec.items():
        tree = base / entry["tree"]
        if not tree.is_dir():
            raise ConfigError(f"examples/upstreams.toml: [{name}] tree {tree} does not exist")
        if entry["kind"] == "git":
            repo = dest / f"{name}.git"
            commit = _publish_git(tree, repo, entry["tag"], entry.get("message", f"{name} "
                                                                      f"{entry['tag']}"))
            result[name] = {"url": f"file://{repo}", "commit": commit, "ref": entry["tag"]}
        elif entry["kind"] == "tarball":
            data = _compress(deterministic_tar(tree, entry.get("top", tree.name)),
                             entry["file"])
            out = dest / entry["file"]
            write_bytes_atomic(out, data)
            result[name] = {"url": f"file://{out}", "sha256": hashlib.sha256(data).hexdigest(),
                            "size": len(data)}
        else:
            raise ConfigError(f"examples/upstreams.toml: [{name}] kind must be git or tarball")
    write_json_atomic(stamp, {"inputs": digest, "upstreams": result})
    return result
