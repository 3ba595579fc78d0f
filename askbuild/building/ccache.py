"""``--ccache``: masquerading links ``<cross>gcc/g++/cc/c++`` -> ccache first on PATH
(``settings.ccache_bin_dir``), the store in ``settings.ccache_dir``; hits and misses per run.

Remote storage (``settings.ccache_remote``: ``--ccache-remote``, ``[ccache] remote``,
``ASKBUILD_CCACHE_REMOTE``; e.g. ``redis://HOST:6379``): steps get it as
``CCACHE_REMOTE_STORAGE`` (:func:`remote_env`, used by ``runner.base_env``), so every machine
of a fleet reads what any of them compiled; the manifest counts remote hits, misses, writes
and errors (ccache's ``remote_storage_*`` counters).  ccache falls back to compiling when the
remote cannot be reached; :func:`report` says so.  The URL's password is never printed nor
written anywhere (:func:`redact`)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .. import console, procs
from ..errors import UserError
from ..settings import Settings
from ..urls import redact

TOOLS = ("gcc", "g++", "cc", "c++")
#: manifest name -> the ``ccache --print-stats`` counters (ccache 4.7) it sums
COUNTERS = {
    "hits": ("direct_cache_hit", "preprocessed_cache_hit"),
    "misses": ("cache_miss",),
    "remote_hits": ("remote_storage_hit",),
    "remote_misses": ("remote_storage_miss",),
    "remote_writes": ("remote_storage_write",),
    "remote_errors": ("remote_storage_error", "remote_storage_timeout"),
}
# SCHEME://USERINFO@ : for redis (and http storage) the userinfo is [USER:]PASSWORD
_EMPTY_USER = re.compile(r"(?<![^\s|])(redis://):(?=[^@/\s|]*@)")


def remote_env(settings: Settings) -> dict[str, str]:
    """The variables that point ccache at ``settings.ccache_remote`` (none when unset).
    ``redis://:PASSWORD@HOST`` (redis-cli's spelling) is given to ccache as
    ``redis://PASSWORD@HOST``: ccache 4.7 would send the empty user name and be refused."""
    if not settings.ccache_remote:
        return {}
    return {"CCACHE_REMOTE_STORAGE": _EMPTY_USER.sub(r"\1", settings.ccache_remote)}


def setup(settings: Settings) -> Path:
    """The directory of the ccache links for ``settings.cross_compile`` (made or repaired)."""
    exe = shutil.which("ccache")
    if not exe:
        why = "--ccache-remote" if settings.ccache_remote else "--ccache"
        raise UserError(f"{why} given but ccache is not installed",
                        fix=f"apt-get install ccache   (or build without {why})")
    d = settings.ccache_bin_dir
    d.mkdir(parents=True, exist_ok=True)
    # The prefix's file name only: a prefix with a directory must never make a link there.
    name = settings.cross_compile.rsplit("/", 1)[-1]
    for tool in TOOLS:
        link = d / f"{name}{tool}"
        if link.is_symlink() and os.readlink(link) == exe:
            continue
        link.unlink(missing_ok=True)
        link.symlink_to(exe)
    return d


def stats(env: dict[str, str]) -> dict[str, int]:
    """The :data:`COUNTERS` so far of the ccache store ``env`` points at (remote ones count
    what this store's compilations read from and wrote to remote storage)."""
    proc = procs.run(["ccache", "--print-stats"], env=env, capture_output=True, text=True)
    counters = {}
    for line in proc.stdout.splitlines():
        k, _, v = line.partition("\t")
        if v.strip().isdigit():
            counters[k] = int(v)
    return {name: sum(counters.get(c, 0) for c in fields) for name, fields in COUNTERS.items()}


def report(settings: Settings, counted: dict[str, int] | None) -> dict[str, object]:
    """What the manifest's ``ccache`` gets besides this run's counts: ``remote`` (the URL,
    password redacted) when remote storage is used; warns when the remote failed (ccache then
    compiled locally: the build is right, only slower)."""
    if not settings.ccache_remote:
        return {}
    where = redact(settings.ccache_remote)
    errors = (counted or {}).get("remote_errors", 0)
    if errors:
        console.warn(f"ccache: {errors} request(s) to the remote storage {where} failed or "
                     "timed out; those files were compiled here (check that the server is "
                     "up and the URL, password included, is right)")
    return {"remote": where}
