"""Small file-system helpers shared by the engine: atomic writes.

A record (stamp, state, manifest, lock) is written to a temporary file beside its final name,
flushed to disk and renamed into place, so a killed run leaves either the old record or the new
one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

CHUNK = 1 << 20


def read_json(path: Path) -> dict | None:
    """A JSON object record, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def sha256_file(path: Path) -> tuple[str, int]:
    """``(hex sha256, size)`` of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: object, *, indent: int = 2) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=indent, sort_keys=True) + "\n").encode())
