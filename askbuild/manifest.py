"""``<work>/build-manifest.json``: what was built from what.

Written twice, each time atomically (temp file + rename): an early part before anything is built
(status ``running``: sources, patches, toolchain, recipe keys) and the full one at the end (status
``success`` / ``failed`` / ``interrupted``, artifacts, durations).  A killed build therefore still
leaves a manifest saying what it was building.  Schema: docs/build.md ("Manifest").
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from pathlib import Path

from .fsutil import read_json, write_json_atomic
from .settings import Settings

SCHEMA = 1


def now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_write = write_json_atomic


def manifest_path(settings: Settings) -> Path:
    return settings.work_dir / "build-manifest.json"


def read(settings: Settings) -> dict | None:
    return read_json(manifest_path(settings))


class Manifest:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = manifest_path(settings)
        self.data: dict = {}
        self._t0 = 0.0

    def start(self, *, plan, sources: dict, options: dict) -> None:
        import time
        self._t0 = time.monotonic()
        s = self.settings
        comps = {}
        for name in plan.names:
            r = plan.rs.recipes[name]
            comps[name] = {
                "status": "pending",
                "key": plan.keys[name],
                "kind": r.kind,
                "recipe": _rel(r.file, s.project_root),
                "recipe_sha256": hashlib.sha256(r.file.read_bytes()).hexdigest(),
                "source": r.source,
                "inputs": plan.key_inputs[name]["source"][r.source],
                "uses": plan.key_inputs[name]["uses"],
                "project_inputs": plan.key_inputs[name]["project"],
                "depends": list(r.depends),
                "log": str(s.logs_dir / f"{name}.log"),
                "artifacts": [],
            }
        self.data = {
            "schema": SCHEMA,
            "status": "running",
            "started": now(),
            "finished": None,
            "duration_s": None,
            "profile": s.profile,
            "work_dir": str(s.work_dir),
            "staging_dir": str(s.staging_dir),
            "options": options,
            "toolchain": {
                "cross_compile": plan.toolchain.prefix,
                "gcc": plan.toolchain.gcc,
                "gcc_version": plan.toolchain.gcc_version,
                "versions": plan.toolchain.versions,
                "packages": plan.toolchain.packages,
            },
            "sources": sources,
            "components": comps,
            "kernel": None,
            "ccache": {"enabled": bool(options.get("ccache"))},
        }
        _write(self.path, self.data)

    def finish(self, *, status: str, results: dict, ccache: dict | None) -> None:
        import time
        d = self.data
        d["status"] = status
        d["finished"] = now()
        d["duration_s"] = round(time.monotonic() - self._t0, 3)
        for name, res in results.items():
            c = d["components"][name]
            st = res.get("status", "pending")
            if st == "running":
                st = "interrupted"
            c["status"] = st
            rec = res.get("record") or {}
            for k in ("error", "reason", "jobs"):
                if res.get(k) is not None:
                    c[k] = res[k]
            if rec:
                c["duration_s"] = rec.get("duration_s")
                c["built_at"] = rec.get("finished")
                c["artifacts"] = [
                    {"path": a["path"], "file": a["file"], "staged": a.get("staged"),
                     "sha256": a["sha256"], "size": a["size"]}
                    for a in rec.get("artifacts", [])
                ]
                if rec.get("staged_tree"):
                    c["staged_tree"] = rec["staged_tree"]["dest"]
                if rec.get("kernel_release"):
                    d["kernel"] = {"component": name, "release": rec["kernel_release"]}
        if ccache is not None:
            d["ccache"].update(ccache)
        _write(self.path, d)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
