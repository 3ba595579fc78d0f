"""``inv build``: :func:`build` reads as its phases.

Plan (nothing runs yet): load the recipes, make the missing source trees, check the cross
compiler, compute the keys (both from the build stamp when what they depend on is unchanged,
:mod:`.stamp`), check each component's preconditions (fail-fast unless
``keep_going``).  Run: the ccache links, the up-front staging check, the early manifest (with the
components of earlier runs that are still current), the DAG of components, the post checks
(vermagic, depmod), the final manifest, then the result: the manifest or one error.
"""

from __future__ import annotations

import errno
import shlex
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from .. import console, kernel, manifest, procs, recipes, runlock, toolchain
from ..errors import BuildFailed, MissingToolError, UserError, os_error_message
from ..recipes import RecipeSet
from ..settings import Settings
from . import ccache
from .inputs import is_tree, one_error, prepare_sources, source_info
from .keys import Plan, check_preconditions, compute_keys, not_startable
from .records import needs_restage, trusted_record, up_to_date
from .runner import StepError, base_env
from .schedule import Build, Reporter
from .stamp import BuildStamp

if TYPE_CHECKING:
    from .remote import RemoteCache


@runlock.exclusive("build")
def build(settings: Settings, components: list[str] | None = None, *, keep_going: bool = False,
          ccache: bool = False, prepare: bool = True) -> dict:
    """Build ``components`` (all when empty) and their dependencies.  Returns the manifest.

    A component whose inputs are missing (a source work tree, a path in it, an arm64 library,
    a host tool) cannot start: without ``keep_going`` nothing is built and the error says what
    is missing and where it comes from; with ``keep_going`` only that component fails (its
    dependents are skipped) and everything else is built.  ``prepare``: fetch + patch the
    missing source trees first.

    Holds the work-dir lock for the whole run: a second build (or any other verb) in the same
    work directory waits for this one."""
    ccache = ccache or bool(settings.ccache_remote)     # remote storage implies --ccache
    plan = make_plan(settings, components, keep_going=keep_going, ccache=ccache,
                     prepare=prepare)
    if plan.blocked and not keep_going:
        raise not_startable(plan)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    return run_plan(settings, plan, keep_going=keep_going)


# -- plan -------------------------------------------------------------------------------
def make_plan(settings: Settings, components: list[str] | None, *, keep_going: bool,
              ccache: bool, prepare: bool) -> Plan:
    """Everything decided before a step runs: the components, their keys, what blocks them."""
    rs = recipes.load(settings)
    names = rs.order(components or None)
    unavailable = prepare_sources(settings, _sources_read(rs, names), prepare, keep_going)
    stamp = BuildStamp(settings)
    plan = Plan(settings, rs, names, _toolchain(settings, rs, stamp), ccache=ccache,
                stamp=stamp)
    compute_keys(plan, unavailable)
    check_preconditions(plan)
    stamp.save()
    return plan


def _sources_read(rs: RecipeSet, names: list[str]) -> list[str]:
    """The sources the components ``names`` read (their own and their ``uses``)."""
    read = [rs.recipes[n] for n in names]
    return sorted({r.source for r in read} | {u for r in read for u in r.uses})


def _toolchain(settings: Settings, rs: RecipeSet, stamp: BuildStamp) -> toolchain.Toolchain:
    """The cross compiler (checked: every component needs it) and the versions of the arm64
    packages any recipe links against (from ``stamp`` when nothing they depend on changed)."""
    return stamp.toolchain(settings, sorted(
        {toolchain.KNOWN_LIBS[lib][0] for r in rs.recipes.values() for lib in r.host_libs}))


def earlier_builds(settings: Settings, plan: Plan) -> tuple[dict[str, dict], dict[str, str]]:
    """The components *not* in this run: ({name: done record} of those whose record is
    current -- same key as now, artifacts and staged files in place -- and {name: why not}
    for the others).  So the manifest describes the whole staging tree, not only this run."""
    current: dict[str, dict] = {}
    missing: dict[str, str] = {}
    for n in plan.rs.order():
        if n in plan.names:
            continue
        rec = trusted_record(settings, n)
        if n in plan.unknown:
            missing[n] = f"its inputs cannot be read ({plan.unknown[n]})"
        elif rec is None:
            missing[n] = "not built (no done record)"
        elif not up_to_date(rec, plan.keys[n]):
            missing[n] = (f"stale: built from other inputs than the current ones "
                          f"(`{settings.command('build', '--component', n)}`)")
        elif needs_restage(settings, rec):
            missing[n] = (f"its staged files are not in the staging tree "
                          f"(`{settings.command('build', '--component', n)}` puts them back)")
        else:
            current[n] = rec
    return current, missing


# -- run --------------------------------------------------------------------------------
def run_plan(settings: Settings, plan: Plan, *, keep_going: bool) -> dict:
    """Run ``plan`` (the work-dir lock is held) and return the manifest, or raise the error
    of the build (:func:`failure`)."""
    ccache_bin = ccache.setup(settings) if plan.ccache else None
    shared = None
    if settings.cache_remote:         # (the registry client only when it is used)
        from . import remote
        shared = remote.RemoteCache(settings)
    b = Build(settings, plan, keep_going=keep_going, ccache_bin=ccache_bin, remote=shared)
    b.components.check_stages()
    man = _start_manifest(settings, plan, keep_going)
    env = base_env(settings, ccache_bin)
    status, post_error, stats_before = "failed", None, None
    try:
        stats_before = ccache.stats(env) if ccache_bin else None
        console.step(f"build {', '.join(plan.names)} (jobs {settings.jobs})")
        with Reporter(plan.names) as rep:
            b.run(rep)
        post_error = None if b.with_status("failed") else _post_checks(settings, b)
        status = "failed" if b.with_status("failed") or post_error else "success"
        if shared is not None and settings.cache_push:
            _upload(b, shared)
    except BaseException as e:  # KeyboardInterrupt, cli.Terminated (SIGTERM), a bug
        status = "failed" if isinstance(e, Exception) else "interrupted"
        b.stop()
        raise
    finally:
        counted = None
        if stats_before is not None and status != "interrupted":
            after = ccache.stats(env)
            counted = {k: after[k] - stats_before[k] for k in after}
            counted.update(ccache.report(settings, counted))
        _finish_manifest(man, status, b, counted)
    if status != "success":
        raise post_error or failure(settings, b)
    taken = [n for n in b.plan.names if b.results[n].get("origin") == "remote"]
    from_remote = f", from the shared build cache {len(taken)}" if shared is not None else ""
    console.info(f"built {len(b.with_status('built'))}, up to date "
                 f"{len(b.with_status('cached')) - len(taken)}{from_remote}; staging "
                 f"{settings.staging_dir}; manifest {man.path}")
    return man.data


def _upload(b: Build, shared: RemoteCache) -> None:
    """``--cache-push``: upload every component of this run that the shared build cache lacks
    (built now, or current from an earlier run); one failure is a warning, never the build's.
    Uploads run in parallel (the job budget's worth)."""
    import concurrent.futures as cf

    from . import remote

    todo = [n for n in b.with_status("built", "cached")
            if b.results[n].get("origin") != "remote"]
    if not todo:
        return

    def one(n: str) -> None:
        rec = b.results[n]["record"]
        key = b.plan.keys[n]
        if rec.get("key") != key or shared.has(n, key) is not False:
            return
        try:
            entries = b.components.outputs(rec)
        except (remote.Unusable, OSError) as e:
            console.warn(f"{n} is not uploaded to the shared build cache: {e}")
            return
        digest = shared.put(n, key, entries)
        if digest:
            b.results[n]["pushed"] = {"location": shared.location(remote.tag_for(n, key)),
                                      "digest": digest}
            console.info(f"uploaded {n} to {b.results[n]['pushed']['location']} ({digest})")

    console.step(f"upload to the shared build cache {shared.settings.cache_remote}")
    with cf.ThreadPoolExecutor(max_workers=max(1, b.settings.jobs)) as pool:
        list(pool.map(one, todo))


def _start_manifest(settings: Settings, plan: Plan, keep_going: bool) -> manifest.Manifest:
    """The early manifest: this run's components, the current ones of earlier runs, the
    sources they read."""
    current, outside = earlier_builds(settings, plan)
    srcs = [n for n in _sources_read(plan.rs, [*plan.names, *current])
            if is_tree(settings.source_tree(n))]
    man = manifest.Manifest(settings)
    stamp = plan.stamp or BuildStamp(settings)
    infos = {n: source_info(settings, n, stamp) for n in srcs}
    stamp.save()
    quiet = not plan.unknown and not plan.ccache and not settings.cache_remote and all(
        (rec := trusted_record(settings, n)) is not None and up_to_date(rec, plan.keys[n])
        and not needs_restage(settings, rec) for n in plan.names)
    man.start(plan=plan, sources=infos,
              options={"keep_going": keep_going, "ccache": plan.ccache, "jobs": settings.jobs,
                       "components": plan.names}, earlier=current, outside=outside, quiet=quiet)
    return man


def _finish_manifest(man: manifest.Manifest, status: str, b: Build,
                     ccache_stats: dict | None) -> None:
    """The final manifest.  When the build is already failing (a full disk, an interrupt),
    failing to write it is a warning, so the user sees the first cause, not this one."""
    try:
        man.finish(status=status, results=b.results, ccache=ccache_stats)
    except OSError as e:
        if status == "success":
            raise
        console.warn(f"could not write the final {man.path}: {os_error_message(e)[0]}")


def run_depmod(staging: Path, release: str, *, search_path: str | None = None,
               settings: Settings | None = None) -> None:
    """``depmod -b staging -a release``: writes ``modules.dep`` (and the other indexes) for the
    staged modules.  A missing depmod is a :class:`MissingToolError` (the image would ship
    modules without modules.dep), a failing one a :class:`BuildFailed` with its stderr.
    ``search_path`` replaces the PATH (+ sbin directories) depmod is looked up in.
    ``settings``: the run's, so the advice names the build command with its options (without
    them the advice says "build again" in words)."""
    again = f"run `{settings.command('build')}` again" if settings else "build again"
    depmod = toolchain.find_tool("depmod", search_path)
    if depmod is None:
        raise MissingToolError(
            "depmod not found (package kmod): it writes modules.dep for the kernel modules in "
            f"{staging / 'lib/modules' / release}; without it the image's modules cannot be "
            "loaded by name",
            fix=f"inv setup   (or: apt-get install kmod), then {again}")
    proc = procs.run([depmod, "-b", str(staging), "-a", release], capture_output=True,
                     text=True, stdin=subprocess.DEVNULL)
    dep = staging / "lib/modules" / release / "modules.dep"
    if proc.returncode != 0 or not dep.is_file():
        detail = (proc.stderr or proc.stdout or "").strip() or f"exit status {proc.returncode}"
        shown = shlex.join(["depmod", "-b", str(staging), "-a", release])
        raise BuildFailed(f"{shown} failed"
                          f"{'' if dep.is_file() else ' (no modules.dep written)'}:\n{detail}",
                          fix=f"read depmod's message above; check the staged modules, then "
                              f"{again}")


def _post_checks(settings: Settings, b: Build) -> BuildFailed | MissingToolError | None:
    """Vermagic of every staged module against the kernel release; depmod.  Returns their
    error (raised after the final manifest is written)."""
    krel = None
    for n in b.plan.names:
        rec = b.results[n].get("record") or {}
        if rec.get("kernel_release"):
            krel = rec["kernel_release"]
    if not krel:
        return None
    moddir = settings.staging_dir / "lib/modules" / krel
    mods = sorted(moddir.rglob("*.ko")) if moddir.is_dir() else []
    built = any(b.results[n]["status"] == "built" or b.results[n].get("restaged")
                for n in b.plan.names)
    try:
        kernel.check_vermagic(mods, krel, settings=settings)
        if mods and (built or not (moddir / "modules.dep").exists()):
            run_depmod(settings.staging_dir, krel, settings=settings)
    except (BuildFailed, MissingToolError) as e:
        return e
    return None


def failure(settings: Settings, b: Build) -> Exception:
    """The error of a failed build, made of the components' own errors: refused recipes or
    missing inputs only: their :class:`UserError` (exit 1); a full disk only: the
    :class:`OSError` itself (the CLI names the path and the free space); else a
    :class:`BuildFailed` (exit 2) with each failing step's last lines and log."""
    failed = sorted(b.with_status("failed"))
    errors = [b.results[n]["failure"] for n in failed]
    skipped = sorted(b.with_status("skipped", "cancelled"))
    tail = f"\nnot built because of the failure: {', '.join(skipped)}" if skipped else ""
    if all(isinstance(e, UserError) for e in errors):
        kinds = {type(e) for e in errors}
        err = one_error(errors, kinds.pop() if len(kinds) == 1 else UserError)
        return type(err)(err.message + tail, fix=err.fix)
    disk = [e for e in errors if isinstance(e, OSError) and e.errno in (errno.ENOSPC,
                                                                         errno.EDQUOT)]
    if disk and len(disk) == len(errors):
        return disk[0]
    parts = []
    for n, e in zip(failed, errors, strict=True):
        if isinstance(e, UserError):
            parts.append(f"{n}: {e}")
        else:
            last = e.tail if isinstance(e, StepError) else ""
            parts.append(f"{n}: {b.results[n]['error']}\n--- last lines of the failing step "
                         f"({b.results[n]['log']}) ---\n{last}")
    return BuildFailed(f"build failed ({len(failed)} component(s)):\n" + "\n".join(parts)
                       + tail,
                       fix=f"read the log(s) in {settings.logs_dir}; fix the recipe or patch, "
                           f"then run `{settings.command('build')}` again (finished components "
                           "are kept)")
