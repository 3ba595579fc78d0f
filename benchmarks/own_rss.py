"""askbuild's own peak RSS while it works (issue 9: under 150 MB).

``python -m benchmarks.own_rss OUT ARGV...`` runs ``askbuild ARGV`` (its ``__main__``, as
``python -m askbuild`` does) in this process; ``python -m benchmarks.own_rss OUT -c CODE``
runs ``CODE`` instead (an engine call the bench makes in-process).  Either way it then
writes this process's peak RSS in kB to ``OUT`` and exits with askbuild's status: askbuild
alone, not the git, tar, make or compiler processes it runs.  That is the ``VmHWM`` of
``/proc/self/status``, not ``getrusage``'s ``ru_maxrss``: Linux folds the peak of the
memory a process had before its ``exec`` into that, which for a child of (v)fork is its
parent's (the bench's own process, 278 MB in one run, was reported as askbuild's).
:func:`peak_rss_mb` runs it from the benches.
"""

from __future__ import annotations

import os
import resource
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT_MB = 150                  # the target for askbuild's own peak RSS


def peak_rss_mb(argv: list[str], *, env: dict | None = None) -> float:
    """Run ``argv`` (as :func:`main` takes it, without ``OUT``) in a new Python from the
    checkout and return its own peak RSS in MB; SystemExit when the run fails."""
    with tempfile.TemporaryDirectory(prefix="askbuild-bench-rss-") as d:
        out = Path(d) / "rss"
        proc = subprocess.run([sys.executable, "-m", "benchmarks.own_rss", str(out), *argv],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode or not out.is_file():
            raise SystemExit(f"own_rss {argv[:3]} failed ({proc.returncode}):\n"
                             f"{proc.stderr[-3000:]}")
        return int(out.read_text()) / 1024


def rss_row(measure: str, mb: float, notes: str) -> dict:
    """A table row for a peak RSS of ``mb`` against the issue's 150 MB."""
    return {"measure": measure, "askbuild_s": 0.0, "anchor": f"{LIMIT_MB} MB", "anchor_s": 0.0,
            "ratio": round(mb / LIMIT_MB, 2), "target": f"< {LIMIT_MB} MB",
            "met": mb < LIMIT_MB, "notes": f"{mb:.0f} MB ({notes})"}



def main() -> None:
    out, argv = sys.argv[1], sys.argv[2:]
    code: object = 0
    try:
        if argv[:1] == ["-c"]:
            sys.argv = ["-c", *argv[2:]]
            exec(compile(argv[1], "<own_rss>", "exec"), {"__name__": "__main__"})  # noqa: S102
        else:
            sys.argv = [os.path.join(ROOT, "askbuild", "__main__.py"), *argv]
            runpy.run_module("askbuild", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code
    finally:
        Path(out).write_text(str(_peak_kb()))
    sys.exit(code)


def _peak_kb() -> int:
    """This process's own peak RSS since its ``exec``, in kB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # (no procfs: an upper bound)


if __name__ == "__main__":
    main()
