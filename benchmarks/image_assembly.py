"""Image assembly timings on the test fixture (cross-compiled fixture programs, real Debian
arm64 base layer).

    .venv/bin/python benchmarks/image_assembly.py [--load] [--cold]

Prints one line per phase, in seconds:
  base-normalise  base layer cached by mmdebstrap, blob written for a new SOURCE_DATE_EPOCH
  warm            everything cached: application layer + archive (+ ELF check)
  warm-again      the same again (must give the same archive sha256)
  load            docker load through the SDK (with --load and a reachable engine)
  cold            a fresh cache dir: mmdebstrap + normalise + archive (with --cold)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import imagefixtures as fx  # noqa: E402

from askbuild import console, imaging  # noqa: E402
from askbuild.settings import Settings  # noqa: E402


def timed(label: str, fn):
    t0 = time.monotonic()
    result = fn()
    dt = time.monotonic() - t0
    print(f"{label:<16} {dt:7.2f} s", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--load", action="store_true", help="also time loading into the engine")
    ap.add_argument("--cold", action="store_true", help="also time a build with an empty cache")
    args = ap.parse_args()
    os.environ.setdefault("ASKBUILD_PLAIN", "1")
    console.reset_console()
    with tempfile.TemporaryDirectory(prefix="askbuild-bench-") as d:
        tmp = Path(d)
        programs = timed("compile-fixture", lambda: fx.compile_programs(tmp / "programs"))
        work = tmp / "work"
        fx.make_work(work, programs)
        settings = fx.settings_for(work)
        # a new epoch forces a new normalised base blob from the cached mmdebstrap output
        os.environ["SOURCE_DATE_EPOCH"] = str(1_600_000_000 + int(time.time()) % 100_000)
        timed("base-normalise", lambda: imaging.image(settings, tag="bench", load=False))
        r1 = timed("warm", lambda: imaging.image(settings, tag="bench", load=False))
        r2 = timed("warm-again", lambda: imaging.image(settings, tag="bench", load=False))
        print(f"{'identical':<16} {r1.archive_sha256 == r2.archive_sha256}")
        print(f"{'archive-bytes':<16} {r1.archive.stat().st_size}")
        for layer in r1.layers:
            print(f"{'layer-' + layer['role']:<16} {layer['size']} bytes (gzip)")
        if args.load:
            client = imaging.docker_client()
            if client is None:
                print(f"{'load':<16} skipped: no engine")
            else:
                timed("load", lambda: imaging.load_archive(client, r1.archive, r1.ref,
                                                           r1.image_id))
                client.images.remove(r1.ref, force=True)
                client.close()
        if args.cold:
            cold = Settings(project_root=ROOT, work_dir=work, cache_dir=tmp / "cold-cache")
            timed("cold", lambda: imaging.image(cold, tag="bench", load=False))


if __name__ == "__main__":
    main()
