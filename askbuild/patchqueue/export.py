"""``inv patches.export``: an edit branch (or ``askbuild/patched``) back as its series."""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path
from typing import NamedTuple

from .. import gitutil, runlock
from .. import series as series_mod
from ..errors import DirtyTreeError, UserError
from ..fsutil import read_json
from ..refs import PATCHED
from ..report import Report
from ..settings import Settings
from .journal import recover_tree
from .layers import Layer, edit_branch, resolve_layer
from .record import record_layer, tree_state
from .worktree import changed_files, git_errors, has_base, operation_in_progress, rev
from .write import commit_series, finish_pending_series, plan_series


@runlock.exclusive("patches.export")
def export(settings: Settings, what: str) -> Report:
    """Write the commits of the series' edit branch (or of ``askbuild/patched``) back as the
    series directory, all or nothing (:func:`commit_series`)."""
    finish_pending_series(settings)
    layer = resolve_layer(settings, what)
    tree = settings.source_tree(layer.source)
    with git_errors(f"patches.export {layer.dir}", tree):
        if settings.rebase_state(layer.source).exists():
            raise DirtyTreeError(f"a rebase of {layer.source} is in progress: it rewrites "
                                 f"{layer.dir} when it completes",
                                 fix="finish it (`"
                                     + settings.command("rebase", layer.source, "--continue")
                                     + "`) or undo it (`"
                                     + settings.command("rebase", layer.source, "--abort")
                                     + "`) first")
        recover_tree(settings, layer.source, tree)
        return _export(settings, layer, tree)


def _export(settings: Settings, layer: Layer, tree: Path) -> Report:
    """Export in phases: what to export from, refuse what would lose work, plan, write."""
    src = _source(settings, layer, tree)
    directory = settings.project_root / layer.dir
    _refuse_changed_series(settings, layer, directory, src, tree)
    _refuse_unfinished_edits(tree, src)
    commits = _straight_line(tree, src)
    plan = plan_series(directory, tree, commits,
                       [(p["file"], p["strip"], p["commits"]) for p in src.entries])
    records: dict[Path, dict] = {}
    if src.edit_record is not None:
        src.edit_record["entries"] = [{"file": f, "strip": strip, "sha256": sha, "commits": [c]}
                                      for f, strip, sha, c in plan.entries]
        records[settings.edit_record(layer.source, layer.slug)] = src.edit_record
    commit_series(settings, plan, records)
    report = Report("export", f"export {layer.dir} from {src.branch if src.on_branch else PATCHED}",
                    ["patch", "status"], rows=plan.rows,
                    subject={"series": layer.dir, "source": layer.source})
    report.emit()
    return report


class _From(NamedTuple):
    """What is exported: the commits ``start..head``, and the series entries they came from."""

    branch: str                     # the edit branch of the layer
    start: str
    head: str
    entries: list[dict]             # file, strip, sha256, commits
    edit_record: dict | None        # the edit record, when exporting the edit branch

    @property
    def on_branch(self) -> bool:
        return self.edit_record is not None


def _source(settings: Settings, layer: Layer, tree: Path) -> _From:
    """The layer's edit branch when ``inv patches.edit`` made it, else its commits on
    ``askbuild/patched`` as the patch record says."""
    branch = edit_branch(layer)
    erec = read_json(settings.edit_record(layer.source, layer.slug)) if has_base(tree) else None
    on_branch = rev(tree, f"refs/heads/{branch}") if erec else None
    if erec and on_branch:
        return _From(branch, erec["start"], on_branch, erec["entries"], erec)
    record = tree_state(settings, layer.source)
    if record is None or not has_base(tree):
        raise UserError(f"{layer.dir}: {layer.source} has not been patched yet",
                        fix=f"run `{settings.command('patches.edit', layer.dir)}` first")
    rl = record_layer(settings, record, layer)
    entries = [{"file": p["file"], "strip": p["strip"], "sha256": p["sha256"],
                "commits": p["commits"]} for p in record["patches"] if p["layer"] == layer.id]
    return _From(branch, rl["start"], rl["end"], entries, None)


def _refuse_changed_series(settings: Settings, layer: Layer, directory: Path, src: _From,
                           tree: Path) -> None:
    """Refuse when the series files are not the ones the exported commits came from."""
    now = [[e.name, e.strip, hashlib.sha256((directory / e.name).read_bytes()).hexdigest()]
           for e in series_mod.load(directory)]
    if now == [[p["file"], p["strip"], p["sha256"]] for p in src.entries]:
        return
    t, branch = shlex.quote(str(tree)), src.branch
    edit = f"`{settings.command('patches.edit', layer.dir)}`"
    raise UserError(f"{layer.dir}: the series files changed since the "
                    f"{'edit branch was made' if src.on_branch else 'tree was patched'}; "
                    "exporting would overwrite them",
                    fix=(f"save what you need from {branch}, delete it (`git -C {t} branch "
                         f"-D {branch}`) and run {edit} again"
                         if src.on_branch else
                         f"run {edit} so the tree matches the "
                         "files, then edit and export"))


def _refuse_unfinished_edits(tree: Path, src: _From) -> None:
    """Refuse uncommitted changes or a git operation on the checked-out edit branch."""
    cur = gitutil.git(["symbolic-ref", "-q", "HEAD"], cwd=tree, check=False).stdout.strip()
    if not src.on_branch or cur != f"refs/heads/{src.branch}":
        return
    files = changed_files(tree)
    op = operation_in_progress(tree)
    if files or op:
        raise DirtyTreeError(
            f"{tree}: uncommitted changes on {src.branch} would not be exported: "
            f"{', '.join(files[:8]) or str(op) + ' is in progress'}",
            fix=f"finish it / commit them (`git -C {shlex.quote(str(tree))} status` tells what "
                "is going on), "
                "then export")


def _straight_line(tree: Path, src: _From) -> list[str]:
    """The commits ``start..head``, oldest first: a straight line on top of ``start``."""
    start, head, branch = src.start, src.head, src.branch
    if gitutil.git(["merge-base", "--is-ancestor", start, head], cwd=tree,
                   check=False).returncode != 0:
        raise UserError(f"{branch} does not contain the series base {start[:12]}",
                        fix="rebase the branch onto it, or delete it and run patches.edit again")
    merges = gitutil.out(["rev-list", "--merges", f"{start}..{head}"], cwd=tree)
    if merges:
        raise UserError(f"{branch} contains merge commits ({merges.split()[0][:12]}); a series "
                        "is a straight line of commits", fix="linearize it with git rebase")
    return gitutil.out(["rev-list", "--reverse", f"{start}..{head}"], cwd=tree).split()
