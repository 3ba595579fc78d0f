"""Replay commits onto a new base as trees, with no work tree (the rebase dry run's replay).

A ``cherry-pick`` of a commit C (parent P) onto H is git's ort merge of P's, H's and C's
trees.  ``git merge-tree --write-tree X C`` (git 2.38+) is the same ort merge with the
merge base of X and C, so with X a commit that has H's tree and P as its only parent the
base is P and the result is the cherry-pick's tree, computed from objects alone: no
checkout of the scratch tree, no index (git 2.39 has no ``--merge-base`` to say it
directly).  The new commit is then made as the sequencer makes it (C's author and message,
askbuild's committer dated like the author), so its id is the one ``git rebase -i``
gives; tests/test_rebase_batch.py and tests/test_sparse_scratch.py compare them.

Only clean picks and picks that became empty are answered here: at the first conflict
:func:`replay_trees` gives up (None) and the caller runs the sequencer, whose messages the
report quotes.  The objects go into the scratch repository (thrown away after the run; SHA-1
repositories only: otherwise None as well): each helper commit a loose object, as
``merge-tree`` must read it at once, and the new commits, which it never reads, one pack at
the end (:mod:`askbuild.packfile`: a 300-patch dry run took 0.62 s of CPU with a loose file
for every commit, 0.47 s so).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import shutil
import signal
import subprocess
import time
import zlib
from pathlib import Path

from . import gitutil, packfile, procs

#: how long one merge may take before the replay gives up (and the sequencer runs): a
#: kernel's takes tens of milliseconds; a ``merge-tree`` whose answers do not come one by
#: one (see :func:`_merger`) would otherwise never answer
MERGE_TIMEOUT = 30.0
#: how long the first question, the merge of the start with itself, may take: answered at
#: once where ``stdbuf`` works; where it does not (its preload refused, a stand-in that does
#: not unbuffer), the answer stays in git's buffer and the sequencer runs after this, not
#: after :data:`MERGE_TIMEOUT`
PROBE_TIMEOUT = 5.0


class _Objects:
    """The object directory ``objects`` of a scratch repository as the replay writes to it:
    :meth:`now` a loose object, :meth:`later` a commit kept for the one pack :meth:`flush`
    writes."""

    def __init__(self, objects: Path):
        self.top = os.fspath(objects)
        self.dirs: set[str] = set()
        self.kept: list[tuple[bytes, bytes]] = []

    def now(self, body: bytes) -> str:
        """Write the commit ``body`` as a loose object (zlib data named after its SHA-1);
        its id.  Written in place, not renamed into it: the repository is the run's own and
        nothing reads the object before this returns (a killed run's scratch goes whole)."""
        data = b"commit %d\0%s" % (len(body), body)
        oid = hashlib.sha1(data).hexdigest()
        fan = f"{self.top}/{oid[:2]}"
        if fan not in self.dirs:
            os.makedirs(fan, exist_ok=True)
            self.dirs.add(fan)
        path = f"{fan}/{oid[2:]}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        except FileExistsError:
            return oid
        try:
            view = memoryview(zlib.compress(data, 1))
            while view:
                view = view[os.write(fd, view):]
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        return oid

    def later(self, body: bytes) -> str:
        """The id of the commit ``body``, written by :meth:`flush`."""
        sha = hashlib.sha1(b"commit %d\0%s" % (len(body), body)).digest()
        self.kept.append((sha, body))
        return sha.hex()

    def flush(self) -> None:
        """Write the commits :meth:`later` kept as one pack (not synced: a scratch)."""
        if not self.kept:
            return
        pack_dir = Path(self.top) / "pack"
        pack_dir.mkdir(exist_ok=True)
        writer = packfile.PackWriter(pack_dir)
        try:
            for sha, body in self.kept:
                writer.add(sha, packfile.entry(packfile.COMMIT, body))
            writer.finish(durable=False)
        except BaseException:
            writer.abort()
            raise
        self.kept.clear()


def _commit(tree: str, parent: str, author: bytes, committer: bytes, message: bytes) -> bytes:
    return b"tree %s\nparent %s\nauthor %s\ncommitter %s\n\n%s" % (
        tree.encode(), parent.encode(), author, committer, message)


def replay_trees(repo: Path, start: str, olds: list[str], committer: tuple[str, str],
                 config: list[str]) -> list[str | None] | None:
    """Cherry-pick each of ``olds`` in turn onto ``start`` in ``repo`` (a scratch
    repository: the new commits are written there), as the sequencer does with
    ``--committer-date-is-author-date`` and ``committer`` (name, email); ``config``: the
    ``-c`` options of the sequencer's run.  Returns, per old commit, its new commit or None
    when it became empty (already upstream: dropped); None for all of it when a pick
    conflicts, git fails, a commit is not a plain one or the repository is not SHA-1."""
    if not olds or any(len(c) != 40 for c in [start, *olds]):
        return None
    try:
        olds_read = gitutil.plain_commits(repo, olds)
        where, head_tree = gitutil.out(["rev-parse", "--path-format=absolute", "--git-path",
                                        "objects", f"{start}^{{tree}}"], cwd=repo).split("\n")
    except (ValueError, gitutil.GitError):
        return None
    if olds_read is None:
        return None
    objects = _Objects(Path(where))
    head = start
    name, email = committer
    # (dated after every commit: git's merge-base walk, by date, meets the common parent
    # at once instead of walking the whole history below it first)
    helper_who = b"askbuild <askbuild@localhost> 9999999999 +0000"
    merger = _merger(repo, config)
    if merger is None:
        return None
    out: list[str | None] = []
    try:
        buf = bytearray()
        if _merge(merger, buf, start, start, timeout=PROBE_TIMEOUT) != head_tree:
            return None                 # (answers held back, or git failed)
        for old, (_, parent, author, _, message) in zip(olds, olds_read, strict=True):
            # a commit with the tree of HEAD whose only parent is the old commit's parent:
            # its merge base with the old commit is that parent, as a cherry-pick's
            helper = objects.now(_commit(head_tree, parent, helper_who, helper_who, b""))
            tree = _merge(merger, buf, helper, old)
            if tree is None:
                return None             # (a conflict, or git failed)
            if tree == head_tree:
                out.append(None)
                continue
            date = author.rsplit(b" ", 2)
            if len(date) != 3 or b">" not in date[0]:
                return None
            who = b"%s <%s> %s %s" % (name.encode(), email.encode(), date[1], date[2])
            head = objects.later(_commit(tree, head, author, who, message))
            head_tree = tree
            out.append(head)
    finally:
        _stop(merger)
    objects.flush()
    return out


def _merger(repo: Path, config: list[str]) -> subprocess.Popen | None:
    """``git merge-tree --write-tree --stdin -z`` in ``repo``, answering each merge as soon
    as it is asked: git 2.39 buffers that output until it ends, so it runs under
    ``stdbuf -o0`` (coreutils); None without ``stdbuf``."""
    stdbuf = shutil.which("stdbuf")
    if stdbuf is None:
        return None
    return procs.popen([stdbuf, "-o0", "git", *gitutil.SAFE_CONFIG, *config, "merge-tree",
                        "--write-tree", "--stdin", "-z", "--no-messages"],
                       cwd=repo, env=gitutil.base_env(), stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def _merge(merger: subprocess.Popen, buf: bytearray, ours: str, theirs: str, *,
           timeout: float | None = None) -> str | None:
    """Ask ``merger`` for the merge of ``ours`` and ``theirs``: the tree of a clean merge,
    None for a conflict, a failure or no answer within ``timeout`` (default
    :data:`MERGE_TIMEOUT`).  A clean answer is ``1 NUL tree NUL NUL``; anything else ends
    the replay."""
    assert merger.stdin is not None and merger.stdout is not None
    try:
        merger.stdin.write(f"{ours} {theirs}\n".encode())
        merger.stdin.flush()
    except OSError:
        return None
    fd = merger.stdout.fileno()
    deadline = time.monotonic() + (MERGE_TIMEOUT if timeout is None else timeout)
    while len(buf) < 44:
        if len(buf) >= 2 and buf[:2] != b"1\0":
            return None
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        buf += chunk
    if buf[:2] != b"1\0" or buf[42:44] != b"\0\0":
        return None
    tree = bytes(buf[2:42]).decode("ascii", "replace")
    del buf[:44]
    return tree


def _stop(merger: subprocess.Popen) -> None:
    """End ``merger``: its input closed, it ends by itself; killed if it does not (its
    group: ``stdbuf`` execs git, nothing else runs in it)."""
    try:
        for f in (merger.stdin, merger.stdout):
            with contextlib.suppress(OSError):
                if f is not None:
                    f.close()
        try:
            merger.wait(timeout=5)
        except subprocess.TimeoutExpired:
            procs.kill_group(merger, signal.SIGKILL)
            merger.wait()
    finally:
        procs.forget(merger)
