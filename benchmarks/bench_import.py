"""Issue 9 point 5: the cold import of a tarball source into git (``askbuild.tarimport``).

Five timings of the same archive, in one run: the anchor ``tar -x`` alone (GNU tar, the same
``--strip-components``), askbuild's cold import (safe extraction + the Python check-in of
``askbuild.checkin`` + commit, and storing the cached import), askbuild's re-import of the
same tarball (starting from the objects of the cached import: ``askbuild.importcache``), the
previous import (the same extraction + git's bulk check-in, ``git add`` into one pack), and
the first askbuilds' import (a plain ``git add``: one loose object per file); all give the
same commit id (checked here on every run).

Input: a generated tarball of 20,000 small C files in 1,261 directories (``--quick``: 5,000
files); with ``--kernel`` (or ``ASKBUILD_BENCH_KERNEL=1``) Debian's
``/usr/src/linux-source-6.1.tar.xz`` when present (~80k files; one round: minutes).
Run alone: ``.venv/bin/python -m benchmarks.bench_import [--quick] [--kernel]``."""

from __future__ import annotations

import argparse
import io
import os
import random
import resource
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from askbuild import tarimport
from askbuild.importcache import ImportCache
from benchmarks import KERNEL, kernel_wanted, settle_disk

MESSAGE = tarimport.import_message("bench.tar.gz", "bench", "1.0", "0" * 64)


def make_tarball(path: Path, files: int) -> Path:
    """A gzip tarball of ``files`` C-like files (30 B - 10 KiB) under ``top/``, every 50th
    executable, a few symlinks and empty directories."""
    rnd = random.Random(9)
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for i in range(files):
            line = f"int v{i}_%d = %d;\n"
            data = "".join(line % (k, rnd.randrange(1 << 30))
                           for k in range(rnd.randrange(1, 400))).encode()
            info = tarfile.TarInfo(f"top/d{i % 97}/s{i % 13}/f{i}.c")
            info.size, info.mtime = len(data), 1_700_000_000
            info.mode = 0o755 if i % 50 == 0 else 0o644
            tar.addfile(info, io.BytesIO(data))
        for i in range(20):
            link = tarfile.TarInfo(f"top/link{i}")
            link.type, link.linkname = tarfile.SYMTYPE, f"d{i}/s{i}/f{i}.c"
            tar.addfile(link)
            empty = tarfile.TarInfo(f"top/empty{i}")
            empty.type, empty.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(empty)
    return path


def _cpu() -> float:
    """CPU seconds (user + system) of this process and its waited-for children so far."""
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn, work: Path, rounds: int, label: str) -> tuple[float, float, str]:
    """Median wall time and median CPU time of ``fn(dest)`` into a fresh ``dest``
    (``work/<label>-r<i>``), up to its data on disk (``sync`` before and after: ``tar -x``
    returns with its 1.3 GB still in the page cache, whose write-back would otherwise slow the
    next measure down); the last result.  CPU time is in the notes: on a shared machine it
    moves less than wall time.  The trees are kept until the whole topic is done: on a file
    system mounted with ``discard`` (this machine's), deleting 1.3 GB slows every write that
    follows for a minute (measured: an extraction right after such a delete took 59 s instead
    of 25 s), which would fall on whichever measure came next; before each run the disk is
    left to settle (:func:`settle_disk`)."""
    runs, cpus, result = [], [], ""
    for i in range(rounds):
        dest = work / f"{label}-r{i}"
        os.sync()                   # (no write-back of an earlier run left to pay for)
        settle_disk(work)          # (nor discards of an earlier topic's deletions)
        t, c = time.perf_counter(), _cpu()
        result = fn(dest)
        os.sync()                   # (each pays for its own writes: tar -x returns before)
        runs.append(time.perf_counter() - t)
        cpus.append(_cpu() - c)
    return statistics.median(runs), statistics.median(cpus), result


def _tar_x(archive: Path):
    def run(dest: Path) -> str:
        dest.mkdir()
        subprocess.run(["tar", "-xf", str(archive), "-C", str(dest), "--strip-components=1"],
                       check=True)
        return ""
    return run


def _import(archive: Path, method: str, cache: Path | None = None, *, entry: str = ""):
    """askbuild's import into ``dest`` (``method``: :func:`askbuild.tarimport.commit_tree`'s);
    with ``cache``, through the cached import ``cache/<entry>`` (``entry`` empty: a new one
    per run, named after ``dest``)."""
    def run(dest: Path) -> str:
        imports = ImportCache(cache / (entry or dest.name), "bench") if cache else None
        return tarimport.import_tarball(archive, dest, strip_components=1, what="bench",
                                        message=MESSAGE, method=method, cache=imports)
    return run


def measure(args) -> list[dict]:
    kernel = kernel_wanted(args)
    files = 5_000 if args.quick else 20_000
    rounds = 1 if kernel else (3 if args.quick else args.rounds)
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        work = Path(tmp)
        if kernel:
            archive, what = KERNEL, f"{KERNEL.name} (~80k files)"
        else:
            archive = make_tarball(work / "bench.tar.gz", files)
            what = f"{files} generated files"
        anchor, anchor_cpu, _ = _timed(_tar_x(archive), work, rounds, "tar")
        # cold: each run stores a new cached import (what a first import pays)
        new, new_cpu, commit = _timed(_import(archive, "python", work / "cache"), work, rounds,
                                      "cold")
        again, again_cpu, again_commit = _timed(_import(archive, "python", work / "cache",
                                                        entry="cold-r0"), work, rounds, "again")
        bulk, bulk_cpu, bulk_commit = _timed(_import(archive, "bulk"), work, rounds, "bulk")
        old, old_cpu, old_commit = _timed(_import(archive, "plain"), work, rounds, "plain")
    ids = {commit, again_commit, bulk_commit, old_commit}
    same = "same commit id" if len(ids) == 1 else \
        f"COMMIT IDS DIFFER ({commit[:12]}, {again_commit[:12]}, {bulk_commit[:12]}, " \
        f"{old_commit[:12]})"
    return [
        {"measure": f"cold tarball import, {what}", "askbuild_s": round(new, 3),
         "anchor": "tar -x alone", "anchor_s": round(anchor, 3),
         "ratio": round(new / anchor, 2), "target": "<= 2.5x", "met": new / anchor <= 2.5,
         "notes": f"before: git's bulk check-in {bulk:.2f} s = {bulk / anchor:.2f}x, plain git "
                  f"add {old:.2f} s = {old / anchor:.2f}x tar -x; CPU s: tar -x "
                  f"{anchor_cpu:.2f}, now {new_cpu:.2f}, bulk {bulk_cpu:.2f}, plain "
                  f"{old_cpu:.2f}; {same}; median of {rounds}"},
        {"measure": f"re-import of the same tarball (objects from the cached import), {what}",
         "askbuild_s": round(again, 3), "anchor": "tar -x alone", "anchor_s": round(anchor, 3),
         "ratio": round(again / anchor, 2), "target": "<= 2.5x", "met": again / anchor <= 2.5,
         "notes": f"CPU s {again_cpu:.2f}; {same}; median of {rounds}"},
    ]


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--kernel", action="store_true", help=f"import {KERNEL} when present")
    for r in measure(p.parse_args()):
        print(r)
