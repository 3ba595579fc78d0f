"""``inv rehearse --mirrors DIR``: the default recipes tried against mirrors of the real trees.

A rehearsal answers "would the default profile work on the real vendor tree?" without touching
the user's build.  It runs, in its own work directory (default ``<work>/rehearsal``):

1. **fetch** every source of the default profile through the mirror directory ``DIR``: every
   ``https://`` (and ``http://``) URL becomes ``file://DIR/`` + the rest of the URL (an
   ordinary ASKBUILD mirror, see :mod:`askbuild.urls`), e.g.
   ``https://github.com/we-are-mono/ASK.git`` -> ``DIR/github.com/we-are-mono/ASK.git`` (a
   git directory) and ``https://www.netfilter.org/projects/libnetfilter_conntrack/files/
   libnetfilter_conntrack-1.1.0.tar.xz`` -> that path below ``DIR`` (the file).  A source
   whose path is absent is *skipped* (the mirrors do not provide it); one that is present but
   does not fetch (a ref that does not exist, a hash that does not match) has *failed*;
2. **patch**: ``inv patch --check`` per source (applies / failed with the patch and reason /
   skipped because a tree it needs is missing), then the series is applied for real so the
   build uses patched trees;
3. **build** every userspace component (those that do not need the kernel build), one
   ``building.build`` call per component in dependency order, continuing past failures.  A
   component whose sources (its own, ``[uses]`` and its dependencies') are not available is
   skipped with the reason, naming the input and where it comes from.

The recipes are read from a copy of the project's ``recipes/``, ``patches/`` and ``kernel/``
made in the rehearsal work directory (``<rehearsal>/project``): resolving an unlocked source
records its lock in that copy, never in the project's ``recipes/sources.toml``.  The copy's
locks are what the mirrors resolved the refs to; the report shows them.

Result: one :class:`~askbuild.report.Report` (kind ``rehearse``, rows ``stage``, ``item``,
``status``, ``detail``; schema in docs/rehearsal.md), printed as a table (or JSON with
``--json``) and saved as ``<rehearsal>/rehearsal.json``.  The verb fails (exit 2) when any
row failed: everything the mirrors provide must fetch, patch and build.
"""

from __future__ import annotations

import graphlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from . import building, console, fetching, patchqueue, recipes, runlock
from .errors import AskbuildError, ConfigError, StepFailed
from .fsutil import write_json_atomic
from .gitutil import GitError
from .recipes import RecipeSet
from .report import Report
from .settings import Settings, absolute, check_dir_path, check_mirror
from .sources import Source, load_sources
from .urls import apply_mirrors

#: URL prefixes served from the mirror directory.
MIRRORED_PREFIXES = ("https://", "http://")
#: Project directories the default recipes read (copied into the rehearsal).
PROJECT_DIRS = ("recipes", "patches", "kernel")
COLUMNS = ["stage", "item", "status", "detail"]
REPORT_FILE = "rehearsal.json"
DETAIL_MAX = 220
ERROR_LINE = re.compile(r"(error|undefined reference|no such file|not found|cannot)", re.I)
LAYOUT_FIX = ("DIR holds the mirrors laid out by URL: https://HOST/PATH is read from "
              "DIR/HOST/PATH (a git directory for git sources, the file for tarballs); "
              "see docs/rehearsal.md")


def mirror_map(mirror_dir: Path) -> dict[str, str]:
    """The ASKBUILD mirrors that serve every https/http URL from ``mirror_dir``."""
    return {prefix: f"file://{mirror_dir}/" for prefix in MIRRORED_PREFIXES}


def mirror_path(source: Source, mirror_dir: Path) -> Path | None:
    """Where ``source`` lives below ``mirror_dir`` (None when its URL is not mirrored)."""
    url = apply_mirrors(source.url, mirror_map(mirror_dir))
    base = f"file://{mirror_dir}/"
    return mirror_dir / url[len(base):] if url.startswith(base) else None


def rehearsal_settings(settings: Settings, mirror_dir: Path, work_dir: Path) -> Settings:
    """The rehearsal's own settings: default profile, the project copy in ``work_dir``, the
    user's cache, only the rehearsal mirrors, never offline or locked."""
    return settings.replace(project_root=work_dir / "project", work_dir=work_dir,
                            profile="default", mirrors=mirror_map(mirror_dir),
                            offline=False, locked=False)


def _mirror_dir(value: str | os.PathLike | None) -> Path:
    if not value:
        raise ConfigError("--mirrors: a mirror directory is required", fix=LAYOUT_FIX)
    d = absolute(value)
    if not d.is_dir():
        raise ConfigError(f"--mirrors: {d} is not a directory", fix=LAYOUT_FIX)
    for prefix, repl in mirror_map(d).items():
        check_mirror(prefix, repl, "--mirrors")
    return d


def _work_dir(settings: Settings, value: str | os.PathLike | None) -> Path:
    work = absolute(value) if value else settings.rehearsal_dir
    check_dir_path(work, "--work-dir")
    if work == settings.work_dir:
        raise ConfigError(f"--work-dir: {work} is the work directory of your build; the "
                          "rehearsal would overwrite it",
                          fix="name another directory (default: <work>/rehearsal)")
    return work


def copy_project(root: Path, dest: Path) -> None:
    """``dest`` = a fresh copy of the project directories the recipes read (all or nothing:
    built under a temporary name, renamed into place)."""
    for old in dest.parent.glob(f".{dest.name}.tmp-*"):
        shutil.rmtree(old, ignore_errors=True)      # left by a killed run (we hold the lock)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    for d in PROJECT_DIRS:
        if (root / d).is_dir():
            shutil.copytree(root / d, tmp / d, symlinks=True)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)


def one_line(text: str, limit: int = DETAIL_MAX) -> str:
    """The first line of ``text``, shortened for the table."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def build_reason(message: str) -> str:
    """One line for a failed build: the failing step plus the first compiler/make error in the
    tail of its log (the full message stays in the JSON row)."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    step = next((ln for ln in lines if not ln.startswith("build failed")), "")
    tail_start = next((i for i, ln in enumerate(lines) if ln.startswith("--- last lines")),
                      len(lines))
    cause = next((ln for ln in lines[tail_start + 1:] if ERROR_LINE.search(ln)
                  and not ln.startswith("###")), "")
    text = f"{step}: {cause}" if cause and cause not in step else step
    return one_line(text or message)


def build_order(rs: RecipeSet) -> list[str]:
    """Every component, dependencies first, ties by name (the same order on every run)."""
    ts = graphlib.TopologicalSorter({n: rs.recipes[n].depends for n in sorted(rs.recipes)})
    ts.prepare()
    out: list[str] = []
    while ts.is_active():
        ready = sorted(ts.get_ready())
        out.extend(ready)
        ts.done(*ready)
    return out


def failure_text(e: Exception, settings: Settings) -> str:
    """The message of a failure caught per source / per component.  An operating-system
    error (a full disk...) is raised again: it stops the run.  Anything but an AskbuildError
    or a git failure is a bug in askbuild: still recorded (the rehearsal goes on and reports
    everything), raised again with ``--debug`` for the traceback."""
    if isinstance(e, AskbuildError):
        return str(e)
    if isinstance(e, OSError):
        raise e             # a full disk, a permission: the CLI names the path (and stops)
    if isinstance(e, GitError):
        return f"git failed: {' '.join(e.args_[:3])}...: {e.stderr.strip()}"
    if settings.debug:
        raise e
    return f"internal error in askbuild: {type(e).__name__}: {e} (run with --debug)"


def _lock_of(source: Source) -> dict:
    if source.kind == "git":
        return {"ref": source.ref, "commit": source.commit}
    return {"ref": source.ref, "sha256": source.sha256, "size": source.size}


@dataclass
class Rehearsal:
    """The state of one rehearsal run (``settings`` are the rehearsal's own)."""

    settings: Settings
    mirror_dir: Path
    report: Report
    project_root: Path                      # the user's project (the copy's original)
    sources: dict[str, Source] = field(default_factory=dict)
    #: source -> why it is not available to the build (absent: fetched and patched)
    unavailable: dict[str, str] = field(default_factory=dict)
    fetched: set[str] = field(default_factory=set)
    components: dict[str, str] = field(default_factory=dict)     # name -> row status

    def row(self, stage: str, item: str, status: str, detail: str, **extra: object) -> dict:
        return self.report.add(stage=stage, item=item, status=status, detail=detail, **extra)

    def failure(self, e: Exception) -> str:
        """:func:`failure_text`, naming the project's own files rather than their copies
        (the file to correct is the project's ``recipes/...``)."""
        copy = f"{self.settings.project_root}/"
        return failure_text(e, self.settings).replace(copy, f"{self.project_root}/")

    # -- 1. fetch ---------------------------------------------------------------------------
    def fetch_all(self) -> None:
        for name, src in self.sources.items():
            where = mirror_path(src, self.mirror_dir)
            if where is None:
                why = f"URL {src.url} is not https/http: the mirror directory cannot serve it"
                self.skip_source("fetch", name, why, "URL not mirrorable")
            elif not os.path.lexists(where):
                self.skip_source("fetch", name, f"not in the mirrors (expected {where})",
                                 "not in the mirrors", mirror=str(where))
            else:
                self.fetch_one(name, where)

    def skip_source(self, stage: str, name: str, why: str, short: str,
                    **extra: object) -> None:
        """A source the build cannot use: ``why`` in its row, ``short`` in the rows of the
        components that need it."""
        self.unavailable[name] = short
        self.row(stage, name, "skipped", why, **extra)

    def fetch_one(self, name: str, where: Path) -> None:
        try:
            fetching.fetch(self.settings, [name])
        except Exception as e:  # noqa: BLE001 - recorded; the other sources go on
            text = self.failure(e)
            self.unavailable[name] = "fetch failed"
            self.row("fetch", name, "failed", one_line(text), message=text, mirror=str(where))
            return
        src = load_sources(self.settings)[name]        # the lock the fetch recorded
        self.sources[name] = src
        self.fetched.add(name)
        lock = _lock_of(src)
        what = (f"{src.ref} -> commit {src.commit}" if src.kind == "git"
                else f"{src.filename}: sha256 {src.sha256}, {src.size} bytes")
        self.row("fetch", name, "fetched", what, lock=lock, mirror=str(where))

    # -- 2. patch ---------------------------------------------------------------------------
    def patch_all(self) -> None:
        try:
            layers = patchqueue.load_layers(self.settings, self.sources)
        except AskbuildError as e:
            text = self.failure(e)
            self.row("patch", "recipes/patches.toml", "failed", one_line(text), message=text)
            self.unavailable.update({n: "recipes/patches.toml is invalid"
                                     for n in self.sources if n not in self.unavailable})
            return
        for name in self.sources:
            if name not in self.fetched:
                self.row("patch", name, "skipped", "source not fetched")
                continue
            mine = layers.get(name, [])
            missing = sorted({ly.provider for ly in mine
                              if ly.provider and ly.provider not in self.fetched})
            if missing:
                self.skip_source("patch", name, "vendor layer(s) come from "
                                 f"{', '.join(missing)}, which was not fetched",
                                 f"not patched ({', '.join(missing)} not fetched)")
                continue
            self.patch_one(name, mine)

    def patch_one(self, name: str, layers: list) -> None:
        try:
            checked = patchqueue.patch(self.settings, [name], check=True)
            patchqueue.patch(self.settings, [name])
        except Exception as e:  # noqa: BLE001 - recorded; the other sources go on
            text = self.failure(e)
            self.unavailable[name] = "patches do not apply"
            self.row("patch", name, "failed", one_line(text), message=text)
            return
        rows = [r for r in checked.rows if r.get("source") == name]
        counts = {ly.id: sum(1 for r in rows if r.get("layer") == ly.id) for ly in layers}
        parts = [f"{lid} ({n})" for lid, n in counts.items()]
        detail = f"{len(rows)} patch(es)" + (f": {', '.join(parts)}" if parts else
                                             ": no patch layers")
        self.row("patch", name, "applies", detail,
                 patches=[{"layer": r.get("layer"), "patch": r.get("patch"),
                           "status": r.get("status")} for r in rows])

    # -- 3. build ---------------------------------------------------------------------------
    def build_all(self, rs: RecipeSet) -> None:
        for name in build_order(rs):
            if any(rs.recipes[c].kind == "kernel" for c in rs.closure([name])):
                self.row("build", name, "skipped", "kernel-side component (needs the kernel "
                         "build): the rehearsal builds userspace only")
                self.components[name] = "skipped"
                continue
            blocked = self.blocked(rs, name)
            if blocked:
                self.row("build", name, "skipped", blocked)
                self.components[name] = "skipped"
                continue
            self.build_one(name)

    def needs(self, rs: RecipeSet, name: str) -> dict[str, str]:
        """Every source ``name``'s build reads -> how, for messages: ``""`` for the
        component's own source, else the paths it uses (with where they come from) and/or
        the dependency that reads it."""
        out: dict[str, str] = {}
        for c in [name, *sorted(rs.closure([name]) - {name})]:
            r = rs.recipes[c]
            via = "" if c == name else f"for dependency {c}"
            out.setdefault(r.source, via)
            for src, paths in r.uses.items():
                desc = self.sources[src].description if src in self.sources else ""
                what = f"{', '.join(paths)} of {desc or src}"
                out.setdefault(src, ", ".join(x for x in (what, via) if x))
        return out

    def blocked(self, rs: RecipeSet, name: str) -> str:
        """Why ``name`` cannot be built from these mirrors ("" when it can): each missing
        input (what is read, from where) and why it is missing."""
        why = [f"source {src}{f' [{how}]' if how else ''}: {self.unavailable[src]}"
               for src, how in self.needs(rs, name).items() if src in self.unavailable]
        if why:
            return "missing input: " + "; ".join(why)
        bad = [d for d in rs.recipes[name].depends if self.components.get(d) != "built"]
        return f"dependency {', '.join(bad)} not built" if bad else ""

    def build_one(self, name: str) -> None:
        try:
            man = building.build(self.settings, [name], keep_going=True)
        except Exception as e:  # noqa: BLE001 - recorded; the other components go on
            text = self.failure(e)
            self.components[name] = "failed"
            self.row("build", name, "failed", build_reason(text), message=text,
                     log=str(self.settings.log_file(name)))
            return
        comp = (man or {}).get("components", {}).get(name, {})
        rec = building.read_record(self.settings, name) or {}
        staged = [a["staged"] for a in rec.get("artifacts", []) if a.get("staged")]
        how = ("up to date" if comp.get("status") == "cached"
               else f"built in {float(rec.get('duration_s') or 0):.1f}s")
        detail = how + (f"; staged {', '.join(staged)}" if staged else "")
        self.components[name] = "built"
        self.row("build", name, "built", detail, staged=staged,
                 log=str(self.settings.log_file(name)))


def rehearse(settings: Settings, mirrors: str | os.PathLike | None, *,
             work_dir: str | os.PathLike | None = None, as_json: bool = False) -> Report:
    """The ``inv rehearse`` verb (module docstring).  Returns the report; raises
    :class:`StepFailed` (exit 2) after printing it when any step failed."""
    mirror_dir = _mirror_dir(mirrors)
    work = _work_dir(settings, work_dir)
    again = settings.command("rehearse", "--mirrors", str(mirror_dir),
                             *(["--work-dir", str(work)] if work_dir else []))
    rs_settings = rehearsal_settings(settings, mirror_dir, work)
    report = Report("rehearse", f"rehearsal of the default profile against {mirror_dir}",
                    COLUMNS, subject={"mirrors": str(mirror_dir), "work_dir": str(work),
                                      "profile": "default"})
    with runlock.work_dir(rs_settings, "rehearse"):
        copy_project(settings.project_root, rs_settings.project_root)
        r = Rehearsal(rs_settings, mirror_dir, report, settings.project_root)
        try:
            r.sources = load_sources(rs_settings)
        except AskbuildError as e:
            raise ConfigError(r.failure(e)) from None
        console.step(f"rehearse: fetch {len(r.sources)} source(s) from {mirror_dir}")
        r.fetch_all()
        console.step("rehearse: patch --check")
        r.patch_all()
        console.step("rehearse: build the userspace components")
        try:
            rs = recipes.load(rs_settings)
        except AskbuildError as e:
            text = r.failure(e)
            r.row("build", "recipes/components", "failed", one_line(text), message=text)
        else:
            r.build_all(rs)
        report.subject["locks"] = {n: _lock_of(r.sources[n]) for n in sorted(r.fetched)}
        failed = [f"{row['stage']} {row['item']}" for row in report.rows
                  if row["status"] == "failed"]
        report.ok = not failed
        saved = work / REPORT_FILE
        report.messages.append(f"report: {saved}")
        write_json_atomic(saved, report.to_dict())
    report.emit(as_json=as_json)
    if failed:
        raise StepFailed(f"rehearsal: {len(failed)} step(s) failed: {', '.join(failed)}",
                         fix=f"read the table (full messages in {saved}); fix the recipes "
                             "(recipes/sources.toml, recipes/patches.toml, the component "
                             f"recipe), then run `{again}` again")
    return report
