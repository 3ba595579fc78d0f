"""Is a work tree exactly the current series on the current lock?  (Asked by the build.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from .. import gitutil
from ..errors import AskbuildError
from ..fsutil import read_json
from ..gitutil import GitError
from ..refs import EDIT_PREFIX, PATCHED
from ..settings import Settings
from ..sources import Source, load_sources
from .inputs import PatchInput, collect_inputs, shown
from .journal import JOURNAL
from .layers import Layer, load_layers
from .record import record_done, save_stamp, stamp_current, take_stamp, tree_state
from .worktree import (
    base_commit,
    git_dir,
    git_words,
    has_base,
    operation_in_progress,
    rev,
    uncommitted,
)


def patch_state_problem(settings: Settings, name: str) -> str | None:
    """:func:`patch_state_problems` of one source."""
    return patch_state_problems(settings, [name])[name]


def patch_state_problems(settings: Settings, names: list[str]) -> dict[str, str | None]:
    """{name: one line saying why ``<work>/src/<name>`` is not exactly what ``inv patch`` makes from
    the current series on the current lock, or None when it is.

    Checked, in this order (the first problem found is the answer): the work tree exists; no
    interrupted askbuild run left it half-changed; its base is the locked commit (tarball: the
    locked sha256); it was patched (``state/patch-<name>.json``) on that base; every vendor
    provider's tree is at its own lock; the series files (local and vendor, by sha256) are the
    recorded ones; ``askbuild/patched`` is what the record vouches for; HEAD is at the patched
    head; no git operation is in progress; no uncommitted edits or untracked files (the build
    reads committed files only).  When the tree is not the current series and the last
    ``inv patch`` of the source failed, that failure is the answer.  The sources file and the
    layers are read once for all ``names`` (loading the example profile's sources checks its
    published upstreams, which reads the whole example tree).

    Cheap: no git process at all when the patch stamp (:func:`~.record.stamp_current`, the
    same one a no-op ``inv patch`` answers from) proves that nothing changed since a full
    check that also saw no untracked file; otherwise ``git rev-parse``/``ls-tree``/
    ``cat-file``, sha256 of the series files and one ``git status`` (no ``git am``, no fetch;
    the only thing written is the stamp, taken before that check and kept when it finds the
    tree current).  Never raises for a bad state: an unreadable file or a git failure is a
    problem line too."""
    try:
        sources = load_sources(settings)
    except AskbuildError as e:
        return {n: f"source {n}: {e.headline}" for n in names}
    try:
        layers: dict[str, list[Layer]] | None = load_layers(settings, sources)
    except AskbuildError:
        layers = None               # (the full check names the problem in its turn)
    return {n: _one_problem(settings, n, sources, layers) for n in names}


def _one_problem(settings: Settings, name: str, sources: dict[str, Source],
                 layers: dict[str, list[Layer]] | None) -> str | None:
    try:
        return _state_problem(settings, name, sources, layers)
    except AskbuildError as e:
        return f"source {name}: {e.headline}"
    except GitError as e:
        reason = (e.stderr or e.stdout or "").strip().splitlines()
        return (f"source {name}: `git {git_words(e.args_)}` failed in "
                f"{settings.source_tree(name)}: {reason[-1] if reason else e.returncode}")


def _lock_problem(settings: Settings, source: Source, tree: Path, base: str) -> str | None:
    """Why ``tree`` (base ``base``) is not at ``source``'s lock."""
    again = (f"run `{settings.command('fetch', '--source', source.name)}` then "
             f"`{settings.command('patch')}`")
    if not source.locked:
        return (f"source {source.name} has no lock entry, so its tree {tree} cannot be "
                f"vouched for: {again} (fetch records the lock)")
    if source.kind == "git":
        if base != source.commit:
            return (f"source {source.name} is locked at {str(source.commit)[:12]} but its tree "
                    f"{tree} is at {base[:12]} (fetched at another lock): {again}")
        return None
    msg = gitutil.out(["show", "-s", "--format=%B", base], cwd=tree)
    from ..tarimport import SHA256_TRAILER  # (tarimport brings tarfile: only here)
    m = re.search(rf"^{SHA256_TRAILER}: ([0-9a-f]{{64}})$", msg, re.MULTILINE)
    if not m or m.group(1) != source.sha256:
        got = m.group(1)[:12] if m else "an unknown tarball"
        return (f"source {source.name} is locked at sha256 {str(source.sha256)[:12]} but its "
                f"tree {tree} was imported from {got} (fetched at another lock): {again}")
    return None


def _series_changes(record: dict, inputs: list[PatchInput]) -> str:
    """What differs between the recorded series and ``inputs`` ("" when nothing): patch files
    as ``layer/file (changed|new|removed)``, or ``the order of the patches``."""
    old: dict[tuple, tuple] = {}
    order_old = []
    for p in record.get("patches") or []:
        if isinstance(p, dict):
            key = (p.get("layer"), p.get("file"))
            old[key] = (p.get("strip"), p.get("sha256"))
            order_old.append(key)
    new = {(p.layer.id, p.name): (p.strip, p.sha256) for p in inputs}
    out = [f"{k[0]}/{k[1]} (changed)" for k in new if k in old and old[k] != new[k]]
    out += [f"{k[0]}/{k[1]} (new)" for k in new if k not in old]
    out += [f"{k[0]}/{k[1]} (removed)" for k in old if k not in new]
    if out:
        return shown(out, 4)
    return "" if order_old == list(new) else "the order of the patches"


def _state_problem(settings: Settings, name: str, sources: dict[str, Source],
                   all_layers: dict[str, list[Layer]] | None) -> str | None:
    """:func:`patch_state_problems` of one source in phases: the tree, the series, the
    checkout."""
    if name not in sources:
        return f"no source named {name!r} in {settings.sources_file}"
    layers = None if all_layers is None else all_layers.get(name, [])
    if layers is not None and stamp_current(settings, name, layers, sources, untracked=True):
        return None
    stamp = take_stamp(settings, name, layers, sources, untracked=False,
                       before=read_json(settings.patch_stamp(name))) \
        if layers is not None else None
    problem = _full_problem(settings, sources, name)
    if problem is None:
        save_stamp(settings, name, stamp)
    return problem


def _full_problem(settings: Settings, sources: dict[str, Source], name: str) -> str | None:
    """The checks of :func:`patch_state_problem` with git (no stamp)."""
    tree = settings.source_tree(name)
    run = f"`{settings.command('patch', '--source', name)}`"
    problem = _tree_problem(settings, sources[name], tree, run)
    if problem:
        return problem
    record = tree_state(settings, name)
    return (_series_problem(settings, sources, name, record, run)
            or _checkout_problem(settings, tree, str((record or {}).get("head")), run))


def _tree_problem(settings: Settings, src: Source, tree: Path, run: str) -> str | None:
    """The work tree exists, no interrupted run left it half-changed, it is at the lock."""
    if not has_base(tree):
        return (f"source {src.name} has no work tree at {tree}: run "
                f"`{settings.command('fetch', '--source', src.name)}` and {run}")
    if (git_dir(tree) / JOURNAL).exists():
        verb = (read_json(git_dir(tree) / JOURNAL) or {}).get("verb", "patch")
        return (f"an interrupted `inv {verb}` left {tree} half-changed: run {run} (it puts "
                "the tree back first)")
    return _lock_problem(settings, src, tree, base_commit(tree))


def _series_problem(settings: Settings, sources: dict[str, Source], name: str,
                    record: dict | None, run: str) -> str | None:
    """The tree was patched on its base, from the current series (vendor providers at their
    locks), and ``askbuild/patched`` is what the record vouches for.  When the series is not
    the current one and the last ``inv patch`` failed, that failure is the answer."""
    tree = settings.source_tree(name)
    base = base_commit(tree)
    failed = read_json(settings.failed_patch_record(name))

    def or_failed(text: str) -> str:
        err = failed.get("error") if failed else None
        if isinstance(err, str) and err.strip():
            return (f"the last `inv patch` of {name} failed: {err.strip().splitlines()[0]} "
                    f"(fix it and run {run})")
        return text

    if record is None:
        return or_failed(f"source {name} has not been patched (no record "
                         f"{settings.patch_record(name)}): run {run}")
    if record.get("base") != base:
        return or_failed(f"source {name} was fetched at a new lock since `inv patch` (patched "
                         f"on {str(record.get('base'))[:12]}, its base is now {base[:12]}): "
                         f"run {run}")
    layers = load_layers(settings, sources).get(name, [])
    trees, problem = _provider_trees(settings, sources, name, layers, run)
    if problem:
        return problem
    inputs = collect_inputs(settings, layers, sources, trees=trees, quiet=True)
    changes = _series_changes(record, inputs)
    if changes:
        return or_failed(f"the series changed since `inv patch`: {changes}: run {run}")
    if not record_done(tree, record, base, inputs):
        return (f"branch {PATCHED} of {tree} is not what `inv patch` made (the record "
                f"{settings.patch_record(name)} does not vouch for it): run {run}")
    return None


def _provider_trees(settings: Settings, sources: dict[str, Source], name: str,
                    layers: list[Layer], run: str) -> tuple[dict[str, Path], str | None]:
    """The work trees of ``name`` and of its vendor providers, or why a provider's tree is
    missing or not at its lock."""
    trees = {name: settings.source_tree(name)}
    for ly in layers:
        if ly.kind != "vendor" or not ly.provider or ly.provider in trees:
            continue
        ptree = settings.source_tree(ly.provider)
        if not has_base(ptree):
            return trees, (f"vendor layer {ly.id} of {name}: source {ly.provider} has no work "
                           f"tree at {ptree}: run "
                           f"`{settings.command('fetch', '--source', ly.provider)}` and {run}")
        problem = _lock_problem(settings, sources[ly.provider], ptree, base_commit(ptree))
        if problem:
            return trees, f"vendor layer {ly.id} of {name}: {problem}"
        trees[ly.provider] = ptree
    return trees, None


def _checkout_problem(settings: Settings, tree: Path, head: str, run: str) -> str | None:
    """HEAD is at the patched head, no git operation is in progress, nothing uncommitted."""
    t = shlex.quote(str(tree))
    edit = f"`{settings.command('patches.edit', 'SERIES')}`"
    export = f"`{settings.command('patches.export', 'SERIES')}`"
    cur = rev(tree, "HEAD") or "?"
    if cur != head:
        sym = gitutil.git(["symbolic-ref", "-q", "--short", "HEAD"], cwd=tree,
                          check=False).stdout.strip()
        where = f"branch {sym}" if sym else f"a detached HEAD at {cur[:12]}"
        fix = (f"export the edits ({export}) and run {run}"
               if sym.startswith(EDIT_PREFIX) else
               f"`git -C {t} checkout {PATCHED}`, or run {run}")
        return (f"{tree} is on {where}, not on the patched series ({PATCHED} at "
                f"{head[:12]}): {fix}")
    op = operation_in_progress(tree)
    if op:
        return f"{op} is in progress in {tree}: finish or abort it (`git -C {t} status`)"
    dirty = uncommitted(tree)
    if dirty:
        return (f"uncommitted edits in {tree}: {shown(dirty, 6)}; the build reads committed "
                f"files only: commit them into a series ({edit}, commit, {export}, {run}) "
                f"or discard them (`git -C {t} reset --hard && git -C {t} clean -fd`)")
    return None
