"""What a build reads: the source work trees and the input paths in them.

Missing trees are made here (fetch + patch, each source on its own); a tree of a declared source
counts only when it is exactly the current patch series on the current lock
(:func:`askbuild.patchqueue.patch_state_problems`).  A component whose inputs are not there fails
alone with :class:`MissingInputs`, naming where they come from.
"""

from __future__ import annotations

from pathlib import Path

from .. import console, fetching, gitutil, patchqueue
from ..errors import AskbuildError, SourceError, UserError
from ..fsutil import read_toml
from ..recipes import Recipe
from ..settings import Settings
from .stamp import BuildStamp


class MissingInputs(UserError):
    """A component's inputs are not there (a source work tree, a path in it): that component
    fails alone (its dependents are skipped), the message says where the inputs come from."""


def one_error(errors: list[AskbuildError], default=UserError) -> AskbuildError:
    """Several errors as one: the error itself when there is one, else ``default`` with every
    message (one per line) and every distinct fix."""
    if len(errors) == 1:
        return errors[0]
    fixes = list(dict.fromkeys(e.fix for e in errors if e.fix))
    return default("\n".join(e.message for e in errors), fix="; ".join(fixes) or None)


def is_tree(path: Path) -> bool:
    """Whether ``path`` is a work tree (a git repository)."""
    return (path / ".git").exists()


# -- making the trees -------------------------------------------------------------------
def prepare_sources(settings: Settings, names: list[str], prepare: bool,
                    keep_going: bool) -> dict[str, str]:
    """Make the missing work trees of ``names`` (fetch + patch each one on its own, when
    ``prepare`` and there is a sources file) and check the patch state of the others.  Returns
    {source: why its tree is not usable} for the trees still missing, whose fetch/patch failed
    (a tree fetched but not patched is never built) or that are not the current series; the
    components reading them fail alone (:func:`input_errors`).  Without ``keep_going``
    preparing stops at the first failure."""
    can_prepare = prepare and settings.sources_file.is_file()
    missing = [n for n in names if not is_tree(settings.source_tree(n))]
    why = _fetch_and_patch(settings, missing, keep_going) if can_prepare else {}
    for n in missing:
        if n not in why and not is_tree(settings.source_tree(n)):
            why[n] = f"its work tree {settings.source_tree(n)} does not exist"
    if can_prepare:
        _check_patch_states(settings, [n for n in names if n not in why], why)
    return why


def _fetch_and_patch(settings: Settings, names: list[str], keep_going: bool) -> dict[str, str]:
    """{source: why} for each of ``names`` whose fetch or patch failed (stops at the first
    failure unless ``keep_going``)."""
    why: dict[str, str] = {}
    for n in names:
        if why and not keep_going:
            break
        console.step(f"prepare source {n}: fetch + patch")
        try:
            fetching.fetch(settings, [n])
            patchqueue.patch(settings, [n])
        except (AskbuildError, gitutil.GitError) as e:
            why[n] = (f"`{settings.command('fetch')}`/`{settings.command('patch')}` of it "
                     f"failed: {getattr(e, 'message', str(e))}")
            console.warn(f"source {n}: {why[n]}")
    return why


def _check_patch_states(settings: Settings, names: list[str], why: dict[str, str]) -> None:
    """Add to ``why`` each declared source of ``names`` whose tree is not the current series
    on the current lock: never build what the tree happens to hold (nor uncommitted edits,
    which the build would silently ignore)."""
    declared = _declared_sources(settings)
    checked = [n for n in names if n in declared and is_tree(settings.source_tree(n))]
    for n, problem in patchqueue.patch_state_problems(settings, checked).items():
        if problem:
            why[n] = (f"its work tree is not the current patch series on the current lock: "
                      f"{problem} (run `{settings.command('patch', '--source', n)}`)")
            console.warn(f"source {n}: {why[n]}")


def _sources_data(settings: Settings) -> dict:
    """The sources file as plain data ({} when unreadable): nothing else of the file matters
    here (and loading the sources may publish the example upstreams)."""
    try:
        return read_toml(settings.sources_file, missing_ok=True)
    except AskbuildError:
        return {}


def _declared_sources(settings: Settings) -> set[str]:
    """Sources the sources file declares (the only trees the patch step owns)."""
    return {n for n, t in _sources_data(settings).items() if isinstance(t, dict) and "kind" in t}


def source_descriptions(settings: Settings) -> dict[str, str]:
    """{source: description} from the sources file, for messages ({} when unreadable)."""
    return {n: t["description"] for n, t in _sources_data(settings).items()
            if isinstance(t, dict) and isinstance(t.get("description"), str) and t["description"]}


# -- reading them ---------------------------------------------------------------------
def input_errors(settings: Settings, r: Recipe, unavailable: dict[str, str],
                 described: dict[str, str], stamp: BuildStamp
                 ) -> tuple[dict[str, dict], list[MissingInputs]]:
    """The git ids of every input of recipe ``r`` ({source: {path: id}}: its own source first,
    then its ``uses``; from ``stamp`` when it knows them for the commit HEAD is at), and an
    error for each source whose tree or paths are not there, saying
    where they come from: ``fmlib needs linux:include/uapi/linux/fmd (from NXP LSDK 6.18
    kernel, source linux): not in <tree> at HEAD``."""
    ids: dict[str, dict[str, str]] = {}
    errors: list[MissingInputs] = []
    for src, paths in [(r.source, r.inputs), *sorted(r.uses.items())]:
        tree = settings.source_tree(src)
        desc = described.get(src)
        origin = f"from {desc}, source {src}" if desc else f"source {src}"
        wanted = f"{r.name} needs {src}:{', '.join(paths)} ({origin})"
        again = (f"`{settings.command('fetch', '--source', src)} && "
                 f"{settings.command('patch', '--source', src)}`")
        if src in unavailable or not is_tree(tree):   # (a failed patch leaves a tree)
            reason = unavailable.get(src) or f"its work tree {tree} does not exist"
            errors.append(MissingInputs(f"{wanted}: {reason}",
                                        fix=f"run `{settings.command('fetch')} && "
                                            f"{settings.command('patch')}` (or only this "
                                            f"source: {again})"))
            continue
        try:
            ids[src], gone = stamp.tree_ids(tree, paths)
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


def source_info(settings: Settings, name: str, stamp: BuildStamp) -> dict:
    """What the manifest says about one source: commits and the applied patches (what git
    would say; from ``stamp`` when it knows it for these commits)."""
    src = settings.source_tree(name)
    info: dict = {"path": str(src)}
    info["head"] = stamp.head(src)
    ids, _ = stamp.tree_ids(src, ["."])
    info["tree"] = ids.get(".")
    info["base"] = stamp.base(src)
    state = None
    try:
        state = patchqueue.tree_state(settings, name)
    except AskbuildError as e:
        console.warn(f"patch state of {name} unreadable: {e.message}")
    if state:
        info["patch_state"] = state
        info["patches"] = state.get("patches", [])
    elif info["base"]:
        info["patches"] = [{"commit": c, "subject": subject}
                           for c, subject in stamp.log(src, info["base"], info["head"])]
    else:
        info["patches"] = []
    return info
