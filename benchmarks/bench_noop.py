"""Issue 9 point 2/3: no-op verbs and ``inv --list`` against ``python -c pass``, and the peak
RSS of a no-op verb.  Inputs: a temporary project with one git source (tests/upstreams.py).

Only ``inv fetch`` has a fast no-op path so far; rows for patch/build/image are to be added
when theirs land (see the report of issue 9)."""

from __future__ import annotations

import argparse
import os
import resource
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
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        subprocess.run(fetch, env=env, check=True, capture_output=True)
        rss_mb = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    return [
        _row("inv --list", t_list, "python -c pass", anchor, 0.125, "<= +0.125 s"),
        _row("no-op inv fetch (1 git source)", t_fetch, "python -c pass", anchor, 0.125,
             "<= +0.125 s (a quarter of the 0.5 s budget)"),
        {"measure": "peak RSS, no-op inv fetch", "askbuild_s": 0.0, "anchor": "150 MB",
         "anchor_s": 0.0, "ratio": round(rss_mb / 150, 2), "target": "< 150 MB",
         "met": rss_mb < 150, "notes": f"{rss_mb:.0f} MB (max RSS of children so far)"},
    ]


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    for r in measure(p.parse_args()):
        print(r)
