"""Patch queue speed (issue 9 item 4): ``inv patch`` and ``inv rebase --dry-run`` against
plain ``git am -3`` of the same series onto the same commit, measured in the same run (the
rounds of every row but the one-git-am-per-patch comparison interleaved with their anchor's),
for a 5-patch and a
generated 300-patch series (``--quick``: 5 and 50), the 5 patches also on a 30k-file tree.
Target: within 1.5x of ``git am -3``.

Rows per series:

* the engine (``patchqueue.patch`` in-process, no Python start-up) as shipped
  (:data:`askbuild.patchqueue.apply.BATCH`: a run of mails through one ``git am``): the row
  the target is about;
* the same with ``BATCH = False`` (one ``git am -3`` per patch), for comparison (the shipped
  value is restored after it; not on the big trees, where ``inv patch`` applies the series
  in a small tree and grafts it);
* the CLI through ``python -m askbuild`` (what ``./run`` runs) and through ``inv`` (Invoke's
  binary, which hands a verb to ``askbuild``: askbuild/invhook.py), run in the checkout:
  they include Python's and the CLI's start-up;
* the floor of any CLI in Python: ``python -c pass`` followed by the anchor's own ``git am
  -3``, against ``git am -3`` (not askbuild: where its ratio is over the target, on a tree
  where ``git am`` takes less than twice Python's start-up, no CLI in Python can meet it);
* the dry run (``rebasing.rebase(dry_run=True)`` in-process) onto ``v2`` after ``inv patch``
  (its recorded commits are reused), and without a patch record (the old series is applied
  again first), each interleaved with its anchor.

With ``--kernel`` the 5-patch rows (engine, the CLI through ``python -m askbuild``, and dry
runs) run once more on Debian's kernel
tarball imported by askbuild (~80k files; a one-line change each in the network core, the
FMan and DPAA drivers and ``netdevice.h``), 3 rounds, the disk settled before each.

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
import difflib
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

from askbuild import patchqueue, rebasing, tarimport  # noqa: E402
from askbuild.patchqueue import apply as pq_apply  # noqa: E402
from askbuild.settings import Settings  # noqa: E402
from benchmarks import KERNEL, kernel_wanted, settle_disk  # noqa: E402
from benchmarks.own_rss import peak_rss_mb, rss_row  # noqa: E402

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


def _row(measure: str, s: float, a: float, anchor: str, notes: str, *,
         comparison: bool = False) -> dict:
    """A row against the 1.5x target; ``comparison``: a row that is not askbuild as shipped
    (one git am per patch, the floor of any Python CLI), shown beside them, no target."""
    ratio = s / a if a else 0.0
    return {"measure": measure, "askbuild_s": round(s, 4), "anchor": anchor,
            "anchor_s": round(a, 4), "ratio": round(ratio, 2),
            "target": "none (comparison)" if comparison else f"<= {TARGET}x",
            "met": None if comparison else bool(a) and ratio <= TARGET, "notes": notes}


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


def _patch_argv(settings: Settings) -> list[str]:
    """``patch`` of source ``up`` in ``settings``' work and cache dirs, as a command line."""
    return ["patch", "--source", "up", "--work-dir", str(settings.work_dir),
            "--cache-dir", str(settings.cache_dir)]


def _cli(entry: list[str], argv: list[str], env: dict):
    """A round of ``entry argv`` (the CLI), run in the checkout."""
    def run() -> None:
        subprocess.run([*entry, *argv], env=env, check=True, capture_output=True, cwd=ROOT)
    return run


def _measure_series(n: int, rounds: int, tmp: Path, filler: int = 0, *,
                    rss: bool = False) -> list[dict]:
    project = pf.make_long_project(tmp / f"n{n}-{filler}", n, filler=filler)
    pf.add_release_v2(project)
    what = f"{n} patches" + (f", {filler // 1000}k-file tree" if filler else "")
    return _measure_project(project, rounds, tmp, what, per_patch=not filler, rss=rss)


def _unpatched(project: pf.Project):
    """Put the tree back at the base without its patch record (untimed before a round)."""
    record = project.settings.patch_record("up")

    def run() -> None:
        record.unlink(missing_ok=True)
        subprocess.run(["git", "-C", str(project.tree), "checkout", "-q", "--detach",
                        project.upstream.v1], check=True)
    return run


def _measure_project(project: pf.Project, rounds: int, tmp: Path, what: str, *,
                     per_patch: bool = True, rss: bool = False) -> list[dict]:
    """The rows of one project; ``per_patch``: also the one-git-am-per-patch comparison
    (not on a big tree: there ``inv patch`` applies the series in a small one with one
    ``git am`` either way); ``rss``: also askbuild's own peak RSS applying the series."""
    settings = project.settings
    unpatched = _unpatched(project)
    patch = _quiet(lambda: patchqueue.patch(settings, ["up"]))
    dry = _quiet(lambda: rebasing.rebase(settings, "up", onto="v2", dry_run=True))
    am_v1, at_v1 = _git_am_anchor(project, "v1")
    shipped = pq_apply.BATCH
    engine, anchor_v1 = _paired(patch, unpatched, am_v1, at_v1, rounds)
    unpatched()
    engine_git = _git_processes(patch, tmp)
    one_by_one = []
    if per_patch:
        try:
            pq_apply.BATCH = False
            unpatched()
            per_patch_git = _git_processes(patch, tmp)
            one_by_one.append(_row(
                f"inv patch, {what} (engine, one git am per patch)",
                _median(patch, rounds, unpatched), anchor_v1, "git am -3",
                f"apply.BATCH = False, for comparison; {per_patch_git} git processes",
                comparison=True))
        finally:
            pq_apply.BATCH = shipped
    env = _cli_env(project, tmp)
    common = _patch_argv(settings)
    # (each CLI paired with its own anchor rounds: a median taken minutes apart from the
    # anchor's swings with this machine's disk)
    cli_fast, anchor_fast = _paired(_cli(ASKBUILD, common, env), unpatched, am_v1, at_v1,
                                    rounds)
    cli_inv, anchor_inv = _paired(_cli(INV, common, env), unpatched, am_v1, at_v1, rounds)

    def floor() -> None:                        # the least a CLI in Python can take
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        am_v1()
    floor_s, anchor_floor = _paired(floor, at_v1, am_v1, at_v1, rounds)
    if rss:
        unpatched()
        rss_rows = [rss_row(f"peak RSS, askbuild patch, {what}", peak_rss_mb(common, env=env),
                            "askbuild's own process applying the series, from the base")]
    else:
        rss_rows = []
    patch()                                     # the record the dry run reuses
    dry()                                       # warm: v2 into the cache repository
    dry_git = _git_processes(dry, tmp)
    am_v2, at_v2 = _git_am_anchor(project, "v2")
    dry_s, anchor_v2 = _paired(dry, None, am_v2, at_v2, rounds)
    unpatched()
    dry_fresh_git = _git_processes(dry, tmp)
    dry_fresh, anchor_fresh = _paired(dry, unpatched, am_v2, at_v2, rounds)
    home = patchqueue.scratch_home(settings)
    where = f"scratch in RAM ({home.parent.parent})" if home.in_ram else \
        "scratch in the work dir (no room in RAM)"
    return [
        _row(f"inv patch, {what} (engine)", engine, anchor_v1, "git am -3",
             "in-process (no Python start-up), as shipped: " + (
                 "one git am for the run of mails" if per_patch else
                 "the series applied in a small tree, grafted, brought in, checked out")
             + f"; {engine_git} git processes"),
        *one_by_one,
        _row(f"askbuild patch, {what} (CLI)", cli_fast, anchor_fast, "git am -3",
             "python -m askbuild (what ./run runs): includes Python start-up"),
        _row(f"inv patch, {what} (CLI)", cli_inv, anchor_inv, "git am -3",
             "Invoke's binary in the checkout (handed to askbuild before Invoke is imported)"),
        _row(f"floor of any Python CLI, {what}", floor_s, anchor_floor, "git am -3",
             "not askbuild: `python -c pass` then the anchor's own `git am -3`, the least a "
             "CLI in Python can take; where its ratio is over 1.5x, no Python CLI meets the "
             "target", comparison=True),
        _row(f"inv rebase --dry-run, {what} (engine)", dry_s, anchor_v2, "git am -3 onto v2",
             "after inv patch: its recorded commits replayed as trees (one git merge-tree, "
             "no work tree; a scratch tree, sparse on a big tree, only for what needs one), "
             f"fetch of v2 included; {where}; {dry_git} git processes"),
        _row(f"inv rebase --dry-run, {what} (engine, no patch record)", dry_fresh, anchor_fresh,
             "git am -3 onto v2", "the old series applied again first (one git am; on a big "
             f"tree in a small one, grafted onto the base); {where}; {dry_fresh_git} git "
             "processes"),
        *rss_rows,
    ]


#: the kernel files the 5-patch kernel series changes (one line each; the first five of
#: these the tarball has): the network core, the LS1046A's FMan and DPAA drivers, a header
KERNEL_FILES = ["net/core/dev.c", "drivers/net/ethernet/freescale/fman/fman.c",
                "include/linux/netdevice.h", "drivers/net/ethernet/freescale/dpaa/dpaa_eth.c",
                "net/ipv4/tcp.c", "net/netfilter/nf_conntrack_core.c", "kernel/fork.c"]


def _kernel_mail(i: int, path: str, text: str) -> bytes:
    """Mail ``i``: one line of ``path`` (the first plain ASCII line from line 200 on) with a
    comment appended, three lines of context (``difflib``, as ``diff -u``)."""
    lines = text.splitlines(keepends=True)
    k = next(j for j in range(200, len(lines) - 4)
             if lines[j].strip() and lines[j].isascii() and lines[j].endswith("\n"))
    new = [*lines[:k], lines[k][:-1] + f" /* askbuild bench {i} */\n", *lines[k + 1:]]
    diff = "".join(difflib.unified_diff(lines, new, f"a/{path}", f"b/{path}", n=3))
    return (f"From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
            f"From: Dev <dev@example.org>\nDate: Sun, {i} Mar 2026 00:00:00 +0000\n"
            f"Subject: [PATCH] kernel change {i}\n\nA one-line change of {path}.\n---\n"
            f"diff --git a/{path} b/{path}\n{diff}--\n2.39.5\n\n").encode("latin-1")


def _kernel_project(tmp: Path) -> pf.Project:
    """A project whose source ``up`` is Debian's kernel: v1 the tarball imported
    (askbuild's import), v2 v1 plus a change of the top README, a series of 5 one-line
    patches; the repository the tarball was imported into is the anchor's clone."""
    anchor = tmp / "anchor"
    v1 = tarimport.import_tarball(KERNEL, anchor, strip_components=1, what="bench",
                                  message="release v1")
    pf.g(anchor, "tag", "v1")
    paths = [p for p in KERNEL_FILES if (anchor / p).is_file()][:5]
    if len(paths) < 5:
        raise SystemExit(f"bench_patch: {KERNEL} lacks the files the kernel series changes "
                         f"(found {paths} of {KERNEL_FILES})")
    series = tmp / "series"
    series.mkdir()
    names = []
    for i, path in enumerate(paths, start=1):
        names.append(f"{i:04d}-kernel-change.patch")
        text = (anchor / path).read_bytes().decode("latin-1")
        (series / names[-1]).write_bytes(_kernel_mail(i, path, text))
    (series / "series").write_text("".join(f"{n}\n" for n in names))
    with open(anchor / "README", "a", encoding="utf-8") as f:
        f.write("\nrelease 2\n")
    v2 = pf.commit_all(anchor, "release v2", who={**pf.DEV, "GIT_AUTHOR_NAME": "Upstream"})
    pf.g(anchor, "tag", "v2")
    pf.g(anchor, "checkout", "-q", "--detach", "v1")
    bare = tmp / "upstreams" / "up.git"
    pf.g(tmp, "clone", "-q", "--bare", "--", str(anchor), str(bare))   # (hard links)
    up = pf.Upstream(bare, f"file://{bare}", v1, v2)
    root = tmp / "project"
    pf.write_sources(root, {"up": (up.url, "v1", v1)})
    (root / "recipes" / "patches.toml").write_text('[up]\nlocal = ["patches/up"]\n')
    shutil.copytree(series, root / "patches" / "up")
    settings = Settings(project_root=root, work_dir=tmp / "work", cache_dir=tmp / "cache")
    pf.make_tree(settings, "up", str(bare), v1)     # (a local clone: hard links)
    return pf.Project(root, settings, up)


def _measure_kernel(rounds: int, tmp: Path) -> list[dict]:
    """The 5-patch rows on Debian's kernel tree (~80k files), every row interleaved with
    its anchor; a ``settle_disk`` before each pair (the tree's checkout writes 1.3 GB)."""
    project = _kernel_project(tmp / "kernel")
    settings = project.settings
    unpatched = _unpatched(project)
    patch = _quiet(lambda: patchqueue.patch(settings, ["up"]))
    dry = _quiet(lambda: rebasing.rebase(settings, "up", onto="v2", dry_run=True))
    am_v1, at_v1 = _git_am_anchor(project, "v1")
    am_v2, at_v2 = _git_am_anchor(project, "v2")

    def settled(before):
        def run() -> None:
            if before:
                before()
            settle_disk(tmp)
        return run
    engine, anchor_v1 = _paired(patch, settled(unpatched), am_v1, settled(at_v1), rounds)
    unpatched()
    engine_git = _git_processes(patch, tmp)
    cli = _cli(ASKBUILD, _patch_argv(settings), _cli_env(project, tmp))
    cli_s, anchor_cli = _paired(cli, settled(unpatched), am_v1, settled(at_v1), rounds)
    dry()                                       # warm: v2 into the cache repository
    dry_git = _git_processes(dry, tmp)
    dry_s, anchor_v2 = _paired(dry, settled(None), am_v2, settled(at_v2), rounds)
    unpatched()
    fresh_git = _git_processes(dry, tmp)
    fresh, anchor_v2b = _paired(dry, settled(unpatched), am_v2, settled(at_v2), rounds)
    what = "5 patches, kernel tree (~80k files)"
    return [
        _row(f"inv patch, {what} (engine)", engine, anchor_v1, "git am -3",
             f"in-process, as shipped; Debian's {KERNEL.name}; {engine_git} git processes"),
        _row(f"askbuild patch, {what} (CLI)", cli_s, anchor_cli, "git am -3",
             "python -m askbuild (what ./run runs): includes Python start-up"),
        _row(f"inv rebase --dry-run, {what} (engine)", dry_s, anchor_v2, "git am -3 onto v2",
             f"after inv patch: replayed as trees; {dry_git} git processes"),
        _row(f"inv rebase --dry-run, {what} (engine, no patch record)", fresh, anchor_v2b,
             "git am -3 onto v2", "the old series applied in a small tree and grafted onto "
             f"the base, then replayed as trees; {fresh_git} git processes"),
    ]


def measure(args) -> list[dict]:
    sizes = ((5, 0), (50, 0), (5, 5000)) if args.quick else ((5, 0), (300, 0), (5, BIG_TREE))
    tmp = Path(tempfile.mkdtemp(prefix="askbuild-bench-patch-"))
    try:
        rows: list[dict] = []
        longest = max(n for n, _ in sizes)
        for n, filler in sizes:
            rows += _measure_series(n, args.rounds, tmp, filler, rss=n == longest)
        if kernel_wanted(args):
            rows += _measure_kernel(min(args.rounds, 3), tmp)
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_patch")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--kernel", action="store_true",
                    help=f"also the 5-patch rows on {KERNEL} (minutes)")
    args = ap.parse_args()
    if args.quick:
        args.rounds = min(args.rounds, 3)
    for r in measure(args):
        met = "comparison" if r["met"] is None else "met" if r["met"] else "NOT met"
        print(f"{r['measure']:58} {r['askbuild_s']:8.3f}s  {r['anchor']:18} "
              f"{r['anchor_s']:8.3f}s  {r['ratio']:5.2f}x  {met}  ({r['notes']})")


if __name__ == "__main__":
    main()
