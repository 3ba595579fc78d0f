"""``inv build``: cross-compile the selected components, incrementally and in parallel.

How a build runs (details and the reasons in docs/build.md):

1. Load and validate the recipes (:mod:`askbuild.recipes`); take the components asked for plus
   their dependencies.
2. Make sure every source work tree they read exists (fetch + patch each missing one on its own
   when those modules are available; a tree that cannot be made is that source's problem only).
3. Check the cross compiler up front (:mod:`askbuild.toolchain`): every component needs it.
4. Compute the content key of every recipe whose inputs can be read: the git tree ids of its
   declared input paths at HEAD (so a patch touching ``cmm/`` changes only the keys of the
   components reading ``cmm/``), its recipe, the shared variables it uses, the toolchain
   identity (with the package versions of its own ``host_libs``) and its dependencies' keys.
5. Check each selected component's own preconditions (:func:`check_preconditions`): its
   source trees and input paths, its arm64 libraries, ``depmod`` for a kernel.  A component
   that cannot start stops the build before anything runs, with a message saying what is
   missing and where it comes from; with ``keep_going`` it fails alone (its dependents are
   skipped) and everything else is built.
6. Write the early manifest (it also lists the components of earlier runs whose done records
   are still current: :func:`earlier_builds`), then run components as a DAG (``graphlib`` + a
   thread pool) within the job budget.  An unchanged key with its artifacts in place is
   skipped instantly.  A component's "done" record (``state/build-<name>.json``) is removed
   before it runs and written atomically after its artifacts are verified and staged, so a
   kill at any point leaves no record and the next run redoes the step from a clean build tree.
7. Check every staged module's vermagic, run ``depmod`` (a missing depmod is an error, never a
   silent skip), write the final manifest atomically, and raise :class:`BuildFailed` (exit 2)
   with the failing step's last lines and log path (exit 1 when every failure is a component
   that could not start).

One build at a time per work directory (the work-dir lock, :mod:`askbuild.runlock`).  Every step
runs in its own process group under a small supervisor (``procs.supervised_popen``), so
stopping the build -- fail-fast, SIGTERM, SIGINT, even ``kill -9`` of askbuild -- stops make and
every compiler it started; an interrupted build records ``interrupted`` and leaves no done
record for the unfinished components.  Nothing is ever staged (or deleted) outside the staging
tree: each staging path is checked after placeholder expansion and symlink resolution
(:func:`in_staging`).
"""

from __future__ import annotations

import concurrent.futures as cf
import errno
import graphlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from . import archive, console, gitutil, kernel, manifest, procs, recipes, runlock, toolchain
from .errors import (
    AskbuildError,
    BuildFailed,
    ConfigError,
    MissingToolError,
    SourceError,
    UserError,
)
from .fsutil import read_json, read_toml, sha256_file, write_json_atomic
from .recipes import Recipe, RecipeSet
from .settings import Settings

KEY_SCHEMA = 2
ARCH = "arm64"
HOST = "aarch64-linux-gnu"
TAIL_LINES = 25
#: Inherited environment variables that would silently change a build: dropped, so that only
#: the recipe's ``env`` (part of the key) sets them.
SCRUBBED_ENV = {
    "CFLAGS", "CXXFLAGS", "CPPFLAGS", "LDFLAGS", "LDLIBS", "CC", "CXX", "CPP", "AR", "AS", "LD",
    "NM", "OBJCOPY", "STRIP", "RANLIB", "ARCH", "CROSS_COMPILE", "PKG_CONFIG_PATH",
    "PKG_CONFIG_LIBDIR", "PKG_CONFIG_SYSROOT_DIR", "KCFLAGS", "KCPPFLAGS", "KBUILD_OUTPUT",
    "KBUILD_EXTRA_SYMBOLS", "INSTALL_MOD_PATH", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "O", "M",
    "DESTDIR", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH", "LIBRARY_PATH", "LD_LIBRARY_PATH",
}
STATES = ("pending", "running", "built", "cached", "failed", "skipped", "cancelled")


# --------------------------------------------------------------------------- sources --
class MissingInputs(UserError):
    """A component's inputs are not there (a source work tree, a path in it): that component
    fails alone (its dependents are skipped), the message says where the inputs come from."""


def _tree_ids(src: Path, paths: list[str]) -> tuple[dict[str, str], list[str]]:
    """({path: git tree/blob id at HEAD}, [paths that do not exist at HEAD]) for the declared
    input paths of a source work tree."""
    revs = ["HEAD^{tree}" if p in (".", "") else f"HEAD:{p.rstrip('/')}" for p in paths]
    proc = gitutil.git(["rev-parse", *revs], cwd=src, check=False)
    if proc.returncode == 0:
        return dict(zip(paths, proc.stdout.split(), strict=True)), []
    missing = [p for p, rev in zip(paths, revs, strict=True)
               if gitutil.git(["rev-parse", "--verify", "--quiet", rev], cwd=src,
                              check=False).returncode != 0]
    if not missing:
        raise SourceError(f"{src}: git rev-parse failed: {proc.stderr.strip()}")
    return {}, missing


def source_tree(settings: Settings, name: str) -> Path:
    return settings.src_dir / name


def _is_tree(path: Path) -> bool:
    return (path / ".git").exists()


def _preparers(settings: Settings, prepare: bool):
    """(fetching, patchqueue) when missing trees can be made here, else None."""
    if not prepare or not settings.sources_file.is_file():
        return None
    try:
        from . import fetching, patchqueue
    except ImportError:
        return None
    if not hasattr(fetching, "fetch") or not hasattr(patchqueue, "patch"):
        return None
    return fetching, patchqueue


def _prepare_sources(settings: Settings, names: list[str], prepare: bool,
                     keep_going: bool) -> dict[str, str]:
    """Make the missing work trees of ``names``: fetch + patch each one on its own (when those
    modules are available).  Returns {source: why its tree is not usable} for the trees still
    missing or whose fetch/patch failed (a tree fetched but not patched is never built); the
    components reading them fail alone (:func:`input_errors`).  Without ``keep_going``
    preparing stops at the first failure."""
    missing = [n for n in names if not _is_tree(source_tree(settings, n))]
    tools = _preparers(settings, prepare) if missing else None
    why: dict[str, str] = {}
    for n in missing:
        if tools is None or (why and not keep_going):
            break
        console.step(f"prepare source {n}: fetch + patch")
        try:
            tools[0].fetch(settings, [n])
            tools[1].patch(settings, [n])
        except (AskbuildError, gitutil.GitError) as e:
            why[n] = f"`inv fetch`/`inv patch` of it failed: {getattr(e, 'message', str(e))}"
            console.warn(f"source {n}: {why[n]}")
    for n in missing:
        if n not in why and not _is_tree(source_tree(settings, n)):
            why[n] = f"its work tree {source_tree(settings, n)} does not exist"
    if tools is None:
        tools = _preparers(settings, prepare)
    declared = _declared_sources(settings) if tools is not None else set()
    for n in names:
        if n in why or n not in declared or not _is_tree(source_tree(settings, n)):
            continue
        # Never build what the tree happens to hold: only the current series on the current
        # lock (and no uncommitted edits, which the build would silently ignore).
        problem = tools[1].patch_state_problem(settings, n)
        if problem:
            why[n] = (f"its work tree is not the current patch series on the current lock: "
                      f"{problem} (run `inv patch --source {n}`)")
            console.warn(f"source {n}: {why[n]}")
    return why


def _declared_sources(settings: Settings) -> set[str]:
    """Sources the sources file declares (the only trees the patch step owns)."""
    try:
        return {n for n, t in read_toml(settings.sources_file, missing_ok=True).items()
                if isinstance(t, dict) and "kind" in t}
    except AskbuildError:
        return set()


def source_descriptions(settings: Settings) -> dict[str, str]:
    """{source: description} from the sources file, for messages ({} when unreadable).  Read
    as plain data: nothing else of the file matters here (and loading the sources may publish
    the example upstreams)."""
    try:
        data = read_toml(settings.sources_file, missing_ok=True)
    except AskbuildError:
        return {}
    return {n: t["description"] for n, t in data.items()
            if isinstance(t, dict) and isinstance(t.get("description"), str) and t["description"]}


def input_errors(settings: Settings, r: Recipe, unavailable: dict[str, str],
                 described: dict[str, str]) -> tuple[dict[str, dict], list[MissingInputs]]:
    """The git ids of every input of recipe ``r`` ({source: {path: id}}: its own source first,
    then its ``uses``), and an error for each source whose tree or paths are not there, saying
    where they come from: ``fmlib needs linux:include/uapi/linux/fmd (from NXP LSDK 6.18
    kernel, source linux): not in <tree> at HEAD``."""
    ids: dict[str, dict[str, str]] = {}
    errors: list[MissingInputs] = []
    for src, paths in [(r.source, r.inputs), *sorted(r.uses.items())]:
        tree = source_tree(settings, src)
        desc = described.get(src)
        origin = f"from {desc}, source {src}" if desc else f"source {src}"
        wanted = f"{r.name} needs {src}:{', '.join(paths)} ({origin})"
        again = f"`inv fetch --source {src} && inv patch --source {src}`"
        if src in unavailable or not _is_tree(tree):   # (a failed patch leaves a tree)
            reason = unavailable.get(src) or f"its work tree {tree} does not exist"
            errors.append(MissingInputs(f"{wanted}: {reason}",
                                        fix=f"run `inv fetch && inv patch` (or only this "
                                            f"source: {again})"))
            continue
        try:
            ids[src], gone = _tree_ids(tree, paths)
        except SourceError as e:          # a damaged repository, not a missing path
            errors.append(MissingInputs(f"{wanted}: {e.message}", fix=f"run {again}"))
            continue
        if gone:
            key = "inputs" if src == r.source else f"[uses] {src}"
            errors.append(MissingInputs(
                f"{r.name} needs {src}:{', '.join(gone)} ({origin}): not in {tree} at HEAD",
                fix=f"make {tree} the tree {r.file.name} expects: the right ref of source "
                    f"{src} in the sources file, its patches applied ({again}); or correct "
                    f"{key} in {r.file}"))
    return ids, errors


def source_info(settings: Settings, name: str) -> dict:
    """What the manifest says about one source: commits and the applied patches."""
    src = source_tree(settings, name)
    info: dict = {"path": str(src)}
    info["head"] = gitutil.out(["rev-parse", "HEAD"], cwd=src)
    info["tree"] = gitutil.out(["rev-parse", "HEAD^{tree}"], cwd=src)
    base = gitutil.git(["rev-parse", "--verify", "--quiet", "refs/tags/askbuild/base^{commit}"],
                       cwd=src, check=False)
    info["base"] = base.stdout.strip() or None
    state = None
    try:
        from . import patchqueue
        if hasattr(patchqueue, "tree_state"):
            state = patchqueue.tree_state(settings, name)
    except ImportError:
        state = None
    except AskbuildError as e:
        console.warn(f"patch state of {name} unreadable: {e.message}")
    if state:
        info["patch_state"] = state
        info["patches"] = state.get("patches", [])
    elif info["base"]:
        log = gitutil.out(["log", "--reverse", "--format=%H %s", f"{info['base']}..HEAD", "--"],
                          cwd=src)
        info["patches"] = [{"commit": ln.split(" ", 1)[0], "subject": ln.partition(" ")[2]}
                           for ln in log.splitlines() if ln]
    else:
        info["patches"] = []
    return info


# ------------------------------------------------------------------------------ keys --
@dataclass
class Plan:
    """What a build will do.  ``names``: this run's components (topological order).  Keys are
    computed for *every* recipe whose inputs can be read (the manifest tells which earlier
    builds are still current); ``unknown`` says why the others have none, ``blocked`` why a
    component of this run cannot start (missing inputs, arm64 libraries, host tools)."""

    settings: Settings
    rs: RecipeSet
    names: list[str]                       # topological order
    toolchain: toolchain.Toolchain
    keys: dict[str, str] = field(default_factory=dict)
    key_inputs: dict[str, dict] = field(default_factory=dict)
    ccache: bool = False
    unknown: dict[str, str] = field(default_factory=dict)
    input_errors: dict[str, list[AskbuildError]] = field(default_factory=dict)
    blocked: dict[str, AskbuildError] = field(default_factory=dict)


def _project_inputs(settings: Settings, r: Recipe) -> dict[str, str]:
    """Hashes of the project files a recipe reads (kernel fragments): of the symbols each one
    sets, so editing a comment rebuilds nothing."""
    if r.kind != "kernel":
        return {}
    files = kernel.fragment_files(settings.project_root, r.fragments, f"{r.file}")
    return {str(f.relative_to(settings.project_root)): hashlib.sha256(json.dumps(
        list(kernel.parse_config(f.read_text()).items())).encode()).hexdigest() for f in files}


def compute_keys(plan: Plan, unavailable: dict[str, str] | None = None) -> None:
    """The key of every recipe whose inputs can be read (``unavailable``: {source: why its
    tree is missing}, from :func:`_prepare_sources`)."""
    s, rs = plan.settings, plan.rs
    described = source_descriptions(s)
    for name in rs.order():
        r = rs.recipes[name]
        lost = [d for d in r.depends if d not in plan.keys]
        if lost:
            plan.unknown[name] = f"the inputs of {', '.join(lost)} cannot be read"
            continue
        ids, errors = input_errors(s, r, unavailable or {}, described)
        try:
            project = _project_inputs(s, r)
        except ConfigError as e:
            errors.append(e)
        if errors:
            plan.input_errors[name] = errors
            plan.unknown[name] = "; ".join(e.message for e in errors)
            continue
        inputs = {
            "schema": KEY_SCHEMA,
            "recipe": r.digest(rs.vars),
            "source": {r.source: ids[r.source]},
            "uses": {src: ids[src] for src in sorted(r.uses)},
            "project": project,
            "toolchain": plan.toolchain.identity(r.host_libs),
            "depends": {d: plan.keys[d] for d in sorted(r.depends)},
        }
        blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
        plan.keys[name] = hashlib.sha256(blob.encode()).hexdigest()
        plan.key_inputs[name] = inputs


def one_error(errors: list[AskbuildError], default=UserError) -> AskbuildError:
    """Several errors as one: the error itself when there is one, else ``default`` with every
    message (one per line) and every distinct fix."""
    if len(errors) == 1:
        return errors[0]
    fixes = list(dict.fromkeys(e.fix for e in errors if e.fix))
    return default("\n".join(e.message for e in errors), fix="; ".join(fixes) or None)


def check_preconditions(plan: Plan) -> None:
    """``plan.blocked``: for each component of this run whose inputs, arm64 libraries (its
    ``host_libs``) or host tools (``depmod`` for a kernel) are missing, the error saying so.
    Only that component (and what depends on it) is affected."""
    for n in plan.names:
        r = plan.rs.recipes[n]
        errors = list(plan.input_errors.get(n, []))
        libs = toolchain.lib_problems(r.host_libs)
        if libs:
            errors.append(toolchain.libs_error(libs, f"{n} needs "))
        tools = toolchain.tool_problems(["depmod"] if r.kind == "kernel" else [])
        if tools:
            errors.append(toolchain.tools_error(tools, f"{n} needs "))
        if errors:
            plan.blocked[n] = one_error(errors, MissingInputs)


def _not_startable(plan: Plan) -> AskbuildError:
    """Fail-fast: components of this run cannot start; nothing was built."""
    err = one_error([plan.blocked[n] for n in sorted(plan.blocked)], MissingInputs)
    others = sorted(n for n in plan.names if n not in plan.blocked
                    and not set(plan.rs.closure([n])) & set(plan.blocked))
    rest = (f"\nnothing was built; `inv build --keep-going` builds what does not need "
            f"{', '.join(sorted(plan.blocked))} ({', '.join(others)})" if others else "")
    return type(err)(err.message + rest, fix=err.fix)


# ---------------------------------------------------------------------------- records --
def record_path(settings: Settings, name: str) -> Path:
    return settings.state_dir / f"build-{name}.json"


def read_record(settings: Settings, name: str) -> dict | None:
    return read_json(record_path(settings, name))


class OutsideStaging(ValueError):
    """A staging path that would leave the staging tree (the reason is the message)."""


def in_staging(staging: Path, rel: object) -> Path:
    """``staging/rel``, once it is sure to stay inside the staging tree: ``rel`` must be a
    relative path without ``..`` and, with every symlink on the way resolved (the last
    component included), must land strictly below the resolved staging directory.  Raises
    :class:`OutsideStaging` otherwise.  Call it after placeholder expansion, right before a
    path is written or deleted."""
    if not isinstance(rel, str) or not rel.strip():
        raise OutsideStaging(f"{rel!r} is not a path")
    pure = PurePosixPath(rel)
    if pure.is_absolute():
        raise OutsideStaging(f"{rel!r} is an absolute path")
    if ".." in pure.parts:
        raise OutsideStaging(f"{rel!r} contains '..'")
    if "\0" in rel or not [p for p in pure.parts if p != "."]:
        raise OutsideStaging(f"{rel!r} does not name a file inside the staging tree")
    root = staging.resolve()
    dest = staging / rel
    real = dest.resolve()
    if root not in real.parents:
        raise OutsideStaging(f"{rel!r} resolves to {real} (through a symlink), outside the "
                             f"staging tree {root}")
    return dest


def record_problem(settings: Settings, rec: dict) -> str | None:
    """Why a done record read from disk cannot be trusted (a staged path outside the staging
    tree, a malformed entry), or None."""
    try:
        for a in rec.get("artifacts", []):
            if a.get("staged") is not None:
                in_staging(settings.staging_dir, a["staged"])
            if not isinstance(a.get("file"), str) or not isinstance(a.get("size"), int):
                return f"artifact entry {a!r} is malformed"
        tree = rec.get("staged_tree")
        if tree is not None:
            in_staging(settings.staging_dir, tree["dest"])
            if not isinstance(tree.get("from"), str):
                return f"staged_tree {tree!r} is malformed"
    except OutsideStaging as e:
        return f"staged path {e}"
    except (AttributeError, KeyError, TypeError):
        return "it is malformed"
    return None


def trusted_record(settings: Settings, name: str) -> dict | None:
    """The done record of ``name`` when it can be trusted; a damaged or tampered one is
    ignored with a warning (the component is rebuilt; nothing it names is touched)."""
    rec = read_record(settings, name)
    if rec is None:
        return None
    problem = record_problem(settings, rec)
    if problem:
        console.warn(f"ignoring {record_path(settings, name)}: {problem}; {name} is rebuilt "
                     "and nothing that record names is written or deleted")
        return None
    return rec


def _up_to_date(settings: Settings, rec: dict | None, key: str) -> bool:
    if not rec or rec.get("key") != key:
        return False
    for a in rec.get("artifacts", []):
        p = Path(a["file"])
        if not p.is_file() or p.stat().st_size != a["size"]:
            return False
    return True


def _restage(settings: Settings, rec: dict) -> bool:
    """Put back staged files that went missing (e.g. staging wiped).  True if any was.
    ``rec`` comes from :func:`trusted_record`; a staging path that a symlink now leads out of
    the staging tree is refused (:class:`ConfigError`)."""
    try:
        return _restage_checked(settings, rec)
    except OutsideStaging as e:
        raise ConfigError(
            f"{record_path(settings, rec.get('component', '?'))}: cannot put back a staged "
            f"file: {e}; refused", fix="remove the symlink in the staging tree that points out "
            f"of it (or delete {settings.staging_dir}), then run `inv build` again") from None


def _unstaged(settings: Settings, rec: dict) -> tuple[list[dict], dict | None]:
    """What of ``rec`` (trusted) is not in the staging tree: the artifacts whose staged copy is
    missing or of another size, and the staged tree when its directory is missing.  Raises
    :class:`OutsideStaging` for a path a symlink now leads out of the staging tree."""
    files = [a for a in rec.get("artifacts", []) if a.get("staged")
             and (not (dest := in_staging(settings.staging_dir, a["staged"])).is_file()
                  or dest.stat().st_size != a["size"])]
    tree = rec.get("staged_tree")
    if tree and in_staging(settings.staging_dir, tree["dest"]).is_dir():
        tree = None
    return files, tree


def _needs_restage(settings: Settings, rec: dict) -> bool:
    """Whether a staged file or tree of ``rec`` (trusted) is missing from the staging tree."""
    try:
        files, tree = _unstaged(settings, rec)
    except OutsideStaging:
        return True
    return bool(files or tree)


def _restage_checked(settings: Settings, rec: dict) -> bool:
    files, tree = _unstaged(settings, rec)
    for a in files:
        _stage_file(Path(a["file"]), settings.staging_dir, a["staged"], a.get("mode"))
    if tree:
        _copy_tree(Path(tree["from"]), settings.staging_dir, tree["dest"])
    return bool(files or tree)


def _unstage(settings: Settings, rec: dict) -> None:
    """Delete what a previous build of a component staged (``rec`` is trusted); a path that a
    symlink now leads out of the staging tree is left alone (with a warning)."""
    paths = [a["staged"] for a in rec.get("artifacts", []) if a.get("staged")]
    tree = (rec.get("staged_tree") or {}).get("dest")
    for rel in [*paths, *([tree] if tree else [])]:
        try:
            dest = in_staging(settings.staging_dir, rel)
        except OutsideStaging as e:
            console.warn(f"not deleting the old staged {rel!r}: {e}")
            continue
        if rel == tree:
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
        else:
            dest.unlink(missing_ok=True)


def _stage_file(src: Path, staging: Path, rel: str, mode: int | None) -> None:
    """Copy ``src`` to ``staging/rel`` (checked again right here) through a temporary file:
    the staged file is either the old one or the complete new one, never a partial copy."""
    dest = in_staging(staging, rel)
    dest.parent.mkdir(parents=True, exist_ok=True)
    in_staging(staging, rel)       # the directories just made are real, not symlinks
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.askbuild-tmp")
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, mode if mode is not None
                 else (0o755 if os.access(src, os.X_OK) else 0o644))
        tmp.replace(dest)
    except OSError as e:
        raise _naming(e, dest) from e
    finally:
        tmp.unlink(missing_ok=True)


def _naming(e: OSError, dest: Path) -> OSError:
    """``e`` about the staged file ``dest`` (shutil names the source of a failed copy, but a
    full disk or a permission problem is about where the copy goes)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
        return type(e)(e.errno, e.strerror, str(dest))
    return e


def _copy_tree(src: Path, staging: Path, rel: str) -> None:
    dest = in_staging(staging, rel)
    if dest.is_symlink():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    in_staging(staging, rel)
    try:
        _copytree(src, dest)
    except OSError as e:
        raise _naming(e, Path(e.filename2 or e.filename or dest)) from e


def _copytree(src: Path, dest: Path) -> None:
    """``shutil.copytree(src, dest, symlinks=True)`` that stops at the first error and lets it
    through as it is (copytree gathers errors into one without errno: a full disk would not
    be recognisable)."""
    dest.mkdir()
    for root, dirs, files in os.walk(src):
        here = Path(root)
        there = dest / here.relative_to(src)
        for name in dirs + files:
            s, d = here / name, there / name
            if s.is_symlink():
                os.symlink(os.readlink(s), d)
            elif s.is_dir():
                d.mkdir()
            else:
                shutil.copy2(s, d)
        shutil.copystat(here, there)


# ---------------------------------------------------------------------------- running --
class Cancelled(Exception):
    """The build is stopping (fail-fast); a component was not started or was stopped."""


class StepError(Exception):
    def __init__(self, message: str, tail: str = "") -> None:
        super().__init__(message)
        self.tail = tail


def _tail(log: Path, lines: int = TAIL_LINES, start: int = 0) -> str:
    try:
        with log.open("rb") as f:
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", "replace").splitlines()
    return "\n".join(text[-lines:])


def base_env(settings: Settings, ccache_bin: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV
           and not k.startswith("KBUILD_BUILD_")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    if ccache_bin:
        env["PATH"] = f"{ccache_bin}{os.pathsep}{env.get('PATH', '')}"
        env.setdefault("CCACHE_DIR", str(settings.cache_dir / "ccache"))
        env.setdefault("CCACHE_BASEDIR", str(settings.work_dir))
    return env


def find_program(args: list[str], cwd: Path, env: dict[str, str]) -> str | None:
    """Why ``args[0]`` cannot be run from ``cwd`` with ``env``'s PATH, or None when it can."""
    prog = args[0] if args else ""
    if not prog:
        return "empty command"
    if "/" in prog:
        p = cwd / prog
        if not p.is_file():
            return f"{p} does not exist"
        return None if os.access(p, os.X_OK) else f"{p} is not executable"
    if shutil.which(prog, path=env.get("PATH", os.defpath)) is None:
        return "not found on PATH"
    return None


class Runner:
    """Runs the steps of one component, logging to its log file."""

    def __init__(self, build: Build, name: str) -> None:
        self.build = build
        self.name = name
        self.log_path = build.settings.logs_dir / f"{name}.log"
        self.log = None
        self.step_start = 0

    def __enter__(self) -> Runner:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = self.log_path.open("wb")
        return self

    def __exit__(self, *exc) -> None:
        if self.log:
            self.log.close()

    def note(self, text: str) -> None:
        self.log.write(f"### {text}\n".encode())
        self.log.flush()

    def run(self, args: list[str], *, cwd: Path, env: dict[str, str]) -> None:
        self.build.check_cancel()
        self.log.flush()
        self.step_start = self.log.tell()
        self.note(f"$ {' '.join(args)}   (in {cwd})")
        why = find_program(args, cwd, env)
        if why:
            self.note(f"cannot run {args[0] if args else ''!r}: {why}")
            raise StepError(f"cannot run {args[0] if args else ''!r}: {why}",
                            _tail(self.log_path, start=self.step_start))
        with self.build.lock:  # checked and registered atomically with stop()
            self.build.check_cancel()
            proc = procs.supervised_popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=self.log, stderr=subprocess.STDOUT)
            self.build.procs[self.name] = proc
        try:
            rc = proc.wait()
        finally:
            procs.forget(proc)
            with self.build.lock:
                self.build.procs.pop(self.name, None)
        if rc != 0:
            self.note(f"exit status {rc}")
        # Stopped (fail-fast or an interrupt): whatever the step returned, it did not finish.
        self.build.check_cancel()
        if rc != 0:
            raise StepError(f"`{' '.join(args)}` failed with exit status {rc}",
                            _tail(self.log_path, start=self.step_start))


class Reporter:
    """Component states on screen: a rich Live table on a terminal, plain lines otherwise."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.state = {n: "pending" for n in names}
        self.start: dict[str, float] = {}
        self.end: dict[str, float] = {}
        self.live = None
        self.interactive = console.is_interactive()
        self.lock = threading.Lock()

    def __enter__(self) -> Reporter:
        if self.interactive:
            from rich.live import Live
            self.live = Live(self._table(), console=console.get_console(),
                             refresh_per_second=4, transient=False,
                             get_renderable=self._table)
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.live.__exit__(*exc)

    def _elapsed(self, n: str) -> str:
        if n not in self.start:
            return ""
        end = self.end.get(n, time.monotonic())
        return f"{end - self.start[n]:.1f}s"

    def _table(self):
        from rich.table import Table
        colours = {"running": "cyan", "built": "green", "cached": "dim green",
                   "failed": "bold red", "skipped": "yellow", "cancelled": "yellow"}
        t = Table(title="askbuild build", show_edge=False)
        t.add_column("component")
        t.add_column("state")
        t.add_column("elapsed", justify="right")
        with self.lock:
            for n in self.names:
                st = self.state[n]
                c = colours.get(st)
                t.add_row(n, f"[{c}]{st}[/]" if c else st, self._elapsed(n))
        return t

    def set(self, name: str, state: str, detail: str = "") -> None:
        with self.lock:
            self.state[name] = state
            now = time.monotonic()
            if state == "running":
                self.start[name] = now
            elif state in ("built", "failed", "cached"):
                self.start.setdefault(name, now)
                self.end[name] = now
        if not self.interactive:
            el = self._elapsed(name) if state in ("built", "failed") else ""
            extra = " ".join(x for x in (el and f"({el})", detail) if x)
            console.info(f"build {name}: {state}{(' ' + extra) if extra else ''}")


class Build:
    def __init__(self, settings: Settings, plan: Plan, *, keep_going: bool,
                 ccache_bin: Path | None) -> None:
        self.settings = settings
        self.plan = plan
        self.rs = plan.rs
        self.keep_going = keep_going
        self.ccache_bin = ccache_bin
        self.cancel = threading.Event()
        self.lock = threading.Lock()
        self.procs: dict[str, subprocess.Popen] = {}
        self.results: dict[str, dict] = {n: {"status": "pending"} for n in plan.names}
        self.running = 0

    def check_cancel(self) -> None:
        """Raise :class:`Cancelled` once the build is stopping (between any two actions of a
        component, so an interrupted worker ends promptly and writes no record)."""
        if self.cancel.is_set():
            raise Cancelled()

    # -- placeholders --------------------------------------------------------------
    def comp_dirs(self, name: str) -> dict[str, Path]:
        r = self.rs.recipes[name]
        out = self.settings.out_dir / name
        if r.kind == "kernel":
            return {"src": source_tree(self.settings, r.source), "out": out,
                    "install": out / "install", "build": out / "build"}
        return {"src": out / "src", "out": out, "install": out / "install",
                "build": out / "src"}

    def values(self, name: str, jobs: int, *,
               kernel_release: str | None = None) -> dict[str, str | list[str]]:
        """Placeholder values for ``name``; ``kernel_release`` stands in for a kernel that
        is not built yet (the up-front staging check)."""
        s, r = self.settings, self.rs.recipes[name]
        dirs = self.comp_dirs(name)
        v: dict[str, str | list[str]] = dict(self.rs.vars)
        v.update({
            "cross": self.plan.toolchain.prefix, "arch": ARCH, "host": HOST,
            "jobs": str(jobs), "sysroot": str(s.work_dir / "sysroot"),
            "src": str(dirs["src"]), "out": str(dirs["out"]), "install": str(dirs["install"]),
            "project": str(s.project_root),
        })
        builtins = dict(v)
        for var, val in self.rs.vars.items():  # shared variables may use built-ins
            w = f"{self.rs.directory / '_shared.toml'}: vars.{var}"
            v[var] = ([recipes.expand(x, builtins, where=w) for x in val]
                      if isinstance(val, list) else recipes.expand(val, builtins, where=w))
        for d in self.rs.closure([name]) - {name}:
            dd = self.comp_dirs(d)
            v[f"src:{d}"] = str(dd["src"])
            v[f"out:{d}"] = str(dd["out"])
            v[f"install:{d}"] = str(dd["install"])
        for src in {r.source, *r.uses}:
            v[f"tree:{src}"] = str(source_tree(s, src))
        k = self.rs.kernel_of(name)
        if k:
            kd = self.comp_dirs(k)
            v["kernel_dir"] = str(kd["build"])
            v["kernel_src"] = str(kd["src"])
            v["kernel_release"] = (kernel_release if kernel_release is not None
                                   else kernel.kernel_release(kd["build"]))
        if r.kind == "kernel":
            v["kernel_src"] = str(dirs["src"])
        return v

    # -- one component ---------------------------------------------------------------
    def export_tree(self, name: str, dest: Path) -> None:
        r = self.rs.recipes[name]
        src = source_tree(self.settings, r.source)
        paths = [] if any(p in (".", "") for p in r.inputs) else r.inputs
        proc = gitutil.git(["archive", "--format=tar", "HEAD", "--", *paths], cwd=src,
                           text=False)
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tf:
            archive.extract_all(tf, dest, tf.getmembers())

    def build_one(self, name: str, jobs: int) -> dict:
        s, r = self.settings, self.rs.recipes[name]
        key = self.plan.keys[name]
        self.check_cancel()
        old = trusted_record(s, name)
        # No "done" record while the step runs: a kill at any point means "redo".
        record_path(s, name).unlink(missing_ok=True)
        if old:
            _unstage(s, old)
        dirs = self.comp_dirs(name)
        t0 = time.monotonic()
        with Runner(self, name) as run:
            run.note(f"component {name} key {key}")
            run.note(f"recipe {r.file}")
            env = base_env(s, self.ccache_bin)
            values = self.values(name, jobs)
            for k, val in r.env.items():
                env[k] = recipes.expand(val, values, where=f"{r.file}: env.{k}")
            if dirs["install"].exists():
                shutil.rmtree(dirs["install"])
            dirs["install"].mkdir(parents=True)
            (s.work_dir / "sysroot").mkdir(parents=True, exist_ok=True)
            staged_tree = None
            release = None
            if r.kind == "kernel":
                release, staged_tree = self._build_kernel(run, r, dirs, values, env, jobs)
            else:
                run.note(f"export {r.source}:{' '.join(r.inputs)} -> {dirs['src']}")
                self.check_cancel()
                self.export_tree(name, dirs["src"])
                for i, step in enumerate(r.steps):
                    args = recipes.expand_args(step, values, where=f"{r.file}: steps[{i}]")
                    run.run(args, cwd=dirs["src"], env=env)
            arts = self._collect(run, r, dirs, values)
            self.check_cancel()
            # Every staging path was checked in _collect, before anything is copied; the
            # copies check again right before writing.
            try:
                if staged_tree:
                    _copy_tree(Path(staged_tree["from"]), s.staging_dir, staged_tree["dest"])
                for a in arts:
                    if a["staged"]:
                        _stage_file(Path(a["file"]), s.staging_dir, a["staged"], a["mode"])
            except OutsideStaging as e:
                raise ConfigError(f"{r.file}: staging refused: {e}",
                                  fix="remove symlinks in the staging tree that point out of "
                                      "it") from None
            self.check_cancel()
            duration = round(time.monotonic() - t0, 3)
            rec = {"component": name, "key": key, "artifacts": arts, "duration_s": duration,
                   "finished": manifest.now(), "log": str(run.log_path)}
            if staged_tree:
                rec["staged_tree"] = staged_tree
            if release:
                rec["kernel_release"] = release
            run.note(f"done in {duration}s")
        write_json_atomic(record_path(s, name), rec)
        return rec

    def staged_path(self, r: Recipe, i: int, values: dict) -> str | None:
        """Artifact ``i``'s expanded ``stage``, refused with a :class:`ConfigError` naming
        the recipe and the artifact when it would leave the staging tree."""
        a = r.artifacts[i]
        if not a.stage:
            return None
        where = f"{r.file}: artifacts[{i}] (path {a.path!r})"
        stage = recipes.expand(a.stage, values, where=where)
        try:
            in_staging(self.settings.staging_dir, stage)
        except OutsideStaging as e:
            raise ConfigError(
                f"{where}: stage {a.stage!r} (expanded: {stage!r}) leaves the staging tree: {e}; "
                "refused, nothing was staged",
                fix="make 'stage' a relative path inside the staging tree (no placeholder that "
                    "holds an absolute path such as {out} or {project}, no '..'), and remove "
                    "symlinks in the staging tree that point out of it") from None
        return stage

    def check_stages(self) -> None:
        """Up front, before anything is built: every artifact's ``stage`` of every component
        expands to a path inside the staging tree (an unbuilt kernel's release stands in as a
        plain name; the real one is checked again before copying)."""
        for name in self.plan.names:
            r = self.rs.recipes[name]
            if not any(a.stage for a in r.artifacts):
                continue
            values = self.values(name, 1, kernel_release="0.0.0-unbuilt")
            for i in range(len(r.artifacts)):
                self.staged_path(r, i, values)

    def _collect(self, run: Runner, r: Recipe, dirs: dict[str, Path], values: dict) -> list:
        arts, missing = [], []
        for i, a in enumerate(r.artifacts):
            where = f"{r.file}: artifacts[{i}]"
            p = Path(recipes.expand(a.path, values, where=where))
            if not p.is_absolute():
                p = dirs["build"] / p
            stage = self.staged_path(r, i, values)
            if not p.is_file():
                missing.append(str(p))
                continue
            digest, size = sha256_file(p)
            arts.append({"path": a.path, "file": str(p), "staged": stage, "mode": a.mode,
                         "sha256": digest, "size": size})
        if missing:
            run.note("declared artifact(s) missing: " + ", ".join(missing))
            raise StepError("the build finished but declared artifact(s) are missing: "
                            + ", ".join(missing), "")
        return arts

    def _build_kernel(self, run: Runner, r: Recipe, dirs: dict[str, Path], values: dict,
                      env: dict[str, str], jobs: int) -> tuple[str, dict]:
        s = self.settings
        src, build = dirs["src"], dirs["build"]
        env.update(kernel.kbuild_env(src))
        cross = self.plan.toolchain.prefix

        def call(args: list[str]) -> None:
            run.run(args, cwd=src, env=env)

        defconfig = Path(recipes.expand(r.defconfig or "", values, where=f"{r.file}: defconfig"))
        if not defconfig.is_absolute():
            defconfig = s.project_root / defconfig
        fragments = kernel.fragment_files(s.project_root, r.fragments, str(r.file))
        run.note(f"configure: {defconfig} + {', '.join(map(str, fragments)) or 'no fragments'}")
        try:
            kernel.configure(call, src=src, build=build, arch=ARCH, cross=cross,
                             defconfig=defconfig, fragments=fragments,
                             require=kernel.require_wants(r.require, f"{r.file}: require"),
                             where=f"{r.file}")
        except BuildFailed as e:
            run.note(e.message)
            raise StepError(e.message, e.message) from e
        targets = [*r.targets, *r.dtbs]
        call([*kernel.make_base(src, build, ARCH, cross), f"-j{jobs}", *targets])
        release = kernel.kernel_release(build)
        run.note(f"kernel release {release}")
        dest = dirs["install"]
        kernel.modules_install(call, src=src, build=build, arch=ARCH, cross=cross, dest=dest)
        values["kernel_release"] = release
        tree = f"lib/modules/{release}"
        try:
            in_staging(s.staging_dir, tree)
            if "/" in release:
                raise OutsideStaging(f"{release!r} is not a single path component")
        except OutsideStaging as e:
            raise ConfigError(f"{r.file}: the kernel release {release!r} makes the modules "
                              f"directory {tree!r} leave the staging tree: {e}; refused",
                              fix="fix the kernel's LOCALVERSION / release string") from None
        return release, {"from": str(dest / "lib/modules" / release), "dest": tree}

    # -- scheduling -------------------------------------------------------------------
    def stop(self, grace: float = 1.0) -> None:
        """Start nothing new and stop the steps that are running: SIGTERM to each step's whole
        process group (make and every compiler), SIGKILL to what is left after ``grace``
        seconds.  Returns when they are gone (at most ``grace`` + a moment)."""
        with self.lock:
            self.cancel.set()
            running = list(self.procs.values())
        for proc in running:
            procs.kill_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in running:
            procs.kill_group(proc, signal.SIGKILL)

    def _settle(self, n: str, rep: Reporter) -> bool:
        """Decide ``n`` without running anything if possible (True when decided)."""
        res = self.results[n]
        bad = [d for d in self.rs.recipes[n].depends
               if self.results.get(d, {}).get("status") in ("failed", "skipped", "cancelled")]
        if bad:
            res.update(status="skipped", reason=f"dependency {', '.join(bad)} did not build")
            rep.set(n, "skipped", res["reason"])
            return True
        if n in self.plan.blocked:        # its inputs are missing: it fails alone
            err = self.plan.blocked[n]
            self._fail(n, rep, err.message, user_error=err, log=None)
            return True
        if self.cancel.is_set():
            res.update(status="cancelled", reason="an earlier failure stopped the build "
                       "(use --keep-going to build the rest)")
            rep.set(n, "cancelled")
            return True
        rec = trusted_record(self.settings, n)
        if _up_to_date(self.settings, rec, self.plan.keys[n]):
            restaged = _restage(self.settings, rec)
            res.update(status="cached", record=rec, restaged=restaged)
            rep.set(n, "cached")
            return True
        return False

    def _task(self, name: str, jobs: int, rep: Reporter) -> dict:
        rep.set(name, "running", f"(-j{jobs})")
        return self.build_one(name, jobs)

    def run(self, rep: Reporter) -> None:
        """Run the plan.  On any exception in this (the main) thread -- KeyboardInterrupt,
        :class:`askbuild.cli.Terminated` -- every running step is stopped at once and the
        exception goes on without waiting for the workers (``with ThreadPoolExecutor`` would
        wait for them first)."""
        pool = cf.ThreadPoolExecutor(max_workers=max(1, self.settings.jobs),
                                     thread_name_prefix="askbuild-build")
        try:
            self._schedule(pool, rep)
        except BaseException:
            self.stop()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)

    def _fail(self, n: str, rep: Reporter, error: str, tail: str = "", **extra) -> None:
        res = self.results[n]
        res.update(status="failed", error=error, tail=tail,
                   log=str(self.settings.logs_dir / f"{n}.log"))
        res.update(extra)
        rep.set(n, "failed", error)
        if not self.keep_going:
            self.stop()

    def _finished(self, n: str, fut: cf.Future, rep: Reporter) -> None:
        """Record the outcome of component ``n``'s future."""
        res = self.results[n]
        try:
            rec = fut.result()
        except Cancelled:
            res.update(status="cancelled", reason="stopped by an earlier failure")
            rep.set(n, "cancelled")
        except StepError as e:
            self._fail(n, rep, str(e), e.tail)
        except UserError as e:         # a refused recipe, a missing tool: exit 1
            self._fail(n, rep, e.message, user_error=e)
        except AskbuildError as e:
            self._fail(n, rep, e.message)
        except OSError as e:
            from .cli import os_error_message
            self._fail(n, rep, os_error_message(e)[0], os_error=e)
        except Exception as e:  # noqa: BLE001 - an unexpected error fails the step
            self._fail(n, rep, f"{type(e).__name__}: {e}")
        else:
            res.update(status="built", record=rec)
            rep.set(n, "built")

    def _schedule(self, pool: cf.ThreadPoolExecutor, rep: Reporter) -> None:
        wanted = set(self.plan.names)
        ts = graphlib.TopologicalSorter({n: [d for d in self.rs.recipes[n].depends
                                             if d in wanted] for n in self.plan.names})
        ts.prepare()
        budget = max(1, self.settings.jobs)
        ready: deque[str] = deque()
        futures: dict[cf.Future, str] = {}
        idle_rounds = 0
        while ts.is_active():
            # First settle everything that needs no work (skipped, cancelled, up to date):
            # settling may make more components ready.
            progressed = False
            while new := ts.get_ready():
                for n in new:
                    if self._settle(n, rep):
                        ts.done(n)
                        progressed = True
                    else:
                        ready.append(n)
            # Then start what must be built; each gets its share of the budget.
            while ready and len(futures) < budget:
                n = ready.popleft()
                progressed = True
                if self.cancel.is_set():
                    self._settle(n, rep)
                    ts.done(n)
                    continue
                r = self.rs.recipes[n]
                share = 1 if not r.parallel else max(
                    1, budget // max(1, min(budget, len(futures) + 1 + len(ready))))
                self.results[n].update(status="running", jobs=share, started=manifest.now())
                futures[pool.submit(self._task, n, share, rep)] = n
            if not futures:
                idle_rounds = 0 if progressed else idle_rounds + 1
                if idle_rounds > 2:  # nothing runs, nothing can start: cannot happen
                    raise BuildFailed("build scheduler stalled (internal error)")
                continue
            done, _ = cf.wait(futures, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                n = futures.pop(fut)
                self._finished(n, fut, rep)
                ts.done(n)


# ------------------------------------------------------------------------------ ccache --
def _ccache_setup(settings: Settings, prefix: str) -> Path:
    exe = shutil.which("ccache")
    if not exe:
        raise UserError("--ccache given but ccache is not installed",
                        fix="apt-get install ccache   (or build without --ccache)")
    d = settings.work_dir / "ccache-bin"
    d.mkdir(parents=True, exist_ok=True)
    for tool in ("gcc", "g++", "cc", "c++"):
        link = d / f"{prefix}{tool}"
        if link.is_symlink() and os.readlink(link) == exe:
            continue
        link.unlink(missing_ok=True)
        link.symlink_to(exe)
    return d


def _ccache_stats(env: dict[str, str]) -> dict[str, int]:
    proc = procs.run(["ccache", "--print-stats"], env=env, capture_output=True, text=True)
    stats = {}
    for line in proc.stdout.splitlines():
        k, _, v = line.partition("\t")
        if v.strip().isdigit():
            stats[k] = int(v)
    hits = stats.get("direct_cache_hit", 0) + stats.get("preprocessed_cache_hit", 0)
    return {"hits": hits, "misses": stats.get("cache_miss", 0)}


# ------------------------------------------------------------------------- entry point --
def run_depmod(staging: Path, release: str, *, search_path: str | None = None) -> None:
    """``depmod -b staging -a release``: writes ``modules.dep`` (and the other indexes) for the
    staged modules.  A missing depmod is a :class:`MissingToolError` (the image would ship
    modules without modules.dep), a failing one a :class:`BuildFailed` with its stderr.
    ``search_path`` replaces the PATH (+ sbin directories) depmod is looked up in."""
    depmod = toolchain.find_tool("depmod", search_path)
    if depmod is None:
        raise MissingToolError(
            "depmod not found (package kmod): it writes modules.dep for the kernel modules in "
            f"{staging / 'lib/modules' / release}; without it the image's modules cannot be "
            "loaded by name",
            fix="inv setup   (or: apt-get install kmod), then run `inv build` again")
    proc = procs.run([depmod, "-b", str(staging), "-a", release], capture_output=True,
                     text=True, stdin=subprocess.DEVNULL)
    dep = staging / "lib/modules" / release / "modules.dep"
    if proc.returncode != 0 or not dep.is_file():
        detail = (proc.stderr or proc.stdout or "").strip() or f"exit status {proc.returncode}"
        raise BuildFailed(f"depmod -b {staging} -a {release} failed"
                          f"{'' if dep.is_file() else ' (no modules.dep written)'}:\n{detail}",
                          fix="read depmod's message above; check the staged modules, then run "
                              "`inv build` again")


def _post_checks(settings: Settings, b: Build) -> None:
    """Vermagic of every staged module against the kernel release; depmod."""
    krel = None
    for n in b.plan.names:
        rec = b.results[n].get("record") or {}
        if rec.get("kernel_release"):
            krel = rec["kernel_release"]
    if not krel:
        return
    moddir = settings.staging_dir / "lib/modules" / krel
    mods = sorted(moddir.rglob("*.ko")) if moddir.is_dir() else []
    kernel.check_vermagic(mods, krel)
    built = any(b.results[n]["status"] == "built" or b.results[n].get("restaged")
                for n in b.plan.names)
    if mods and (built or not (moddir / "modules.dep").exists()):
        run_depmod(settings.staging_dir, krel)


@runlock.exclusive("build")
def build(settings: Settings, components: list[str] | None = None, *, keep_going: bool = False,
          ccache: bool = False, prepare: bool = True) -> dict:
    """Build ``components`` (all when empty) and their dependencies.  Returns the manifest.

    A component whose inputs are missing (a source work tree, a path in it, an arm64 library,
    a host tool) cannot start: without ``keep_going`` nothing is built and the error says what
    is missing and where it comes from; with ``keep_going`` only that component fails (its
    dependents are skipped) and everything else is built.

    Holds the work-dir lock for the whole run: a second build (or any other verb) in the same
    work directory waits for this one."""
    rs = recipes.load(settings)
    names = rs.order(components or None)
    recipes_used = [rs.recipes[n] for n in names]
    srcs = sorted({r.source for r in recipes_used} | {u for r in recipes_used for u in r.uses})
    unavailable = _prepare_sources(settings, srcs, prepare, keep_going)
    tc = toolchain.check_compiler()
    tc.packages = toolchain.package_versions(sorted(
        {toolchain.KNOWN_LIBS[lib][0] for r in rs.recipes.values() for lib in r.host_libs}))
    plan = Plan(settings, rs, names, tc, ccache=ccache)
    compute_keys(plan, unavailable)
    check_preconditions(plan)
    if plan.blocked and not keep_going:
        raise _not_startable(plan)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    return _build_locked(settings, plan, keep_going=keep_going, ccache=ccache)


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
        elif not _up_to_date(settings, rec, plan.keys[n]):
            missing[n] = (f"stale: built from other inputs than the current ones "
                          f"(`inv build --component {n}`)")
        elif _needs_restage(settings, rec):
            missing[n] = (f"its staged files are not in the staging tree "
                          f"(`inv build --component {n}` puts them back)")
        else:
            current[n] = rec
    return current, missing


def _finish_manifest(man: manifest.Manifest, status: str, b: Build,
                     ccache_stats: dict | None) -> None:
    """The final manifest.  When the build is already failing (a full disk, an interrupt),
    failing to write it is a warning, so the user sees the first cause, not this one."""
    try:
        man.finish(status=status, results=b.results, ccache=ccache_stats)
    except OSError as e:
        if status == "success":
            raise
        from .cli import os_error_message
        console.warn(f"could not write the final {man.path}: {os_error_message(e)[0]}")


def _build_locked(settings: Settings, plan: Plan, *, keep_going: bool, ccache: bool) -> dict:
    names = plan.names
    ccache_bin = _ccache_setup(settings, plan.toolchain.prefix) if ccache else None
    b = Build(settings, plan, keep_going=keep_going, ccache_bin=ccache_bin)
    b.check_stages()
    current, outside = earlier_builds(settings, plan)
    rs = plan.rs
    read = [rs.recipes[n] for n in [*names, *current]]
    srcs = sorted(n for n in {r.source for r in read} | {u for r in read for u in r.uses}
                  if _is_tree(source_tree(settings, n)))
    man = manifest.Manifest(settings)
    man.start(plan=plan, sources={n: source_info(settings, n) for n in srcs},
              options={"keep_going": keep_going, "ccache": ccache, "jobs": settings.jobs,
                       "components": names}, earlier=current, outside=outside)
    status = "failed"
    stats_before = None
    try:
        stats_before = _ccache_stats(base_env(settings, ccache_bin)) if ccache else None
        console.step(f"build {', '.join(names)} (jobs {settings.jobs})")
        with Reporter(names) as rep:
            b.run(rep)
        failed = sorted(n for n in names if b.results[n]["status"] == "failed")
        post_error = None
        if not failed:
            try:
                _post_checks(settings, b)
            except (BuildFailed, MissingToolError) as e:
                post_error = e
        status = "failed" if failed or post_error else "success"
    except BaseException as e:  # KeyboardInterrupt, cli.Terminated (SIGTERM), a bug
        status = "failed" if isinstance(e, Exception) else "interrupted"
        b.stop()
        raise
    finally:
        ccache_stats = None
        if stats_before is not None and status != "interrupted":
            after = _ccache_stats(base_env(settings, ccache_bin))
            ccache_stats = {k: after[k] - stats_before[k] for k in after}
        _finish_manifest(man, status, b, ccache_stats)
    built = [n for n in names if b.results[n]["status"] == "built"]
    cached = [n for n in names if b.results[n]["status"] == "cached"]
    if status == "success":
        console.info(f"built {len(built)}, up to date {len(cached)}; staging "
                     f"{settings.staging_dir}; manifest {man.path}")
        return man.data
    if post_error:
        raise post_error
    _raise_failure(settings, b, names, failed)
    raise AssertionError("unreachable")  # pragma: no cover


def _raise_failure(settings: Settings, b: Build, names: list[str], failed: list[str]) -> None:
    """The error for a failed build: a refused recipe is a :class:`ConfigError` (exit 1), a
    full disk the :class:`OSError` itself (the CLI names the path and the free space), a step
    that failed a :class:`BuildFailed` (exit 2) with its last lines and log."""
    results = [b.results[n] for n in failed]
    skipped = sorted(n for n in names if b.results[n]["status"] in ("skipped", "cancelled"))
    tail = f"\nnot built because of the failure: {', '.join(skipped)}" if skipped else ""
    if all(r.get("user_error") for r in results):
        errors = [r["user_error"] for r in results]
        kinds = {type(e) for e in errors}
        err = one_error(errors, kinds.pop() if len(kinds) == 1 else UserError)
        raise type(err)(err.message + tail, fix=err.fix)
    disk = [r["os_error"] for r in results
            if r.get("os_error") and r["os_error"].errno in (errno.ENOSPC, errno.EDQUOT)]
    if disk and len(disk) == len(results):
        raise disk[0]
    parts = []
    for n, res in zip(failed, results, strict=True):
        if res.get("user_error"):
            parts.append(f"{n}: {res['user_error']}")
        else:
            parts.append(f"{n}: {res.get('error')}\n--- last lines of the failing step "
                         f"({res.get('log')}) ---\n{res.get('tail') or ''}")
    raise BuildFailed(f"build failed ({len(failed)} component(s)):\n" + "\n".join(parts)
                      + tail,
                      fix=f"read the log(s) in {settings.logs_dir}; fix the recipe or patch, "
                          "then run `inv build` again (finished components are kept)")
