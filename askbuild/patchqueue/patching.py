"""The ``inv patch`` verb: bring each source's work tree to base + its series.

Branch ``askbuild/patched`` starts at the base (tag ``askbuild/base``) and gets one commit per
patch.  A record that vouches for the tree makes the run a no-op (answered without any git
process when the patch stamp proves nothing changed: :mod:`.record`); anything else is rebuilt from
the base on a detached HEAD (the branch and the record move only when every patch applied, a
failure puts the tree back as it was), but never over user work (uncommitted edits, a git
operation in progress, or commits on ``askbuild/patched`` that askbuild did not make raise
:class:`DirtyTreeError` saying how to save or discard them).  ``keep_going`` tries every source
and lists every failure at the end (:func:`askbuild.errors.summary_error`).
"""

from __future__ import annotations

import bisect
import contextlib
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from .. import console, gitutil, procs, runlock
from ..errors import (
    AskbuildError,
    DirtyTreeError,
    NoSpaceError,
    PatchFailed,
    SourceError,
    summary_error,
)
from ..fsutil import dirs_above, read_json, write_json_atomic
from ..gitutil import GitError
from ..refs import BASE_REF, BASE_TAG, PATCHED
from ..report import Report
from ..settings import Settings
from ..sources import Source, load_sources, select
from .apply import PATCH_COLUMNS, apply_queue, touched_paths
from .graft import Grafted, bring_in, grafted_queue
from .inputs import PatchInput, collect_inputs, source_tree
from .journal import journalled, position, recover_tree, untracked_paths
from .layers import Layer, load_layers
from .record import (
    TreeWalk,
    drop_stamp,
    layers_with_empty,
    record_done,
    record_matches,
    stamp_current,
    tree_state,
    write_stamp,
)
from .scratch import (
    ScratchHome,
    clean_scratch,
    in_scratch_home,
    scratch_home,
    scratch_worktree,
    sparse_pays,
)
from .worktree import (
    ASKBUILD_COMMITTER,
    PATCHED_REF,
    NoSpaceLeft,
    TreeStatus,
    base_commit,
    git_errors,
    no_space,
    no_space_error,
    operation_in_progress,
    read_refs,
    tree_status,
)
from .write import finish_pending_series


class TreeView(NamedTuple):
    """What :func:`patch_source` knows of a work tree before it changes anything: the base,
    ``askbuild/patched``, HEAD and its branch, the changed tracked files (two git processes:
    one ``cat-file`` unless the refs were just read, and one ``git status``, which
    :func:`patch_source` runs on a thread; :func:`read_view` asks both in turn)."""
    base: str
    patched: str | None
    status: TreeStatus


def read_refs_of(tree: Path, refs: dict[str, str | None] | None = None
                 ) -> tuple[str, str | None]:
    """The base commit and ``askbuild/patched`` (None: no such branch) of ``tree``: from
    ``refs`` (what :func:`~.inputs.source_tree` read of them a moment ago, under the same
    lock) or one ``cat-file``."""
    if not refs or refs.get(BASE_REF) is None or PATCHED_REF not in refs:
        refs = read_refs(tree, [BASE_REF, PATCHED_REF])
    base = refs[BASE_REF]
    if base is None:        # (what base_commit says of a tree without its base tag)
        base = base_commit(tree)
    return base, refs[PATCHED_REF]


def read_view(tree: Path, refs: dict[str, str | None] | None = None) -> TreeView:
    """The :class:`TreeView` of ``tree``: :func:`read_refs_of` and one ``git status``."""
    return TreeView(*read_refs_of(tree, refs), tree_status(tree))


def check_clean(settings: Settings, name: str, tree: Path, record: dict | None,
                base: str | None = None, *, ignore_rebase: bool = False,
                view: TreeView | None = None,
                foreign: Callable[[], list[str]] | None = None) -> None:
    """Refuse (DirtyTreeError) when rebuilding ``tree`` would lose user work.  ``view``:
    the tree as :func:`read_view` just read it (else it is read here).  ``foreign``: the
    answer of :func:`_foreign_commits` for them, when it was asked on a thread."""
    t = shlex.quote(str(tree))
    rebase_state = settings.rebase_state(name)
    if rebase_state.exists() and not ignore_rebase:
        cont, skip, abort = (settings.command("rebase", name, m)
                             for m in ("--continue", "--skip", "--abort"))
        raise DirtyTreeError(f"{tree}: a rebase of {name} is in progress",
                             fix=f"finish it with `{cont}` (or `{skip}`), "
                                 f"or undo it with `{abort}`")
    op = operation_in_progress(tree)
    if op:
        raise DirtyTreeError(f"{tree}: {op} is in progress in the work tree",
                             fix=f"finish or abort it first (e.g. `git -C {t} am --abort`, "
                                 f"`git -C {t} cherry-pick --abort`, `git -C {t} rebase --abort`)")
    view = view or read_view(tree)
    files = view.status.changed
    if files:
        shown = ", ".join(files[:8]) + (f" (+{len(files) - 8} more)" if len(files) > 8 else "")
        raise DirtyTreeError(
            f"{tree} has uncommitted changes that the patch step would throw away: {shown}",
            fix=f"save them: `git -C {t} stash` (or commit them on an edit branch: "
                f"`{settings.command('patches.edit', 'SERIES')}`, commit, "
                f"`{settings.command('patches.export', 'SERIES')}`); "
                f"or discard them: `git -C {t} reset --hard`")
    foreign = foreign() if foreign is not None \
        else _foreign_commits(tree, record, base or view.base, view.patched)
    edit = settings.command("patches.edit", "SERIES")
    if foreign:
        back = (record or {}).get("head") or base or BASE_TAG
        raise DirtyTreeError(
            f"{tree}: branch {PATCHED} has commits the patch series did not make: "
            + "; ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else ""),
            fix=f"save them on a branch and hand the branch back: `git -C {t} switch -c my-work "
                f"{PATCHED} && git -C {t} branch -f {PATCHED} {back[:12]}` (then carry them "
                f"into a series with `{edit}` + cherry-pick + "
                f"`{settings.command('patches.export', 'SERIES')}`); or discard them: "
                f"`git -C {t} branch -f {PATCHED} {back[:12]}`")


def _foreign_commits(tree: Path, record: dict | None, base: str | None,
                     patched: str | None) -> list[str]:
    """``sha subject`` of the commits on ``askbuild/patched`` (at ``patched``) that askbuild
    did not make (none when the branch is absent or exactly at the recorded head).  One
    ``git log``: the base and the record's base and head are left out as far as they are
    commits of the tree (``--ignore-missing``)."""
    if not patched or (record and patched == record.get("head")):
        return []
    exclude = [f"^{c}^{{commit}}" for c in
               dict.fromkeys([base, (record or {}).get("base"), (record or {}).get("head")])
               if isinstance(c, str) and gitutil.is_sha(c)]
    lines = gitutil.out(["log", "--ignore-missing", "--format=%H %cn <%ce>%x09%s", patched,
                         *exclude, "--"], cwd=tree).splitlines()
    foreign = []
    for ln in lines:
        sha_ident, _, subject = ln.partition("\t")
        sha, _, ident = sha_ident.partition(" ")
        if ident != ASKBUILD_COMMITTER:
            foreign.append(f"{sha[:12]} {subject}")
    return foreign


def _check_out_patched(settings: Settings, name: str, tree: Path, patched: str,
                       view: TreeView) -> None:
    st = view.status
    if st.head == patched and st.symref == PATCHED_REF:
        return
    with journalled(settings, name, tree, "patch", prev=_prev(settings, name, view)):
        gitutil.git(["checkout", "-q", PATCHED], cwd=tree)


def _prev(settings: Settings, name: str, view: TreeView) -> dict:
    """The journal's ``prev`` from what ``view`` holds (the record read now)."""
    return position(view.status.head, view.status.symref, view.patched,
                    tree_state(settings, name))


def patch_source(settings: Settings, source: Source, *, sources: dict[str, Source],
                 layers: list[Layer], report: Report, tree: Path | None = None,
                 ignore_rebase: bool = False, trees: dict[str, Path] | None = None,
                 refs: dict[str, str | None] | None = None,
                 walked: list[tuple[dict, int]] | None = None,
                 stamp_before: dict | None = None,
                 status: Callable[[], TreeStatus] | None = None) -> dict:
    """Bring one source's work tree to base + its series (no-op when the record shows it is
    there already).  The series is applied on a detached HEAD under a run journal;
    ``askbuild/patched`` and the record move only when every patch applied.  When a patch
    fails, the tree goes back to where it was before the run; when the run is killed, the next
    one does that first (:func:`recover_tree`).  ``trees``: work trees already made (vendor
    providers).  ``refs``: what :func:`~.inputs.source_tree` read of ``tree`` just now (it
    saves a git process).  Success removes the failure note
    (:meth:`Settings.failed_patch_record`).  ``walked``: gets the tree's directories for
    the next stamp and when their reading began, when the run read them meanwhile (a
    graft: :class:`~.record.TreeWalk`; ``stamp_before``: the stamp it replaces).
    ``status``: :func:`~.worktree.tree_status` of ``tree`` started on a thread by the caller
    (before the refs were read), else it is started here."""
    if tree is None:
        refs = {}
        tree = source_tree(settings, source, refs=refs)
    trees = {**(trees or {}), source.name: tree}
    skipped: list[Layer] = []
    inputs = collect_inputs(settings, layers, sources, trees=trees, skipped=skipped)
    for ly in skipped:
        report.add(source=source.name, layer=ly.id, kind=ly.kind, patch="", status="skipped",
                   commit=None, detail=f"{ly.dir}/ absent in {ly.provider} (optional)")
    # git status (and, when the series is to be applied, the listing of the untracked
    # files, for the journal, and the log of commits on the patched branch that askbuild
    # did not make) runs while the refs are read and, on a big tree, while the
    # series is applied in a small repository and grafted, which touches nothing of the
    # tree (taken only once the tree is found clean)
    status = status or procs.in_background(tree_status, tree)
    base, patched = read_refs_of(tree, refs)
    record = tree_state(settings, source.name)
    done = record is not None and record_done(tree, record, base, inputs, patched=patched)
    untracked = None if done else procs.in_background(untracked_paths, tree)
    foreign = None if done else procs.in_background(_foreign_commits, tree, record, base,
                                                    patched)
    big = not done and sparse_pays(tree)
    # (the stamp's walk of the tree's directories, once git has walked it, while the
    # series is grafted; only when HEAD is the base: else the run's changes are not known)
    walk = TreeWalk(tree, stamp_before,
                    lambda: status().head == base and untracked() is not None) \
        if walked is not None and big and inputs else None
    with contextlib.ExitStack() as held:
        grafted = _grafted(held, settings, source.name, tree, base, inputs) \
            if big and inputs else None
        view = TreeView(base, patched, status())
        check_clean(settings, source.name, tree, record, base, ignore_rebase=ignore_rebase,
                    view=view, foreign=foreign)
        if done:
            _check_out_patched(settings, source.name, tree, record["head"], view)
            commits = {(p["layer"], p["file"]): p["commits"] for p in record["patches"]}
            for p in inputs:
                c = commits.get((p.layer.id, p.name)) or [None]
                report.add(source=source.name, layer=p.layer.id, kind=p.layer.kind,
                           patch=p.name, status="unchanged", commit=c[-1], detail="")
            settings.failed_patch_record(source.name).unlink(missing_ok=True)
            return record
        if record is not None and record_matches(record, base, inputs):
            console.info(f"patch {source.name}: the record {settings.patch_record(source.name)} "
                         f"does not match branch {PATCHED} of {tree}: applying the series again")
        console.step(f"patch {source.name}: {len(inputs)} patch(es) onto {base[:12]}")
        detached = view.status.head if view.status.symref is None else None
        others = untracked()
        with journalled(settings, source.name, tree, "patch",
                        prev=_prev(settings, source.name, view), untracked=others):
            settings.patch_record(source.name).unlink(missing_ok=True)
            at_base = view.status.head == base
            record = _take_graft(source.name, tree, base, grafted, report, at_base=at_base,
                                 others=others) if grafted else None
            if record is not None and at_base and walk is not None:
                with contextlib.suppress(OSError):
                    dirs = walk.dirs(grafted.graft.changes)
                    if dirs is not None:
                        walked.append((dirs, walk.taken_ns))
            if record is None:
                record = apply_queue(tree, base, inputs, source=source.name, report=report,
                                     branch=None, settings=settings, detached_at=detached)
            # (= checkout -B PATCHED HEAD: the tree is at the head already; two quick processes)
            gitutil.git(["update-ref", "-m", "askbuild: patch", PATCHED_REF, record["head"]],
                        cwd=tree)
            gitutil.git(["symbolic-ref", "HEAD", PATCHED_REF], cwd=tree)
            record = layers_with_empty(record, layers)
            write_json_atomic(settings.patch_record(source.name), record)
    settings.failed_patch_record(source.name).unlink(missing_ok=True)
    return record


class _Grafted(NamedTuple):
    """A series applied in a small repository and grafted onto the base (:func:`_grafted`):
    what :func:`~.graft.grafted_queue` yielded (the small repository, which borrows the
    tree's objects, is its object directory's) and the rows it reported."""
    graft: Grafted
    rows: Report


def _grafted(held: contextlib.ExitStack, settings: Settings, name: str, tree: Path, base: str,
             inputs: list[PatchInput]) -> _Grafted | None:
    """On a big tree, the queue applied in a small repository holding the files the patches
    name and grafted onto ``base`` (:func:`~.graft.grafted_queue`: the commits ``git am``
    makes on the full tree), the repository kept until ``held`` closes; None when the small
    tree cannot stand for the full one.  Nothing of ``tree`` changes."""
    paths = touched_paths(tree, inputs)
    if paths is None:
        return None
    rows = Report("patch", "patch", PATCH_COLUMNS)
    home = scratch_home(settings)
    grafted = held.enter_context(grafted_queue(tree, base, inputs, paths, home.parent,
                                               source=name, report=rows, prefix=home.prefix))
    if grafted is None:
        return None
    return _Grafted(grafted, rows)


def _take_graft(name: str, tree: Path, base: str, grafted: _Grafted, report: Report, *,
                at_base: bool, others: list[str]) -> dict | None:
    """Bring ``grafted``'s objects into the tree's repository (:func:`~.graft.bring_in`)
    and check the tree out at its head: the record :func:`~.apply.apply_queue` would return,
    its rows in ``report``.  None, with the tree as it was, when the checkout is refused (a
    file in the way: ``git am`` on the full tree then says which); a checkout that fails
    otherwise raises (the journal puts the tree back).

    A file the series makes where the tree has an untracked or ignored path (``others``,
    :func:`~.journal.untracked_paths`) is refused before anything is checked out (a checkout
    would overwrite an ignored file, where ``git am`` refuses).  ``at_base``: the clean
    tree's HEAD is ``base``, so only the files the series changed differ from the head:
    just they are checked out, and HEAD moves after, with ``askbuild/patched``.  On 30k
    files that takes 20 ms, where a checkout of the head, which reads both trees whole and
    refreshes the whole index, takes 50 ms."""
    graft = grafted.graft
    if _in_the_way(graft.changes, others):
        return None
    head = graft.record["head"]
    bring_in(graft.objects.parent.parent, tree, head, base)
    if at_base:
        done = _check_out_paths(tree, head, sorted(graft.changes))
    else:
        done = gitutil.git(["checkout", "-q", "--detach", head], cwd=tree, check=False)
    if done is not None and done.returncode != 0:
        if no_space(done.stderr):       # (not the patches' fault: the journal undoes it)
            raise no_space_error(f"patch {name}", tree, done.stderr)
        if at_base:                     # (nothing was in the way: git says what failed)
            raise GitError(["checkout", "--no-overlay", head], done.returncode, done.stdout,
                           done.stderr)
        return None
    report.rows += grafted.rows.rows
    return graft.record


def _in_the_way(changes: dict[str, bool], others: list[str]) -> bool:
    """Whether a file the head has (``changes``) would meet an untracked path (``others``,
    a directory as ``dir/``): the same path, one above it or one below it."""
    made = [p for p, there in changes.items() if there]
    if not made or not others:
        return False
    names = sorted(o.rstrip("/") for o in others)
    taken = set(names)
    for p in made:
        if p in taken or any(d in taken for d in dirs_above(p)):
            return True
        i = bisect.bisect_left(names, p + "/")
        if i < len(names) and names[i].startswith(p + "/"):
            return True
    return False


def _check_out_paths(tree: Path, head: str, paths: list[str]):
    """``paths`` (files of the clean tree that differ from ``head``) as ``head`` has them, in
    the index and the tree, a path ``head`` lacks removed (``git checkout --no-overlay``,
    the paths read literally from its input): the process, None when there is no path."""
    if not paths:
        return None
    return gitutil.git(["checkout", "--no-overlay", "-q", head, "--pathspec-from-file=-",
                        "--pathspec-file-nul"], cwd=tree, check=False, input="\0".join(paths),
                       env={"GIT_LITERAL_PATHSPECS": "1"})


class _Trees:
    """Work trees of the sources one ``inv patch`` run reads, each made at most once; a tree
    that cannot be made is remembered with the reason (its dependents are skipped)."""

    def __init__(self, settings: Settings, sources: dict[str, Source]) -> None:
        self.settings, self.sources = settings, sources
        self.made: dict[str, Path] = {}
        self.broken: dict[str, str] = {}

    def get(self, name: str, refs: dict[str, str | None] | None = None,
            before_fetch: Callable[[], object] | None = None) -> Path:
        """The work tree of ``name``; ``refs`` filled as :func:`~.inputs.source_tree` fills
        it when the tree was looked at now (not when an earlier call made it);
        ``before_fetch`` as there."""
        if name in self.broken:
            raise SourceError(f"source {name}: {self.broken[name]}")
        if name not in self.made:
            try:
                self.made[name] = source_tree(self.settings, self.sources[name], refs=refs,
                                              before_fetch=before_fetch)
            except AskbuildError as e:
                self.broken[name] = e.headline
                raise
        return self.made[name]

    def blocked(self, layers: list[Layer]) -> str | None:
        """Why a source cannot be patched because a vendor layer's provider has no tree."""
        for ly in layers:
            if ly.kind != "vendor" or not ly.provider:
                continue
            try:
                self.get(ly.provider)
            except AskbuildError:
                return (f"its vendor layer {ly.id} comes from source {ly.provider}, whose work "
                        f"tree could not be made ({self.broken[ly.provider]})")
        return None


def unchanged_from_stamp(settings: Settings, src: Source, layers: list[Layer],
                         sources: dict[str, Source], report: Report) -> bool:
    """The no-op answer without git: when the patch stamp proves nothing changed since the
    last full check (:func:`~.record.stamp_current`), report every patch ``unchanged`` as
    :func:`patch_source` does for a done tree and return True."""
    record = stamp_current(settings, src.name, layers, sources)
    if record is None:
        return False
    kinds = {ly.id: ly.kind for ly in layers}
    for p in record["patches"]:
        report.add(source=src.name, layer=p["layer"], kind=kinds.get(p["layer"], p.get("kind")),
                   patch=p["file"], status="unchanged", commit=(p.get("commits") or [None])[-1],
                   detail="")
    settings.failed_patch_record(src.name).unlink(missing_ok=True)
    return True


def _patch_one(settings: Settings, src: Source, layers: list[Layer], trees: _Trees, *,
               sources: dict[str, Source], report: Report, check: bool) -> None:
    """Patch (or ``check``) one source the full way; raises what went wrong.  (The caller
    first tries :func:`unchanged_from_stamp`.)  After a run that leaves the tree done and
    skipped no optional layer (whose warning only this path prints), a new stamp."""
    with git_errors(f"patch {src.name}", settings.source_tree(src.name)):
        before = None
        if not check:
            before = read_json(settings.patch_stamp(src.name))
            before = before if isinstance(before, dict) else None
            drop_stamp(settings, src.name)
            recover_tree(settings, src.name)
        refs: dict[str, str | None] = {}
        # (git status of a tree that is there runs while its refs are read; a fetch, which
        # changes the tree, waits for it and its answer is not used)
        path = settings.source_tree(src.name)
        status = procs.in_background(tree_status, path) \
            if not check and src.name not in trees.made and (path / ".git").is_dir() else None
        fetched = False

        def before_fetch() -> None:
            nonlocal fetched
            fetched = True
            if status is not None:
                with contextlib.suppress(GitError):
                    status()
        tree = trees.get(src.name, refs, before_fetch=before_fetch)
        if not check:
            mark = len(report.rows)
            walked: list[tuple[dict, int]] = []
            patch_source(settings, src, sources=sources, layers=layers, report=report,
                         tree=tree, trees=trees.made, refs=refs, walked=walked,
                         stamp_before=before,
                         status=None if fetched or tree != path else status)
            if not any(r.get("status") == "skipped" for r in report.rows[mark:]):
                write_stamp(settings, src.name, layers, sources, before=before,
                            walked=walked[0] if walked else None)
            return
        inputs = collect_inputs(settings, layers, sources, trees={**trees.made})
        base = base_commit(tree)
        _check_queue(settings, src, tree, base, inputs, report)


def _check_queue(settings: Settings, src: Source, tree: Path, base: str,
                 inputs: list[PatchInput], report: Report) -> None:
    """``inv patch --check``: the queue applied in a scratch.  On a big tree
    (:func:`~.scratch.sparse_pays`) first in a small repository holding only the files the
    patches name (:func:`~.apply.touched_paths`), its commits grafted onto the base
    (:func:`~.graft.grafted_queue`: the rows and commits of the full tree); when it cannot
    stand for the full tree, in a sparse scratch of their directories; when a patch did not
    simply apply there, the whole check is done again in a full scratch, whose rows are the
    ones reported.  The scratches are in RAM when there is room; when it runs out there, the
    check is done again in the work directory (:func:`~.scratch.in_scratch_home`)."""
    start = len(report.rows)

    def check_in(home: ScratchHome) -> None:
        del report.rows[start:]         # (the rows of a try that ran out of room)
        _check_in(settings, src, tree, base, inputs, report, home)
    in_scratch_home(settings, check_in)


def _check_in(settings: Settings, src: Source, tree: Path, base: str,
              inputs: list[PatchInput], report: Report, home: ScratchHome) -> None:
    """:func:`_check_queue` with its scratches in ``home``."""
    paths = touched_paths(tree, inputs) if sparse_pays(tree) else None
    if paths is not None:
        with grafted_queue(tree, base, inputs, paths, home.parent, source=src.name,
                           report=report, prefix=home.prefix) as grafted:
            if grafted is not None:
                return
        mark = len(report.rows)
        try:
            with scratch_worktree(tree, base, home.parent, prefix=home.prefix, paths=paths,
                                  sparse_index=False) as scratch:     # (git am's)
                apply_queue(scratch, base, inputs, source=src.name, report=report,
                            branch=None, settings=settings, batch=True)
            if all(r.get("status") == "applied" for r in report.rows[mark:]):
                return
        except (PatchFailed, GitError):
            pass
        del report.rows[mark:]
    with scratch_worktree(tree, base, home.parent, prefix=home.prefix) as scratch:
        apply_queue(scratch, base, inputs, source=src.name, report=report, branch=None,
                    settings=settings, batch=True)


@runlock.exclusive("patch")
def patch(settings: Settings, names: list[str] | tuple[str, ...] = (), check: bool = False,
          as_json: bool = False, keep_going: bool = False) -> Report:
    """The ``inv patch`` verb.  ``check``: apply every series to its locked base in a scratch
    clone and report, touching no build tree (the CI gate).  Holds the work-dir lock; heals
    what a killed run left (half-written series, stale scratch trees, half-patched trees).

    Without ``keep_going`` the first failing source stops the verb (with ``check``, a patch
    that does not apply does not: every source is checked).  With ``keep_going`` every source
    is tried: one whose vendor layer comes from a source that cannot be fetched is skipped with
    that reason, and the error at the end lists every failure
    (:func:`askbuild.errors.summary_error`).  A full disk always stops at once.  A failed (not
    checked) source leaves its failure note (:meth:`Settings.failed_patch_record`)."""
    finish_pending_series(settings)
    clean_scratch(settings)
    sources = load_sources(settings)
    chosen = select(sources, list(names), settings)
    all_layers = load_layers(settings, sources)
    report = Report("patch-check" if check else "patch",
                    "patch check (scratch clones)" if check else "patch", PATCH_COLUMNS,
                    subject={"sources": [s.name for s in chosen]})
    trees = _Trees(settings, sources)
    failures: list[tuple[str, AskbuildError]] = []
    skipped: list[tuple[str, str]] = []
    for src in chosen:
        layers = all_layers.get(src.name, [])
        mark = len(report.rows)
        try:
            if not check and unchanged_from_stamp(settings, src, layers, sources, report):
                continue
            if keep_going and (why := trees.blocked(layers)):
                skipped.append((src.name, why))
                report.add(source=src.name, layer="", kind="", patch="", status="skipped",
                           commit=None, detail=why)
                continue
            _patch_one(settings, src, layers, trees, sources=sources, report=report,
                       check=check)
        except (NoSpaceLeft, NoSpaceError):
            _emit_failed(report, as_json)
            raise
        except AskbuildError as e:
            _note_failure(settings, report, src.name, e, since=mark, check=check)
            failures.append((src.name, e))
            if not keep_going and not (check and isinstance(e, PatchFailed)):
                _emit_failed(report, as_json)
                raise
    report.ok = not failures and not skipped
    report.emit(as_json=as_json)
    if failures or skipped:
        raise _final_error(settings, failures, skipped, check=check, keep_going=keep_going)
    return report


def _emit_failed(report: Report, as_json: bool) -> None:
    report.ok = False
    report.emit(as_json=as_json)


def _note_failure(settings: Settings, report: Report, name: str, e: AskbuildError, *,
                  since: int, check: bool) -> None:
    """A failed row for source ``name`` (unless a patch row from row ``since`` on says it
    already) and, unless ``check``, its failure note."""
    if not any(r.get("status") == "failed" for r in report.rows[since:]):
        report.add(source=name, layer="", kind="", patch="", status="failed",
                   commit=None, detail=e.headline)
    if not check:
        write_json_atomic(settings.failed_patch_record(name),
                          {"source": name, "error": e.message, "fix": e.fix})


def _final_error(settings: Settings, failures: list[tuple[str, AskbuildError]],
                 skipped: list[tuple[str, str]], *, check: bool,
                 keep_going: bool) -> AskbuildError:
    """The one error ending a run where sources failed or were skipped."""
    if check and not keep_going and all(isinstance(e, PatchFailed) for _, e in failures) \
            and len(failures) > 1:
        return PatchFailed("\n".join(e.message for _, e in failures),
                           fix="refresh the failing patches "
                               f"(`{settings.command('patches.edit', 'SERIES')}`)")
    return summary_error("inv patch --check" if check else "inv patch", failures, skipped)
