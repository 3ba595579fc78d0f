"""Writing commits back as a series directory, all or nothing.

:func:`write_series` plans which file each commit becomes (:func:`plan_series`: unchanged
commits keep their file byte for byte, changed ones keep their name) and writes the plan in
one go (:func:`commit_series`): the whole change is saved in ``state/series-pending-*.json``
first, so a run killed while writing is completed by the next (:func:`finish_pending_series`).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path
from typing import NamedTuple

from .. import console, gitutil
from .. import series as series_mod
from ..fsutil import read_json, write_json_atomic
from ..settings import Settings
from . import style as patch_style
from .apply import is_mail
from .worktree import REPRO

_SLUG_RE = re.compile(r"[^A-Za-z0-9._]+")


def _slug(subject: str) -> str:
    s = _SLUG_RE.sub("-", subject).strip("-.")
    return (s[:52].rstrip("-.")) or "patch"


def format_patch(tree: Path, commit: str) -> bytes:
    """Stable ``git format-patch`` text of one commit (the format of a new patch,
    :data:`.style.DEFAULT`): zero From line, no signature, no stat, full index lines,
    ``[PATCH]`` without numbers; the user's git config is ignored."""
    return patch_style.render(tree, commit)


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


class SeriesPlan(NamedTuple):
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
    known = _OldSeries.read(directory, tree, old)
    placed = _keep_unchanged(known, tree, commits)
    _name_changed(known, tree, commits, placed, prefer or {})
    rows, writes, entries = _contents(known, tree, commits, placed)
    removes = [f for f, _, _ in old if f not in known.used]
    rows += [{"patch": f, "status": "removed", "commit": None} for f in removes]
    return SeriesPlan(directory, rows, writes, removes, _series_text(directory, entries, old),
                      entries)


class _OldSeries(NamedTuple):
    """The series before the change, and which of its files the new one uses so far."""

    directory: Path
    by_commit: dict[str, str]                   # the last commit a file produced -> file
    info: dict[str, tuple[str, str, str]]       # file -> (patch-id, author + message, subject)
    strips: dict[str, int]
    used: set[str]

    @classmethod
    def read(cls, directory: Path, tree: Path,
             old: list[tuple[str, int, list[str]]]) -> _OldSeries:
        info: dict[str, tuple[str, str, str]] = {}
        for f, _, cs in old:
            if len(cs) == 1:
                info[f] = (_patch_id(tree, cs[0]), _meta(tree, cs[0]), _subject(tree, cs[0]))
            elif not cs and (directory / f).is_file():
                info[f] = ("", "", _file_subject((directory / f).read_bytes(), f))
        return cls(directory, {cs[-1]: f for f, _, cs in old if cs}, info,
                   {f: s for f, s, _ in old}, set())

    def unused(self, *, pid: str | None = None, meta: str | None = None,
               subject: str | None = None) -> str | None:
        """The first old file not used yet with the given patch-id (a known one), author and
        message, and subject."""
        for f, (opid, ometa, osubject) in self.info.items():
            if f in self.used or (pid is not None and (not opid or opid != pid)):
                continue
            if (meta is None or ometa == meta) and (subject is None or osubject == subject):
                return f
        return None

    def take(self, name: str) -> str:
        self.used.add(name)
        return name


#: Per commit: (file, status, whether its file is written from the commit).
_Placed = list[tuple[str, str, bool]]


def _keep_unchanged(known: _OldSeries, tree: Path, commits: list[str]) -> _Placed:
    """Phase 1: every commit equal to what an old file produced keeps that file (``"unchanged"``,
    not rewritten); the others get an empty slot."""
    placed: _Placed = []
    for c in commits:
        f = known.by_commit.get(c)
        if not f or f in known.used:
            pid, meta = _patch_id(tree, c), _meta(tree, c)
            f = known.unused(pid=pid, meta=meta)
        placed.append((known.take(f), "unchanged", False) if f else ("", "", True))
    return placed


def _name_changed(known: _OldSeries, tree: Path, commits: list[str], placed: _Placed,
                  prefer: dict[str, str]) -> None:
    """Phase 2: a file name for every other commit: the ``prefer``red one, an old file with
    the same subject or the same diff (``"updated"``), else a new numbered one (``"new"``)."""
    for i, c in enumerate(commits):
        if placed[i][0]:
            continue
        name = prefer.get(c)
        if name in known.used:
            name = None
        if not name:
            subj = _subject(tree, c)
            name = known.unused(subject=subj)
        if not name:        # same change, new message: a reworded patch keeps its name
            pid = _patch_id(tree, c)
            name = known.unused(pid=pid)
        status = "updated" if name else "new"
        placed[i] = (known.take(name or _numbered_name(known, tree, c, i + 1)), status, True)


def _numbered_name(known: _OldSeries, tree: Path, commit: str, n: int) -> str:
    """``NNNN-subject.patch``, from ``n`` up, that no file of the series uses."""
    while True:
        name = f"{n:04d}-{_slug(_subject(tree, commit))}.patch"
        if name not in known.used and name not in known.strips \
                and not (known.directory / name).exists():
            return name
        n += 1


def _contents(known: _OldSeries, tree: Path, commits: list[str], placed: _Placed
              ) -> tuple[list[dict], dict[str, bytes], list[tuple[str, int, str, str]]]:
    """Phase 3: the bytes of every file (a rewritten file with the same bytes counts as
    unchanged and is not written): the rows, the writes and the series entries."""
    rows, writes, entries = [], {}, []
    for (f, status, rewrite), c in zip(placed, commits, strict=True):
        target = known.directory / f
        data, strip = None, known.strips.get(f, 1)
        if rewrite:
            data, strip = _rewritten(known, tree, f, c)
            if target.is_file() and not target.is_symlink() and target.read_bytes() == data:
                status = "unchanged"
            else:
                writes[f] = data
        body = data if data is not None else target.read_bytes()
        entries.append((f, strip, hashlib.sha256(body).hexdigest(), c))
        rows.append({"patch": f, "status": status, "commit": c})
    return rows, writes, entries


def _rewritten(known: _OldSeries, tree: Path, name: str, commit: str) -> tuple[bytes, int]:
    """The bytes and ``-pN`` of file ``name`` written from ``commit``: in the format of the
    old file of that name (:mod:`.style`: a mail stays a mail with its headers, diffstat,
    index abbreviation and signature, a plain diff a plain diff with its ``-pN``), else in
    the format of a new patch."""
    old = known.directory / name
    if name not in known.strips or not old.is_file():
        return format_patch(tree, commit), 1
    strip = known.strips[name]
    style = patch_style.detect(old.read_bytes(), strip)
    old_meta = known.info.get(name, ("", "", ""))[1]
    same = bool(old_meta) and old_meta == _meta(tree, commit)
    return patch_style.render(tree, commit, style, same_message=same), strip


def _series_text(directory: Path, entries: list[tuple[str, int, str, str]],
                 old: list[tuple[str, int, list[str]]]) -> str | None:
    """Phase 4: the new ``series`` file, None when the list of files and -pN is unchanged.
    Its comments and blank lines are kept by the rule of :func:`askbuild.series.rewrite`."""
    new = [series_mod.SeriesEntry(f, strip) for f, strip, _, _ in entries]
    sfile = directory / series_mod.SERIES_FILE
    if [(e.name, e.strip) for e in new] == [(f, s) for f, s, _ in old] and sfile.exists():
        return None
    if not sfile.is_file():
        return series_mod.render(new)
    return series_mod.rewrite(sfile.read_bytes().decode("utf-8"), new)


def _pending_path(settings: Settings, directory: Path) -> Path:
    """Where the pending change of series ``directory`` is saved (one per directory)."""
    return settings.series_pending(hashlib.sha256(str(directory).encode()).hexdigest()[:12])


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
    pattern = settings.series_pending("*")
    if not pattern.parent.is_dir():
        return
    for path in sorted(pattern.parent.glob(pattern.name)):
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
