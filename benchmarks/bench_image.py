"""Image rebuild after one changed binary: ``inv image --no-load`` (the reproducible archive)
against a ``docker build`` of the same files with the legacy builder (base layer cached as a
build step, the staging tree copied on top), when a Docker engine is reachable or dockerd can
be started.

    .venv/bin/python -m benchmarks.bench_image [--rounds 5]
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [p for p in (str(ROOT), str(ROOT / "tests")) if p not in sys.path]

import imagefixtures as fx  # noqa: E402

from askbuild import console, imaging  # noqa: E402
from benchmarks.own_rss import peak_rss_mb, rss_row  # noqa: E402

DOCKERFILE = "FROM scratch\nADD base.tar /\nCOPY staging/ /\n"
#: the image rebuild in a Python of its own, for its peak RSS (benchmarks/own_rss.py)
RSS_RUN = ("import sys; from pathlib import Path; sys.path[:0] = {paths!r}; "
           "import imagefixtures as fx; from askbuild import imaging; "
           "imaging.image(fx.settings_for(Path({work!r})), tag='bench', load=False)")


def _touch_binary(staging: Path, n: int) -> None:
    """Change one staged binary (trailing bytes: still a valid ELF) so the app layer changes."""
    with open(staging / "usr/bin/fmc", "ab") as f:
        f.write(n.to_bytes(4, "little"))


def _base_tar(archive: Path, dest: Path) -> None:
    """The base layer of the archive askbuild wrote, uncompressed, for the docker anchor."""
    with tarfile.open(archive) as t:
        manifest = json.load(t.extractfile("manifest.json"))
        first = manifest[0]["Layers"][0]
        data = t.extractfile(first).read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    dest.write_bytes(data)


def _docker_build(client, ctx: Path) -> float:
    t0 = time.perf_counter()
    image, _ = client.images.build(path=str(ctx), tag="askbuild-bench/anchor:latest", rm=True,
                                   platform="linux/arm64")
    return time.perf_counter() - t0


def measure(args) -> list[dict]:
    os.environ.setdefault("ASKBUILD_PLAIN", "1")
    console.reset_console()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="askbuild-bench-image-") as d:
        tmp = Path(d)
        programs = fx.compile_programs(tmp / "programs")
        work = tmp / "work"
        fx.make_work(work, programs)
        settings = fx.settings_for(work)
        first = imaging.image(settings, tag="bench", load=False)       # warms the base layer
        ours = []
        for i in range(args.rounds):
            _touch_binary(settings.staging_dir, i)
            t0 = time.perf_counter()
            imaging.image(settings, tag="bench", load=False)
            ours.append(time.perf_counter() - t0)
        _touch_binary(settings.staging_dir, args.rounds)
        rss = peak_rss_mb(["-c", RSS_RUN.format(paths=[str(ROOT), str(ROOT / "tests")],
                                                work=str(work))])
        row = {"measure": "image rebuild, one binary changed (archive, --no-load)",
               "askbuild_s": statistics.median(ours), "anchor": "docker build (legacy builder)",
               "anchor_s": None, "ratio": None, "target": "<= 1x", "met": False, "notes": ""}
        engine = None
        try:
            engine = fx.start_or_reuse_engine(tmp / "engine")
        except RuntimeError as e:
            row["notes"] = f"no engine: {e}"
        if engine is not None:
            client = engine.client()
            ctx = tmp / "ctx"
            ctx.mkdir()
            _base_tar(first.archive, ctx / "base.tar")
            shutil.copytree(settings.staging_dir, ctx / "staging", symlinks=True)
            (ctx / "Dockerfile").write_text(DOCKERFILE)
            _docker_build(client, ctx)                                  # caches the base step
            theirs = []
            for i in range(args.rounds):
                _touch_binary(ctx / "staging", 1000 + i)
                theirs.append(_docker_build(client, ctx))
            client.images.remove("askbuild-bench/anchor:latest", force=True)
            client.close()
            engine.stop()
            row.update(anchor_s=statistics.median(theirs))
            row["ratio"] = row["askbuild_s"] / row["anchor_s"]
            row["met"] = row["ratio"] <= 1.0
        elif not row["notes"]:
            row["notes"] = "no Docker engine: anchor not measured"
        rows.append(row)
    rows.append(rss_row("peak RSS, image rebuild, one binary changed", rss,
                        "askbuild's own process writing the archive"))
    return rows


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    a.quick = False
    for r in measure(a):
        print(json.dumps(r))
