"""Time a no-op rebuild of the fixture userspace (what `inv build` costs when nothing changed).

    .venv/bin/python benchmarks/noop_rebuild.py [--rounds 5] [--jobs 2]

Builds the fixture vendor tree once in a temporary work directory (real cross compiler), then
runs the same build N times and prints the timings: every component must come out `cached`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

os.environ.setdefault("CI", "true")      # plain progress lines

import buildfixtures as bf  # noqa: E402

from askbuild import building  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="askbuild-bench-") as d:
        tmp = Path(d)
        project = bf.make_project(tmp / "project")
        s = bf.settings_for(tmp, project, jobs=args.jobs)
        bf.make_fixture_sources(s)
        t0 = time.perf_counter()
        building.build(s, bf.USERSPACE, prepare=False)
        full = time.perf_counter() - t0
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            man = building.build(s, bf.USERSPACE, prepare=False)
            times.append(time.perf_counter() - t0)
            states = {c["status"] for c in man["components"].values()}
            assert states == {"cached"}, states
        n = len(man["components"])
    print(f"components: {n}")
    print(f"full build: {full:.3f} s")
    print(f"no-op rebuild: min {min(times):.3f} s, median {statistics.median(times):.3f} s, "
          f"max {max(times):.3f} s over {len(times)} rounds")


if __name__ == "__main__":
    main()
