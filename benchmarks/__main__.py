"""Run askbuild's benchmarks and print one Markdown table (askbuild vs its anchor, the ratio and
whether the target is met), and write the rows as JSON.

    .venv/bin/python -m benchmarks [--rounds 5] [--quick] [--kernel] [--only noop,patch]
                                   [--json FILE]

Every ``benchmarks/bench_<topic>.py`` module provides ``measure(args) -> list[dict]``, one dict
per row::

    {"measure": str, "askbuild_s": float, "anchor": str, "anchor_s": float,
     "ratio": float, "target": str, "met": bool | None, "notes": str}

(``met`` None: a row shown for comparison, not askbuild as shipped; it has no target.)

Times are medians of ``--rounds`` runs, each measured in the same run as its anchor.  Run it on
a quiet machine: the numbers are only comparable within one run (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KEYS = ("measure", "askbuild_s", "anchor", "anchor_s", "ratio", "target", "met", "notes")


#: Run last: deleting its trees (GBs, on a file system mounted with ``discard``) slows the
#: writes of whatever is measured next.
LAST = ("import",)


def topics() -> list[str]:
    return sorted((p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py")),
                  key=lambda t: (t in LAST, t))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    summary = " ".join(__doc__.split("\n\n")[0].split())       # the first paragraph
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=summary)
    ap.add_argument("--rounds", type=int, default=5, help="runs per measure (median taken)")
    ap.add_argument("--quick", action="store_true", help="fewer rounds, smaller inputs")
    ap.add_argument("--kernel", action="store_true",
                    help="also the measures on Debian's kernel tarball (minutes each): its "
                         "import, the cold example build with the kernel, and 5 patches "
                         "and the rebase dry run on its tree")
    ap.add_argument("--only", default="", help=f"comma-separated topics of {topics()}")
    ap.add_argument("--json", default=str(ROOT / "build" / "benchmarks.json"),
                    help="where to write the rows as JSON (default: build/benchmarks.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds = min(args.rounds, 3)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    return args


def fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    return "" if value is None else str(value)


def table(rows: list[dict]) -> str:
    head = ["measure", "askbuild (s)", "anchor", "anchor (s)", "ratio", "target", "met", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [fmt(r.get(k)) for k in KEYS]
        cells[4] = f"{r['ratio']:.2f}x" if isinstance(r.get("ratio"), float) else cells[4]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    os.environ.setdefault("CI", "true")          # plain progress lines from askbuild
    for p in (str(ROOT), str(ROOT / "tests")):
        if p not in sys.path:
            sys.path.insert(0, p)
    wanted = [t.strip() for t in args.only.split(",") if t.strip()] or topics()
    unknown = sorted(set(wanted) - set(topics()))
    if unknown:
        print(f"benchmarks: unknown topic(s) {', '.join(unknown)}; known: {topics()}",
              file=sys.stderr)
        return 2
    rows: list[dict] = []
    failed: list[str] = []
    t0 = time.monotonic()
    for topic in wanted:
        print(f"== {topic}", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(f"benchmarks.bench_{topic}")
            got = module.measure(args)
        except Exception:                      # noqa: BLE001 - report it, run the others
            failed.append(topic)
            traceback.print_exc()
            continue
        for r in got:
            missing = [k for k in KEYS if k not in r]
            if missing:
                raise SystemExit(f"bench_{topic}: row {r.get('measure')!r} lacks {missing}")
            rows.append({"topic": topic, **r})
    out = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "platform": platform.platform()},
           "rounds": args.rounds, "quick": args.quick,
           "seconds": round(time.monotonic() - t0, 1), "rows": rows, "failed": failed}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(table(rows))
    targets = [r for r in rows if r["met"] is not None]
    shown = len(rows) - len(targets)
    print(f"\n{sum(r['met'] for r in targets)} of {len(targets)} targets met"
          + (f" ({shown} comparison row(s) besides)" if shown else "") + f"; rows in {args.json}"
          + (f"; FAILED to run: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
