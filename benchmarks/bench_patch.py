"""Patch queue speed (issue 9 item 4): ``inv patch`` (the engine call and the CLI) and
``inv rebase --dry-run`` against plain ``git am -3`` of the same series onto the same commit,
measured in the same run, for a 5-patch and a generated 300-patch series (``--quick``: 5 and
50).  Target: within 1.5x of ``git am -3``.  The engine rows are measured in-process (for 5
patches Python's own start-up alone is more than 1.5x of ``git am -3``); the CLI rows include
it.  One more engine row forces the batched ``git am`` (:data:`askbuild.patchqueue.apply.BATCH`,
off by default for work trees) to show what it would give.

    .venv/bin/python -m benchmarks.bench_patch [--rounds 5] [--quick]

The series is ``tests/patchfixtures.make_long_project`` (one small change per patch, a new file
every third patch); the dry run goes onto ``v2``, v1 plus one upstream commit.  Each round of
``inv patch`` starts from a tree without its patch record (so the series is really applied);
the dry run's fetch of ``v2`` is warmed once before the rounds.
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
INV = [sys.executable, "-m", "invoke", "--search-root", str(ROOT)]


def _median(fn, rounds: int, before=None) -> float:
    times = []
    for _ in range(rounds):
        if before:
            before()
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


def _git_am_anchor(project: pf.Project, onto: str, rounds: int) -> float:
    """Median of plain ``git am -3`` of the series files onto ``onto`` in a clone."""
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
        subprocess.run(["git", "-C", str(clone), "am", "-q", "-3", *files], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    return _median(am, rounds, reset)


def _row(measure: str, s: float, a: float, anchor: str, notes: str) -> dict:
    ratio = s / a if a else 0.0
    return {"measure": measure, "askbuild_s": round(s, 4), "anchor": anchor,
            "anchor_s": round(a, 4), "ratio": round(ratio, 2), "target": f"<= {TARGET}x",
            "met": bool(a) and ratio <= TARGET, "notes": notes}


def _measure_series(n: int, rounds: int, tmp: Path) -> list[dict]:
    project = pf.make_long_project(tmp / f"n{n}", n)
    _add_v2(project)
    settings = project.settings
    record = settings.patch_record("up")

    def unpatched() -> None:
        record.unlink(missing_ok=True)

    anchor_v1 = _git_am_anchor(project, "v1", rounds)
    engine = _median(_quiet(lambda: patchqueue.patch(settings, ["up"])), rounds, unpatched)
    pq_apply.BATCH = True
    try:
        batched = _median(_quiet(lambda: patchqueue.patch(settings, ["up"])), rounds, unpatched)
    finally:
        pq_apply.BATCH = False
    env = dict(os.environ, CI="true", ASKBUILD_PLAIN="1", ASKBUILD_PROJECT_ROOT=str(project.root))
    cli_args = [*INV, "patch", "--source", "up", "--work-dir", str(settings.work_dir),
                "--cache-dir", str(settings.cache_dir)]

    def cli() -> None:
        subprocess.run(cli_args, env=env, check=True, capture_output=True, cwd=ROOT)
    cli_s = _median(cli, rounds, unpatched)
    dry = _quiet(lambda: rebasing.rebase(settings, "up", onto="v2", dry_run=True))
    dry()                                       # warm: v2 into the cache repository
    dry_s = _median(dry, rounds)
    anchor_v2 = _git_am_anchor(project, "v2", rounds)
    what = f"{n} patches"
    return [
        _row(f"inv patch, {what} (engine)", engine, anchor_v1, "git am -3",
             "series re-applied, in-process (no Python start-up), one git am per patch"),
        _row(f"inv patch, {what} (engine, batched git am: off by default)", batched, anchor_v1,
             "git am -3", "apply.BATCH forced on: one git am for the run of mails"),
        _row(f"inv patch, {what} (CLI)", cli_s, anchor_v1, "git am -3",
             "includes Python + invoke start-up"),
        _row(f"inv rebase --dry-run, {what} (engine)", dry_s, anchor_v2, "git am -3 onto v2",
             "scratch worktree, old series re-applied with one git am, replay one "
             "cherry-pick per patch"),
    ]


def measure(args) -> list[dict]:
    sizes = (5, 50) if args.quick else (5, 300)
    tmp = Path(tempfile.mkdtemp(prefix="askbuild-bench-patch-"))
    try:
        rows: list[dict] = []
        for n in sizes:
            rows += _measure_series(n, args.rounds, tmp)
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
        print(f"{r['measure']:45} {r['askbuild_s']:8.3f}s  {r['anchor']:18} "
              f"{r['anchor_s']:8.3f}s  {r['ratio']:5.2f}x  {'met' if r['met'] else 'NOT met'}")


if __name__ == "__main__":
    main()
