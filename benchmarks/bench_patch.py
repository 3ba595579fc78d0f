"""Patch queue speed (issue 9 item 4): ``inv patch`` and ``inv rebase --dry-run`` against
plain ``git am -3`` of the same series onto the same commit, measured in the same run (the
rounds of the engine and dry-run rows interleaved with their anchor's), for a 5-patch and a
generated 300-patch series (``--quick``: 5 and 50), the 5 patches also on a 30k-file tree.
Target: within 1.5x of ``git am -3``.

Rows per series:

* the engine (``patchqueue.patch`` in-process, no Python start-up) as shipped
  (:data:`askbuild.patchqueue.apply.BATCH`: a run of mails through one ``git am``): the row
  the target is about;
* the same with ``BATCH = False`` (one ``git am -3`` per patch), for comparison (the shipped
  value is restored after it);
* the CLI through ``python -m askbuild`` (what ``./run`` runs) and through ``inv`` (Invoke's
  binary, which hands a verb to ``askbuild``: askbuild/invhook.py), run in the checkout:
  they include Python's and the CLI's start-up;
* the dry run (``rebasing.rebase(dry_run=True)`` in-process) onto ``v2`` after ``inv patch``
  (its recorded commits are reused), and without a patch record (the old series is applied
  again in the scratch tree first).

The notes give the git processes one run spawns (a logging ``git`` first on PATH, outside the
timed rounds).

    .venv/bin/python -m benchmarks.bench_patch [--rounds 5] [--quick]

The series is ``tests/patchfixtures.make_long_project`` (one small change per patch, a new file
every third patch); the dry run goes onto ``v2``, v1 plus one upstream commit.  The 5-patch
series runs twice: on the fixture's 11 files, and on a tree of :data:`BIG_TREE` more files
(``--quick``: 5k), the size of a real one (ASK has 300 files, the kernel 80k).  Each round of
``inv patch`` starts from a tree without its patch record (so the series is really applied)
and, like the anchor's clone (``reset --hard``), checked out at the base (untimed: a tree
fetched onto a new base is there already; after an edit of the series askbuild also goes
back there first, as a user of ``git am`` must); the dry run's fetch of ``v2`` is warmed
once before the rounds.  Every round starts after a ``sync`` (untimed): on this machine's
disk the writes of the previous round (hundreds of loose objects) otherwise land on whichever
round comes next.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [p for p in (str(ROOT), str(ROOT / "tests")) if p not in sys.path]

import patchfixtures as pf  # noqa: E402

from askbuild import patchqueue, rebasing  # noqa: E402
from askbuild.patchqueue import apply as pq_apply  # noqa: E402

TARGET = 1.5
#: the files of the big tree the 5-patch series also runs on (``--quick``: 5k): a real tree's
#: size, where git's own work and a full scratch tree weigh more than process start-ups
BIG_TREE = 30000
INV = [str(Path(sys.executable).with_name("inv"))]     # Invoke's binary, run in the checkout
ASKBUILD = [sys.executable, "-m", "askbuild"]


def _median(fn, rounds: int, before=None) -> float:
    times = []
    for _ in range(rounds):
        if before:
            before()
        os.sync()       # the previous round's writes are not this round's to wait for
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _quiet(fn):
    def run():
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            fn()
    return run


def _add_v2(project: pf.Project) -> None:
    """Tag ``v2`` in the project's upstream: v1 plus one change of the README."""
    work = project.root.parent / "v2-work"
    pf.g(project.root.parent, "clone", "-q", "--", str(project.upstream.bare), str(work))
    pf.put(work, "README", "long upstream, release 2\n")
    pf.commit_all(work, "release v2", who={**pf.DEV, "GIT_AUTHOR_NAME": "Upstream"})
    pf.g(work, "tag", "v2")
    pf.g(work, "push", "-q", "origin", "HEAD:refs/heads/main", "v2")


def _git_am_anchor(project: pf.Project, onto: str):
    """Plain ``git am -3`` of the series files onto ``onto`` in a clone (no automatic gc, as
    askbuild's own git calls): (run, reset)."""
    clone = project.root.parent / "anchor"
    if not clone.exists():
        pf.g(project.root.parent, "clone", "-q", "--", str(project.upstream.bare), str(clone))
    names = (project.series_dir / "series").read_text().split()
    files = [str(project.series_dir / n) for n in names]
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b",
               GIT_COMMITTER_EMAIL="b@b")

    def reset() -> None:
        subprocess.run(["git", "-C", str(clone), "checkout", "-q", "-f", "--detach", onto],
                       check=True)

    def am() -> None:
        # gc.auto=0 as askbuild's own git calls: an automatic gc, which `git am` starts in the
        # background once loose objects pile up over the rounds, would fall on later rounds
        subprocess.run(["git", "-C", str(clone), "-c", "gc.auto=0", "am", "-q", "-3", *files],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    return am, reset


def _paired(fn, before, anchor, anchor_before, rounds: int) -> tuple[float, float]:
    """Medians of ``fn`` and of its anchor, their rounds interleaved (on a shared machine the
    load then weighs on both alike)."""
    mine, theirs = [], []
    for _ in range(rounds):
        mine.append(_median(fn, 1, before))
        theirs.append(_median(anchor, 1, anchor_before))
    return statistics.median(mine), statistics.median(theirs)


def _row(measure: str, s: float, a: float, anchor: str, notes: str) -> dict:
    ratio = s / a if a else 0.0
    return {"measure": measure, "askbuild_s": round(s, 4), "anchor": anchor,
            "anchor_s": round(a, 4), "ratio": round(ratio, 2), "target": f"<= {TARGET}x",
            "met": bool(a) and ratio <= TARGET, "notes": notes}


@contextlib.contextmanager
def _git_log(tmp: Path):
    """A ``git`` first on PATH that logs each call (then runs the real git): yields the log."""
    old = os.environ["PATH"]
    os.environ["PATH"], log = pf.logging_git(tmp)
    try:
        yield log
    finally:
        os.environ["PATH"] = old


def _git_processes(fn, tmp: Path) -> int:
    """How many git processes one call of ``fn`` spawns."""
    with _git_log(tmp) as log:
        fn()
    return len(log.read_text().splitlines()) if log.exists() else 0


def _cli_env(project: pf.Project, tmp: Path) -> dict:
    """Plain output, the project root, and bytecode compiled once into a private prefix (an
    inherited ``PYTHONDONTWRITEBYTECODE`` would compile askbuild from source on every run)."""
    env = dict(os.environ, CI="true", ASKBUILD_PLAIN="1", ASKBUILD_PROJECT_ROOT=str(project.root),
               PYTHONPYCACHEPREFIX=str(tmp / "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "askbuild"),
                    str(ROOT / "tasks.py")], env=env, check=True, capture_output=True)
    return env


def _measure_series(n: int, rounds: int, tmp: Path, filler: int = 0) -> list[dict]:
    project = pf.make_long_project(tmp / f"n{n}-{filler}", n, filler=filler)
    _add_v2(project)
    settings = project.settings
    record = settings.patch_record("up")

    def unpatched() -> None:
        record.unlink(missing_ok=True)
        subprocess.run(["git", "-C", str(project.tree), "checkout", "-q", "--detach",
                        project.upstream.v1], check=True)

    patch = _quiet(lambda: patchqueue.patch(settings, ["up"]))
    dry = _quiet(lambda: rebasing.rebase(settings, "up", onto="v2", dry_run=True))
    am_v1, at_v1 = _git_am_anchor(project, "v1")
    shipped = pq_apply.BATCH
    engine, anchor_v1 = _paired(patch, unpatched, am_v1, at_v1, rounds)
    unpatched()
    engine_git = _git_processes(patch, tmp)
    try:
        pq_apply.BATCH = False
        unpatched()
        per_patch_git = _git_processes(patch, tmp)
        per_patch = _median(patch, rounds, unpatched)
    finally:
        pq_apply.BATCH = shipped
    env = _cli_env(project, tmp)
    common = ["patch", "--source", "up", "--work-dir", str(settings.work_dir),
              "--cache-dir", str(settings.cache_dir)]

    def cli(entry: list[str]):
        def run() -> None:
            subprocess.run([*entry, *common], env=env, check=True, capture_output=True,
                           cwd=ROOT)
        return run
    cli_fast = _median(cli(ASKBUILD), rounds, unpatched)
    cli_inv = _median(cli(INV), rounds, unpatched)
    patch()                                     # the record the dry run reuses
    dry()                                       # warm: v2 into the cache repository
    dry_git = _git_processes(dry, tmp)
    am_v2, at_v2 = _git_am_anchor(project, "v2")
    dry_s, anchor_v2 = _paired(dry, None, am_v2, at_v2, rounds)
    unpatched()
    dry_fresh_git = _git_processes(dry, tmp)
    dry_fresh = _median(dry, rounds, unpatched)
    what = f"{n} patches" + (f", {filler // 1000}k-file tree" if filler else "")
    return [
        _row(f"inv patch, {what} (engine)", engine, anchor_v1, "git am -3",
             f"in-process (no Python start-up), as shipped: one git am for the run of mails; "
             f"{engine_git} git processes"),
        _row(f"inv patch, {what} (engine, one git am per patch)", per_patch, anchor_v1,
             "git am -3", f"apply.BATCH = False, for comparison; {per_patch_git} git processes"),
        _row(f"askbuild patch, {what} (CLI)", cli_fast, anchor_v1, "git am -3",
             "python -m askbuild (what ./run runs): includes Python start-up"),
        _row(f"inv patch, {what} (CLI)", cli_inv, anchor_v1, "git am -3",
             "Invoke's binary in the checkout (handed to askbuild before Invoke is imported)"),
        _row(f"inv rebase --dry-run, {what} (engine)", dry_s, anchor_v2, "git am -3 onto v2",
             "after inv patch: its recorded commits replayed with one git rebase -i in a "
             f"scratch tree, sparse on a big tree (fetch of v2 included); {dry_git} git processes"),
        _row(f"inv rebase --dry-run, {what} (engine, no patch record)", dry_fresh, anchor_v2,
             "git am -3 onto v2", "the old series applied again (one git am) before the "
             f"replay; {dry_fresh_git} git processes"),
    ]


def measure(args) -> list[dict]:
    sizes = ((5, 0), (50, 0), (5, 5000)) if args.quick else ((5, 0), (300, 0), (5, BIG_TREE))
    tmp = Path(tempfile.mkdtemp(prefix="askbuild-bench-patch-"))
    try:
        rows: list[dict] = []
        for n, filler in sizes:
            rows += _measure_series(n, args.rounds, tmp, filler)
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_patch")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.rounds = min(args.rounds, 3)
    for r in measure(args):
        print(f"{r['measure']:58} {r['askbuild_s']:8.3f}s  {r['anchor']:18} "
              f"{r['anchor_s']:8.3f}s  {r['ratio']:5.2f}x  {'met' if r['met'] else 'NOT met'}"
              f"  ({r['notes']})")


if __name__ == "__main__":
    main()
