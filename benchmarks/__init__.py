"""askbuild's benchmarks: `python -m benchmarks` runs every ``bench_*.py`` and prints the table.

Each ``bench_<topic>.py`` has ``measure(args) -> list[dict]``: one dict per table row (see
``benchmarks/__main__.py`` for the keys).  Benchmarks print numbers; they never fail a build
(the tests assert behaviour, not timings).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

#: Debian's kernel source tarball (``inv setup`` installs it): the ``--kernel`` measures' input.
KERNEL = Path("/usr/src/linux-source-6.1.tar.xz")


def kernel_wanted(args) -> bool:
    """``--kernel`` or ``ASKBUILD_BENCH_KERNEL=1``, and the kernel tarball is there."""
    wanted = getattr(args, "kernel", False) or os.environ.get("ASKBUILD_BENCH_KERNEL") == "1"
    return wanted and KERNEL.is_file()


def settle_disk(path: Path, quiet: float = 3.0, limit: float = 240.0) -> float:
    """Wait until the block device holding ``path`` has done no I/O for ``quiet`` seconds
    (its ``/sys/dev/block/M:m/stat`` counters unchanged; at most ``limit`` s); returns the
    seconds waited.  Deletions on a file system mounted with ``discard`` go on discarding
    after ``sync`` returns, and writes meanwhile are several times slower."""
    dev = os.stat(path).st_dev
    stat = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat")
    if not stat.is_file():
        return 0.0
    start = last_change = time.monotonic()
    before = stat.read_text().split()
    while time.monotonic() - last_change < quiet and time.monotonic() - start < limit:
        time.sleep(0.5)
        now = stat.read_text().split()
        if now != before:
            before, last_change = now, time.monotonic()
    return time.monotonic() - start
