"""Patch inputs: every patch of a source's layers, in application order, with its bytes.

A local layer is a series directory of the project (its ``series`` file).  A vendor directory
is read from the *base* commit of its provider's work tree (the vendor release as locked): it
applies its ``patches`` list, else its ``series`` file, else its ``*.patch`` files in sorted
order.  A vendor layer that selects no patch is an error naming the layer, the directory and
what the tree holds there (:func:`_matches_nothing`); one whose ``*.patch`` match holds
competing patches (two versions of one change) is an error too (:func:`check_competing`).
"""

from __future__ import annotations

import hashlib
import io
import shlex
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from .. import console, gitutil
from .. import series as series_mod
from ..errors import ConfigError
from ..gitutil import GitError
from ..refs import BASE_REF, BASE_TAG
from ..settings import Settings
from ..sources import Source
from .layers import Layer, layers_file
from .worktree import PATCHED_REF, read_refs, rev


class PatchInput(NamedTuple):
    layer: Layer
    name: str
    strip: int
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def label(self) -> str:
        """How messages name the patch file."""
        return f"{self.layer.id}/{self.name}"

    def key(self) -> list:
        return [self.layer.id, self.name, self.strip, self.sha256]


def source_tree(settings: Settings, source: Source, *,
                refs: dict[str, str | None] | None = None,
                before_fetch: Callable[[], object] | None = None) -> Path:
    """The work tree of ``source`` at its locked base (via ``fetching.ensure_source`` unless a
    git tree already sits on its locked commit).  ``refs``: filled, when that was answered
    from the tree as it is, with what :func:`~.worktree.read_refs` says of the base tag,
    ``askbuild/patched`` and ``HEAD`` (one git process for the three).  ``before_fetch``:
    called before a fetch changes the tree (to wait for a query of it still running)."""
    tree = settings.source_tree(source.name)
    if source.kind == "git" and source.commit and (tree / ".git").exists():
        try:
            seen = read_refs(tree, [BASE_REF, PATCHED_REF, "HEAD"])
        except GitError:            # (not a usable repository: fetch repairs it)
            seen = {}
        if seen.get(BASE_REF) == source.commit:
            if refs is not None:
                refs.update(seen)
            return tree
    if before_fetch is not None:
        before_fetch()
    # (imported only to fetch: a patch run of a fetched tree never needs it)
    from .. import fetching
    return fetching.ensure_source(settings, source)


def _ls_tree(tree: Path, d: str, *, recursive: bool) -> dict[str, tuple[str, str, str]]:
    """``{path relative to d: (mode, type, object id)}`` of directory ``d`` in the base
    commit of ``tree`` ({} when ``d`` is absent; ``d == ""``: the top)."""
    spec = ["--", d.rstrip("/") + "/"] if d else []
    listing = gitutil.git(["ls-tree", *(["-r"] if recursive else []), "-z",
                           BASE_REF, *spec], cwd=tree, text=False).stdout
    out: dict[str, tuple[str, str, str]] = {}
    cut = len(d.rstrip("/")) + 1 if d else 0
    for item in listing.split(b"\0"):
        if item:
            meta, _, path = item.partition(b"\t")
            mode, kind, sha = meta.decode().split()
            out[path.decode("utf-8", "surrogateescape")[cut:]] = (mode, kind, sha)
    return out


def _blob(tree: Path, sha: str) -> bytes:
    return gitutil.git(["cat-file", "blob", sha], cwd=tree, text=False).stdout


def _vendor_link(ly: Layer, name: str) -> ConfigError:
    return ConfigError(f"vendor series {ly.id}: {name} is a symbolic link in {ly.provider}'s "
                       "tree; askbuild does not follow links out of a series",
                       fix=f"the vendor release of {ly.provider} must ship the patch as a file")


def shown(names: list[str], limit: int = 12) -> str:
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "nothing"


def _entries_of(tree: Path, d: str) -> list[str]:
    """Top-level entries of ``d`` in the base commit, directories with a trailing ``/``."""
    return [n + ("/" if kind == "tree" else "")
            for n, (_, kind, _) in sorted(_ls_tree(tree, d, recursive=False).items())]


def _layer_label(settings: Settings, ly: Layer) -> str:
    return (f"{layers_file(settings)}: [{ly.source}] vendor layer {ly.id} "
            f"({{ from = \"{ly.provider}\", dir = \"{ly.dir}\" }})")


def _matches_nothing(settings: Settings, ly: Layer, tree: Path, why: str) -> ConfigError:
    """A vendor layer that selects no patch: always an error (a required patch silently left
    out builds a wrong tree that fails much later, naming another component).  The message
    names the layer and the directory, says what the provider's tree holds there (or in the
    nearest existing parent) and how to point the layer at the patches."""
    base = rev(tree, BASE_REF) or "?"
    at = f"{ly.provider}'s tree at its locked base {base[:12]}"
    here = _entries_of(tree, ly.dir)
    parent = ly.dir
    if not here:
        while parent and not here:
            parent = str(PurePosixPath(parent).parent)
            parent = "" if parent == "." else parent
            here = _entries_of(tree, parent)
    holds = f"{parent or 'the top'}/ holds: {shown(here)}" if parent != ly.dir else \
        f"{ly.dir}/ holds: {shown(here)}"
    patches_there = [n for n in here if n.endswith(".patch")]
    lines = [f"{_layer_label(settings, ly)} matches no patch: {why}", f"  in {at}, {holds}"]
    if parent != ly.dir and patches_there:
        fix = (f'set dir = "{parent}" for [{ly.source}]: that directory holds the patch '
               f"file(s) {shown(patches_there, 4)} itself (no version subdirectory)")
    else:
        fix = (f"point dir at the directory of {ly.provider}'s tree that holds the patches for "
               f"{ly.source} (`git -C {shlex.quote(str(tree))} ls-tree -r --name-only {BASE_TAG} "
               "-- patches/`); "
               f"if this release of {ly.provider} carries no patches for {ly.source} any more, "
               "remove the entry")
    return ConfigError("\n".join(lines), fix=fix)


def _select(settings: Settings, ly: Layer, tree: Path,
            files: dict[str, tuple[str, str, str]]) -> tuple[list[series_mod.SeriesEntry], str]:
    """The entries a vendor layer applies and how they were chosen: ``"explicit"`` (the
    layer's ``patches`` list, in its order), ``"series"`` (the vendor's ``series`` file) or
    ``"matched"`` (every ``*.patch`` file at the top of the directory, sorted)."""
    blobs = {k: v for k, v in files.items() if v[1] == "blob"}
    if ly.patches is not None:
        missing = [n for n in ly.patches if n not in blobs]
        if missing:
            have = sorted(n for n in blobs if n.endswith(".patch"))
            raise ConfigError(
                f"{_layer_label(settings, ly)}: patches names file(s) that {ly.dir}/ does not "
                f"hold: {', '.join(missing)}\n  it holds: {shown(have)}",
                fix="correct the names in patches = [...] (relative to dir)")
        return [series_mod.SeriesEntry(n, 1, 0) for n in ly.patches], "explicit"
    if series_mod.SERIES_FILE in blobs:
        mode, _, sha = blobs[series_mod.SERIES_FILE]
        if mode == "120000":
            raise _vendor_link(ly, series_mod.SERIES_FILE)
        listing = {k: b"" for k in blobs} | {series_mod.SERIES_FILE: _blob(tree, sha)}
        return series_mod.from_listing(ly.id, listing), "series"
    return [series_mod.SeriesEntry(n, 1, 0) for n in sorted(blobs)
            if n.endswith(".patch") and "/" not in n], "matched"


def collect_inputs(settings: Settings, layers: list[Layer], sources: dict[str, Source],
                   *, trees: dict[str, Path] | None = None,
                   skipped: list[Layer] | None = None, quiet: bool = False
                   ) -> list[PatchInput]:
    """Every patch of ``layers`` in application order, with its bytes.

    A vendor layer that selects no patch is a :class:`ConfigError` (:func:`_matches_nothing`),
    except an ``optional`` layer whose whole directory is absent: that one is skipped with a
    warning (and appended to ``skipped``).  A layer that matched its patches by the ``*.patch``
    rule must not match competing ones (:func:`check_competing`).  ``quiet``: the skip is
    only an info line (a state query, not a run)."""
    trees = {} if trees is None else trees
    out: list[PatchInput] = []
    for ly in layers:
        if ly.kind == "local":
            d = settings.project_root / ly.dir
            if not d.is_dir():
                raise ConfigError(f"{layers_file(settings)}: local series {ly.dir!r} of "
                                  f"[{ly.source}] does not exist ({d})",
                                  fix="create the directory with an empty 'series' file")
            for e in series_mod.load(d):
                out.append(PatchInput(ly, e.name, e.strip, (d / e.name).read_bytes()))
            continue
        assert ly.provider
        if ly.provider not in trees:
            trees[ly.provider] = source_tree(settings, sources[ly.provider])
        tree = trees[ly.provider]
        files = _ls_tree(tree, ly.dir, recursive=True)
        if not files:
            if ly.optional:
                base = rev(tree, BASE_REF) or "?"
                say = console.info if quiet else console.warn
                say(f"patch {ly.source}: SKIPPED vendor layer {ly.id}: {ly.dir}/ does not exist "
                    f"in {ly.provider}'s tree at {base[:12]} (the entry says optional = true "
                    f"in {layers_file(settings)})")
                if skipped is not None:
                    skipped.append(ly)
                continue
            raise _matches_nothing(settings, ly, tree,
                                   f"{ly.dir}/ does not exist in {ly.provider}'s tree")
        entries, how = _select(settings, ly, tree, files)
        if not entries:
            raise _matches_nothing(settings, ly, tree,
                                   f"{ly.dir}/ holds no *.patch file (and no series file)")
        mine = []
        for e in entries:
            mode, _, sha = files[e.name]
            if mode == "120000":
                raise _vendor_link(ly, e.name)
            mine.append(PatchInput(ly, e.name, e.strip, _blob(tree, sha)))
        if how == "matched":
            check_competing(settings, ly, mine)
        out += mine
    return out


#: Two patches touching at least this many files in common, and in common at least half of all
#: the files either touches, are two versions of one change (see :func:`competing`).
COMPETE_MIN_SHARED = 10


class PatchFiles(NamedTuple):
    touched: frozenset[str]     # every file the patch changes, creates or deletes
    created: frozenset[str]     # files it creates (``--- /dev/null``)


def patch_files(data: bytes) -> PatchFiles | None:
    """The files a patch touches and creates (read with ``unidiff``); None when it cannot be
    read as a unified diff."""
    try:
        from unidiff import PatchSet  # (only when a patch is read)
        pset = PatchSet(io.StringIO(data.decode("latin-1"), newline=""))
    except Exception:   # noqa: BLE001 - an unreadable patch is judged by git when applied
        return None
    touched = {pf.path for pf in pset}
    created = {pf.path for pf in pset if pf.is_added_file}
    return PatchFiles(frozenset(touched), frozenset(created)) if touched else None


def competing(a: PatchFiles, b: PatchFiles) -> str | None:
    """Why two patches of one layer compete (None when they do not): they are two versions of
    the same change when both create one same file (the second could never apply after the
    first), or when they touch at least :data:`COMPETE_MIN_SHARED` files in common and those
    are at least half of all the files the two touch."""
    both = sorted(a.created & b.created)
    shared, union = a.touched & b.touched, a.touched | b.touched
    similar = len(shared) >= COMPETE_MIN_SHARED and 2 * len(shared) >= len(union)
    if not both and not similar:
        return None
    common = (f"they touch {len(shared)} files in common (of {len(a.touched)} and "
              f"{len(b.touched)})")
    if not both:
        return common
    return f"both create {len(both)} file(s) (e.g. {', '.join(both[:2])}) and {common}"


def check_competing(settings: Settings, ly: Layer, inputs: list[PatchInput]) -> None:
    """Refuse a vendor layer whose ``*.patch`` match holds competing patches (two generations
    of one port, e.g. one per kernel version): which one applies must be explicit data."""
    if len(inputs) < 2:
        return
    read = [(p, patch_files(p.data)) for p in inputs]
    read = [(p, f) for p, f in read if f is not None]
    clashes = []
    for i, (p, pf) in enumerate(read):
        for q, qf in read[i + 1:]:
            why = competing(pf, qf)
            if why:
                clashes.append((p, q, why))
    if not clashes:
        return
    lines = [f"{_layer_label(settings, ly)} matches competing patches (two versions of one "
             "change: only one of them can apply):"]
    lines += [f"  {p.name} and {q.name}: {why}" for p, q, why in clashes]
    keep = clashes[0][0].name
    names = ", ".join(f'"{n}"' for n in [keep])
    raise ConfigError(
        "\n".join(lines),
        fix=(f"say which patch(es) of {ly.dir}/ apply to [{ly.source}] in "
             f"{layers_file(settings)}, e.g. vendor = [{{ from = \"{ly.provider}\", "
             f"dir = \"{ly.dir}\", patches = [{names}] }}] (the one written for "
             f"{ly.source}'s version; `{settings.command('patch', '--check')}` tells whether "
             "it applies)"))
