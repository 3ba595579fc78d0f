"""``inv patches.edit``: a local series as commits on branch ``askbuild/edit/<layer>``."""

from __future__ import annotations

import shlex
from pathlib import Path

from .. import console, gitutil, runlock
from ..errors import DirtyTreeError, PatchFailed
from ..fsutil import read_json, write_json_atomic
from ..report import Report
from ..settings import Settings
from ..sources import load_sources
from .apply import PATCH_COLUMNS, as_mbox, git_am, git_error_lines
from .inputs import PatchInput, collect_inputs, source_tree
from .journal import journalled, recover_tree
from .layers import Layer, edit_branch, load_layers, resolve_layer
from .patching import patch_source
from .record import record_layer
from .worktree import (
    changed_files,
    git_errors,
    no_space,
    no_space_error,
    operation_in_progress,
    rev,
)
from .write import finish_pending_series


def _am_rest(tree: Path, rest: list[PatchInput]) -> str | None:
    """``git am --3way`` the failing patch and the rest of its series; returns git's report
    when it stopped (the am stays in progress for the user)."""
    strip = rest[0].strip
    batch = [rest[0]] + [q for q in rest[1:] if q.strip == strip]
    if len(batch) != len(rest):
        batch = rest[:1]
    ok, err = git_am(tree, b"".join(as_mbox(q) for q in batch), strip)
    if ok:
        return None
    if no_space(err):
        raise no_space_error(f"patches.edit: applying {rest[0].label}", tree, err)
    return "\n".join(git_error_lines(err))


@runlock.exclusive("patches.edit")
def edit(settings: Settings, what: str) -> str:
    """Put the series as commits on branch ``askbuild/edit/<layer>`` in the source's work tree
    (checked out) and return the branch name.

    The branch starts where the layers below end.  When a patch of this series does not apply,
    the branch holds the patches before it and ``git am --3way`` is left stopped at the failing
    one (the rest of the series queued behind it) for the user to resolve.  What the branch
    started from is recorded in ``state/edit-<source>-<layer>.json`` for export.  A run killed
    half-way leaves nothing the next one trips over: the half-made branch and record go."""
    finish_pending_series(settings)
    layer = resolve_layer(settings, what)
    tree = settings.source_tree(layer.source)
    with git_errors(f"patches.edit {layer.dir}", tree):
        recover_tree(settings, layer.source, tree)
        return _edit(settings, layer)


def _edit(settings: Settings, layer: Layer) -> str:
    sources = load_sources(settings)
    src = sources[layer.source]
    tree = source_tree(settings, src)
    t = shlex.quote(str(tree))
    layers = load_layers(settings, sources).get(layer.source, [])
    branch = edit_branch(layer)
    existing = rev(tree, f"refs/heads/{branch}")
    erec_path = settings.edit_record(layer.source, layer.slug)
    erec = read_json(erec_path)
    if existing and erec and gitutil.git(["merge-base", "--is-ancestor", erec["start"],
                                          existing], cwd=tree, check=False).returncode == 0:
        files = changed_files(tree)
        if files or operation_in_progress(tree):
            raise DirtyTreeError(f"{tree}: uncommitted changes or a git operation in progress",
                                 fix=f"finish or stash it (`git -C {t} status`)")
        with journalled(settings, layer.source, tree, "patches.edit"):
            gitutil.git(["checkout", "-q", branch], cwd=tree)
        console.info(f"resuming the existing edit branch {branch} "
                     f"(delete it with `git -C {t} branch -D {branch}` to start over)")
        _edit_help(settings, layer, tree, branch, erec["start"], None)
        return branch
    if existing:
        raise DirtyTreeError(
            f"{tree}: branch {branch} exists but does not start at the series' base (the "
            "series or the layers below it changed since it was made)",
            fix=f"export what you need from it first, or save it (`git -C {t} branch -m "
                f"{branch} my-old-edit`), or delete it: `git -C {t} branch -D {branch}`")
    scratch = Report("patch", "patch", PATCH_COLUMNS)
    rest: list[PatchInput] = []
    try:
        record = patch_source(settings, src, sources=sources, layers=layers, report=scratch,
                              tree=tree)
        rl = record_layer(settings, record, layer)
        start, at = rl["start"], rl["end"]
        entries = [{"file": p["file"], "strip": p["strip"], "sha256": p["sha256"],
                    "commits": p["commits"]} for p in record["patches"] if p["layer"] == layer.id]
    except PatchFailed as e:
        part = e.partial
        if not part or part["layer"] != layer.id:
            raise
        start, at = part["layer_start"], part["head"]
        inputs = collect_inputs(settings, layers, sources, trees={layer.source: tree})
        done = {(a["layer"], a["file"]): a["commits"] for a in part["applied"]}
        mine = [p for p in inputs if p.layer.id == layer.id]
        entries = [{"file": p.name, "strip": p.strip, "sha256": p.sha256,
                    "commits": done.get((p.layer.id, p.name), [])} for p in mine]
        rest = [p for p in inputs[part["index"]:] if p.layer.id == layer.id]
    stopped = None
    with journalled(settings, layer.source, tree, "patches.edit", created_branch=branch,
                    edit_record=str(erec_path)):
        gitutil.git(["checkout", "-q", "-B", branch, at], cwd=tree)
        if rest:
            stopped = (rest[0].name, _am_rest(tree, rest))
        write_json_atomic(erec_path, {"source": layer.source, "layer": layer.id,
                                      "start": start, "entries": entries})
    _edit_help(settings, layer, tree, branch, start, stopped)
    return branch


def _edit_help(settings: Settings, layer: Layer, tree: Path, branch: str, start: str,
               stopped: tuple[str, str | None] | None) -> None:
    t = shlex.quote(str(tree))
    export = f"`{settings.command('patches.export', layer.dir)}`"
    n = len(gitutil.out(["rev-list", f"{start}..{branch}"], cwd=tree).split())
    msg = (f"{layer.dir}: {tree} is on branch {branch}: {n} commit(s) on top of {start[:12]}.\n"
           f"  change them with git (commit --amend, `git -C {t} rebase -i {start[:12]}`, new "
           f"commits), then run {export}")
    if stopped and stopped[1] is not None:
        msg += (f"\n  {stopped[0]} does not apply: `git am --3way` stopped at it:\n    "
                + stopped[1].replace("\n", "\n    ") +
                f"\n  resolve the files (or apply the patch by hand: `git -C {t} apply --reject "
                f".git/rebase-apply/patch`), `git -C {t} add -- FILES`, "
                f"`git -C {t} am --continue` (or `git -C {t} am --skip` to drop it); "
                f"then {export}")
    console.info(msg)


def unexported_edits(settings: Settings, tree: Path, layers: list[Layer]
                     ) -> list[tuple[Layer, str, str]]:
    """``(layer, edit branch, what)`` for every edit branch of ``layers`` in ``tree`` that
    holds work not exported: its commits differ from what its last edit or export wrote."""
    out = []
    for ly in layers:
        if ly.kind != "local":
            continue
        branch = edit_branch(ly)
        head = rev(tree, f"refs/heads/{branch}")
        if not head:
            continue
        erec = read_json(settings.edit_record(ly.source, ly.slug)) or {}
        start = erec.get("start")
        exported = [c for e in erec.get("entries", []) for c in e.get("commits", [])]
        if not isinstance(start, str):
            out.append((ly, branch, "commits askbuild has no export record of"))
            continue
        chain = gitutil.git(["rev-list", "--reverse", f"{start}..{head}", "--"], cwd=tree,
                            check=False).stdout.split()
        if chain == exported:
            continue
        new = [c for c in chain if c not in set(exported)]
        out.append((ly, branch, f"{len(new)} commit(s) not exported" if new
                    else "commits dropped or reordered since the last export"))
    return out
