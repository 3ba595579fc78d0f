"""Machine B (empty directories, sources from the mirror, every component from the shared build
cache) against machine A (builds and uploads), on the example profile's userspace, through the
CLI with a real registry (tests/test_fleet.py drives both machines).

* build phase (``build-manifest.json`` ``duration_s``: keys, the DAG, staging; A compiles, B
  takes): B vs A, goal B under 10% of A.  A's is its one build (a second would find its own
  uploads there); B's is the median of ``--rounds`` builds: its first, then again with its
  build records removed, so that every component is taken from the shared cache again;
* end to end (A: ``inv build`` with its fetch and patch; B: ``inv fetch`` from the mirror,
  ``inv patch``, ``inv build``): B vs A.  Both import the example kernel's source tarball
  (the fmlib recipe reads it), which dominates both on the userspace alone.

    .venv/bin/python -m benchmarks.bench_fleet [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("CI", "true")

from registryfixtures import Registry  # noqa: E402
from test_fleet import build_on_b, run_fleet  # noqa: E402


def _b_again(r: dict, reg: Registry) -> float:
    """Machine B's build phase once more, every component taken from the shared cache again
    (its build records removed: nothing is up to date)."""
    b = r["b"]
    for record in (b.work / "state").glob("build-*.json"):
        record.unlink()
    build_on_b(b, reg, r["line"])
    man = b.manifest()
    taken = {c["origin"] for c in man["components"].values()}
    if taken != {"remote"}:
        raise SystemExit(f"bench_fleet: machine B's rebuild took {sorted(taken)}, not only "
                         "the shared cache: the measure would not be B's")
    return man["duration_s"]


def measure(args) -> list[dict]:
    """One fleet run (A then B, B's build phase ``args.rounds`` times); two rows."""
    with tempfile.TemporaryDirectory(prefix="askbuild-bench-fleet-") as d:
        tmp = Path(d)
        reg = Registry.start(tmp / "registry")
        try:
            t0 = time.monotonic()
            r = run_fleet(tmp, reg)
            total = time.monotonic() - t0
            b_phases = [r["b"].manifest()["duration_s"]]
            b_phases += [_b_again(r, reg) for _ in range(args.rounds - 1)]
        finally:
            reg.stop()
            for m in ("a", "b"):
                shutil.rmtree(tmp / m / "work" / "src", ignore_errors=True)
        a_phase = r["a"].manifest()["duration_s"]
        b_phase = statistics.median(b_phases)
        b_total = r["b_sources"] + r["b_build"]
        compiled = r["b"].compiler_log.read_text().count("\n")
    return [
        {"measure": "fleet: machine B build phase (all 7 components from the shared cache)",
         "askbuild_s": round(b_phase, 3), "anchor": "machine A build phase (compiles, then "
         "uploads)", "anchor_s": round(a_phase, 3), "ratio": round(b_phase / a_phase, 3),
         "target": "<= 0.10", "met": b_phase / a_phase <= 0.10,
         "notes": f"example userspace (no kernel); compiler calls on B: {compiled}; B: median "
                  f"of {len(b_phases)} ({', '.join(f'{x:.3f}' for x in b_phases)}), A: one"},
        {"measure": "fleet: machine B end to end (mirror fetch, patch, build)",
         "askbuild_s": round(b_total, 3), "anchor": "machine A inv build (fetch, patch, "
         "build, upload)", "anchor_s": round(r["a_build"], 3),
         "ratio": round(b_total / r["a_build"], 3), "target": "< 1 (informational)",
         "met": b_total < r["a_build"],
         "notes": f"both import the linux-source-6.1 tarball (fmlib reads it); whole run "
                  f"{total:.0f}s with the mirror, images and push"},
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    for row in measure(ap.parse_args()):
        print(row)


if __name__ == "__main__":
    main()
