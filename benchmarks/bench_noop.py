"""Issue 9 point 2/3: no-op verbs and ``inv --list`` against ``python -c pass``, and the peak
RSS of a no-op verb.  Inputs: a temporary project with one git source (tests/upstreams.py).

Rows: ``inv --list``, no-op ``inv fetch``, no-op ``inv patch`` (a two-patch local series,
tests/patchfixtures.py) and no-op ``inv image --no-load`` (a fixture staging tree,
tests/imagefixtures.py; needs the cross compiler, else the row says so), each with the number
of git processes it spawned (a ``git`` wrapper on PATH counts them).  The build row is to be
added when its no-op path lands."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
INV = [sys.executable, "-m", "invoke", "--search-root", str(ROOT)]


def _time(cmd: list[str], env: dict, rounds: int) -> float:
    runs = []
    for _ in range(rounds):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def _row(measure: str, s: float, anchor: str, a: float, limit: float, target: str,
         notes: str = "") -> dict:
    return {"measure": measure, "askbuild_s": round(s, 4), "anchor": anchor,
            "anchor_s": round(a, 4), "ratio": round(s / a, 2) if a else 0.0,
            "target": target, "met": s - a <= limit, "notes": notes}


def _git_counter(tmp: Path, env: dict) -> tuple[dict, Path]:
    """``env`` with a ``git`` first on PATH that logs each call to the returned file."""
    import shutil
    bindir = tmp / "gitlog-bin"
    bindir.mkdir(exist_ok=True)
    log = tmp / "git-calls.log"
    wrapper = bindir / "git"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {shutil.which("git")} "$@"\n')
    wrapper.chmod(0o755)
    return {**env, "PATH": f"{bindir}:{env['PATH']}"}, log


def _git_calls(cmd: list[str], env: dict, log: Path) -> int:
    log.unlink(missing_ok=True)
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    n = len(log.read_text().splitlines()) if log.exists() else 0
    log.unlink(missing_ok=True)
    return n


def _noop_patch(env: dict, rounds: int, anchor: float) -> dict:
    from patchfixtures import make_project
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp), kinds=["clean", "near"])
        s = project.settings
        cmd = [*INV, "patch", "--work-dir", str(s.work_dir), "--cache-dir", str(s.cache_dir)]
        env = {**env, "ASKBUILD_PROJECT_ROOT": str(project.root)}
        for _ in range(3):      # apply, then settle (racily clean index entries once)
            subprocess.run(cmd, env=env, check=True, capture_output=True)
        genv, log = _git_counter(Path(tmp), env)
        calls = _git_calls(cmd, genv, log)
        t = _time(cmd, env, rounds)
    return _row("no-op inv patch (1 source, 2 patches)", t, "python -c pass", anchor, 0.125,
                "<= +0.125 s (a quarter of the 0.5 s budget)", f"git processes: {calls}")


def _noop_image(env: dict, rounds: int, anchor: float) -> dict:
    import shutil

    import imagefixtures as fx
    measure_name = "no-op inv image --no-load (fixture staging tree)"
    if not shutil.which(fx.CC):
        return {"measure": measure_name, "askbuild_s": 0.0, "anchor": "python -c pass",
                "anchor_s": anchor, "ratio": 0.0, "target": "<= +0.125 s", "met": False,
                "notes": f"not measured: {fx.CC} is not installed"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        fx.make_work(work, fx.compile_programs(Path(tmp) / "programs"))
        cmd = [*INV, "image", "--no-load", "--tag", "bench", "--work-dir", str(work),
               "--cache-dir", str(fx.shared_cache_dir())]
        env = {**env, "DOCKER_HOST": f"unix://{tmp}/no-such.sock"}
        env["ASKBUILD_PROJECT_ROOT"] = str(ROOT)
        subprocess.run(cmd, env=env, check=True, capture_output=True)    # stamp it
        genv, log = _git_counter(Path(tmp), env)
        calls = _git_calls(cmd, genv, log)
        t = _time(cmd, env, rounds)
    return _row(measure_name, t, "python -c pass", anchor, 0.125,
                "<= +0.125 s (a quarter of the 0.5 s budget)", f"git processes: {calls}")


def measure(args) -> list[dict]:
    from upstreams import GitUpstream, Project
    rounds = 3 if args.quick else args.rounds
    env = dict(os.environ, CI="true", ASKBUILD_PLAIN="1")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "up").mkdir()
        up = GitUpstream(base / "up", "g")
        up.release("v1", {"a.c": "int a;\n"})
        project = Project(base)
        project.add_git("g", up.url, "v1", up.rev("v1"))
        env["ASKBUILD_PROJECT_ROOT"] = str(project.root)
        fetch = [*INV, "fetch", "--work-dir", str(project.work), "--cache-dir", str(project.cache)]
        for _ in range(2):
            subprocess.run(fetch, env=env, check=True, capture_output=True)   # stamp it
        anchor = _time([sys.executable, "-c", "pass"], env, rounds)
        t_list = _time([*INV, "--list"], env, rounds)
        t_fetch = _time(fetch, env, rounds)
        # peak RSS of one no-op fetch alone: measured by a fresh process that runs only it
        probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
                 "capture_output=True); "
                 "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        rss_mb = int(subprocess.run([sys.executable, "-c", probe, *fetch], env=env, check=True,
                                    capture_output=True, text=True).stdout) / 1024
        env.pop("ASKBUILD_PROJECT_ROOT", None)
    patch_row = _noop_patch(env, rounds, anchor)
    image_row = _noop_image(env, rounds, anchor)
    verbs = t_fetch + patch_row["askbuild_s"] + image_row["askbuild_s"]
    return [
        _row("no-op fetch + patch + image --no-load (3 CLI runs)", verbs, "python -c pass",
             anchor, 0.5, "<= +0.5 s (the issue counts build too: not measured here)"),
        _row("inv --list", t_list, "python -c pass", anchor, 0.125, "<= +0.125 s"),
        _row("no-op inv fetch (1 git source)", t_fetch, "python -c pass", anchor, 0.125,
             "<= +0.125 s (a quarter of the 0.5 s budget)"),
        patch_row,
        image_row,
        {"measure": "peak RSS, no-op inv fetch", "askbuild_s": 0.0, "anchor": "150 MB",
         "anchor_s": 0.0, "ratio": round(rss_mb / 150, 2), "target": "< 150 MB",
         "met": rss_mb < 150, "notes": f"{rss_mb:.0f} MB (largest process of one no-op fetch)"},
    ]


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    for r in measure(p.parse_args()):
        print(r)
