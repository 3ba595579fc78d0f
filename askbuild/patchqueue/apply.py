"""Applying patches: one patch as commit(s), and a source's whole queue.

``git am --3way`` for ``git format-patch`` mails, ``git apply`` (then ``--3way``) plus a commit
named after the file for plain diffs.  Identities and dates are fixed (taken from the mail, else
:data:`askbuild.gitutil.FIXED_IDENTITY`), so identical inputs give identical commit ids.  CR
bytes are kept (``--keep-cr``, no autocrlf).
"""

from __future__ import annotations

import io
import os
import re
import shlex
from pathlib import Path
from typing import NamedTuple

from .. import gitutil
from ..errors import PatchFailed
from ..gitutil import FIXED_IDENTITY
from ..refs import PATCHED
from ..report import Report
from ..settings import Settings
from .inputs import PatchInput
from .record import STATE_SCHEMA
from .reflog import am_commits
from .worktree import REPRO, NoSpaceLeft, git_errors, no_space, no_space_error

PATCH_COLUMNS = ["source", "layer", "patch", "status", "commit", "detail"]
#: Whether :func:`apply_queue` applies runs of mails with one ``git am`` when the caller does
#: not say (``inv patch`` on a work tree; the scratch-tree callers, ``inv patch --check`` and the
#: rebase dry run, pass ``batch=True``).  See docs/benchmarks.md.
BATCH = True


_HEADER_RE = re.compile(rb"^[A-Za-z0-9][A-Za-z0-9-]*:")
# git am's own line when it falls back to the 3-way merge (not a subject saying "3-way merge")
_THREE_WAY = re.compile(r"(?m)^(?!Applying: ).*3-way merge")


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


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _ident_env() -> dict[str, str]:
    """Every ``git am`` (also ``--abort`` / ``--quit``, which refuse to run on a machine with no
    user.name / user.email configured, as a fresh CI runner is) runs with the fixed identity."""
    return dict(FIXED_IDENTITY)


class Applied(NamedTuple):
    commits: list[str]
    method: str             # "applied" | "3way"


def _hunk_failures(tree: Path, p: PatchInput) -> list[str]:
    """Which files / hunks of ``p`` do not apply to the tree's HEAD (for messages)."""
    try:
        text = p.data.decode("latin-1")
        from unidiff import PatchSet  # (only when a patch is read)
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


def git_error_lines(stderr: str) -> list[str]:
    keep = []
    for ln in stderr.splitlines():
        ln = ln.strip()
        if ln.startswith(("error:", "CONFLICT", "fatal:")) and "Did you hand edit" not in ln:
            keep.append(ln)
    return keep[:12]


def command(settings: Settings | None, verb: str, *words: str) -> str:
    """The command to print for the user: :meth:`Settings.command` (it carries the run's
    options) when the caller passed its settings."""
    return settings.command(verb, *words) if settings else shlex.join(["inv", verb, *words])


def apply_patch(tree: Path, p: PatchInput, *, index: int, total: int, source: str,
                before: str | None = None, settings: Settings | None = None) -> Applied:
    """Apply one patch as commit(s) on the current HEAD (``before``, when the caller knows it),
    or raise PatchFailed with the tree back at the commit it started from (NoSpaceLeft when
    git ran out of space: then the tree may be left half-done).  ``settings``: the run's, so
    the commands the error prints carry its options."""
    what = f"patch {index} of {total} of {source} ({p.label})"
    with git_errors(what, tree):
        return _apply_patch(tree, p, index=index, total=total, source=source, before=before,
                            what=what, settings=settings)


def _apply_patch(tree: Path, p: PatchInput, *, index: int, total: int, source: str,
                 before: str | None, what: str, settings: Settings | None) -> Applied:
    before = before or gitutil.out(["rev-parse", "HEAD"], cwd=tree)
    applied, err = (_apply_mail if is_mail(p.data) else _apply_diff)(tree, p, before)
    if applied is not None:
        return applied
    gitutil.git(["reset", "-q", "--hard", before], cwd=tree, check=False)
    if no_space(err):       # not the patch's fault: never "refresh the patch"
        raise no_space_error(what, tree, "\n".join(git_error_lines(err)) or err)
    raise _did_not_apply(tree, p, err, index=index, total=total, source=source, before=before,
                         settings=settings)


def git_am(tree: Path, data: bytes, strip: int, *, three_way: bool = True) -> tuple[bool, str]:
    """``git am --3way`` (``three_way=False``: ``--no-3way``, a patch that does not apply as
    it is stops the am) the mail(s) ``data`` onto the HEAD of ``tree`` (fixed identities, CR
    bytes kept, the user's git config ignored): (applied, git's output).  A failed am is left
    in progress."""
    proc = gitutil.git([*REPRO, "am", "--3way" if three_way else "--no-3way", "--keep-cr",
                        "--keep-non-patch", "--no-scissors", "--committer-date-is-author-date",
                        "--no-message-id", "--whitespace=nowarn", "--quoted-cr=nowarn",
                        f"-p{strip}"],
                       cwd=tree, env=_ident_env(), input=data, check=False)
    return proc.returncode == 0, _text(proc.stdout) + _text(proc.stderr)


def _apply_mail(tree: Path, p: PatchInput, before: str) -> tuple[Applied | None, str]:
    """A mail with ``git am --3way``: its commit(s), or None and git's output."""
    ok, out = git_am(tree, _ensure_mail_headers(p.data), p.strip)
    if ok:
        commits = gitutil.out(["rev-list", "--reverse", f"{before}..HEAD"], cwd=tree).split()
        return Applied(commits, "3way" if _THREE_WAY.search(out) else "applied"), out
    gitutil.git(["am", "--abort"], cwd=tree, env=_ident_env(), check=False)
    return None, out


def _apply_diff(tree: Path, p: PatchInput, before: str) -> tuple[Applied | None, str]:
    """A plain diff with ``git apply`` (then ``--3way``) and a commit named after the file:
    that commit, or None and git's output."""
    proc = gitutil.git(["apply", "--index", f"-p{p.strip}", "--whitespace=nowarn", "-"],
                       cwd=tree, input=p.data, check=False)
    method = "applied"
    err = _text(proc.stderr)
    if proc.returncode != 0 and not no_space(err):
        proc = gitutil.git(["apply", "--3way", f"-p{p.strip}", "--whitespace=nowarn", "-"],
                           cwd=tree, input=p.data, check=False)
        method = "3way"
        err += _text(proc.stderr)
    if proc.returncode != 0:
        return None, err
    gitutil.git([*REPRO, "commit", "-q", "--no-verify", "--allow-empty", "-m", p.name],
                cwd=tree, env=_ident_env())
    return Applied([gitutil.out(["rev-parse", "HEAD"], cwd=tree)], method), err


def touched_paths(tree: Path, inputs: list[PatchInput]) -> set[str] | None:
    """Every path the patches ``inputs`` name (both sides of a rename or copy), as git's own
    patch parser reads them with each patch's strip level: ``git apply --numstat -z`` says
    the new side and, when a patch may rename or copy a file (a ``rename from``, ``rename
    old`` or ``copy from`` line: the only patches whose old side has another name), with
    ``-R`` the old one (one or two processes per strip level, run in ``tree``, nothing
    applied).  None when git cannot read them all (the caller then takes
    the whole tree).  A mail's text is read as it is: a transfer-encoded one names no path
    here, and what ``git am`` then touches outside the set fails the sparse attempt (see
    :func:`~.scratch.scratch_worktree`)."""
    by_strip: dict[int, list[bytes]] = {}
    for p in inputs:
        by_strip.setdefault(p.strip, []).append(p.data if p.data.endswith(b"\n")
                                                 else p.data + b"\n")
    paths: set[str] = set()
    for strip, datas in by_strip.items():
        data = b"".join(datas)
        renames = any(h in data for h in (b"\nrename from ", b"\nrename old ", b"\ncopy from "))
        for side in ([], ["-R"]) if renames else ([],):
            proc = gitutil.git(["apply", *side, "--numstat", "-z", f"-p{strip}", "-"],
                               cwd=tree, input=data, check=False)
            if proc.returncode != 0:
                return None
            for line in proc.stdout.split(b"\0"):
                if line:
                    fields = line.split(b"\t", 2)
                    if len(fields) != 3 or not fields[2]:
                        return None
                    paths.add(os.fsdecode(fields[2]))
    return paths


def _did_not_apply(tree: Path, p: PatchInput, err: str, *, index: int, total: int,
                   source: str, before: str, settings: Settings | None) -> PatchFailed:
    """The message for a patch that does not apply: series, file, failing hunks, git's words
    and how to refresh it."""
    hunks = _hunk_failures(tree, p)
    lines = [f"patch {index} of {total} of {source} did not apply: {p.name}",
             f"  series: {p.layer.id} ({p.layer.kind} layer)",
             f"  patch file: {p.label}"]
    lines += [f"  failed: {h}" for h in hunks]
    lines += [f"  git: {e}" for e in git_error_lines(err)]
    lines.append(f"  the patches before it apply cleanly (up to {before[:12]}); nothing of "
                 "this patch was applied")
    fix = ("refresh the patch for the current base: "
           f"`{command(settings, 'patches.edit', p.layer.dir)}` and resolve it with git, then "
           f"`{command(settings, 'patches.export', p.layer.dir)}`"
           if p.layer.kind == "local" else
           f"the vendor series of {p.layer.provider} does not fit {source}'s base: pin "
           f"matching releases in the sources file")
    return PatchFailed("\n".join(lines), fix=fix)


def as_mbox(p: PatchInput) -> bytes:
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


def _single_message(p: PatchInput) -> bool:
    """Whether ``p`` is one mail that :func:`as_mbox` passes to ``git am`` unchanged but for a
    leading ``From `` line: it can join a run and gives exactly one commit."""
    data = p.data
    return data.endswith(b"\n") and is_mail(data) and b"\nFrom " not in data


def _run_at(inputs: list[PatchInput], i: int) -> list[PatchInput]:
    """The longest run of patches from ``i`` on that one ``git am`` can apply together: single
    mails with the same strip level."""
    run: list[PatchInput] = []
    for p in inputs[i:]:
        if not _single_message(p) or (run and p.strip != run[0].strip):
            break
        run.append(p)
    return run


def apply_run(tree: Path, run: list[PatchInput], before: str, what: str) -> list[Applied]:
    """Apply the single mails ``run`` onto ``before`` (the HEAD of ``tree``) with ONE
    ``git am --no-3way``, and read the commits from HEAD's reflog (:func:`~.reflog.am_commits`;
    ``rev-list`` when it cannot say): one :class:`Applied`
    ("applied", one commit) per leading patch that applies as it is, exactly the commit
    ``git am --3way`` of that patch alone makes (am tries the plain apply first and falls back
    to the 3-way merge only when it fails).  The am stops at the first patch that does not
    apply as it is: HEAD is left on the last one that did, no am in progress, and the list is
    shorter than ``run`` (the caller applies that patch alone, with the 3-way fallback and the
    per-patch message).  Nothing here moves a branch: the caller's journal owns the tree.
    Raises :class:`NoSpaceLeft` (naming ``what``) when git ran out of space."""
    ok, out = git_am(tree, b"".join(as_mbox(p) for p in run), run[0].strip, three_way=False)
    if not ok:
        gitutil.git(["am", "--quit"], cwd=tree, env=_ident_env(), check=False)
        gitutil.git(["reset", "-q", "--hard"], cwd=tree, check=False)
        if no_space(out):
            raise no_space_error(what, tree, "\n".join(git_error_lines(out)) or out)
    commits = am_commits(tree, before, len(run)) if ok else \
        gitutil.out(["rev-list", "--reverse", f"{before}..HEAD", "--"], cwd=tree).split()
    if len(commits) > len(run) or (ok and len(commits) != len(run)):
        # (not one commit per mail: never guess which commit is whose)
        gitutil.git(["reset", "-q", "--hard", before], cwd=tree)
        return []
    return [Applied([c], "applied") for c in commits]


class _Queue:
    """The record of a queue being applied: patches, layers (start/end commits), report rows."""

    def __init__(self, base: str, source: str, report: Report | None) -> None:
        self.base = self.head = base
        self.source, self.report = source, report
        self.patches: list[dict] = []
        self.layers: list[dict] = []

    def enter(self, p: PatchInput) -> None:
        """Start ``p``'s layer when it is not the current one."""
        if not self.layers or self.layers[-1]["id"] != p.layer.id:
            if self.layers:
                self.layers[-1]["end"] = self.head
            self.layers.append({"id": p.layer.id, "kind": p.layer.kind, "dir": p.layer.dir,
                                "provider": p.layer.provider, "start": self.head,
                                "end": self.head})

    def applied(self, p: PatchInput, res: Applied) -> None:
        self.enter(p)
        if res.commits:
            self.head = res.commits[-1]
        self.patches.append({"layer": p.layer.id, "kind": p.layer.kind, "file": p.name,
                             "strip": p.strip, "sha256": p.sha256, "commits": res.commits})
        if self.report is not None:
            self.report.add(source=self.source, layer=p.layer.id, kind=p.layer.kind,
                            patch=p.name, status=res.method,
                            commit=res.commits[-1] if res.commits else None,
                            detail="3-way merge" if res.method == "3way" else "")

    def failed(self, e: PatchFailed, p: PatchInput, rest: list[PatchInput]) -> None:
        self.enter(p)
        space = isinstance(e, NoSpaceLeft)
        if not space:       # (a full disk is no failing point to edit from)
            e.partial = {"layer": p.layer.id, "layer_start": self.layers[-1]["start"],
                         "applied": self.patches, "index": len(self.patches),
                         "head": self.head}
        if self.report is None:
            return
        self.report.add(source=self.source, layer=p.layer.id, kind=p.layer.kind, patch=p.name,
                        status="failed", commit=None,
                        detail="no space left on device" if space else "did not apply")
        for q in rest:
            self.report.add(source=self.source, layer=q.layer.id, kind=q.layer.kind,
                            patch=q.name, status="pending", commit=None, detail="")

    def result(self) -> dict:
        if self.layers:
            self.layers[-1]["end"] = self.head
        return {"schema": STATE_SCHEMA, "source": self.source, "base": self.base,
                "head": self.head, "layers": self.layers, "patches": self.patches}


def apply_queue(tree: Path, base: str, inputs: list[PatchInput], *, source: str,
                report: Report | None = None, branch: str | None = PATCHED,
                settings: Settings | None = None, batch: bool | None = None,
                detached_at: str | None = None) -> dict:
    """Rebuild ``branch`` (detached HEAD when None) from ``base`` with ``inputs`` and return
    the state record (not written).  Raises PatchFailed at the first failing patch (with
    ``partial``: what applied before it, and ``head``, the last good commit).

    With ``batch`` (default :data:`BATCH`), runs of single-mail patches go through one
    ``git am`` each (:func:`apply_run`); the patch a run stops at, and every other patch, is
    applied alone (:func:`apply_patch`), so the commits, rows and messages are those of one
    patch at a time (tests/test_patch_batch.py).  Nothing here moves ``askbuild/patched`` or
    writes a record: the caller does that once the whole queue applied, and until then its run
    journal owns the tree (a killed run is undone by the next one).

    ``detached_at``: the commit the caller just saw HEAD detached at, in a tree with no
    uncommitted change; when it is ``base`` (and ``branch`` is None), no checkout is needed."""
    batch = BATCH if batch is None else batch
    if branch:
        gitutil.git(["checkout", "-q", "-B", branch, base], cwd=tree)
    elif detached_at != base:
        gitutil.git(["checkout", "-q", "--detach", base], cwd=tree)
    q = _Queue(base, source, report)
    total = len(inputs)
    i = 0
    while i < total:
        run = _run_at(inputs, i) if batch else []
        if len(run) > 1:
            what = f"patches {i + 1} to {i + len(run)} of {total} of {source}"
            with git_errors(what, tree):
                done = apply_run(tree, run, q.head, what)
            for p, res in zip(run, done, strict=False):
                q.applied(p, res)
            i += len(done)
            if len(done) == len(run):
                continue
        p = inputs[i]
        try:
            res = apply_patch(tree, p, index=i + 1, total=total, source=source, before=q.head,
                              settings=settings)
        except PatchFailed as e:
            q.failed(e, p, inputs[i + 1:])
            raise
        q.applied(p, res)
        i += 1
    return q.result()
