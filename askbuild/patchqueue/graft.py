"""A series' commits on a big tree, made in a small one (``inv patch``, the dry run's first
pass, and ``inv patch --check``).

``inv rebase --dry-run`` without a patch record first needs the commits ``inv patch`` would
make: the queue applied onto the old base.  ``git am`` on a big tree pays for the whole
index on every patch (git 2.39 reads, refreshes and writes all of it; a sparse index it
expands first): 60 ms a patch on 30k files, ~150 ms on a kernel.  Here the queue is applied
in a small repository whose base holds only the files the patches name (and the
``.gitattributes`` that apply to them), and each commit made there is then grafted onto
the real base with ``git fast-import``: the same changes, author, committer and message
on the full tree.  As ``inv patch`` makes its commits with fixed identities and dates, the
grafted commits are the very commits ``git am`` on the full tree makes
(tests/test_graft.py and tests/test_sparse_scratch.py compare them).  ``inv patch --check``
takes its rows from there too: every patch applied, with the commit it makes on the tree.
``inv patch`` brings the grafted commits into the tree's repository (:func:`bring_in`) and
checks the tree out at the last one: one index write and the changed files, where ``git am``
reads, refreshes and writes the whole index twice a patch.

The small tree stands for the full one only when the patches cannot see a difference:
every patch applies as it is (no 3-way merge: that would read trees), no named path is a
directory or a submodule, no directory above one is a file, and every commit is plain
(``tree``, one ``parent``, ``author``, ``committer``).  Otherwise, or when git fails
there, :func:`grafted_queue` yields None and the caller applies the queue on the full
tree.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from .. import gitutil
from ..errors import PatchFailed
from ..fsutil import dirs_above
from ..gitutil import GitError
from ..report import Report
from .apply import PATCH_COLUMNS, apply_queue
from .inputs import PatchInput
from .scratch import SCRATCH_PREFIX, borrowing_repo, out_of_room, sparse_patterns

GRAFT_REF = "refs/askbuild/grafted"
SMALL_REF = "refs/askbuild/small"
_LITERAL = {"GIT_LITERAL_PATHSPECS": "1"}


class Grafted(NamedTuple):
    """What :func:`grafted_queue` yields."""
    record: dict                # what :func:`~.apply.apply_queue` returns for the tree
    objects: Path               # the object directory holding the new commits
    changes: dict[str, bool]    # each path the series changed: whether the head has it


@contextlib.contextmanager
def grafted_queue(tree: Path, base: str, inputs: list[PatchInput], paths: set[str],
                  parent: Path, *, source: str, report: Report | None = None,
                  prefix: str = SCRATCH_PREFIX) -> Iterator[Grafted | None]:
    """Apply ``inputs`` onto ``base`` of ``tree`` in a small scratch repository under
    ``parent`` (its name starting with ``prefix``: :func:`~.scratch.scratch_home`) holding
    only ``paths`` (:func:`~.apply.touched_paths`), and graft its commits onto ``base``:
    yields a :class:`Grafted` (the record :func:`~.apply.apply_queue` returns for ``tree``;
    the object directory holding the new commits, for a sparse scratch to borrow: see
    :func:`~.scratch.scratch_worktree`; the paths whose files differ between ``base`` and
    the head), or None when the small tree cannot stand for the full one (see the module
    documentation) or its file system ran full.  ``report``: gets
    the rows :func:`~.apply.apply_queue` reports for ``tree`` (only when the record is
    yielded).  The scratch is gone afterwards."""
    if sparse_patterns(paths) is None:      # (the borrowing scratch would be a full one)
        yield None
        return
    parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
    try:
        try:
            borrowing_repo(tree, scratch)
            made = _grafted(scratch, base, inputs, paths, source, report)
        except (PatchFailed, GitError, OSError) as e:
            if isinstance(e, OSError) and not out_of_room(e):
                raise
            made = None                 # (the full tree's git am says what it is)
        yield None if made is None else Grafted(made[0], scratch / ".git" / "objects", made[1])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _grafted(scratch: Path, base: str, inputs: list[PatchInput], paths: set[str],
             source: str, report: Report | None) -> tuple[dict, dict[str, bool]] | None:
    """The record and the changed paths of :class:`Grafted`, or None."""
    found = _small_base(scratch, base, paths)
    if found is None:
        return None
    small, in_base = found
    rows = Report("patch", "patch", PATCH_COLUMNS)
    record = apply_queue(scratch, small, inputs, source=source, report=rows, branch=None,
                         batch=True, detached_at=small)
    if any(r["status"] != "applied" for r in rows.rows):
        return None
    made = [c for p in record["patches"] for c in p["commits"]]
    last: dict[bytes, bool] = {}
    grafted = _graft(scratch, base, made, last)
    if grafted is None:
        return None
    ids = {small: base, **dict(zip(made, grafted, strict=True))}
    for p in record["patches"]:
        p["commits"] = [ids[c] for c in p["commits"]]
    for ly in record["layers"]:
        ly["start"], ly["end"] = ids[ly["start"]], ids[ly["end"]]
    record["base"], record["head"] = base, ids[record["head"]]
    if report is not None:
        report.rows += [{**r, "commit": ids.get(r["commit"], r["commit"])} for r in rows.rows]
    changes = {os.fsdecode(p): there for p, there in last.items()}
    return record, {p: there for p, there in changes.items() if there or p in in_base}


def bring_in(scratch: Path, tree: Path, head: str, base: str) -> None:
    """Copy into ``tree``'s repository the objects the graft made in the scratch repository
    ``scratch`` (which borrows ``tree``'s objects) for the commits from ``base`` to ``head``:
    one ``pack-objects`` there (what ``base`` reaches, and what ``tree`` holds already, left
    out), one ``index-pack`` in ``tree`` (which checks every object it stores)."""
    pack = gitutil.git(["pack-objects", "--revs", "--local", "--sparse", "--stdout", "-q"],
                       cwd=scratch, input=f"{head}\n^{base}\n".encode(), text=False).stdout
    if len(pack) > 12 and int.from_bytes(pack[8:12], "big"):
        gitutil.git(["index-pack", "--stdin"], cwd=tree, input=pack, text=False)


def _small_base(scratch: Path, base: str, paths: set[str]) -> tuple[str, set[str]] | None:
    """A commit holding ``base``'s files among ``paths`` and the ``.gitattributes`` above
    them (made by one ``git fast-import``), checked out in ``scratch``, and the paths of
    those files; None when a path is not a file there or a directory above one is not a
    directory."""
    dirs = sorted({a for p in paths for a in dirs_above(p)})
    named = sorted(paths)
    probe = gitutil.git(["cat-file", "--batch-check=%(objecttype)"], cwd=scratch,
                        input="".join(f"{base}:{p}\n" for p in [*named, *dirs]))
    kinds = probe.stdout.splitlines()
    if len(kinds) != len(named) + len(dirs):
        return None
    kind = dict(zip([*named, *dirs], kinds, strict=True))
    if any(not kind[p].endswith(" missing") and kind[p] != "blob" for p in named) \
            or any(not kind[d].endswith(" missing") and kind[d] != "tree" for d in dirs):
        return None
    attrs = {".gitattributes", *(f"{d}/.gitattributes" for d in dirs)} - set(named)
    want = {p for p in named if kind[p] == "blob"} | attrs
    listed = gitutil.git(["ls-tree", "-r", "-z", "--full-tree", base, "--", *sorted(want)],
                         cwd=scratch, env=_LITERAL, text=False).stdout
    entries = [e for e in listed.split(b"\0")
               if e and os.fsdecode(e.partition(b"\t")[2]) in want]
    files, found = [], set()
    for e in entries:                   # "mode type id\tpath": fast-import's "M mode id path"
        meta, _, path = e.partition(b"\t")
        mode, _, oid = meta.split(b" ")
        files.append(b"M " + mode + b" " + oid + b" " + _quoted(path) + b"\n")
        found.add(os.fsdecode(path))
    message = b"askbuild: the files the patches name\n"
    small = _fast_import(scratch, [b"commit " + SMALL_REF.encode() + b"\nmark :1\n",
                                   b"committer askbuild <askbuild@localhost> 0 +0000\n",
                                   b"data %d\n" % len(message), message, *files, b"\n"])[":1"]
    gitutil.git(["reset", "-q", "--hard", small], cwd=scratch)
    return small, found


def _graft(scratch: Path, base: str, made: list[str],
           last: dict[bytes, bool]) -> list[str] | None:
    """``made`` (a chain of commits on the small base) again on ``base``, each with the same
    changes, author, committer and message (one ``cat-file``, one ``diff-tree``, one
    ``fast-import``): their ids, or None when a commit is not a plain one.  ``last`` gets
    each path a commit changed: whether the last one has it."""
    if not made:
        return []
    heads = gitutil.plain_commits(scratch, made)
    if heads is None:
        return None
    diffs = gitutil.diff_tree_each(scratch, made, ["-r", "-z", "--no-renames", "--raw",
                                                   "--no-abbrev"], sep=b"\0")
    changes = [_changes(diffs[c], last) for c in made]
    if None in changes:
        return None
    stream = []
    for i, (commit, files) in enumerate(zip(heads, changes, strict=True)):
        author, committer, message = commit.author, commit.committer, commit.message
        stream += [b"commit " + GRAFT_REF.encode() + b"\n", f"mark :{i + 1}\n".encode(),
                   b"author " + author + b"\n", b"committer " + committer + b"\n",
                   f"data {len(message)}\n".encode(), message, b"\n"]
        if i == 0:
            stream.append(f"from {base}\n".encode())
        stream += files
        stream.append(b"\n")
    ids = _fast_import(scratch, stream)
    return [ids[f":{i + 1}"] for i in range(len(made))]


def _fast_import(scratch: Path, stream: list[bytes]) -> dict[str, str]:
    """Run the ``git fast-import`` commands ``stream`` in ``scratch`` (one process, ended by
    ``done``): ``{":mark": object id}`` of the marks it set."""
    marks = scratch / ".git" / "askbuild-marks"
    gitutil.git(["fast-import", "--quiet", f"--export-marks={marks}"], cwd=scratch, text=False,
                input=b"".join([b"feature done\n", *stream, b"done\n"]))
    return dict(ln.split(" ", 1) for ln in marks.read_text().splitlines())


def _quoted(path: bytes) -> bytes:
    """A path as fast-import reads a C-style quoted one."""
    out = path.replace(b"\\", b"\\\\").replace(b'"', b'\\"').replace(b"\n", b"\\n")
    return b'"' + out + b'"'


def _changes(raw: bytes, last: dict[bytes, bool]) -> list[bytes] | None:
    """fast-import's file commands for one commit's ``diff-tree --raw -z`` part (per change
    ``:old new old-id new-id status`` and the path); None for a change it cannot say.
    ``last`` gets each path changed: whether the commit has it."""
    words = raw.split(b"\0")
    cmds: list[bytes] = []
    i = 0
    while i + 1 < len(words) and words[i].startswith(b":"):
        meta, path = words[i][1:].split(b" "), words[i + 1]
        i += 2
        if len(meta) != 5:
            return None
        _, mode, _, new, status = meta
        if status == b"D":
            cmds.append(b"D " + _quoted(path) + b"\n")
        elif status in (b"A", b"M", b"T"):
            cmds.append(b"M " + mode + b" " + new + b" " + _quoted(path) + b"\n")
        else:
            return None
        last[path] = status != b"D"
    if any(words[i:]):
        return None                     # (more than changes: not diff-tree's raw output)
    return cmds
