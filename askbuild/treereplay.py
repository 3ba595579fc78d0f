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

:class:`ReplayAlong` does the same replay while the commits to replay are being made (the
dry run without a patch record, whose ``git am`` makes them): each is picked as soon as it
is there, and its patch and its new commit's (loose then, as ``diff-tree`` reads them at
once) are read meanwhile, so what is left once ``git am`` ends is the last pick.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
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
        nothing reads the object before this returns (a killed run's scratch goes whole;
        git asks for an object only once it knows its id, from here)."""
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


#: the helper commits' author and committer: dated after every commit, so git's merge-base
#: walk, by date, meets the common parent at once instead of walking the whole history below
#: it first
_HELPER_WHO = b"askbuild <askbuild@localhost> 9999999999 +0000"


class _Replay:
    """One replay under way: the ``merge-tree`` process, the commits picked so far (:attr:`out`:
    per old commit its new one, or None when it became empty) and the tip they make."""

    def __init__(self, repo: Path, start: str, committer: tuple[str, str],
                 config: list[str], *, loose: bool = False) -> None:
        self.loose = loose              # (the new commits loose at once, else one pack)
        self.start = self.head = start
        self.head_tree = ""
        self.objects: _Objects | None = None
        self.who = tuple(x.encode() for x in committer)
        self.out: list[str | None] = []
        self.buf = bytearray()
        self.merger = _merger(repo, config)

    def ready(self, repo: Path) -> bool:
        """Whether the replay can go on: a SHA-1 repository, the start's tree read, and a
        merger whose answers come one by one (the merge of the start with itself)."""
        if self.merger is None or len(self.start) != 40:
            return False
        try:
            where, self.head_tree = gitutil.out(
                ["rev-parse", "--path-format=absolute", "--git-path", "objects",
                 f"{self.start}^{{tree}}"], cwd=repo).split("\n")
        except (ValueError, gitutil.GitError):
            return False
        self.objects = _Objects(Path(where))
        return len(self.head_tree) == 40 and _merge(
            self.merger, self.buf, self.start, self.start,
            timeout=PROBE_TIMEOUT) == self.head_tree

    def pick(self, old: str, commit: gitutil.PlainCommit) -> bool:
        """Cherry-pick ``old`` (read as ``commit``) onto the tip; False when it conflicts,
        git fails or its author line has no date (the replay is then over)."""
        assert self.merger is not None and self.objects is not None
        if len(old) != 40:
            return False
        # a commit with the tree of the tip whose only parent is the old commit's parent:
        # its merge base with the old commit is that parent, as a cherry-pick's
        helper = self.objects.now(_commit(self.head_tree, commit.parent, _HELPER_WHO,
                                          _HELPER_WHO, b""))
        tree = _merge(self.merger, self.buf, helper, old)
        if tree is None:
            return False                # (a conflict, or git failed)
        if tree == self.head_tree:
            self.out.append(None)
            return True
        date = commit.author.rsplit(b" ", 2)
        if len(date) != 3 or b">" not in date[0]:
            return False
        who = b"%s <%s> %s %s" % (*self.who, date[1], date[2])
        body = _commit(tree, self.head, commit.author, who, commit.message)
        self.head = self.objects.now(body) if self.loose else self.objects.later(body)
        self.head_tree = tree
        self.out.append(self.head)
        return True

    def close(self) -> None:
        """End the merger (again: a no-op)."""
        if self.merger is not None:
            _stop(self.merger)
            self.merger = None

    def finish(self) -> list[str | None]:
        """End the merger, write the new commits; :attr:`out`."""
        self.close()
        if self.objects is not None:
            self.objects.flush()
        return self.out


def replay_trees(repo: Path, start: str, olds: list[str], committer: tuple[str, str],
                 config: list[str]) -> list[str | None] | None:
    """Cherry-pick each of ``olds`` in turn onto ``start`` in ``repo`` (a scratch
    repository: the new commits are written there), as the sequencer does with
    ``--committer-date-is-author-date`` and ``committer`` (name, email); ``config``: the
    ``-c`` options of the sequencer's run.  Returns, per old commit, its new commit or None
    when it became empty (already upstream: dropped); None for all of it when a pick
    conflicts, git fails, a commit is not a plain one or the repository is not SHA-1."""
    if not olds or any(len(c) != 40 for c in olds):
        return None
    try:
        olds_read = gitutil.plain_commits(repo, olds)
    except gitutil.GitError:
        return None
    if olds_read is None:
        return None
    replay = _Replay(repo, start, committer, config)
    try:
        if not replay.ready(repo):
            return None
        for old, commit in zip(olds, olds_read, strict=True):
            if not replay.pick(old, commit):
                return None
    finally:
        replay.close()
    return replay.finish()


#: what :meth:`ReplayAlong.result` says when the replay it made does not stand for the queue
UNKNOWN = object()
#: how often :class:`ReplayAlong` looks for new commits (seconds): ``git am`` makes one in
#: a few milliseconds
FOLLOW_EVERY = 0.002


class ReplayAlong:
    """:func:`replay_trees` of the commits being made in the scratch repository ``repo``
    (from ``base``, its HEAD now) onto ``start``, WHILE they are made: the rebase dry run
    without a patch record applies the old series with ``git am`` first, and the replay of
    each commit (one ``merge-tree`` question) then runs on the other core as soon as the
    commit is there, not after the whole series.

    A thread follows HEAD's reflog (``logs/HEAD``, which git appends a line to at each move
    of HEAD; a scratch keeps it when made with ``reflog=True``:
    :func:`~askbuild.patchqueue.scratch.scratch_worktree`; without a reflog nothing is
    followed and :meth:`result` says so) every :data:`FOLLOW_EVERY` seconds: each move from
    the tip it knows to a new commit is read (one ``cat-file --batch`` for the run) and
    picked.  Any other move (a reset back, another branch) ends the following: the caller
    then replays the queue itself.  :meth:`result` says whether what was replayed is the
    queue's replay.  With ``diff_args``, two ``git [DIFF_CONFIG] diff-tree --stdin ARGS``
    (``diff_env`` their environment) are asked for each old commit and each new one as they
    come (:meth:`old_diffs`, :meth:`new_diffs`; past a conflict the old commits are still
    followed for their patches, and the caller's own new commits can be asked too: so the
    queue's patches take two processes whatever happens).  Used as a context manager: the
    thread and every git process end on the way out, whatever happened.  (A 300-patch dry
    run, one interleaved run of 8 rounds on a busy host: 2.41 s replaying after ``git am``,
    2.36 s replaying along, 1.98 s reading the patches along too, against 1.41 s for the
    ``git am -3`` of the series.)"""

    def __init__(self, repo: Path, base: str, start: str, committer: tuple[str, str],
                 config: list[str], *, diff_args: list[str] | None = None,
                 diff_config: list[str] | None = None,
                 diff_env: dict[str, str] | None = None) -> None:
        self.repo, self.base = repo, base
        self.log = repo / ".git" / "logs" / "HEAD"
        self.pos = 0
        #: the commits followed, in order (picked up to a conflict, only followed past it)
        self.seen: list[str] = []
        self.conflict = False
        self.broken = False             # (nothing followed stands: see result)
        self.vouched = False            # (result gave the replay of the queue)
        self._done = threading.Event()
        self._log_fd: int | None = None
        self._thread = threading.Thread(target=self._follow, daemon=True)
        # (the processes are started here: one started on the thread would get the
        # parent-death signal when the thread ends)
        self.differs: list[_Differ] = []
        self.reader: subprocess.Popen | None = None
        self.replay: _Replay | None = None
        try:
            with contextlib.suppress(FileNotFoundError):
                self.pos = self.log.stat().st_size
            for _ in () if diff_args is None else ("old", "new"):
                self.differs.append(_Differ(repo, diff_config or [], diff_args, diff_env))
            self.reader = procs.popen(["git", *gitutil.SAFE_CONFIG, "cat-file", "--batch"],
                                      quick=True, cwd=repo, env=gitutil.base_env(),
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL)
            self.replay = _Replay(repo, start, committer, config, loose=diff_args is not None)
        except OSError:                 # (a full disk, no process left: nothing follows,
            self.broken = True          # the caller replays the queue itself)

    def __enter__(self) -> ReplayAlong:
        if not self.broken:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._end()
        if self.replay is not None:
            self.replay.close()
        for differ in self.differs:
            differ.close()

    def _end(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None
        reader, self.reader = self.reader, None
        if reader is not None:
            _stop(reader)

    def result(self, olds: list[str]) -> list[str | None] | None | object:
        """Once the last commit of ``olds`` (the queue, as the am's record lists it) is made:
        :func:`replay_trees` of ``olds`` onto ``start`` (the new commits, or None when a
        pick conflicted), or :data:`UNKNOWN` when what was followed is not that queue."""
        self._end()
        if self.broken or not olds or self.seen != olds or self.replay is None:
            return UNKNOWN
        self.vouched = True
        return None if self.conflict else self.replay.finish()

    def old_diffs(self) -> dict[str, bytes] | None:
        """After :meth:`result` vouched for the queue: the ``diff-tree`` (``diff_args``) of
        each old commit, asked as they were made (past a conflict too); None when it was
        not asked or git failed."""
        if not self.vouched or not self.differs:
            return None
        return self.differs[0].answer()

    def new_diffs(self, commits: list[str]) -> dict[str, bytes] | None:
        """The ``diff-tree`` of each of ``commits``, the replay's new commits (made along, or
        after it by the caller: the sequencer's past a conflict, or :func:`replay_trees`'s),
        from the process that read the new commits as they were made (those not asked yet
        are asked now); None when it was not asked or git failed."""
        if not self.differs or self.differs[1].proc is None:
            return None
        differ = self.differs[1]
        asked = set(differ.asked)
        differ.ask([c for c in commits if c not in asked])
        out = differ.answer()
        return out if out is not None and all(c in out for c in commits) else None

    def _follow(self) -> None:
        try:
            if self.replay is None or not self.replay.ready(self.repo):
                self.broken = True
                return
            head, tail = self.base, b""
            while True:
                last = self._done.is_set()
                tail += self._read()
                lines = tail.split(b"\n")
                tail = lines.pop()
                # (the commits of this look, read and their patches asked for in one go:
                # when the follower lags, it catches up with fewer round trips)
                fresh: list[str] = []
                for line in lines:
                    old, new = line[:40].decode("ascii", "replace"), \
                        line[41:81].decode("ascii", "replace")
                    if new == head:
                        continue        # (a reset to where HEAD is)
                    if old != head or not gitutil.is_sha(new):
                        self.broken = True
                        break
                    fresh.append(head := new)
                self.seen += fresh
                if self.differs:
                    self.differs[0].ask(fresh)
                if not self.conflict:   # (past a conflict, only followed: the old patches)
                    self._pick(fresh)
                if last or self.broken:
                    return
                self._done.wait(FOLLOW_EVERY)
        except Exception:               # noqa: BLE001 - the caller replays the queue itself
            self.broken = True

    def _pick(self, fresh: list[str]) -> None:
        """Pick the commits ``fresh`` in turn; their new commits' patches asked for."""
        replay = self.replay
        assert replay is not None
        commits = self._commits(fresh)
        made = []
        for sha, commit in zip(fresh, commits, strict=False):
            if not replay.pick(sha, commit):
                self.conflict = True
                break
            if replay.out[-1]:
                made.append(replay.head)
        if self.differs:
            self.differs[1].ask(made)
        if len(commits) < len(fresh) and not self.conflict:
            self.broken = True          # (not a plain commit)

    def _read(self) -> bytes:
        """What HEAD's reflog got since the last read (opened once it is there; git only
        appends to it)."""
        if self._log_fd is None:
            try:
                self._log_fd = os.open(self.log, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return b""
        chunks = []
        while chunk := os.pread(self._log_fd, 1 << 16, self.pos):
            chunks.append(chunk)
            self.pos += len(chunk)
        return b"".join(chunks)

    def _commits(self, shas: list[str]) -> list[gitutil.PlainCommit]:
        """The commits ``shas`` through the run's ``cat-file --batch`` (asked in one write),
        up to the first that is not a plain commit."""
        if not shas:
            return []
        reader = self.reader
        assert reader is not None and reader.stdin is not None and reader.stdout is not None
        reader.stdin.write("".join(f"{sha}\n" for sha in shas).encode())
        reader.stdin.flush()
        return gitutil.read_plain_commits(reader.stdout, shas)


class _Differ:
    """``git [CONFIG] diff-tree --stdin --always ARGS`` asked commit by commit while they are
    made; its output, written to an unlinked file meanwhile, read once at the end."""

    def __init__(self, repo: Path, config: list[str], args: list[str],
                 env: dict[str, str] | None) -> None:
        self.asked: list[str] = []
        self.failed = False
        self.out = tempfile.TemporaryFile(dir=repo / ".git")
        try:
            self.proc: subprocess.Popen | None = procs.popen(
                ["git", *gitutil.SAFE_CONFIG, *config, "diff-tree", "--stdin", "--always",
                 *args], quick=True, cwd=repo, env=gitutil.base_env(env),
                stdin=subprocess.PIPE, stdout=self.out, stderr=subprocess.DEVNULL)
        except BaseException:
            self.out.close()
            raise

    def ask(self, commits: list[str]) -> None:
        if not commits:
            return
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write("".join(f"{c}\n" for c in commits).encode())
            self.proc.stdin.flush()
        except OSError:
            self.failed = True
        self.asked += commits

    def answer(self) -> dict[str, bytes] | None:
        """Each commit asked, its part of the output; None when git failed."""
        proc = self.proc
        if proc is None:
            return None
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        proc.wait()
        procs.forget(proc)
        self.proc = None
        try:
            if proc.returncode != 0 or self.failed:
                return None
            self.out.seek(0)
            return gitutil.split_diff_tree(self.out.read(), self.asked) if self.asked else {}
        except gitutil.GitError:
            return None
        finally:
            self.out.close()

    def close(self) -> None:
        """End git (killed: its answer is not wanted) and drop the output (again: a no-op)."""
        if self.proc is not None:
            procs.kill_group(self.proc, signal.SIGKILL)
            self.proc.wait()
            procs.forget(self.proc)
            self.proc = None
        self.out.close()


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
    """End ``merger`` (or the follower's ``cat-file``): its input closed, it ends by itself;
    killed if it does not (its group: ``stdbuf`` execs git, nothing else runs in it)."""
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
