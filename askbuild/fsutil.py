"""Small file-system helpers shared by the engine: atomic writes.

A record (stamp, state, manifest, lock) is written to a temporary file beside its final name,
flushed to disk and renamed into place, so a killed run leaves either the old record or the new
one, never half of one.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path


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
