"""The patch step: layered patch series applied as one git commit per patch.

Layers per source are data in ``recipes/patches.toml`` (or the active profile's own
``recipes/profiles/<profile>/patches.toml``: :func:`layers_file`)::

    [linux]   # a directory of another source's tree, and which of its patches apply
    vendor = [{ from = "ask", dir = "patches/kernel", patches = ["002-...linux_6_12.patch"] }]
    local = ["kernel/patches"]                            # series directories of this project

Vendor layers apply first (in file order), then local layers.  A vendor directory is read from
the *base* commit of its provider's work tree (the vendor release as locked); ``{ref}`` in its
path is replaced by the patched source's ``ref``.  It applies its ``patches`` list, else its
``series`` file, else its ``*.patch`` files in sorted order.  A vendor layer that selects no
patch is an error naming the layer, the directory and what the tree holds there
(:func:`_matches_nothing`); one whose ``*.patch`` match holds competing patches (two versions
of one change) is an error too (:func:`check_competing`).  ``optional = true`` only lets the
whole directory be absent (skipped with a warning).

Application (``settings.src_dir/<name>``, a git work tree whose base is tagged ``askbuild/base``):
branch ``askbuild/patched`` starts at the base and gets one commit per patch: ``git am --3way``
for ``git format-patch`` mails, ``git apply`` (then ``--3way``) plus a commit named after the
file for plain diffs.  Identities and dates are fixed (taken from the mail, else
:data:`askbuild.gitutil.FIXED_IDENTITY`), so identical inputs give identical commit ids.  CR
bytes are kept (``--keep-cr``, no autocrlf).

``state/patch-<name>.json`` records the base, every patch (layer, file, -pN, sha256, commits)
and the head; written atomically and only after success.  It is trusted as "done" only when
it vouches for the tree: same base and patch bytes, ``askbuild/patched`` exactly at its head
and exactly its commits between base and head.  Anything else: rebuilt from the base (on a
detached HEAD; the branch and the record move only when every patch applied, a failure puts
the tree back as it was), but never over user work (uncommitted edits, a git operation in
progress, or commits on ``askbuild/patched`` that askbuild did not make raise
:class:`DirtyTreeError` saying how to save or discard them).

Crash safety: the writing verbs hold the work-dir lock (:mod:`askbuild.runlock`).  While
askbuild changes a tree, a journal in its git dir (:func:`journal_begin`) makes everything
uncommitted there askbuild's own; the next run after a kill undoes it (:func:`recover_tree`:
stale git locks, a half-done ``git am``, changed and new files, HEAD, branch and record).  A
series directory is rewritten all or nothing (:func:`commit_series`).  Git failures become
:class:`PatchFailed` naming the source/series/patch and git's reason (:func:`git_errors`); a
full disk is :class:`NoSpaceLeft`, never "refresh the patch".

``patch(..., keep_going=True)`` tries every source and lists every failure at the end
(:func:`summary_error`); :func:`patch_state_problem` tells the build whether a work tree is
exactly the current series on the current lock.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from . import console, gitutil, runlock
from . import series as series_mod
from .errors import (
    AskbuildError,
    ConfigError,
    DirtyTreeError,
    NoSpaceError,
    PatchFailed,
    SourceError,
    UserError,
    free_space,
)
from .fsutil import read_json, read_toml, write_json_atomic
from .gitutil import FIXED_IDENTITY, GitError
from .report import Report
from .settings import Settings
from .sources import Source, load_sources, select

LAYERS_FILE = "patches.toml"
BASE_TAG = "askbuild/base"
PATCHED = "askbuild/patched"
EDIT_PREFIX = "askbuild/edit/"
STATE_SCHEMA = 1
ASKBUILD_COMMITTER = (f"{FIXED_IDENTITY['GIT_COMMITTER_NAME']} "
                      f"<{FIXED_IDENTITY['GIT_COMMITTER_EMAIL']}>")
PATCH_COLUMNS = ["source", "layer", "patch", "status", "commit", "detail"]
# Config that would make commits or diffs depend on the user's git configuration.
REPRO = ["-c", "commit.gpgSign=false", "-c", "i18n.commitEncoding=UTF-8",
         "-c", "diff.noprefix=false", "-c", "diff.mnemonicPrefix=false",
         "-c", "diff.relative=false", "-c", "mailinfo.scissors=false"]


# ---------------------------------------------------------------------------------------------
# layers (recipes/patches.toml)

@dataclass(frozen=True)
class Layer:
    source: str                 # the source the patches apply to
    kind: str                   # "vendor" | "local"
    dir: str                    # vendor: inside the provider's tree; local: inside the project
    provider: str | None = None
    optional: bool = False      # vendor: the whole directory may be absent (loud skip)
    patches: tuple[str, ...] | None = None   # vendor: the explicit list of patch files

    @property
    def id(self) -> str:
        return f"{self.provider}:{self.dir}" if self.kind == "vendor" else self.dir

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", self.id).strip("-.") or "layer"


VENDOR_KEYS = ("from", "dir", "patches", "optional")
VENDOR_SHAPE = ('{ from = "SOURCE", dir = "PATH" [, patches = ["NN-name.patch", ...]] '
                '[, optional = true] }')


def layers_file(settings: Settings) -> Path:
    """``recipes/profiles/<profile>/patches.toml`` when the active profile has its own layer
    file, else ``recipes/patches.toml``."""
    if settings.profile != "default":
        own = settings.recipes_dir / "profiles" / settings.profile / LAYERS_FILE
        if own.exists() or own.is_symlink():
            return own
    return settings.recipes_dir / LAYERS_FILE


def _array(table: dict, key: str, where: str) -> list:
    value = table.get(key, [])
    if not isinstance(value, list):
        example = VENDOR_SHAPE if key == "vendor" else '"patches/NAME"'
        raise ConfigError(f"{where}: {key} must be an array (got {type(value).__name__})",
                          fix=f"e.g. {key} = [{example}]")
    return value


def _vendor_layer(name: str, v: object, i: int, where: str,
                  sources: dict[str, Source]) -> Layer:
    """One ``vendor`` entry, validated (see :data:`VENDOR_SHAPE`)."""
    w = f"{where}: vendor[{i}]"
    if not isinstance(v, dict) or set(v) - set(VENDOR_KEYS) \
            or not isinstance(v.get("from"), str) or not isinstance(v.get("dir"), str):
        extra = sorted(set(v) - set(VENDOR_KEYS)) if isinstance(v, dict) else []
        raise ConfigError(f"{w} must be {VENDOR_SHAPE}"
                          + (f" (unknown key(s): {', '.join(map(str, extra))})" if extra else ""))
    if v["from"] not in sources:
        raise ConfigError(f"{w}: no source named {v['from']!r}",
                          fix=f"known sources: {', '.join(sources)}")
    if not isinstance(v.get("optional", False), bool):
        raise ConfigError(f"{w}: optional must be true or false")
    d = _check_rel(v["dir"].replace("{ref}", sources[name].ref), w)
    patches = v.get("patches")
    if patches is not None:
        if not isinstance(patches, list) or not patches \
                or not all(isinstance(x, str) for x in patches):
            raise ConfigError(f"{w}: patches must be a non-empty array of patch file names "
                              "(relative to dir)",
                              fix='e.g. patches = ["002-port-for-this-kernel.patch"]')
        for x in patches:
            series_mod.check_name(x, f"{w}: patches")
        dup = sorted({x for x in patches if patches.count(x) > 1})
        if dup:
            raise ConfigError(f"{w}: patches lists {', '.join(dup)} more than once",
                              fix="list each patch once")
        patches = tuple(patches)
    return Layer(name, "vendor", d, v["from"], v.get("optional", False), patches)


def load_layers(settings: Settings, sources: dict[str, Source] | None = None
                ) -> dict[str, list[Layer]]:
    """``{source name: [vendor layers..., local layers...]}`` from :func:`layers_file`.

    A series listed twice for one source (two entries naming the same directory, also through
    a symbolic link or ``./``) is refused: it would be applied twice.  The shared
    ``recipes/patches.toml`` may name sources a profile leaves out (skipped); a profile's own
    file may not."""
    path = layers_file(settings)
    data = read_toml(path, missing_ok=True)
    if not data:
        return {}
    if sources is None:
        sources = load_sources(settings)
    shared = path == settings.recipes_dir / LAYERS_FILE
    out: dict[str, list[Layer]] = {}
    for name, table in data.items():
        where = f"{path}: [{name}]"
        if name not in sources:
            if settings.profile != "default" and shared:
                continue        # a profile may leave out sources of the shared file
            raise ConfigError(f"{where}: no source named {name!r} in {settings.sources_file}",
                              fix=f"known sources: {', '.join(sources)}")
        if not isinstance(table, dict) or set(table) - {"vendor", "local"}:
            raise ConfigError(f"{where}: only 'vendor' and 'local' keys are allowed")
        layers: list[Layer] = []
        seen: dict[object, str] = {}
        for i, v in enumerate(_array(table, "vendor", where)):
            ly = _vendor_layer(name, v, i, where, sources)
            _once(seen, ("vendor", ly.provider, ly.dir),
                  f"vendor[{i}] = {{ from = {v['from']!r}, dir = {v['dir']!r} }}", where)
            layers.append(ly)
        for i, d in enumerate(_array(table, "local", where)):
            if not isinstance(d, str):
                raise ConfigError(f"{where}: local[{i}] must be a directory path string")
            rel = _check_rel(d, f"{where} local[{i}]")
            _once(seen, ("local", str((settings.project_root / rel).resolve())),
                  f"local[{i}] = {d!r}", where)
            layers.append(Layer(name, "local", rel))
        out[name] = layers
    return out


def _once(seen: dict[object, str], key: object, label: str, where: str) -> None:
    """Refuse a second entry for the same series directory of one source."""
    if key in seen:
        same = key[-1] if key[0] == "local" else f"{key[1]}:{key[2]}"
        raise ConfigError(f"{where}: the same series is listed twice: {seen[key]} and {label} "
                          f"are both {same}; it would be applied twice",
                          fix="remove one of the two entries")
    seen[key] = label


def _check_rel(d: str, where: str) -> str:
    p = PurePosixPath(d)
    if not d or p.is_absolute() or ".." in p.parts or d.startswith("-"):
        raise ConfigError(f"{where}: {d!r} must be a relative path without '..'")
    return str(p)


def resolve_layer(settings: Settings, what: str) -> Layer:
    """A local layer named by its series directory (``patches/ask/cmm``) or by a source name
    that has exactly one local layer."""
    layers = load_layers(settings)
    local = [ly for lys in layers.values() for ly in lys if ly.kind == "local"]
    cand = what.rstrip("/")
    p = Path(cand)
    if p.is_absolute():
        try:
            cand = str(p.resolve().relative_to(settings.project_root.resolve()))
        except ValueError:
            pass
    for ly in local:
        if ly.dir == cand:
            return ly
    if what in layers:
        mine = [ly for ly in layers[what] if ly.kind == "local"]
        if len(mine) == 1:
            return mine[0]
        if mine:
            raise UserError(f"source {what!r} has {len(mine)} local series",
                            fix=f"name one: {', '.join(ly.dir for ly in mine)}")
    vendor = [ly for lys in layers.values() for ly in lys if ly.kind == "vendor"]
    if any(ly.dir == cand or ly.id == cand for ly in vendor):
        raise UserError(f"{what!r} is a vendor series: askbuild does not rewrite vendor patches",
                        fix="carry the change as a local patch of the source instead")
    raise UserError(f"no local series {what!r} in {layers_file(settings)}",
                    fix=f"one of: {', '.join(ly.dir for ly in local) or '(none)'}")


# ---------------------------------------------------------------------------------------------
# patch inputs

@dataclass(frozen=True)
class PatchInput:
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


def _has_base(tree: Path) -> bool:
    if not (tree / ".git").exists():
        return False
    proc = gitutil.git(["rev-parse", "-q", "--verify", f"refs/tags/{BASE_TAG}^{{commit}}"],
                       cwd=tree, check=False)
    return proc.returncode == 0


def base_commit(tree: Path) -> str:
    return gitutil.out(["rev-parse", "--verify", f"refs/tags/{BASE_TAG}^{{commit}}"], cwd=tree)


def source_tree(settings: Settings, source: Source) -> Path:
    """The work tree of ``source`` at its locked base (via ``fetching.ensure_source`` unless a
    git tree already sits on its locked commit)."""
    tree = settings.src_dir / source.name
    if (source.kind == "git" and source.commit and _has_base(tree)
            and base_commit(tree) == source.commit):
        return tree
    try:
        from . import fetching
        ensure = fetching.ensure_source
    except (ImportError, AttributeError):
        ensure = None
    if ensure is None:
        if _has_base(tree):
            return tree
        raise SourceError(f"source {source.name!r}: no work tree at {tree}",
                          fix=f"run `inv fetch --source {source.name}` first")
    return Path(ensure(settings, source))


def _ls_tree(tree: Path, d: str, *, recursive: bool) -> dict[str, tuple[str, str, str]]:
    """``{path relative to d: (mode, type, object id)}`` of directory ``d`` in the base
    commit of ``tree`` ({} when ``d`` is absent; ``d == ""``: the top)."""
    spec = ["--", d.rstrip("/") + "/"] if d else []
    listing = gitutil.git(["ls-tree", *(["-r"] if recursive else []), "-z",
                           f"refs/tags/{BASE_TAG}", *spec], cwd=tree, text=False).stdout
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


def _shown(names: list[str], limit: int = 12) -> str:
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
    base = _rev(tree, f"refs/tags/{BASE_TAG}") or "?"
    at = f"{ly.provider}'s tree at its locked base {base[:12]}"
    here = _entries_of(tree, ly.dir)
    parent = ly.dir
    if not here:
        while parent and not here:
            parent = str(PurePosixPath(parent).parent)
            parent = "" if parent == "." else parent
            here = _entries_of(tree, parent)
    holds = f"{parent or 'the top'}/ holds: {_shown(here)}" if parent != ly.dir else \
        f"{ly.dir}/ holds: {_shown(here)}"
    patches_there = [n for n in here if n.endswith(".patch")]
    lines = [f"{_layer_label(settings, ly)} matches no patch: {why}", f"  in {at}, {holds}"]
    if parent != ly.dir and patches_there:
        fix = (f'set dir = "{parent}" for [{ly.source}]: that directory holds the patch '
               f"file(s) {_shown(patches_there, 4)} itself (no version subdirectory)")
    else:
        fix = (f"point dir at the directory of {ly.provider}'s tree that holds the patches for "
               f"{ly.source} (`git -C {tree} ls-tree -r --name-only {BASE_TAG} -- patches/`); "
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
                f"hold: {', '.join(missing)}\n  it holds: {_shown(have)}",
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
                base = _rev(tree, f"refs/tags/{BASE_TAG}") or "?"
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


# ---------------------------------------------------------------------------------------------
# competing patches in one vendor layer

#: Two patches touching at least this many files in common, and in common at least half of all
#: the files either touches, are two versions of one change (see :func:`competing`).
COMPETE_MIN_SHARED = 10


@dataclass(frozen=True)
class PatchFiles:
    touched: frozenset[str]     # every file the patch changes, creates or deletes
    created: frozenset[str]     # files it creates (``--- /dev/null``)


def patch_files(data: bytes) -> PatchFiles | None:
    """The files a patch touches and creates (read with ``unidiff``); None when it cannot be
    read as a unified diff."""
    try:
        from unidiff import PatchSet
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
             f"{ly.source}'s version; `inv patch --check` tells whether it applies)"))


# ---------------------------------------------------------------------------------------------
# state record

def state_path(settings: Settings, name: str) -> Path:
    return settings.state_dir / f"patch-{name}.json"


def tree_state(settings: Settings, name: str) -> dict | None:
    """The record of the last successful patch step of ``name`` (None when there is none):
    ``{"schema", "source", "base", "head", "layers": [{id, kind, dir, provider, start, end}],
    "patches": [{layer, kind, file, strip, sha256, commits}]}``."""
    return read_json(state_path(settings, name))


def _record_matches(record: dict | None, base: str, inputs: list[PatchInput]) -> bool:
    if not record or record.get("schema") != STATE_SCHEMA or record.get("base") != base:
        return False
    patches = record.get("patches", [])
    if not isinstance(patches, list) or not all(
            isinstance(p, dict) and all(k in p for k in ("layer", "file", "strip", "sha256"))
            for p in patches):
        return False        # a damaged record is no record: the series is applied again
    old = [[p["layer"], p["file"], p["strip"], p["sha256"]] for p in patches]
    return old == [p.key() for p in inputs]


# ---------------------------------------------------------------------------------------------
# tree hygiene

def _git_dir(tree: Path) -> Path:
    return Path(gitutil.out(["rev-parse", "--absolute-git-dir"], cwd=tree))


def _rev(tree: Path, ref: str) -> str | None:
    proc = gitutil.git(["rev-parse", "-q", "--verify", f"{ref}^{{commit}}"], cwd=tree,
                       check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _operation_in_progress(tree: Path) -> str | None:
    gd = _git_dir(tree)
    for marker, what in (("rebase-apply", "a git am/rebase"), ("rebase-merge", "a git rebase"),
                         ("MERGE_HEAD", "a merge"), ("CHERRY_PICK_HEAD", "a cherry-pick"),
                         ("REVERT_HEAD", "a revert")):
        if (gd / marker).exists():
            return what
    return None


def changed_files(tree: Path) -> list[str]:
    """Tracked files with uncommitted changes (staged or not)."""
    raw = gitutil.git(["status", "--porcelain=v1", "-z", "--untracked-files=no"], cwd=tree).stdout
    return [e[3:] for e in raw.split("\0") if len(e) > 3]


# ---------------------------------------------------------------------------------------------
# crash safety: the run journal, recovery after a killed run, git failures as messages

JOURNAL = "askbuild-run.json"       # in the git dir of a work tree while askbuild changes it
SCRATCH_PREFIX = "patch-scratch-"
NO_SPACE = ("No space left on device", "Disk quota exceeded")


class NoSpaceLeft(PatchFailed):
    """The file system ran full while git worked (not a patch that does not apply)."""


def _gd(tree: Path) -> Path:
    """The git dir of a work tree (``.git`` is a directory in the trees fetch makes)."""
    dot = tree / ".git"
    return dot if dot.is_dir() else _git_dir(tree)


def _open_files() -> set[str]:
    """Every path some process of this machine holds open (read from /proc)."""
    found: set[str] = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                found.add(os.readlink(fd))
    return found


def clear_stale_locks(tree: Path) -> list[str]:
    """Remove the ``*.lock`` files of the tree's git dir that no process holds open: a git
    killed while holding them leaves them behind and every later git refuses to work.
    Returns the removed ones (relative to the git dir)."""
    gd = _gd(tree)
    locks: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(gd):
        if Path(dirpath) == gd and "objects" in dirnames:
            dirnames.remove("objects")
        locks += [Path(dirpath) / f for f in filenames if f.endswith(".lock")]
    if not locks:
        return []
    held = _open_files()
    removed = []
    for lock in locks:
        if os.path.realpath(lock) in held:
            continue                    # a live git (the user's?) holds it: not stale
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
            removed.append(str(lock.relative_to(gd)))
    return removed


def _journal_path(tree: Path) -> Path:
    return _gd(tree) / JOURNAL


def _untracked(tree: Path) -> list[str]:
    """Untracked paths (ignored ones included; an untracked directory as ``dir/``)."""
    raw = gitutil.git(["ls-files", "--others", "--directory", "-z"], cwd=tree).stdout
    return sorted(x for x in raw.split("\0") if x)


def _position(settings: Settings, name: str, tree: Path) -> dict:
    sym = gitutil.git(["symbolic-ref", "-q", "HEAD"], cwd=tree, check=False).stdout.strip()
    return {"head": _rev(tree, "HEAD"), "symref": sym or None,
            "patched": _rev(tree, f"refs/heads/{PATCHED}"), "record": tree_state(settings, name)}


def journal_begin(settings: Settings, name: str, tree: Path, verb: str, **extra: object) -> None:
    """Say (in the tree's git dir) that askbuild starts changing the clean ``tree``.  Until
    :func:`journal_end`, every uncommitted change, git operation, new untracked file and lock
    file in the tree is askbuild's own: when the run dies, the next one undoes them and puts
    HEAD, ``askbuild/patched`` and the patch record back as they were here
    (:func:`recover_tree`).  ``extra``: ``created_branch`` / ``edit_record`` (deleted on
    recovery)."""
    journal = {"schema": 1, "verb": verb, "pid": os.getpid(), "source": name,
               "started": time.time(), "prev": _position(settings, name, tree),
               "untracked": _untracked(tree), **extra}
    write_json_atomic(_journal_path(tree), journal)


def journal_end(tree: Path) -> None:
    """The tree is in a state askbuild or the user stands by: no recovery needed."""
    _journal_path(tree).unlink(missing_ok=True)


@contextlib.contextmanager
def journalled(settings: Settings, name: str, tree: Path, verb: str,
               **extra: object) -> Iterator[None]:
    """Run the block under a run journal (:func:`journal_begin`).  On success the journal
    goes.  On an error the tree is put back at once (a PatchFailed says so in its message);
    when even that fails, or the run is killed or interrupted, the journal stays and the next
    run puts the tree back first (:func:`recover_tree`)."""
    journal_begin(settings, name, tree, verb, **extra)
    try:
        yield
    except Exception as e:
        _undo_failed_run(settings, name, tree, e)
        raise
    journal_end(tree)


def _drop_operation(tree: Path) -> None:
    """Forget askbuild's own half-done git am / rebase / cherry-pick (files are reset after)."""
    gd = _gd(tree)
    for d in ("rebase-apply", "rebase-merge", "sequencer"):
        if (gd / d).exists():
            shutil.rmtree(gd / d, ignore_errors=True)


def _remove_new_untracked(tree: Path, before: list[str]) -> None:
    old = set(before)
    old_dirs = tuple(x for x in old if x.endswith("/"))
    for rel in _untracked(tree):
        if rel in old or (old_dirs and rel.startswith(old_dirs)):
            continue
        p = tree / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _restore_position(settings: Settings, name: str, tree: Path, prev: dict) -> None:
    """HEAD (branch or detached), ``askbuild/patched`` and the patch record as in ``prev``."""
    if prev.get("head"):
        gitutil.git(["checkout", "-q", "-f", "--detach", prev["head"]], cwd=tree)
    if prev.get("patched"):
        gitutil.git(["update-ref", f"refs/heads/{PATCHED}", prev["patched"]], cwd=tree)
    elif _rev(tree, f"refs/heads/{PATCHED}"):
        gitutil.git(["update-ref", "-d", f"refs/heads/{PATCHED}"], cwd=tree)
    sym = prev.get("symref")
    if sym and prev.get("head") and _rev(tree, sym) == prev["head"]:
        gitutil.git(["symbolic-ref", "HEAD", sym], cwd=tree)
    if prev.get("record") is None:
        state_path(settings, name).unlink(missing_ok=True)
    else:
        write_json_atomic(state_path(settings, name), prev["record"])


def _rollback(settings: Settings, name: str, tree: Path, journal: dict) -> None:
    """Undo what the journalled run did to ``tree`` (see :func:`journal_begin`)."""
    _drop_operation(tree)
    gitutil.git(["reset", "-q", "--hard"], cwd=tree)
    _remove_new_untracked(tree, journal.get("untracked", []))
    if journal.get("verb") != "rebase":     # a rebase resumes from its own state file
        _restore_position(settings, name, tree, journal.get("prev") or {})
    branch = journal.get("created_branch")
    if branch and _rev(tree, f"refs/heads/{branch}"):
        gitutil.git(["update-ref", "-d", f"refs/heads/{branch}"], cwd=tree)
    if journal.get("edit_record"):
        Path(str(journal["edit_record"])).unlink(missing_ok=True)
    journal_end(tree)


def recover_tree(settings: Settings, name: str, tree: Path | None = None) -> bool:
    """Heal source ``name``'s work tree after an askbuild run was killed in it (call with the
    work-dir lock held, before anything else uses the tree).

    Stale git lock files are removed.  When the killed run's journal is there, the tree is put
    back as it was before that run (its half-done ``git am``, changed and new files dropped;
    HEAD, ``askbuild/patched`` and the record restored), so the run can simply be done again.
    Without a journal nothing but stale lock files is touched: uncommitted changes and git
    operations are the user's (the usual dirty-tree refusal applies).  True when repaired."""
    tree = tree or settings.src_dir / name
    if not (tree / ".git").exists():
        return False
    gd = _gd(tree)
    if (gd / "worktrees").is_dir():
        gitutil.git(["worktree", "prune"], cwd=tree, check=False)
    removed = clear_stale_locks(tree)
    jpath = gd / JOURNAL
    journal = read_json(jpath) if jpath.exists() else None
    if journal is None:
        jpath.unlink(missing_ok=True)       # (an unreadable journal is not ours to trust)
        if removed:
            console.info(f"source {name}: removed stale git lock file(s) in {gd} left by a "
                         f"killed git: {', '.join(removed)}")
        return bool(removed)
    with git_errors(f"source {name}: recovering {tree} after an interrupted run", tree):
        _rollback(settings, name, tree, journal)
    console.info(f"source {name}: an `inv {journal.get('verb')}` (pid {journal.get('pid')}) was "
                 f"interrupted while changing {tree}; its half-done work was undone "
                 "and the tree put back as it was before it"
                 + (f" (stale git locks removed: {', '.join(removed)})" if removed else ""))
    return True


def clean_scratch(settings: Settings) -> None:
    """Remove scratch work trees that killed runs left in the work directory (the work-dir
    lock is held: no live run uses one); their git metadata goes with ``worktree prune``."""
    if settings.work_dir.is_dir():
        for d in settings.work_dir.glob(f"{SCRATCH_PREFIX}*"):
            shutil.rmtree(d, ignore_errors=True)


def no_space(text: str) -> bool:
    return any(n in text for n in NO_SPACE)


def no_space_error(what: str, where: Path, detail: str = "") -> NoSpaceLeft:
    lines = [f"{what}: no space left on device ({free_space(where)})"]
    lines += [f"  git: {ln}" for ln in detail.strip().splitlines()[:4] if ln.strip()]
    return NoSpaceLeft("\n".join(lines),
                       fix="free some space (or use another --work-dir), then run the same "
                           "command again: the interrupted work is redone from a clean state")


def _git_words(args: list[str]) -> str:
    """The git subcommand of ``args`` (after any ``-c NAME=VALUE``)."""
    it = iter(args)
    for a in it:
        if a == "-c":
            next(it, None)
        elif not a.startswith("-"):
            return a
    return " ".join(args[:1])


def git_failure(e: GitError, what: str, where: Path | None = None) -> PatchFailed:
    """A :class:`PatchFailed` naming ``what`` and git's reason for an unexpected git failure."""
    reason = (e.stderr or e.stdout or "").strip()
    if no_space(reason):
        return no_space_error(what, where or Path.cwd(), reason)
    shown = "; ".join(ln.strip() for ln in reason.splitlines()[-4:] if ln.strip())
    t = f"git -C {where} status" if where else "git status"
    return PatchFailed(f"{what}: `git {_git_words(e.args_)}` failed: "
                       f"{shown or f'exit status {e.returncode}'}",
                       fix=f"see what git says (`{t}`), then run the same command again "
                           "(askbuild first puts back a tree it left half-changed)")


@contextlib.contextmanager
def git_errors(what: str, where: Path | None = None) -> Iterator[None]:
    """Turn a :class:`GitError` inside the block into a :class:`PatchFailed` naming ``what``."""
    try:
        yield
    except GitError as e:
        raise git_failure(e, what, where) from e


def check_clean(settings: Settings, name: str, tree: Path, record: dict | None,
                base: str | None = None, *, ignore_rebase: bool = False) -> None:
    """Refuse (DirtyTreeError) when rebuilding ``tree`` would lose user work."""
    t = str(tree)
    rebase_state = settings.state_dir / f"rebase-{name}.json"
    if rebase_state.exists() and not ignore_rebase:
        raise DirtyTreeError(f"{tree}: a rebase of {name} is in progress",
                             fix=f"finish it with `inv rebase {name} --continue` (or --skip), "
                                 f"or undo it with `inv rebase {name} --abort`")
    op = _operation_in_progress(tree)
    if op:
        raise DirtyTreeError(f"{tree}: {op} is in progress in the work tree",
                             fix=f"finish or abort it first (e.g. `git -C {t} am --abort`, "
                                 f"`git -C {t} cherry-pick --abort`, `git -C {t} rebase --abort`)")
    files = changed_files(tree)
    if files:
        shown = ", ".join(files[:8]) + (f" (+{len(files) - 8} more)" if len(files) > 8 else "")
        raise DirtyTreeError(
            f"{tree} has uncommitted changes that the patch step would throw away: {shown}",
            fix=f"save them: `git -C {t} stash` (or commit them on an edit branch: "
                f"`inv patches.edit SERIES`, commit, `inv patches.export SERIES`); "
                f"or discard them: `git -C {t} reset --hard`")
    patched = _rev(tree, f"refs/heads/{PATCHED}")
    if not patched or (record and patched == record.get("head")):
        return
    exclude = [f"^{c}" for c in {base, (record or {}).get("base"), (record or {}).get("head")}
               if c and _rev(tree, c)]
    lines = gitutil.out(["log", "--format=%H %cn <%ce>%x09%s", patched, *exclude, "--"],
                        cwd=tree).splitlines()
    foreign = []
    for ln in lines:
        sha_ident, _, subject = ln.partition("\t")
        sha, _, ident = sha_ident.partition(" ")
        if ident != ASKBUILD_COMMITTER:
            foreign.append(f"{sha[:12]} {subject}")
    if foreign:
        back = (record or {}).get("head") or base or BASE_TAG
        raise DirtyTreeError(
            f"{tree}: branch {PATCHED} has commits the patch series did not make: "
            + "; ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else ""),
            fix=f"save them on a branch and hand the branch back: `git -C {t} switch -c my-work "
                f"{PATCHED} && git -C {t} branch -f {PATCHED} {back[:12]}` (then carry them "
                f"into a series with `inv patches.edit SERIES` + cherry-pick + "
                f"`inv patches.export SERIES`); or discard them: "
                f"`git -C {t} branch -f {PATCHED} {back[:12]}`")


# ---------------------------------------------------------------------------------------------
# applying one patch

_HEADER_RE = re.compile(rb"^[A-Za-z0-9][A-Za-z0-9-]*:")


def is_mail(data: bytes) -> bool:
    """A ``git format-patch`` mail (mbox ``From `` line or From:/Subject: headers first)."""
    lines = data[:16384].split(b"\n")
    if lines and re.match(rb"^From [^ ]+ ", lines[0]):
        return True
    keys = set()
    for ln in lines:
        ln = ln.rstrip(b"\r")
        if not ln:
            break
        if ln[:1] in (b" ", b"\t"):
            continue
        if not _HEADER_RE.match(ln):
            return False
        keys.add(ln.split(b":", 1)[0].lower())
    return b"from" in keys and b"subject" in keys


def _ensure_mail_headers(data: bytes) -> bytes:
    """Add a fixed ``Date:`` when the mail has none (git would use the current time)."""
    head, sep, rest = data.partition(b"\n\n")
    if re.search(rb"(^|\n)Date:", head, re.IGNORECASE):
        return data
    date = b"Date: Thu, 1 Jan 1970 00:00:00 +0000"
    lines = head.split(b"\n")
    at = 1 if lines and lines[0].startswith(b"From ") else 0
    lines.insert(at, date)
    return b"\n".join(lines) + sep + rest


def _txt(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _ident_env() -> dict[str, str]:
    return dict(FIXED_IDENTITY)


@dataclass
class Applied:
    commits: list[str]
    method: str             # "applied" | "3way"


def _hunk_failures(tree: Path, p: PatchInput) -> list[str]:
    """Which files / hunks of ``p`` do not apply to the tree's HEAD (for messages)."""
    try:
        from unidiff import PatchSet
        text = p.data.decode("latin-1")
        pset = PatchSet(io.StringIO(text, newline=""))
    except Exception:   # noqa: BLE001 - only used to enrich a message
        return []
    out: list[str] = []
    for pf in pset:
        if pf.is_added_file:
            target = pf.path
            if (tree / target).exists():
                out.append(f"{target}: new file already exists")
            continue
        if pf.is_removed_file or pf.is_rename or pf.is_binary_file:
            continue
        for i, h in enumerate(pf, start=1):
            mini = f"--- {pf.source_file}\n+++ {pf.target_file}\n{h}"
            proc = gitutil.git(["apply", "--check", f"-p{p.strip}", "--whitespace=nowarn", "-"],
                               cwd=tree, input=mini.encode("latin-1"), check=False)
            if proc.returncode != 0:
                hdr = f"@@ -{h.source_start},{h.source_length} +{h.target_start}," \
                      f"{h.target_length} @@"
                what = "file missing" if not (tree / pf.path).exists() else "does not match"
                out.append(f"{pf.path}: hunk #{i} {hdr} {what}")
    return out


def _git_errors(stderr: str) -> list[str]:
    keep = []
    for ln in stderr.splitlines():
        ln = ln.strip()
        if ln.startswith(("error:", "CONFLICT", "fatal:")) and "Did you hand edit" not in ln:
            keep.append(ln)
    return keep[:12]


def apply_patch(tree: Path, p: PatchInput, *, index: int, total: int, source: str,
                before: str | None = None) -> Applied:
    """Apply one patch as commit(s) on the current HEAD (``before``, when the caller knows it),
    or raise PatchFailed with the tree back at the commit it started from (NoSpaceLeft when
    git ran out of space: then the tree may be left half-done)."""
    what = f"patch {index} of {total} of {source} ({p.label})"
    with git_errors(what, tree):
        return _apply_patch(tree, p, index=index, total=total, source=source, before=before,
                            what=what)


def _apply_patch(tree: Path, p: PatchInput, *, index: int, total: int, source: str,
                 before: str | None, what: str) -> Applied:
    before = before or gitutil.out(["rev-parse", "HEAD"], cwd=tree)
    if is_mail(p.data):
        data = _ensure_mail_headers(p.data)
        proc = gitutil.git([*REPRO, "am", "--3way", "--keep-cr", "--keep-non-patch",
                            "--no-scissors",
                            "--committer-date-is-author-date", "--no-message-id",
                            "--whitespace=nowarn", "--quoted-cr=nowarn", f"-p{p.strip}"],
                           cwd=tree, env=_ident_env(), input=data, check=False)
        if proc.returncode == 0:
            commits = gitutil.out(["rev-list", "--reverse", f"{before}..HEAD"],
                                  cwd=tree).split()
            method = "3way" if "3-way merge" in _txt(proc.stdout) + _txt(proc.stderr) \
                else "applied"
            return Applied(commits, method)
        err = _txt(proc.stdout) + _txt(proc.stderr)
        gitutil.git(["am", "--abort"], cwd=tree, check=False)
        gitutil.git(["reset", "-q", "--hard", before], cwd=tree, check=False)
    else:
        proc = gitutil.git(["apply", "--index", f"-p{p.strip}", "--whitespace=nowarn", "-"],
                           cwd=tree, input=p.data, check=False)
        method = "applied"
        err = _txt(proc.stderr)
        if proc.returncode != 0 and not no_space(err):
            proc = gitutil.git(["apply", "--3way", f"-p{p.strip}", "--whitespace=nowarn", "-"],
                               cwd=tree, input=p.data, check=False)
            method = "3way"
            err += _txt(proc.stderr)
        if proc.returncode == 0:
            gitutil.git([*REPRO, "commit", "-q", "--no-verify", "--allow-empty", "-m", p.name],
                        cwd=tree, env=_ident_env())
            return Applied([gitutil.out(["rev-parse", "HEAD"], cwd=tree)], method)
        gitutil.git(["reset", "-q", "--hard", before], cwd=tree, check=False)
    if no_space(err):       # not the patch's fault: never "refresh the patch"
        raise no_space_error(what, tree, "\n".join(_git_errors(err)) or err)
    hunks = _hunk_failures(tree, p)
    lines = [f"patch {index} of {total} of {source} did not apply: {p.name}",
             f"  series: {p.layer.id} ({p.layer.kind} layer)",
             f"  patch file: {p.label}"]
    lines += [f"  failed: {h}" for h in hunks]
    lines += [f"  git: {e}" for e in _git_errors(err)]
    lines.append(f"  the patches before it apply cleanly (up to {before[:12]}); nothing of "
                 "this patch was applied")
    fix = ("refresh the patch for the current base: `inv patches.edit "
           f"{p.layer.dir}` and resolve it with git, then `inv patches.export {p.layer.dir}`"
           if p.layer.kind == "local" else
           f"the vendor series of {p.layer.provider} does not fit {source}'s base: pin "
           f"matching releases in the sources file")
    raise PatchFailed("\n".join(lines), fix=fix)


# ---------------------------------------------------------------------------------------------
# the queue of one source

def apply_queue(tree: Path, base: str, inputs: list[PatchInput], *, source: str,
                report: Report | None = None, branch: str | None = PATCHED) -> dict:
    """Rebuild ``branch`` (detached HEAD when None) from ``base`` with ``inputs`` and return
    the state record (not written).  Raises PatchFailed at the first failing patch (with
    ``partial``: what applied before it, and ``head``, the last good commit)."""
    if branch:
        gitutil.git(["checkout", "-q", "-B", branch, base], cwd=tree)
    else:
        gitutil.git(["checkout", "-q", "--detach", base], cwd=tree)
    patches: list[dict] = []
    layers: list[dict] = []
    total = len(inputs)
    cur_layer = None
    head = base
    for i, p in enumerate(inputs, start=1):
        if cur_layer != p.layer.id:
            if layers:
                layers[-1]["end"] = head
            layers.append({"id": p.layer.id, "kind": p.layer.kind, "dir": p.layer.dir,
                           "provider": p.layer.provider, "start": head, "end": head})
            cur_layer = p.layer.id
        try:
            res = apply_patch(tree, p, index=i, total=total, source=source, before=head)
        except PatchFailed as e:
            space = isinstance(e, NoSpaceLeft)
            if not space:       # (a full disk is no failing point to edit from)
                e.partial = {"layer": p.layer.id, "layer_start": layers[-1]["start"],  # type: ignore[attr-defined]
                             "applied": patches, "index": i - 1, "head": head}
            if report is not None:
                report.add(source=source, layer=p.layer.id, kind=p.layer.kind, patch=p.name,
                           status="failed", commit=None,
                           detail="no space left on device" if space else "did not apply")
                for q in inputs[i:]:
                    report.add(source=source, layer=q.layer.id, kind=q.layer.kind,
                               patch=q.name, status="pending", commit=None, detail="")
            raise
        if res.commits:
            head = res.commits[-1]
        patches.append({"layer": p.layer.id, "kind": p.layer.kind, "file": p.name,
                        "strip": p.strip, "sha256": p.sha256, "commits": res.commits})
        if report is not None:
            report.add(source=source, layer=p.layer.id, kind=p.layer.kind, patch=p.name,
                       status=res.method, commit=res.commits[-1] if res.commits else None,
                       detail="3-way merge" if res.method == "3way" else "")
    if layers:
        layers[-1]["end"] = head
    return {"schema": STATE_SCHEMA, "source": source, "base": base, "head": head,
            "layers": layers, "patches": patches}


def _layers_with_empty(record: dict, layers: list[Layer]) -> dict:
    """Add layers without patches to the record (start == end), in layer order."""
    have = {ly["id"]: ly for ly in record["layers"]}
    out = []
    pos = record["base"]
    for ly in layers:
        if ly.id in have:
            out.append(have[ly.id])
            pos = have[ly.id]["end"]
        else:
            out.append({"id": ly.id, "kind": ly.kind, "dir": ly.dir, "provider": ly.provider,
                        "start": pos, "end": pos})
    record["layers"] = out
    return record


def _record_done(tree: Path, record: dict | None, base: str,
                 inputs: list[PatchInput]) -> bool:
    """Whether ``record`` can be trusted as "this tree is done": the same base and patch bytes,
    ``askbuild/patched`` exactly at its head, and the commits from the base to that head
    exactly the recorded ones (a record never vouches for a branch another run changed)."""
    if not record or not _record_matches(record, base, inputs):
        return False
    head = record.get("head")
    if not isinstance(head, str) or _rev(tree, f"refs/heads/{PATCHED}") != head:
        return False
    chain = gitutil.git(["rev-list", "--reverse", f"{base}..{head}", "--"], cwd=tree,
                        check=False)
    want = [c for p in record.get("patches", []) for c in p.get("commits", [])]
    return chain.returncode == 0 and chain.stdout.split() == want


def _check_out_patched(settings: Settings, name: str, tree: Path, patched: str) -> None:
    head = _rev(tree, "HEAD")
    sym = gitutil.git(["symbolic-ref", "-q", "HEAD"], cwd=tree, check=False).stdout.strip()
    if head == patched and sym == f"refs/heads/{PATCHED}":
        return
    with journalled(settings, name, tree, "patch"):
        gitutil.git(["checkout", "-q", PATCHED], cwd=tree)


def _undo_failed_run(settings: Settings, name: str, tree: Path, e: Exception) -> None:
    """After an error under a journal: put the tree back as the journal says and, for a
    PatchFailed, say so; when that is impossible (no space...), the journal stays for the next
    run to finish the job."""
    journal = read_json(_journal_path(tree)) or {}
    prev = journal.get("prev") or {}
    failed = e if isinstance(e, PatchFailed) else None
    try:
        _rollback(settings, name, tree, journal)
    except (GitError, OSError) as err:
        if failed is not None:
            if hasattr(failed, "partial"):
                failed.partial = None        # type: ignore[attr-defined]
            failed.message += (f"\n  {tree} could not be put back yet "
                               f"({str(err).strip()[:200]}); the next run of askbuild does it "
                               "before anything else")
        return
    if failed is None or journal.get("verb") == "rebase":
        return
    if prev.get("record") and prev.get("head") == prev.get("patched"):
        where = f"on {PATCHED} at {prev['head'][:12]}, the series as applied before"
    else:
        where = f"at {str(prev.get('head'))[:12]}"
    failed.message += (f"\n  nothing of this run was kept: {tree} is back as it was before it "
                       f"({where})")


def patch_source(settings: Settings, source: Source, *, sources: dict[str, Source],
                 layers: list[Layer], report: Report, tree: Path | None = None,
                 ignore_rebase: bool = False, trees: dict[str, Path] | None = None) -> dict:
    """Bring one source's work tree to base + its series (no-op when the record shows it is
    there already).  The series is applied on a detached HEAD under a run journal;
    ``askbuild/patched`` and the record move only when every patch applied.  When a patch
    fails, the tree goes back to where it was before the run; when the run is killed, the next
    one does that first (:func:`recover_tree`).  ``trees``: work trees already made (vendor
    providers).  Success removes the failure note (:func:`failure_path`)."""
    tree = tree or source_tree(settings, source)
    trees = {**(trees or {}), source.name: tree}
    skipped: list[Layer] = []
    inputs = collect_inputs(settings, layers, sources, trees=trees, skipped=skipped)
    for ly in skipped:
        report.add(source=source.name, layer=ly.id, kind=ly.kind, patch="", status="skipped",
                   commit=None, detail=f"{ly.dir}/ absent in {ly.provider} (optional)")
    base = base_commit(tree)
    record = tree_state(settings, source.name)
    check_clean(settings, source.name, tree, record, base, ignore_rebase=ignore_rebase)
    if record is not None and _record_done(tree, record, base, inputs):
        _check_out_patched(settings, source.name, tree, record["head"])
        commits = {(p["layer"], p["file"]): p["commits"] for p in record["patches"]}
        for p in inputs:
            c = commits.get((p.layer.id, p.name)) or [None]
            report.add(source=source.name, layer=p.layer.id, kind=p.layer.kind, patch=p.name,
                       status="unchanged", commit=c[-1], detail="")
        failure_path(settings, source.name).unlink(missing_ok=True)
        return record
    if record is not None and _record_matches(record, base, inputs):
        console.info(f"patch {source.name}: the record {state_path(settings, source.name)} "
                     f"does not match branch {PATCHED} of {tree}: applying the series again")
    console.step(f"patch {source.name}: {len(inputs)} patch(es) onto {base[:12]}")
    with journalled(settings, source.name, tree, "patch"):
        state_path(settings, source.name).unlink(missing_ok=True)
        record = apply_queue(tree, base, inputs, source=source.name, report=report,
                             branch=None)
        gitutil.git(["checkout", "-q", "-B", PATCHED, record["head"]], cwd=tree)
        record = _layers_with_empty(record, layers)
        write_json_atomic(state_path(settings, source.name), record)
    failure_path(settings, source.name).unlink(missing_ok=True)
    return record


@contextlib.contextmanager
def scratch_worktree(tree: Path, base: str, parent: Path) -> Iterator[Path]:
    """A throw-away ``git worktree`` of ``tree`` at ``base`` (detached HEAD): it shares the
    object store (borrowed cache objects, a shallow cache) but no branch is moved.  Its name
    is unique to this run; one left by a killed run goes with :func:`clean_scratch`."""
    parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=parent))
    try:
        gitutil.git(["worktree", "add", "-q", "--detach", "--", str(scratch), base], cwd=tree)
        yield scratch
    finally:
        gitutil.git(["worktree", "remove", "--force", "--", str(scratch)], cwd=tree,
                    check=False)
        shutil.rmtree(scratch, ignore_errors=True)
        gitutil.git(["worktree", "prune"], cwd=tree, check=False)


class SourcesFailed(UserError):
    """``inv patch`` / ``inv fetch --keep-going``: several sources failed or were skipped (the
    message lists each with its reason; the exit code is the worst of theirs)."""


def summary_error(verb: str, failures: list[tuple[str, AskbuildError]],
                  skipped: list[tuple[str, str]]) -> AskbuildError:
    """One error for every source that failed (``failures``) or was skipped (``skipped``:
    name, why): a single failure is raised as it is."""
    if len(failures) == 1 and not skipped:
        return failures[0][1]
    head = f"{verb}: {len(failures)} source(s) failed" + \
        (f", {len(skipped)} skipped" if skipped else "") + ":"
    lines = [head]
    for name, e in failures:
        lines.append(f"- {name}: " + e.message.replace("\n", "\n    "))
        if e.fix:
            lines.append(f"    fix: {e.fix}")
    lines += [f"- {name}: skipped: {why}" for name, why in skipped]
    err = SourcesFailed("\n".join(lines),
                        fix="fix each source as its line says, then run the same command again")
    err.exit_code = max([e.exit_code for _, e in failures] or [1])
    return err


def failure_path(settings: Settings, name: str) -> Path:
    """The note a failed ``inv patch`` of ``name`` leaves (removed by the next success), read
    by :func:`patch_state_problem`."""
    return settings.state_dir / f"failed-patch-{name}.json"


def _first_line(e: AskbuildError) -> str:
    return e.message.strip().splitlines()[0] if e.message.strip() else type(e).__name__


class _Trees:
    """Work trees of the sources one ``inv patch`` run reads, each made at most once; a tree
    that cannot be made is remembered with the reason (its dependents are skipped)."""

    def __init__(self, settings: Settings, sources: dict[str, Source]) -> None:
        self.settings, self.sources = settings, sources
        self.made: dict[str, Path] = {}
        self.broken: dict[str, str] = {}

    def get(self, name: str) -> Path:
        if name in self.broken:
            raise SourceError(f"source {name}: {self.broken[name]}")
        if name not in self.made:
            try:
                self.made[name] = source_tree(self.settings, self.sources[name])
            except AskbuildError as e:
                self.broken[name] = _first_line(e)
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


def _patch_one(settings: Settings, src: Source, layers: list[Layer], trees: _Trees, *,
               sources: dict[str, Source], report: Report, check: bool) -> None:
    """Patch (or ``check``) one source; raises what went wrong."""
    with git_errors(f"patch {src.name}", settings.src_dir / src.name):
        if not check:
            recover_tree(settings, src.name)
        tree = trees.get(src.name)
        if not check:
            patch_source(settings, src, sources=sources, layers=layers, report=report,
                         tree=tree, trees=trees.made)
            return
        inputs = collect_inputs(settings, layers, sources, trees={**trees.made})
        base = base_commit(tree)
        with scratch_worktree(tree, base, settings.work_dir) as scratch:
            apply_queue(scratch, base, inputs, source=src.name, report=report, branch=None)


@runlock.exclusive("patch")
def patch(settings: Settings, names: list[str] | tuple[str, ...] = (), check: bool = False,
          as_json: bool = False, keep_going: bool = False) -> Report:
    """The ``inv patch`` verb.  ``check``: apply every series to its locked base in a scratch
    clone and report, touching no build tree (the CI gate).  Holds the work-dir lock; heals
    what a killed run left (half-written series, stale scratch trees, half-patched trees).

    Without ``keep_going`` the first failing source stops the verb (with ``check``, a patch
    that does not apply does not: every source is checked).  With ``keep_going`` every source
    is tried: one whose vendor layer comes from a source that cannot be fetched is skipped with
    that reason, and the error at the end lists every failure (:func:`summary_error`).  A full
    disk always stops at once.  A failed (not checked) source leaves :func:`failure_path`."""
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
            if keep_going and (why := trees.blocked(layers)):
                skipped.append((src.name, why))
                report.add(source=src.name, layer="", kind="", patch="", status="skipped",
                           commit=None, detail=why)
                continue
            _patch_one(settings, src, layers, trees, sources=sources, report=report,
                       check=check)
        except (NoSpaceLeft, NoSpaceError):
            report.ok = False
            report.emit(as_json=as_json)
            raise
        except AskbuildError as e:
            if not any(r.get("status") == "failed" for r in report.rows[mark:]):
                report.add(source=src.name, layer="", kind="", patch="", status="failed",
                           commit=None, detail=_first_line(e))
            if not check:
                write_json_atomic(failure_path(settings, src.name),
                                  {"source": src.name, "error": e.message, "fix": e.fix})
            failures.append((src.name, e))
            if not keep_going and not (check and isinstance(e, PatchFailed)):
                report.ok = False
                report.emit(as_json=as_json)
                raise
    report.ok = not failures and not skipped
    report.emit(as_json=as_json)
    if failures or skipped:
        if check and not keep_going and all(isinstance(e, PatchFailed) for _, e in failures) \
                and len(failures) > 1:
            raise PatchFailed("\n".join(e.message for _, e in failures),
                              fix="refresh the failing patches (inv patches.edit SERIES)")
        raise summary_error("inv patch --check" if check else "inv patch", failures, skipped)
    return report


# ---------------------------------------------------------------------------------------------
# is a work tree exactly the current series on the current lock? (for the build)

def patch_state_problem(settings: Settings, name: str) -> str | None:
    """One line saying why ``<work>/src/<name>`` is not exactly what ``inv patch`` makes from
    the current series on the current lock, or None when it is.

    Checked, in this order (the first problem found is the answer): the work tree exists; no
    interrupted askbuild run left it half-changed; its base is the locked commit (tarball: the
    locked sha256); it was patched (``state/patch-<name>.json``) on that base; every vendor
    provider's tree is at its own lock; the series files (local and vendor, by sha256) are the
    recorded ones; ``askbuild/patched`` is what the record vouches for; HEAD is at the patched
    head; no git operation is in progress; no uncommitted edits or untracked files (the build
    reads committed files only).  When the tree is not the current series and the last
    ``inv patch`` of the source failed, that failure is the answer.

    Cheap: ``git rev-parse``/``ls-tree``/``cat-file``, sha256 of the series files and one
    ``git status`` (no ``git am``, no fetch, nothing written).  Never raises for a bad state:
    an unreadable file or a git failure is a problem line too."""
    try:
        return _state_problem(settings, name)
    except AskbuildError as e:
        return f"source {name}: {_first_line(e)}"
    except GitError as e:
        reason = (e.stderr or e.stdout or "").strip().splitlines()
        return (f"source {name}: `git {_git_words(e.args_)}` failed in "
                f"{settings.src_dir / name}: {reason[-1] if reason else e.returncode}")


def _lock_problem(source: Source, tree: Path, base: str) -> str | None:
    """Why ``tree`` (base ``base``) is not at ``source``'s lock."""
    again = f"run `inv fetch --source {source.name}` then `inv patch`"
    if not source.locked:
        return (f"source {source.name} has no lock entry, so its tree {tree} cannot be "
                f"vouched for: {again} (fetch records the lock)")
    if source.kind == "git":
        if base != source.commit:
            return (f"source {source.name} is locked at {str(source.commit)[:12]} but its tree "
                    f"{tree} is at {base[:12]} (fetched at another lock): {again}")
        return None
    from .fetching import SHA256_TRAILER
    msg = gitutil.out(["show", "-s", "--format=%B", base], cwd=tree)
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
        return _shown(out, 4)
    return "" if order_old == list(new) else "the order of the patches"


def uncommitted(tree: Path) -> list[str]:
    """Changed tracked files and untracked files (not ignored) of ``tree``; nothing written
    (``--no-optional-locks``)."""
    raw = gitutil.git(["--no-optional-locks", "status", "--porcelain=v1", "-z",
                       "--untracked-files=normal"], cwd=tree).stdout
    fields = raw.split("\0")
    out, i = [], 0
    while i < len(fields):
        f = fields[i]
        i += 1
        if len(f) > 3:
            out.append(f[3:] + (" (untracked)" if f.startswith("??") else ""))
            if f[0] in "RC":
                i += 1          # the original path of a rename / copy
    return out


def _state_problem(settings: Settings, name: str) -> str | None:
    sources = load_sources(settings)
    src = sources.get(name)
    if src is None:
        return f"no source named {name!r} in {settings.sources_file}"
    tree = settings.src_dir / name
    run = f"`inv patch --source {name}`"
    if not _has_base(tree):
        return (f"source {name} has no work tree at {tree}: run `inv fetch --source {name}` "
                f"and {run}")
    if (_gd(tree) / JOURNAL).exists():
        verb = (read_json(_gd(tree) / JOURNAL) or {}).get("verb", "patch")
        return (f"an interrupted `inv {verb}` left {tree} half-changed: run {run} (it puts "
                "the tree back first)")
    base = base_commit(tree)
    problem = _lock_problem(src, tree, base)
    if problem:
        return problem
    failed = read_json(failure_path(settings, name))

    def or_failed(text: str) -> str:
        err = failed.get("error") if failed else None
        if isinstance(err, str) and err.strip():
            return (f"the last `inv patch` of {name} failed: {err.strip().splitlines()[0]} "
                    f"(fix it and run {run})")
        return text

    record = tree_state(settings, name)
    if record is None:
        return or_failed(f"source {name} has not been patched (no record "
                         f"{state_path(settings, name)}): run {run}")
    if record.get("base") != base:
        return or_failed(f"source {name} was fetched at a new lock since `inv patch` (patched "
                         f"on {str(record.get('base'))[:12]}, its base is now {base[:12]}): "
                         f"run {run}")
    layers = load_layers(settings, sources).get(name, [])
    trees = {name: tree}
    for ly in layers:
        if ly.kind != "vendor" or not ly.provider or ly.provider in trees:
            continue
        ptree = settings.src_dir / ly.provider
        if not _has_base(ptree):
            return (f"vendor layer {ly.id} of {name}: source {ly.provider} has no work tree "
                    f"at {ptree}: run `inv fetch --source {ly.provider}` and {run}")
        problem = _lock_problem(sources[ly.provider], ptree, base_commit(ptree))
        if problem:
            return f"vendor layer {ly.id} of {name}: {problem}"
        trees[ly.provider] = ptree
    inputs = collect_inputs(settings, layers, sources, trees=trees, quiet=True)
    changes = _series_changes(record, inputs)
    if changes:
        return or_failed(f"the series changed since `inv patch`: {changes}: run {run}")
    if not _record_done(tree, record, base, inputs):
        return (f"branch {PATCHED} of {tree} is not what `inv patch` made (the record "
                f"{state_path(settings, name)} does not vouch for it): run {run}")
    head = str(record.get("head"))
    cur = _rev(tree, "HEAD") or "?"
    if cur != head:
        sym = gitutil.git(["symbolic-ref", "-q", "--short", "HEAD"], cwd=tree,
                          check=False).stdout.strip()
        where = f"branch {sym}" if sym else f"a detached HEAD at {cur[:12]}"
        fix = (f"export the edits (`inv patches.export SERIES`) and run {run}"
               if sym.startswith(EDIT_PREFIX) else
               f"`git -C {tree} checkout {PATCHED}`, or run {run}")
        return (f"{tree} is on {where}, not on the patched series ({PATCHED} at "
                f"{head[:12]}): {fix}")
    op = _operation_in_progress(tree)
    if op:
        return f"{op} is in progress in {tree}: finish or abort it (`git -C {tree} status`)"
    dirty = uncommitted(tree)
    if dirty:
        return (f"uncommitted edits in {tree}: {_shown(dirty, 6)}; the build reads committed "
                f"files only: commit them into a series (`inv patches.edit SERIES`, commit, "
                f"`inv patches.export SERIES`, {run}) or discard them (`git -C {tree} reset "
                f"--hard && git -C {tree} clean -fd`)")
    return None


# ---------------------------------------------------------------------------------------------
# edit / export

def edit_branch(layer: Layer) -> str:
    return EDIT_PREFIX + layer.slug


def edit_record_path(settings: Settings, layer: Layer) -> Path:
    return settings.state_dir / f"edit-{layer.source}-{layer.slug}.json"


def _record_layer(record: dict, layer: Layer) -> dict:
    for ly in record.get("layers", []):
        if ly["id"] == layer.id:
            return ly
    raise UserError(f"series {layer.id} is not in the patch record of {layer.source}",
                    fix=f"run `inv patch --source {layer.source}` first")


def _as_mbox(p: PatchInput) -> bytes:
    """One mbox message for ``p`` (plain diffs get the headers the patch step would use)."""
    if is_mail(p.data):
        data = _ensure_mail_headers(p.data)
        if not data.startswith(b"From "):
            data = b"From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n" \
                + data
    else:
        data = (b"From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
                b"From: askbuild <askbuild@localhost>\n"
                b"Date: Thu, 1 Jan 1970 00:00:00 +0000\n"
                b"Subject: [PATCH] " + p.name.encode() + b"\n\n" + p.data)
    return data if data.endswith(b"\n") else data + b"\n"


def _am_rest(tree: Path, rest: list[PatchInput]) -> str | None:
    """``git am --3way`` the failing patch and the rest of its series; returns git's report
    when it stopped (the am stays in progress for the user)."""
    strip = rest[0].strip
    batch = [rest[0]] + [q for q in rest[1:] if q.strip == strip]
    if len(batch) != len(rest):
        batch = rest[:1]
    proc = gitutil.git([*REPRO, "am", "--3way", "--keep-cr", "--keep-non-patch", "--no-scissors",
                        "--committer-date-is-author-date", "--no-message-id",
                        "--whitespace=nowarn", "--quoted-cr=nowarn", f"-p{strip}"],
                       cwd=tree, env=_ident_env(), input=b"".join(_as_mbox(q) for q in batch),
                       check=False)
    if proc.returncode == 0:
        return None
    err = _txt(proc.stdout) + _txt(proc.stderr)
    if no_space(err):
        raise no_space_error(f"patches.edit: applying {rest[0].label}", tree, err)
    return "\n".join(_git_errors(err))


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
    tree = settings.src_dir / layer.source
    with git_errors(f"patches.edit {layer.dir}", tree):
        recover_tree(settings, layer.source, tree)
        return _edit(settings, layer)


def _edit(settings: Settings, layer: Layer) -> str:
    sources = load_sources(settings)
    src = sources[layer.source]
    tree = source_tree(settings, src)
    t = str(tree)
    layers = load_layers(settings, sources).get(layer.source, [])
    branch = edit_branch(layer)
    existing = _rev(tree, f"refs/heads/{branch}")
    erec_path = edit_record_path(settings, layer)
    erec = read_json(erec_path)
    if existing and erec and gitutil.git(["merge-base", "--is-ancestor", erec["start"],
                                          existing], cwd=tree, check=False).returncode == 0:
        files = changed_files(tree)
        if files or _operation_in_progress(tree):
            raise DirtyTreeError(f"{tree}: uncommitted changes or a git operation in progress",
                                 fix=f"finish or stash it (`git -C {t} status`)")
        with journalled(settings, layer.source, tree, "patches.edit"):
            gitutil.git(["checkout", "-q", branch], cwd=tree)
        console.info(f"resuming the existing edit branch {branch} "
                     f"(delete it with `git -C {t} branch -D {branch}` to start over)")
        _edit_help(layer, tree, branch, erec["start"], None)
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
        rl = _record_layer(record, layer)
        start, at = rl["start"], rl["end"]
        entries = [{"file": p["file"], "strip": p["strip"], "sha256": p["sha256"],
                    "commits": p["commits"]} for p in record["patches"] if p["layer"] == layer.id]
    except PatchFailed as e:
        part = getattr(e, "partial", None)
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
    _edit_help(layer, tree, branch, start, stopped)
    return branch


def _edit_help(layer: Layer, tree: Path, branch: str, start: str,
               stopped: tuple[str, str | None] | None) -> None:
    t = str(tree)
    n = len(gitutil.out(["rev-list", f"{start}..{branch}"], cwd=tree).split())
    msg = (f"{layer.dir}: {tree} is on branch {branch}: {n} commit(s) on top of {start[:12]}.\n"
           f"  change them with git (commit --amend, `git rebase -i {start[:12]}`, new "
           f"commits), then run `inv patches.export {layer.dir}`")
    if stopped and stopped[1] is not None:
        msg += (f"\n  {stopped[0]} does not apply: `git am --3way` stopped at it:\n    "
                + stopped[1].replace("\n", "\n    ") +
                f"\n  resolve the files (or apply the patch by hand: `git -C {t} apply --reject "
                f".git/rebase-apply/patch`), `git -C {t} add -- FILES`, "
                f"`git -C {t} am --continue` (or `git -C {t} am --skip` to drop it); "
                f"then `inv patches.export {layer.dir}`")
    console.info(msg)


_SLUG_RE = re.compile(r"[^A-Za-z0-9._]+")


def _slug(subject: str) -> str:
    s = _SLUG_RE.sub("-", subject).strip("-.")
    return (s[:52].rstrip("-.")) or "patch"


def format_patch(tree: Path, commit: str) -> bytes:
    """Stable ``git format-patch`` text of one commit: zero From line, no signature, no stat,
    full index lines, ``[PATCH]`` without numbers; the user's git config is ignored."""
    env = {"GIT_CONFIG_GLOBAL": "/dev/null"}
    return gitutil.git(
        ["-c", "diff.noprefix=false", "-c", "diff.mnemonicPrefix=false", "-c",
         "diff.renames=true", "-c", "diff.algorithm=myers", "-c", "format.signature=",
         "format-patch", "-1", "--stdout", "--no-signature", "--zero-commit", "--no-stat",
         "--full-index", "--no-numbered", "--no-cover-letter", "--no-thread", "--unified=3",
         "-M", "--encoding=UTF-8", commit, "--"],
        cwd=tree, env=env, text=False).stdout


def _patch_id(tree: Path, commit: str) -> str:
    diff = gitutil.git([*REPRO, "diff-tree", "-p", "-M", "--full-index", f"{commit}^", commit,
                        "--"], cwd=tree, text=False).stdout
    out = gitutil.git(["patch-id", "--stable"], cwd=tree, input=diff, text=False).stdout
    return out.split()[0].decode() if out.split() else ""


def _meta(tree: Path, commit: str) -> str:
    return gitutil.out(["show", "-s", "--format=%an%x00%ae%x00%ad%x00%B", "--date=raw",
                        commit], cwd=tree)


def _file_subject(data: bytes, name: str) -> str:
    """The commit subject a patch file gives (what ``git am --keep-non-patch`` keeps)."""
    if not is_mail(data):
        return name
    head = data.split(b"\n\n", 1)[0].decode("utf-8", "replace")
    m = re.search(r"^Subject:[ \t]*(.*(?:\n[ \t].*)*)", head, re.MULTILINE | re.IGNORECASE)
    if not m:
        return name
    subj = " ".join(m.group(1).split())
    return re.sub(r"^\[PATCH[^\]]*\]\s*", "", subj)


def _subject(tree: Path, commit: str) -> str:
    return gitutil.out(["show", "-s", "--format=%s", commit], cwd=tree)


@dataclass
class SeriesPlan:
    """What exporting changes in a series directory (computed first, then written in one go
    by :func:`commit_series`)."""

    directory: Path
    rows: list[dict]                    # per patch: file, status, commit
    writes: dict[str, bytes]            # new or changed patch files
    removes: list[str]                  # files of dropped patches
    series_text: str | None             # the new ``series`` file (None: unchanged)
    entries: list[tuple[str, int, str, str]]    # the series after: file, -pN, sha256, commit


def plan_series(directory: Path, tree: Path, commits: list[str],
                old: list[tuple[str, int, list[str]]],
                *, prefer: dict[str, str] | None = None) -> SeriesPlan:
    """Plan writing ``commits`` (oldest first) as the series of ``directory``.

    ``old``: the current entries as ``(file, strip, commits that file produced)``.  A commit
    equal to what an old file produced (same commit, or same patch-id, message and author) keeps
    that file byte for byte; ``prefer`` maps a commit to the file name it replaces (rebase).
    Otherwise an old file with the same subject (or the same diff: a reworded commit) gives its
    name, else a new numbered name.
    Files of the old series that are no longer used are removed; ``series`` is rewritten only
    when the list changed."""
    prefer = prefer or {}
    old_by_commit = {cs[-1]: f for f, _, cs in old if cs}
    old_info: dict[str, tuple[str, str, str]] = {}
    for f, _, cs in old:
        if len(cs) == 1:
            old_info[f] = (_patch_id(tree, cs[0]), _meta(tree, cs[0]), _subject(tree, cs[0]))
        elif not cs and (directory / f).is_file():
            old_info[f] = ("", "", _file_subject((directory / f).read_bytes(), f))
    strips = {f: s for f, s, _ in old}
    used: set[str] = set()
    plan: list[tuple[str, str, bytes | None]] = []   # (file, status, new bytes or None=keep)
    pending: list[tuple[int, str]] = []
    for i, c in enumerate(commits):
        f = old_by_commit.get(c)
        if f and f not in used:
            used.add(f)
            plan.append((f, "unchanged", None))
            continue
        pid, meta = _patch_id(tree, c), _meta(tree, c)
        match = next((f for f, (opid, ometa, _) in old_info.items()
                      if f not in used and opid and opid == pid and ometa == meta), None)
        if match:
            used.add(match)
            plan.append((match, "unchanged", None))
            continue
        plan.append(("", "", None))
        pending.append((i, c))
    for i, c in pending:
        name = prefer.get(c)
        if name in used:
            name = None
        if not name:
            subj = _subject(tree, c)
            name = next((f for f, (_, _, osub) in old_info.items()
                         if f not in used and osub == subj), None)
        if not name:        # same change, new message: a reworded patch keeps its name
            pid = _patch_id(tree, c)
            name = next((f for f, (opid, _, _) in old_info.items()
                         if f not in used and opid and opid == pid), None)
        status = "updated" if name else "new"
        if not name:
            n = i + 1
            while True:
                name = f"{n:04d}-{_slug(_subject(tree, c))}.patch"
                if name not in used and name not in strips and not (directory / name).exists():
                    break
                n += 1
        used.add(name)
        plan[i] = (name, status, format_patch(tree, c))
    rows, writes, entries = [], {}, []
    for (f, status, data), c in zip(plan, commits, strict=True):
        target = directory / f
        if data is not None:
            if target.is_file() and not target.is_symlink() and target.read_bytes() == data:
                status = "unchanged"
            else:
                writes[f] = data
        body = data if data is not None else target.read_bytes()
        entries.append((f, strips.get(f, 1) if data is None else 1,
                        hashlib.sha256(body).hexdigest(), c))
        rows.append({"patch": f, "status": status, "commit": c})
    removes = [f for f, _, _ in old if f not in used]
    rows += [{"patch": f, "status": "removed", "commit": None} for f in removes]
    new_entries = [series_mod.SeriesEntry(f, strip) for f, strip, _, _ in entries]
    old_entries = [series_mod.SeriesEntry(f, s) for f, s, _ in old]
    sfile = directory / series_mod.SERIES_FILE
    text = None
    if [(e.name, e.strip) for e in new_entries] != [(e.name, e.strip) for e in old_entries] \
            or not sfile.exists():
        head = series_mod.header(sfile.read_text()) if sfile.exists() else ""
        text = series_mod.render(new_entries, head=head)
    return SeriesPlan(directory, rows, writes, removes, text, entries)


def _pending_path(settings: Settings, directory: Path) -> Path:
    key = hashlib.sha256(str(directory).encode()).hexdigest()[:12]
    return settings.state_dir / f"series-pending-{key}.json"


def _replace_file(directory: Path, name: str, data: bytes) -> None:
    """``directory/name`` := ``data`` by rename (a symbolic link there is replaced, never
    followed)."""
    target = directory / name
    if target.is_file() and not target.is_symlink() and target.read_bytes() == data:
        return
    tmp = target.with_name(f".{target.name}.askbuild-tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def _apply_pending(journal: dict) -> None:
    """Write a committed series change (idempotent: a killed run's is simply written again)."""
    directory = Path(journal["dir"])
    for name, b64 in journal.get("write", {}).items():
        series_mod.check_name(name, f"{directory} (pending export)")
        _replace_file(directory, name, base64.b64decode(b64))
    for name in journal.get("remove", []):
        series_mod.check_name(name, f"{directory} (pending export)")
        (directory / name).unlink(missing_ok=True)
    if journal.get("series") is not None:
        _replace_file(directory, series_mod.SERIES_FILE, base64.b64decode(journal["series"]))
    for path, data in journal.get("records", {}).items():
        write_json_atomic(Path(path), data)
    for stray in directory.glob(".*.askbuild-tmp"):
        stray.unlink(missing_ok=True)


def commit_series(settings: Settings, plan: SeriesPlan,
                  records: dict[Path, dict] | None = None) -> None:
    """Write ``plan`` (and the JSON ``records`` that go with it) all or nothing: the whole
    change is first saved in ``state/series-pending-*.json``; a run killed while writing the
    files leaves that, and the next run (:func:`finish_pending_series`) completes it."""
    journal = {"dir": str(plan.directory),
               "write": {n: base64.b64encode(d).decode() for n, d in plan.writes.items()},
               "remove": plan.removes,
               "series": (None if plan.series_text is None
                          else base64.b64encode(plan.series_text.encode()).decode()),
               "records": {str(p): d for p, d in (records or {}).items()}}
    path = _pending_path(settings, plan.directory)
    write_json_atomic(path, journal)
    _apply_pending(journal)
    path.unlink(missing_ok=True)


def finish_pending_series(settings: Settings) -> None:
    """Complete series writes that a killed export or rebase left half done."""
    if not settings.state_dir.is_dir():
        return
    for path in sorted(settings.state_dir.glob("series-pending-*.json")):
        journal = read_json(path)
        if journal and isinstance(journal.get("dir"), str):
            _apply_pending(journal)
            console.info(f"{journal['dir']}: finished writing the series that an interrupted "
                         "run had started")
        path.unlink(missing_ok=True)


def write_series(settings: Settings, directory: Path, tree: Path, commits: list[str],
                 old: list[tuple[str, int, list[str]]],
                 *, prefer: dict[str, str] | None = None) -> list[dict]:
    """Write ``commits`` as the series of ``directory`` (:func:`plan_series`, then
    :func:`commit_series`).  Returns one row per patch (file, status)."""
    plan = plan_series(directory, tree, commits, old, prefer=prefer)
    commit_series(settings, plan)
    return plan.rows


def unexported_edits(settings: Settings, tree: Path, layers: list[Layer]
                     ) -> list[tuple[Layer, str, str]]:
    """``(layer, edit branch, what)`` for every edit branch of ``layers`` in ``tree`` that
    holds work not exported: its commits differ from what its last edit or export wrote."""
    out = []
    for ly in layers:
        if ly.kind != "local":
            continue
        branch = edit_branch(ly)
        head = _rev(tree, f"refs/heads/{branch}")
        if not head:
            continue
        erec = read_json(edit_record_path(settings, ly)) or {}
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


@runlock.exclusive("patches.export")
def export(settings: Settings, what: str) -> Report:
    """Write the commits of the series' edit branch (or of ``askbuild/patched``) back as the
    series directory, all or nothing (:func:`commit_series`)."""
    finish_pending_series(settings)
    layer = resolve_layer(settings, what)
    tree = settings.src_dir / layer.source
    with git_errors(f"patches.export {layer.dir}", tree):
        if (settings.state_dir / f"rebase-{layer.source}.json").exists():
            raise DirtyTreeError(f"a rebase of {layer.source} is in progress: it rewrites "
                                 f"{layer.dir} when it completes",
                                 fix=f"finish it (`inv rebase {layer.source} --continue`) or "
                                     f"undo it (`inv rebase {layer.source} --abort`) first")
        recover_tree(settings, layer.source, tree)
        return _export(settings, layer, tree)


def _export(settings: Settings, layer: Layer, tree: Path) -> Report:
    t = str(tree)
    branch = edit_branch(layer)
    erec_path = edit_record_path(settings, layer)
    erec = read_json(erec_path) if _has_base(tree) else None
    on_branch = _rev(tree, f"refs/heads/{branch}") if erec else None
    if erec and on_branch:
        start, head, entries = erec["start"], on_branch, erec["entries"]
    else:
        record = tree_state(settings, layer.source)
        if record is None or not _has_base(tree):
            raise UserError(f"{layer.dir}: {layer.source} has not been patched yet",
                            fix=f"run `inv patches.edit {layer.dir}` first")
        rl = _record_layer(record, layer)
        start, head, on_branch = rl["start"], rl["end"], None
        entries = [{"file": p["file"], "strip": p["strip"], "sha256": p["sha256"],
                    "commits": p["commits"]} for p in record["patches"]
                   if p["layer"] == layer.id]
    directory = settings.project_root / layer.dir
    current = series_mod.load(directory)
    now = [[e.name, e.strip, hashlib.sha256((directory / e.name).read_bytes()).hexdigest()]
           for e in current]
    if now != [[p["file"], p["strip"], p["sha256"]] for p in entries]:
        raise UserError(f"{layer.dir}: the series files changed since the "
                        f"{'edit branch was made' if on_branch else 'tree was patched'}; "
                        "exporting would overwrite them",
                        fix=(f"save what you need from {branch}, delete it (`git -C {t} branch "
                             f"-D {branch}`) and run `inv patches.edit {layer.dir}` again"
                             if on_branch else
                             f"run `inv patches.edit {layer.dir}` so the tree matches the "
                             "files, then edit and export"))
    cur = gitutil.git(["symbolic-ref", "-q", "HEAD"], cwd=tree, check=False).stdout.strip()
    if on_branch and cur == f"refs/heads/{branch}":
        files = changed_files(tree)
        op = _operation_in_progress(tree)
        if files or op:
            raise DirtyTreeError(
                f"{tree}: uncommitted changes on {branch} would not be exported: "
                f"{', '.join(files[:8]) or op + ' is in progress'}",
                fix=f"finish it / commit them (`git -C {t} status` tells what is going on), "
                    "then export")
    if gitutil.git(["merge-base", "--is-ancestor", start, head], cwd=tree,
                   check=False).returncode != 0:
        raise UserError(f"{branch} does not contain the series base {start[:12]}",
                        fix="rebase the branch onto it, or delete it and run patches.edit again")
    merges = gitutil.out(["rev-list", "--merges", f"{start}..{head}"], cwd=tree)
    if merges:
        raise UserError(f"{branch} contains merge commits ({merges.split()[0][:12]}); a series "
                        "is a straight line of commits", fix="linearize it with git rebase")
    commits = gitutil.out(["rev-list", "--reverse", f"{start}..{head}"], cwd=tree).split()
    old = [(p["file"], p["strip"], p["commits"]) for p in entries]
    plan = plan_series(directory, tree, commits, old)
    records: dict[Path, dict] = {}
    if on_branch:
        erec["entries"] = [{"file": f, "strip": strip, "sha256": sha, "commits": [c]}
                           for f, strip, sha, c in plan.entries]
        records[erec_path] = erec
    commit_series(settings, plan, records)
    report = Report("export", f"export {layer.dir} from {branch if on_branch else PATCHED}",
                    ["patch", "status"], rows=plan.rows,
                    subject={"series": layer.dir, "source": layer.source})
    report.emit()
    return report
