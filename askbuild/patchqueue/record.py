"""The patch record ``state/patch-<name>.json`` (:meth:`Settings.patch_record`).

It records the base, every patch (layer, file, -pN, sha256, commits) and the head; written
atomically and only after success.  It is trusted as "done" only when it vouches for the tree
(:func:`record_done`): same base and patch bytes, ``askbuild/patched`` exactly at its head and
exactly its commits between base and head.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path

from .. import gitutil
from ..errors import UserError
from ..fsutil import dirs_above, read_json, stat_sig, write_json_atomic
from ..refs import BASE_REF, PATCHED
from ..settings import Settings
from ..sources import Source
from .inputs import PatchInput
from .layers import Layer
from .worktree import rev

STATE_SCHEMA = 1


def tree_state(settings: Settings, name: str) -> dict | None:
    """The record of the last successful patch step of ``name`` (None when there is none):
    ``{"schema", "source", "base", "head", "layers": [{id, kind, dir, provider, start, end}],
    "patches": [{layer, kind, file, strip, sha256, commits}]}``."""
    return read_json(settings.patch_record(name))


def record_matches(record: dict | None, base: str, inputs: list[PatchInput]) -> bool:
    """Whether ``record`` (possibly damaged) was made from ``base`` and exactly ``inputs``."""
    if not record or record.get("schema") != STATE_SCHEMA or record.get("base") != base:
        return False
    patches = record.get("patches", [])
    if not isinstance(patches, list) or not all(
            isinstance(p, dict) and all(k in p for k in ("layer", "file", "strip", "sha256"))
            for p in patches):
        return False        # a damaged record is no record: the series is applied again
    old = [[p["layer"], p["file"], p["strip"], p["sha256"]] for p in patches]
    return old == [p.key() for p in inputs]


_UNREAD = object()


def record_done(tree: Path, record: dict | None, base: str,
                inputs: list[PatchInput], *, patched: object = _UNREAD) -> bool:
    """Whether ``record`` can be trusted as "this tree is done": the same base and patch bytes,
    ``askbuild/patched`` exactly at its head, and the commits from the base to that head
    exactly the recorded ones (a record never vouches for a branch another run changed).
    ``patched``: the commit of ``askbuild/patched`` (None: no such branch) when the caller
    has just read it."""
    if not record or not record_matches(record, base, inputs):
        return False
    head = record.get("head")
    if patched is _UNREAD:
        patched = rev(tree, f"refs/heads/{PATCHED}")
    if not isinstance(head, str) or patched != head:
        return False
    chain = gitutil.git(["rev-list", "--reverse", f"{base}..{head}", "--"], cwd=tree,
                        check=False)
    want = [c for p in record.get("patches", []) for c in p.get("commits", [])]
    return chain.returncode == 0 and chain.stdout.split() == want


def layers_with_empty(record: dict, layers: list[Layer]) -> dict:
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


def record_layer(settings: Settings, record: dict, layer: Layer) -> dict:
    """The entry of ``layer`` in the record (start and end commit)."""
    for ly in record.get("layers", []):
        if ly["id"] == layer.id:
            return ly
    raise UserError(f"series {layer.id} is not in the patch record of {layer.source}",
                    fix=f"run `{settings.command('patch', '--source', layer.source)}` first")


# -- the patch stamp: a no-op without git ----------------------------------------------------
#
# What a stat can answer (``state/patch-stamp-<name>.json``, :meth:`Settings.patch_stamp`),
# written only after a full check found the tree done, and compared field by field:
#
# * the loose ref files ``HEAD``, ``refs/tags/askbuild/base`` and ``refs/heads/askbuild/patched``
#   (contents; a packed ref means "ask git"), ``packed-refs``, ``config``, ``info/exclude``,
#   the index (stat signatures);
# * no run journal, no ``worktrees/``, no ``*.lock`` file, no stopped git operation in the git
#   dir, no rebase state;
# * the record, each local layer's directory, series file and patch files (stat signatures:
#   ``ctime`` moves on any write, even one that restores size and mtime), the layers as loaded
#   and the lock of the source and of each vendor provider, each provider's base ref and fetch
#   stamp (a vendor series is read from the provider's base commit, which cannot change);
# * the work tree: every directory's stat signature (a new, removed or renamed entry moves
#   its parent's mtime) and every index entry compared with ``lstat`` as git compares them.
#
# Still asking git (the full path), on purpose: a racily clean index entry (modified in the
# second the index was written: only the content can tell), an index this reader does not
# parse (version 4, split index, sparse directories, skip-worktree / intent-to-add / assume-
# unchanged entries, submodules, sha256 repositories), packed refs, and any stamp field that
# differs.  A change git would see but no stat shows (the user's global excludes file or
# ``core.*`` settings outside the repository) is not seen until the stamp is next rewritten.

PATCH_STAMP_SCHEMA = 1
_OPERATIONS = ("rebase-apply", "rebase-merge", "MERGE_HEAD", "CHERRY_PICK_HEAD", "REVERT_HEAD")
_KNOWN_EXTENSIONS = {b"TREE", b"REUC", b"UNTR", b"FSMN", b"EOIE", b"IEOT"}


def _loose(gd: Path, ref: str) -> str | None:
    try:
        return (gd / ref).read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _git_dir_busy(settings: Settings, name: str, gd: Path) -> bool:
    """Whether anything in the git dir says a run, an operation or a lock is under way."""
    from .journal import JOURNAL  # (journal imports this module)
    if settings.rebase_state(name).exists() or (gd / JOURNAL).exists() \
            or (gd / "worktrees").exists() or any((gd / op).exists() for op in _OPERATIONS):
        return True
    for dirpath, dirnames, filenames in os.walk(gd):
        if dirpath == str(gd) and "objects" in dirnames:
            dirnames.remove("objects")
        if any(f.endswith(".lock") for f in filenames):
            return True
    return False


def _stamp_facts(settings: Settings, name: str, layers: list[Layer],
                 sources: dict[str, Source], record: dict) -> dict | None:
    """The stat-checkable facts of ``name``'s tree and inputs (None: only git can tell)."""
    tree = settings.source_tree(name)
    gd = tree / ".git"
    if not gd.is_dir() or _git_dir_busy(settings, name, gd):
        return None
    refs = {r: _loose(gd, r) for r in ("HEAD", BASE_REF, f"refs/heads/{PATCHED}")}
    if None in refs.values() or (gd / "config").read_text().find("objectformat") >= 0:
        return None
    facts: dict = {
        "refs": refs, "record": stat_sig(settings.patch_record(name)),
        "git": {f: stat_sig(gd / f) for f in ("index", "packed-refs", "config", "info/exclude")},
        "layers": [[ly.kind, ly.dir, ly.provider, ly.optional,
                    list(ly.patches) if ly.patches is not None else None] for ly in layers],
        "lock": [sources[name].kind, sources[name].identity], "local": {}, "providers": {}}
    for ly in layers:
        if ly.kind == "local":
            d = settings.project_root / ly.dir
            files = [p["file"] for p in record.get("patches", []) if p.get("layer") == ly.id]
            facts["local"][ly.dir] = {f: stat_sig(d / f) for f in [".", "series", *files]}
        elif ly.provider and ly.provider not in facts["providers"]:
            src = sources.get(ly.provider)
            base = _loose(settings.source_tree(ly.provider) / ".git", BASE_REF)
            if src is None or base is None:
                return None
            facts["providers"][ly.provider] = {
                "lock": [src.kind, src.identity], "base": base,
                "fetch": read_json(settings.fetch_stamp(ly.provider))}
    return facts


#: how long before a stamp was taken a directory's change still makes its signature in that
#: stamp unfit to stand for its entries (file times move in coarse clock ticks, so a change
#: in the same tick as an earlier one can leave the signature as it was)
RACY_NS = 10**9


def _tree_dirs(tree: Path, before: dict | None = None,
               taken_ns: int = 0) -> dict[str, list[int] | None]:
    """The stat signature of every directory of the work tree (``.git`` left out), keyed by
    its path relative to the tree (``.`` the tree itself), as :func:`stat_sig` gives it.  A
    directory that cannot be listed is there without what is below it, and a symbolic link
    to one is not followed.  One ``scandir`` and one ``lstat`` per directory and plain strings:
    0.15 s for the kernel's 5k directories, where ``os.walk`` with ``Path`` and ``relpath``
    took 0.33 s.  ``before``: what this gave for the same tree earlier (a previous stamp's
    ``dirs``, taken at ``taken_ns``); a directory whose signature did not change since has
    the same entries (any entry added, removed or renamed moves its mtime and ctime), so its
    subdirectories are taken from there without listing it: only the directories a run
    changed are read.  One changed less than :data:`RACY_NS` before ``taken_ns`` is read
    again all the same."""
    top = os.fspath(tree)
    kids: dict[str, list[str]] = {}
    if before:
        for rel in before:
            if rel != ".":
                kids.setdefault(rel.rpartition("/")[0] or ".", []).append(rel)
    out: dict[str, list[int] | None] = {}
    stack = [(top, ".")]
    while stack:
        path, rel = stack.pop()
        sig = stat_sig(path)
        if sig is not None and before and before.get(rel) == sig \
                and sig[1] < taken_ns - RACY_NS and sig[2] < taken_ns - RACY_NS:
            out[rel] = sig
            stack += [(f"{top}/{k}", k) for k in kids.get(rel, ())]
            continue
        if sig is None:
            continue
        out[rel] = sig
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError:
            continue                # (kept: a chmod that lets it be listed moves its ctime)
        for e in entries:
            try:
                if not e.is_dir(follow_symlinks=False) or (rel == "." and e.name == ".git"):
                    continue
            except OSError:
                continue
            stack.append((e.path, e.name if rel == "." else f"{rel}/{e.name}"))
    return out


class TreeWalk:
    """The directories of a work tree for its next stamp (:func:`take_stamp`), walked
    (:func:`_tree_dirs`) on a thread while a run goes on, once ``wait`` returns true (the
    git processes that read the whole tree first: two walks at once only slow each other;
    false or an error: the walk would not be used, none is made).
    :meth:`dirs` reads again the directories the run changed.  A directory someone else
    changes after it was read keeps its old signature in the stamp, which the next run
    then finds changed: it looks again (with git).  ``before``: the stamp it replaces."""

    def __init__(self, tree: Path, before: dict | None,
                 wait: Callable[[], object] | None = None) -> None:
        from .. import procs
        self.tree = tree
        self.taken_ns = time.time_ns()      # (before anything is read: see RACY_NS)
        prev, prev_ns = (before or {}).get("dirs"), (before or {}).get("taken_ns")

        def walk() -> dict | None:
            try:
                if wait is not None and not wait():
                    return None
            except Exception:       # noqa: BLE001 - the run itself says what failed
                return None
            return _tree_dirs(tree, prev if isinstance(prev, dict) else None,
                              prev_ns if isinstance(prev_ns, int) else 0)
        self._walked = procs.in_background(walk)

    def dirs(self, changed: Iterable[str]) -> dict[str, list[int] | None] | None:
        """The walk, once done, with every directory above a path in ``changed`` (the
        paths the run wrote or removed, and so the only directories it changed) read again:
        its signature, then its entries (a new directory below it walked whole; one that
        is gone leaves with what was below it).  None when no walk was made."""
        walked = self._walked()
        if walked is None:
            return None
        out = dict(walked)
        top = os.fspath(self.tree)
        above = {".", *(d for p in changed for d in dirs_above(p))}
        for rel in sorted(above, key=lambda r: (r != ".", r.count("/"), r)):
            path = top if rel == "." else f"{top}/{rel}"
            sig = stat_sig(path)
            if sig is None:
                for k in [k for k in out if k == rel or k.startswith(f"{rel}/")]:
                    del out[k]
                continue
            out[rel] = sig
            try:
                with os.scandir(path) as it:
                    kids = [e.name for e in it if e.is_dir(follow_symlinks=False)]
            except OSError:
                continue
            for name in kids:
                kid = name if rel == "." else f"{rel}/{name}"
                if kid not in out and kid != ".git":
                    out.update({kid if k == "." else f"{kid}/{k}": v
                                for k, v in _tree_dirs(Path(f"{top}/{kid}")).items()})
        return out


_M32 = 0xFFFFFFFF
_NS = 10**9
_REG = {0o100644: False, 0o100755: True}


def _entries_unchanged(root: bytes, entries: list[tuple[bytes, tuple, bytes, bool]]) -> bool:
    """Whether git would take each index entry as unchanged from its file's ``lstat``
    (ctime, mtime, inode, size, type and executable bit).  A racily clean entry (written in
    the second the index was) is unchanged only when its content still hashes to the entry's
    blob id, as git itself checks it (a file git converts on the way in, CRLF or a filter,
    hashes differently: then git is asked)."""
    lstat, islnk, isreg = os.lstat, stat.S_ISLNK, stat.S_ISREG
    for name, (cs, cn, ms, mn, _dev, ino, mode, _uid, _gid, size), sha, racy in entries:
        try:
            st = lstat(root + name)
        except OSError:
            return False
        if mode == 0o120000:
            if not islnk(st.st_mode):
                return False
        elif mode not in _REG or not isreg(st.st_mode) \
                or bool(st.st_mode & 0o100) != _REG[mode]:
            return False                # (a gitlink is a submodule: ask git)
        c, m = st.st_ctime_ns, st.st_mtime_ns
        if (m % _NS != mn or c % _NS != cn or (m // _NS) & _M32 != ms
                or (c // _NS) & _M32 != cs or st.st_ino & _M32 != ino
                or st.st_size & _M32 != size):
            return False
        if racy and _blob_id(root + name, islnk(st.st_mode)) != sha:
            return False
    return True


def _blob_id(path: bytes, link: bool) -> bytes | None:
    """The git blob id (sha1) of a file's content or a symbolic link's target."""
    try:
        data = os.fsencode(os.readlink(path)) if link else Path(os.fsdecode(path)).read_bytes()
    except OSError:
        return None
    return hashlib.sha1(b"blob %d\0" % len(data) + data).digest()


def _index(tree: Path) -> Path:
    """``tree``'s index file (its ``.git`` a directory: :func:`_stamp_facts` vouches for no
    other layout)."""
    return tree / ".git" / "index"


def _read_index(tree: Path) -> list[tuple[bytes, tuple, bytes, bool]] | None:
    """The entries of ``tree``'s index (format 2 or 3, sha1) as ``(path, stat fields, blob
    id, racy)`` (racy: modified in or after the second the index was written, so only the
    content can tell), or None when it holds anything this reader does not vouch for:
    assume-unchanged, skip-worktree or intent-to-add entries, a conflict, an extension that
    changes the entries (split index, sparse directories), another version."""
    index = _index(tree)
    try:
        data = index.read_bytes()
        index_mtime_s = os.stat(index).st_mtime_ns // _NS
    except OSError:
        return None
    if len(data) < 32 or data[:4] != b"DIRC":
        return None
    version, count = struct.unpack_from(">II", data, 4)
    if version not in (2, 3):
        return None
    unpack = struct.Struct(">10I20sH").unpack_from
    pos, end = 12, len(data) - 20
    out = []
    for _ in range(count):
        if pos + 62 > end:
            return None
        *fields, sha, flags = unpack(data, pos)
        nul = data.find(b"\0", pos + 62)
        if flags & 0xF000 or nul < 0:
            return None
        out.append((data[pos + 62:nul], tuple(fields), sha, fields[2] >= index_mtime_s))
        pos += (nul - pos + 8) & ~7
    while pos + 8 <= end:               # extensions: refuse those that change the entries
        sig, size = data[pos:pos + 4], struct.unpack_from(">I", data, pos + 4)[0]
        if sig not in _KNOWN_EXTENSIONS:
            return None
        pos += 8 + size
    return out if pos == end else None


#: from this many index entries on, ``git diff-files`` checks them (see :func:`index_clean`)
GIT_CHECKS_FROM = 10_000


def _index_entries(tree: Path) -> int | None:
    """How many entries ``tree``'s index holds (its header), None when it is no index."""
    try:
        with open(_index(tree), "rb") as f:
            head = f.read(12)
    except OSError:
        return None
    return struct.unpack(">I", head[8:12])[0] if len(head) == 12 and head[:4] == b"DIRC" \
        else None


def index_clean(tree: Path) -> bool:
    """Whether every entry of ``tree``'s index still matches its file as git compares them;
    False whenever git must look.  Up to :data:`GIT_CHECKS_FROM` entries, read here
    (:func:`_read_index`, :func:`_entries_unchanged`: one ``lstat`` per tracked file and no
    process, ~7 us a file); from there on by one ``git diff-files --quiet``, which reads the
    index in C and ``lstat``s on several threads (~1 us a file: on the kernel's 79k files
    0.07 s, where the walk here takes 0.53 s).  git then answers as the full check's own
    ``git status`` does: an entry marked assume-unchanged or skip-worktree is not looked at
    (the reader here refuses such an index), and ctimes compare by the second (Debian's git
    is built without USE_NSEC: a same-size edit that puts the old mtime back, in the second
    the index was written, is seen by the reader here only)."""
    count = _index_entries(tree)
    if count is None:
        return False
    if count >= GIT_CHECKS_FROM:
        return gitutil.git(["diff-files", "--quiet"], cwd=tree, check=False).returncode == 0
    entries = _read_index(tree)
    return entries is not None and _entries_unchanged(os.fsencode(tree) + b"/", entries)


#: the trees a run found as their stamps say (:func:`one_check_per_run`): work tree -> the
#: stat signature of its stamp then (the stamp's facts hold those of its record and index)
_CHECKED: ContextVar[dict[str, tuple] | None] = ContextVar("askbuild_stamps_checked",
                                                           default=None)


@contextlib.contextmanager
def one_check_per_run() -> Iterator[None]:
    """Within the block (the main job: its patch step, then its build step asking again),
    a tree :func:`stamp_current` found as its stamp says is not walked again while its
    stamp file stays the very same (its facts, compared first, hold the record's and the
    index's signatures): one check of each tree per run, as
    one verb makes it (on the kernel one ``git diff-files`` and a walk of 5k directories
    less).  Its series, lock and the stamp's facts are still compared every time."""
    token = _CHECKED.set({})
    try:
        yield
    finally:
        _CHECKED.reset(token)


def stamp_current(settings: Settings, name: str, layers: list[Layer],
                  sources: dict[str, Source], *, untracked: bool = False) -> dict | None:
    """The patch record of ``name`` when its stamp proves, with stats and no git process,
    that nothing :func:`record_done` and the clean-tree checks look at changed since the
    stamp was written; else None (then the full check runs).  ``untracked``: also vouch that
    the tree has no untracked file (the stamp must say a full check saw none)."""
    stamp = read_json(settings.patch_stamp(name))
    record = tree_state(settings, name)
    if not stamp or not record or stamp.get("schema") != PATCH_STAMP_SCHEMA \
            or (untracked and stamp.get("untracked") is not False):
        return None
    try:
        facts = _stamp_facts(settings, name, layers, sources, record)
    except OSError:
        return None
    if facts is None or facts != stamp.get("facts"):
        return None
    tree = settings.source_tree(name)
    checked = _CHECKED.get()
    seen = stat_sig(settings.patch_stamp(name)) if checked is not None else None
    if seen is not None and checked.get(str(tree)) == seen:
        return record
    if not index_clean(tree):
        return None
    dirs = stamp.get("dirs") or {}
    top = os.fspath(tree)
    if not dirs or any(stat_sig(top if d == "." else f"{top}/{d}") != sig
                       for d, sig in dirs.items()):
        return None
    if seen is not None:
        checked[str(tree)] = seen
    return record


def take_stamp(settings: Settings, name: str, layers: list[Layer],
               sources: dict[str, Source], *, untracked: bool | None = None,
               before: dict | None = None,
               walked: tuple[dict, int] | None = None) -> dict | None:
    """What a stamp of ``name`` would say now (None when only git can tell: a packed ref, a
    lock file...).  ``untracked``: False when the full check this stamp stands for saw no
    untracked file, None when it did not look.  ``before``: the previous stamp (its
    directories are listed again only where they changed: :func:`_tree_dirs`).
    ``walked``: the tree's directories and when their reading began, when the run read
    them already (:class:`TreeWalk`)."""
    record = tree_state(settings, name)
    try:
        facts = _stamp_facts(settings, name, layers, sources, record) if record else None
        if facts is None:
            return None
        if walked is not None:
            dirs, taken_ns = walked
        else:
            taken_ns = time.time_ns()
            prev, prev_ns = (before or {}).get("dirs"), (before or {}).get("taken_ns")
            dirs = _tree_dirs(settings.source_tree(name),
                              prev if isinstance(prev, dict) else None,
                              prev_ns if isinstance(prev_ns, int) else 0)
    except OSError:
        return None
    return {"schema": PATCH_STAMP_SCHEMA, "facts": facts, "dirs": dirs, "untracked": untracked,
            "taken_ns": taken_ns}


def save_stamp(settings: Settings, name: str, stamp: dict | None) -> None:
    """Write ``stamp`` (from :func:`take_stamp`, after the full check it stands for found the
    tree done); None removes the stamp."""
    if stamp is None:
        settings.patch_stamp(name).unlink(missing_ok=True)
    else:
        write_json_atomic(settings.patch_stamp(name), stamp, indent=None)   # (C encoder)


def write_stamp(settings: Settings, name: str, layers: list[Layer],
                sources: dict[str, Source], *, untracked: bool | None = None,
                before: dict | None = None, walked: tuple[dict, int] | None = None) -> None:
    """Stamp ``name`` as it is now, right after a full check found its tree done
    (``before``, ``walked``: as :func:`take_stamp` takes them)."""
    save_stamp(settings, name, take_stamp(settings, name, layers, sources,
                                          untracked=untracked, before=before, walked=walked))


def drop_stamp(settings: Settings, name: str) -> None:
    """Forget the stamp (before a full run changes anything)."""
    settings.patch_stamp(name).unlink(missing_ok=True)
