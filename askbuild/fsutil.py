"""Small file-system helpers shared by the engine: atomic writes.

A record (stamp, state, manifest, lock) is written to a temporary file beside its final name,
flushed to disk and renamed into place, so a killed run leaves either the old record or the new
one, never half of one.
"""

from __future__ import annotations

import json
import os
import threading
import tomllib
from pathlib import Path

from .errors import ConfigError

CHUNK = 1 << 20


def read_toml(path: Path, *, missing_ok: bool = False) -> dict:
    """A TOML file as a dict.  Every way it can be unreadable (missing, a directory, not UTF-8,
    not TOML, no permission) is a :class:`ConfigError` naming the file and the cause; a missing
    file is ``{}`` when ``missing_ok``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise ConfigError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a TOML file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not valid UTF-8 (line {line}, byte {e.start})",
                          fix="save the file as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}", fix="correct the file's syntax") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be an askbuild file",
                          fix="correct the file") from None


def read_json(path: Path) -> dict | None:
    """A JSON object record, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def sha256_file(path: Path) -> tuple[str, int]:
    """``(hex sha256, size)`` of a file, read in chunks."""
    import hashlib
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


TMP_SUFFIX = ".tmp"


def temp_name(path: Path) -> Path:
    """A temporary name beside ``path``, unique to this process and thread; any leftover of a
    killed run matches :func:`sweep_temps`."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}{TMP_SUFFIX}")


def sweep_temps(directory: Path) -> int:
    """Remove the temporaries a killed run left in ``directory`` (not recursive).  Call it only
    while holding the lock that owns the directory.  Returns how many were removed."""
    n = 0
    try:
        entries = list(directory.iterdir())
    except OSError:
        return 0
    for p in entries:
        if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX) and not p.is_dir():
            p.unlink(missing_ok=True)
            n += 1
    return n


def discard(path: Path, aside_prefix: str | None = None) -> None:
    """Move ``path`` out of the way (one rename, to ``<aside_prefix><pid>-<random>``, by default
    ``.<name>.old-...``), then delete it; a kill in between leaves a leftover under that name
    for the owner's next run to remove."""
    import shutil

    from .download import unique_name
    aside = path.parent / unique_name(aside_prefix or f".{path.name}.old-")
    os.replace(path, aside)
    shutil.rmtree(aside, ignore_errors=True)


def write_bytes_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``path`` whole or not at all (a temporary name renamed into place), synced to
    disk first unless not ``durable``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with tmp.open("wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: object, *, indent: int = 2) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=indent, sort_keys=True) + "\n").encode())


def dirs_above(path: str) -> list[str]:
    """The directories above the relative ``/``-separated ``path``, outermost first
    (``a/b/c``: ``a``, ``a/b``)."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def stat_sig(path: str | Path) -> list[int] | None:
    """``[size, mtime_ns, ctime_ns, inode]`` of ``path`` (not followed), None when absent: what
    the no-op stamps compare.  ``ctime`` moves on every write, even one that restores size and
    mtime."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
