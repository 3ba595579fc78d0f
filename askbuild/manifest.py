"""``<work>/build-manifest.json``: what the staging tree holds, built from what.

Written twice, each time atomically (temp file + rename): an early part before anything is built
(status ``running``: sources, patches, toolchain, recipe keys) and the full one at the end (status
``success`` / ``failed`` / ``interrupted``, artifacts, durations).  A killed build therefore still
leaves a manifest saying what it was building.

The manifest describes the whole staging tree, not only the components of the last run:
components built by earlier runs whose done record is still current (same key, files in place)
are listed with status ``current`` (and their sources), and ``missing`` names every component
the staging tree does not hold a current build of, with the reason; ``complete`` is true when
the run succeeded and nothing is missing.  ``inv image`` relies on that.  Schema: docs/build.md
("Manifest").
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import time
from pathlib import Path

from .fsutil import read_json, write_json_atomic
from .settings import Settings

SCHEMA = 2
#: Component states meaning "the staging tree holds a current build of it".
PRESENT = ("built", "cached", "current")


def now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read(settings: Settings) -> dict | None:
    """The manifest at ``settings.build_manifest`` (None when there is none)."""
    return read_json(settings.build_manifest)


def _component(plan, name: str, settings: Settings, status: str) -> dict:
    """A component's entry before any record is applied."""
    r = plan.rs.recipes[name]
    inputs = plan.key_inputs.get(name, {})
    return {
        "status": status,
        "key": plan.keys.get(name),
        "kind": r.kind,
        "recipe": _rel(r.file, settings.project_root),
        "recipe_sha256": hashlib.sha256(r.file.read_bytes()).hexdigest(),
        "source": r.source,
        "inputs": inputs.get("source", {}).get(r.source, {}),
        "uses": inputs.get("uses", {}),
        "project_inputs": inputs.get("project", {}),
        "depends": list(r.depends),
        "log": str(settings.log_file(name)),
        "artifacts": [],
    }


def _apply_record(d: dict, name: str, rec: dict) -> None:
    """What a done record says about component ``name`` (artifacts, when, the kernel)."""
    c = d["components"][name]
    c["duration_s"] = rec.get("duration_s")
    c["built_at"] = rec.get("finished")
    c["artifacts"] = [
        {"path": a["path"], "file": a["file"], "staged": a.get("staged"),
         "sha256": a["sha256"], "size": a["size"]}
        for a in rec.get("artifacts", [])
    ]
    if rec.get("staged_tree"):
        c["staged_tree"] = rec["staged_tree"]["dest"]
    if rec.get("build_tree"):
        c["build_tree"] = rec["build_tree"]        # incremental, or why it was a clean build
    if rec.get("kernel_release"):
        d["kernel"] = {"component": name, "release": rec["kernel_release"]}


class Manifest:
    """The manifest of one build: :meth:`start` writes the early part, :meth:`finish` the
    whole; ``data`` is this run's manifest, ``path`` where it is written
    (``settings.build_manifest``).  A run that changes nothing (``start(quiet=True)``) and
    whose manifest says what the file says but for its times leaves the file as it is."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = settings.build_manifest
        self.data: dict = {}
        self._quiet = False
        self._t0 = 0.0
        self._outside: dict[str, str] = {}

    def start(self, *, plan, sources: dict, options: dict, earlier: dict[str, dict] | None = None,
              outside: dict[str, str] | None = None, quiet: bool = False) -> None:
        """The early manifest.  ``earlier``: {component: current done record} of components
        not in this run; ``outside``: {component: why the staging tree has no current build}
        for the other components not in this run.  ``quiet``: every component of the run is
        expected current: write nothing now, and at :meth:`finish` only if the manifest says
        something else than the one on disk but for the times (a repeated no-op build leaves
        it as it is)."""
        self._quiet = quiet
        self._t0 = time.monotonic()
        self._outside = dict(outside or {})
        s = self.settings
        comps = {name: _component(plan, name, s, "pending") for name in plan.names}
        for name in earlier or {}:
            comps[name] = {**_component(plan, name, s, "current"), "origin": "cached"}
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
            "complete": False,
            "missing": {},
            "ccache": {"enabled": bool(options.get("ccache"))},
        }
        for name, rec in (earlier or {}).items():
            _apply_record(self.data, name, rec)
        self._set_missing()
        if not quiet:
            write_json_atomic(self.path, self.data)

    def _set_missing(self) -> None:
        d = self.data
        missing = dict(self._outside)
        for name, c in d["components"].items():
            if c["status"] not in PRESENT:
                why = c.get("error") or c.get("reason") or ""
                missing[name] = f"{c['status']}{': ' + why if why else ''}"
        d["missing"] = dict(sorted(missing.items()))
        d["complete"] = d["status"] == "success" and not missing

    def finish(self, *, status: str, results: dict, ccache: dict | None) -> None:
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
            # origin: built | cached | remote (the shared build cache: ``remote`` says where
            # from; ``pushed``: where this run uploaded it)
            for k in ("error", "reason", "jobs", "origin", "remote", "pushed"):
                if res.get(k) is not None:
                    c[k] = res[k]
            if res.get("record"):
                _apply_record(d, name, res["record"])
        if ccache is not None:
            d["ccache"].update(ccache)
        self._set_missing()
        if self._quiet and _same_build(d, read_json(self.path)):
            return          # a no-op that changes nothing, the file included
        write_json_atomic(self.path, d)


# what differs between two runs that did the same (here: nothing) to the same staging tree
_RUN_FIELDS = ("started", "finished", "duration_s")


def _same_build(new: dict, old: dict | None) -> bool:
    """``new`` (this run's manifest) says what ``old`` (the file) says but for the run's
    times: same components, statuses and origins, records, sources and options.  So the first
    no-op after a build still writes (its components are ``cached``, not ``built``); the next
    ones leave the file as it is."""
    if not old or new.get("status") != "success":
        return False
    return ({k: v for k, v in new.items() if k not in _RUN_FIELDS}
            == {k: v for k, v in old.items() if k not in _RUN_FIELDS})


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
