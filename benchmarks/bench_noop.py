"""Issue 9 points 2/3: no-op verbs and the task list against ``python -c pass``, through both
entry points, and the peak RSS of a no-op verb.

Entry points: ``askbuild VERB`` (``python -m askbuild``: one known verb parsed without
importing Invoke; what ``./run`` runs) and ``inv VERB`` (Invoke's binary: pays Invoke's
start-up, but answers a no-op from the same record before importing it: askbuild/invhook.py).
Every command runs in the checkout, as a user types it. Verbs, each a no-op on a stamped
fixture: ``fetch`` (a temporary project with one git source, tests/upstreams.py), ``patch`` (a
two-patch local series, tests/patchfixtures.py), ``build`` (one component of that series,
tests/test_noop_build.py's project; needs the cross compiler, dpkg-query and libxml2-dev:arm64,
else the row says so) and ``image --no-load`` (a fixture staging tree, tests/imagefixtures.py;
needs the cross compiler). Each askbuild row gives the number of git processes the verb spawned
(a ``git`` wrapper on PATH counts them).

A no-op through ``askbuild`` is answered from its no-op record once one was written
(askbuild/noopmemo.py): the rows measure that steady state (the fixture's first runs, the
warm-up, write it), which is what a user's second identical command gets, through either entry
point.

Python's bytecode: the runs use a temporary ``PYTHONPYCACHEPREFIX`` with askbuild and tasks.py
compiled into it first (``PYTHONDONTWRITEBYTECODE`` dropped), so that every row reads ``.pyc``
files as a user's checkout does after its first run; Invoke turns bytecode writing off for what
it imports, so without this ``inv`` would compile askbuild on every run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.own_rss import rss_row

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
INV = [str(Path(sys.executable).with_name("inv"))]         # Invoke's binary in the venv
FAST = [sys.executable, "-m", "askbuild"]
ENTRIES = {"askbuild": FAST, "inv": INV}
PER_VERB = 0.125            # a quarter of the 0.5 s budget of four verbs


def _time(cmd: list[str], env: dict, rounds: int) -> float:
    runs = []
    for _ in range(rounds):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=ROOT)
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def _row(measure: str, s: float, anchor: str, a: float, limit: float, target: str,
         notes: str = "") -> dict:
    return {"measure": measure, "askbuild_s": round(s, 4), "anchor": anchor,
            "anchor_s": round(a, 4), "ratio": round(s / a, 2) if a else 0.0,
            "target": target, "met": s - a <= limit, "notes": notes}


def _not_measured(measure: str, anchor: float, why: str) -> dict:
    return {"measure": measure, "askbuild_s": 0.0, "anchor": "python -c pass",
            "anchor_s": round(anchor, 4), "ratio": 0.0, "target": "<= +0.125 s",
            "met": False, "notes": f"not measured: {why}"}


def _git_counter(tmp: Path, env: dict) -> tuple[dict, Path]:
    """``env`` with a ``git`` first on PATH that logs each call to the returned file."""
    from patchfixtures import logging_git
    path, log = logging_git(tmp, env["PATH"])
    return {**env, "PATH": path}, log


def _git_calls(cmd: list[str], env: dict, log: Path) -> int:
    log.unlink(missing_ok=True)
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=ROOT)
    n = len(log.read_text().splitlines()) if log.exists() else 0
    log.unlink(missing_ok=True)
    return n


def _bytecode_env(pycache: Path) -> dict:
    """The environment of every run: plain output, bytecode read from (and written to) a
    private prefix where askbuild and tasks.py are compiled already."""
    env = dict(os.environ, CI="true", ASKBUILD_PLAIN="1", PYTHONPYCACHEPREFIX=str(pycache))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("ASKBUILD_PROJECT_ROOT", None)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "askbuild"),
                    str(ROOT / "tasks.py")], env=env, check=True, capture_output=True)
    return env


# -- the no-op fixtures: each yields (verb argv, env, a scratch dir) once the verb is a no-op --

@contextmanager
def _fetch_fixture(env: dict) -> Iterator[tuple[list[str], dict, Path]]:
    from upstreams import GitUpstream, Project
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "up").mkdir()
        up = GitUpstream(base / "up", "g")
        up.release("v1", {"a.c": "int a;\n"})
        project = Project(base)
        project.add_git("g", up.url, "v1", up.rev("v1"))
        argv = ["fetch", "--work-dir", str(project.work), "--cache-dir", str(project.cache)]
        yield argv, {**env, "ASKBUILD_PROJECT_ROOT": str(project.root)}, base


@contextmanager
def _patch_fixture(env: dict) -> Iterator[tuple[list[str], dict, Path]]:
    from patchfixtures import make_project
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp), kinds=["clean", "near"])
        s = project.settings
        argv = ["patch", "--work-dir", str(s.work_dir), "--cache-dir", str(s.cache_dir)]
        yield argv, {**env, "ASKBUILD_PROJECT_ROOT": str(project.root)}, Path(tmp)


@contextmanager
def _build_fixture(env: dict) -> Iterator[tuple[list[str], dict, Path]]:
    from test_noop_build import Project
    with tempfile.TemporaryDirectory() as tmp:
        project = Project(Path(tmp))
        argv = ["build", "--work-dir", str(project.work), "--cache-dir", str(project.cache)]
        yield argv, {**env, "ASKBUILD_PROJECT_ROOT": str(project.root)}, Path(tmp)


@contextmanager
def _image_fixture(env: dict) -> Iterator[tuple[list[str], dict, Path]]:
    import imagefixtures as fx
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        fx.make_work(work, fx.compile_programs(Path(tmp) / "programs"))
        argv = ["image", "--no-load", "--tag", "bench", "--work-dir", str(work),
                "--cache-dir", str(fx.shared_cache_dir())]
        yield argv, {**env, "DOCKER_HOST": f"unix://{tmp}/no-such.sock",
                     "ASKBUILD_PROJECT_ROOT": str(ROOT)}, Path(tmp)


def _why_not(verb: str) -> str | None:
    """Why a verb's fixture cannot be made on this machine (None: it can)."""
    if verb in ("build", "image") and not shutil.which("aarch64-linux-gnu-gcc"):
        return "aarch64-linux-gnu-gcc is not installed"
    if verb == "build":
        from test_noop_build import needs_toolchain
        if needs_toolchain.args[0]:
            return needs_toolchain.kwargs["reason"]
    return None


VERBS: dict[str, tuple[str, Callable]] = {
    "fetch": ("1 git source", _fetch_fixture),
    "patch": ("1 source, 2 patches", _patch_fixture),
    "build": ("1 component, 1 patched source", _build_fixture),
    "image": ("fixture staging tree", _image_fixture),
}


def _noop_rows(verb: str, env: dict, rounds: int, anchor: float) -> dict[str, dict]:
    """``{entry: row}``: the no-op ``verb`` through each entry point."""
    what, fixture = VERBS[verb]
    label = "image --no-load" if verb == "image" else verb
    why = _why_not(verb)
    if why:
        return {e: _not_measured(f"no-op {e} {label} ({what})", anchor, why) for e in ENTRIES}
    rows = {}
    with fixture(env) as (argv, venv, tmp):
        for _ in range(3):      # do it, then settle (racily clean index entries once)
            subprocess.run([*FAST, *argv], env=venv, check=True, capture_output=True,
                           cwd=ROOT)
        genv, log = _git_counter(tmp, venv)
        for entry, prefix in ENTRIES.items():
            cmd = [*prefix, *argv]
            calls = _git_calls(cmd, genv, log)
            for _ in range(2):      # warm up (the counting run's PATH is another toolchain)
                subprocess.run(cmd, env=venv, check=True, capture_output=True, cwd=ROOT)
            rows[entry] = _row(f"no-op {entry} {label} ({what})", _time(cmd, venv, rounds),
                               "python -c pass", anchor, PER_VERB,
                               "<= +0.125 s (a quarter of the 0.5 s budget)",
                               f"git processes: {calls}")
    return rows


def _rss_mb(cmd: list[str], env: dict) -> float:
    """Peak RSS of ``cmd`` (the largest process of one run), in MB: an upper bound, since
    Linux also counts the memory this small probe had when it started ``cmd``
    (benchmarks/own_rss.py; ``inv`` cannot run inside that one)."""
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
             "capture_output=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    return int(subprocess.run([sys.executable, "-c", probe, *cmd], env=env, check=True,
                              capture_output=True, text=True, cwd=ROOT).stdout) / 1024


def measure(args) -> list[dict]:
    rounds = 3 if args.quick else args.rounds
    with tempfile.TemporaryDirectory() as pycache:
        env = _bytecode_env(Path(pycache))
        pass_cmd = [sys.executable, "-c", "pass"]
        subprocess.run(pass_cmd, env=env, check=True)                          # warm up
        anchor = _time(pass_cmd, env, rounds)
        lists = {}
        for entry, prefix in ENTRIES.items():
            subprocess.run([*prefix, "--list"], env=env, check=True, capture_output=True,
                           cwd=ROOT)
            lists[entry] = _time([*prefix, "--list"], env, rounds)
        by_verb = {v: _noop_rows(v, env, rounds, anchor) for v in VERBS}
        with _fetch_fixture(env) as (argv, venv, _):
            subprocess.run([*FAST, *argv], env=venv, check=True, capture_output=True,
                           cwd=ROOT)
            rss = {e: _rss_mb([*p, *argv], venv) for e, p in ENTRIES.items()}
    rows = []
    for entry in ENTRIES:
        got = [by_verb[v][entry] for v in VERBS]
        total = sum(r["askbuild_s"] for r in got)
        missing = [v for v, r in zip(VERBS, got, strict=True) if not r["askbuild_s"]]
        rows.append(_row(
            f"no-op {entry} fetch + patch + build + image --no-load (4 runs)", total,
            "python -c pass", anchor, 0.5, "<= +0.5 s (all four together vs one python -c pass)",
            (f"not measured: {', '.join(missing)}; " if missing else "")
            + f"vs four python -c pass: +{total - 4 * anchor:.3f} s"))
    for entry in ENTRIES:
        rows.append(_row(f"{entry} --list", lists[entry], "python -c pass", anchor, PER_VERB,
                         "<= +0.125 s",
                         "handed to Invoke unchanged" if entry == "askbuild" else ""))
    for verb in VERBS:
        rows.extend(by_verb[verb][e] for e in ENTRIES)
    for entry in ENTRIES:
        rows.append(rss_row(f"peak RSS, no-op {entry} fetch", rss[entry],
                            "largest process of one no-op fetch"))
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    for r in measure(p.parse_args()):
        print(r)
