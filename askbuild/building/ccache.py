"""``--ccache``: masquerading links ``<cross>gcc/g++/cc/c++`` -> ccache first on PATH
(``settings.ccache_bin_dir``), the store in ``settings.ccache_dir``; hits and misses per run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .. import procs
from ..errors import UserError
from ..settings import Settings

TOOLS = ("gcc", "g++", "cc", "c++")


def setup(settings: Settings) -> Path:
    """The directory of the ccache links for ``settings.cross_compile`` (made or repaired)."""
    exe = shutil.which("ccache")
    if not exe:
        raise UserError("--ccache given but ccache is not installed",
                        fix="apt-get install ccache   (or build without --ccache)")
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
    """{"hits", "misses"} so far of the ccache store ``env`` points at."""
    proc = procs.run(["ccache", "--print-stats"], env=env, capture_output=True, text=True)
    counters = {}
    for line in proc.stdout.splitlines():
        k, _, v = line.partition("\t")
        if v.strip().isdigit():
            counters[k] = int(v)
    hits = counters.get("direct_cache_hit", 0) + counters.get("preprocessed_cache_hit", 0)
    return {"hits": hits, "misses": counters.get("cache_miss", 0)}
