"""Running git safely.

All git invocations of askbuild go through :func:`git` (or :func:`out`, :func:`git_progress`),
which:

* passes arguments as a list (never a shell), with ``--`` before user paths/URLs at call sites;
* disables hooks (``core.hooksPath=/dev/null``) and credential/terminal prompts;
* allows only the transport protocols of :mod:`askbuild.urls` (``protocol.allow=never`` plus
  explicit ``always`` for https/http/git/ssh/file), so ``ext::``/``fd::`` die in git too;
* turns a failure into :class:`GitError` carrying the command's stderr.

Commits made by askbuild use a fixed identity and dates (:data:`FIXED_IDENTITY`), so the same
inputs always give the same commit ids.

Why not GitPython (the design named it; issue 13 measured it and dropped the dependency).
Measured with GitPython 3.2.1, Python 3.11, on the 2-core build host (medians; the host was
shared, so absolute numbers vary, the ratios did not):

* import cost: ``import git`` takes 84-131 ms (``python -X importtime``) and runs a
  ``git version`` child at import (``git.refresh()``); ``python -c "import askbuild.cli"``
  went from 0.15-0.18 s to 0.23-0.26 s with it.  Every verb imports gitutil, and the no-op
  verbs are meant to be near-instant.
* per call, 200 ``git rev-parse HEAD`` (best of 3): :func:`out` 6.6 ms;
  ``Git(repo).execute`` 4.4 ms bare, 11.8 ms with the process group and PDEATHSIG that
  askbuild needs (``start_new_session``/``preexec_fn``, the dominant cost either way): no gain.
* what ``Git.execute`` cannot do, each checked on that host:
  - it builds the child's environment as ``os.environ`` updated with ``env=``, so a caller's
    ``GIT_DIR``/``GIT_WORK_TREE``/... cannot be removed (:func:`base_env` removes them): with
    ``GIT_DIR`` set, ``execute(["git", "rev-parse", "--absolute-git-dir"])`` answered the
    foreign repository;
  - an interrupt during ``execute`` leaves git running (a ``git hash-object --stdin`` was
    still alive after the ``KeyboardInterrupt``): it spawns its own ``Popen``, outside
    :mod:`askbuild.procs`, so the child is not killed before the exception goes on, is not
    registered for ``procs.terminate_all`` (SIGTERM of askbuild) and is forked without the
    signal mask that keeps a SIGINT from being lost;
  - stdin is a file object only (``istream``): :func:`git` feeds patches as ``input=``.
* its guards (``Git.check_unsafe_protocols``/``check_unsafe_options``) check the URL and
  options askbuild passes; the config below does more: git itself refuses every transport but
  the allow-list (submodules and redirects included), user refs go through :func:`check_ref`,
  and user paths/URLs come after ``--``.
"""

from __future__ import annotations

import io
import os
import re
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

from . import procs
from .errors import UnsafeInputError

if TYPE_CHECKING:
    import subprocess

SAFE_CONFIG = [
    "-c", "core.hooksPath=/dev/null",
    "-c", "protocol.allow=never",
    "-c", "protocol.https.allow=always",
    "-c", "protocol.http.allow=always",
    "-c", "protocol.git.allow=always",
    "-c", "protocol.ssh.allow=always",
    "-c", "protocol.file.allow=always",
    "-c", "core.askPass=",
    "-c", "credential.interactive=never",
    "-c", "advice.detachedHead=false",
    "-c", "init.defaultBranch=main",
    "-c", "gc.auto=0",
    "-c", "maintenance.auto=false",
    "-c", "core.autocrlf=false",
    "-c", "core.safecrlf=false",
]

FIXED_IDENTITY = {
    "GIT_AUTHOR_NAME": "askbuild",
    "GIT_AUTHOR_EMAIL": "askbuild@localhost",
    "GIT_COMMITTER_NAME": "askbuild",
    "GIT_COMMITTER_EMAIL": "askbuild@localhost",
    "GIT_AUTHOR_DATE": "1970-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "1970-01-01T00:00:00Z",
}

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_ABBREV_RE = re.compile(r"^[0-9a-f]{4,39}$")
_REF_BAD = re.compile(r"(^-)|(\.\.)|([\x00-\x20~^:?*\[\\])|(@\{)|(^/)|(/$)|(\.lock$)|(^@$)")


#: how git says the file system ran full: the errno texts it quotes, and its own words when
#: it cannot write an index or a pack ("sha1 file '...' write error. Out of diskspace")
_NO_SPACE = re.compile(r"No space left on device|Disk quota exceeded|Out of diskspace",
                       re.IGNORECASE)


def says_no_space(text: str) -> bool:
    """Whether git's output ``text`` says the file system ran full."""
    return _NO_SPACE.search(text) is not None


class GitError(Exception):
    """A git command failed; ``stderr`` holds git's own words."""

    def __init__(self, args: Sequence[str], returncode: int, stdout: str, stderr: str):
        self.args_ = list(args)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(f"git {' '.join(args)} failed ({returncode}): {stderr.strip()}")


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for k in list(env):
        # A caller's GIT_DIR / GIT_WORK_TREE etc. must not redirect our commands.
        if k in {"GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
                 "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_CEILING_DIRECTORIES",
                 "GIT_NAMESPACE", "GIT_EXEC_PATH", "GIT_CONFIG_PARAMETERS",
                 "GIT_CONFIG_COUNT"}:
            del env[k]
    env.update({
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "",
        "SSH_ASKPASS": "",
        "GIT_SSH_COMMAND": env.get("GIT_SSH_COMMAND", "ssh -o BatchMode=yes"),
        "GIT_PROTOCOL_FROM_USER": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "LC_ALL": "C",
        "LANG": "C",
    })
    if extra:
        env.update(extra)
    return env


#: git commands that only read (or, like ``update-ref``, change one thing atomically under a
#: lock, or, like ``merge-tree``, only add objects) and end by themselves: started the cheap
#: way (:func:`askbuild.procs.popen` ``quick``).
QUICK = frozenset({"cat-file", "status", "log", "rev-list", "rev-parse", "ls-files", "ls-tree",
                   "symbolic-ref", "show-ref", "for-each-ref", "merge-base", "diff-tree",
                   "update-ref", "var", "version", "merge-tree", "diff-files"})


#: the options that make ``git apply`` only report (unless ``--apply`` is given too)
_APPLY_REPORTS = frozenset({"--numstat", "--stat", "--summary", "--check"})


def _verb(args: Sequence[str]) -> str:
    """The git command of ``args``, after its leading ``-c NAME=VALUE`` pairs."""
    i = 0
    while i + 1 < len(args) and args[i] == "-c":
        i += 2
    return args[i] if i < len(args) else ""


def _quick(args: Sequence[str]) -> bool:
    """Whether ``args`` is a :data:`QUICK` command, or a ``git apply`` that only reports
    (``--numstat``, ``--check``... without ``--apply``)."""
    verb = _verb(args)
    if verb == "apply":
        return "--apply" not in args and not _APPLY_REPORTS.isdisjoint(args)
    return verb in QUICK


def git(
    args: Sequence[str],
    *,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    input: str | bytes | None = None,
    check: bool = True,
    text: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``git <SAFE_CONFIG> args`` and return the completed process (text: UTF-8, a byte
    that is not read as ``os.fsdecode`` reads it, so paths make the round trip).

    Raises :class:`GitError` when ``check`` and git fails.
    """
    import subprocess
    cmd = ["git", *SAFE_CONFIG, *args]
    if input is not None and text and isinstance(input, bytes):
        text = False
    proc = procs.run(
        cmd, cwd=cwd, env=base_env(env), input=input, capture_output=True, text=text,
        quick=_quick(args),
        # (a path is bytes to git: one that is not UTF-8 goes both ways as os.fsdecode and
        # os.fsencode have it)
        **({"errors": "surrogateescape"} if text else {}),
        **({} if input is not None else {"stdin": subprocess.DEVNULL}),
    )
    if check and proc.returncode != 0:
        err, out_ = (v if isinstance(v, str) else v.decode("utf-8", "replace")
                     for v in (proc.stderr, proc.stdout))
        raise GitError(args, proc.returncode, out_, err)
    return proc


def out(args: Sequence[str], **kw) -> str:
    """stdout of a git command, stripped."""
    return git(args, **kw).stdout.strip()


class PlainCommit(NamedTuple):
    """A commit with exactly a tree, one parent, an author and a committer (raw lines: name,
    email, date), and its message bytes."""
    tree: str
    parent: str
    author: bytes
    committer: bytes
    message: bytes


def plain_commits(repo: str | Path, commits: Sequence[str]) -> list[PlainCommit] | None:
    """``commits`` read with one ``git cat-file --batch``; None when one is not a plain
    commit (another header, no parent or several, not a commit)."""
    raw = git(["cat-file", "--batch"], cwd=repo, text=False,
              input="".join(f"{c}\n" for c in commits).encode()).stdout
    out = read_plain_commits(io.BytesIO(raw), commits)
    return out if len(out) == len(commits) else None


def read_plain_commits(stream: BinaryIO, commits: Sequence[str]) -> list[PlainCommit]:
    """The answers of ``git cat-file --batch`` to ``commits``, read from its output
    ``stream``: each a :class:`PlainCommit`, up to the first that is not a plain commit (or
    not the one asked, or cut short)."""
    out: list[PlainCommit] = []
    for c in commits:
        head = stream.readline().split(b" ")
        if len(head) != 3 or head[0].decode() != c or head[1] != b"commit":
            break
        size = int(head[2])
        body = stream.read(size + 1)
        commit = plain_commit(body[:size]) if len(body) == size + 1 else None
        if commit is None:
            break
        out.append(commit)
    return out


def plain_commit(body: bytes) -> PlainCommit | None:
    """The commit object ``body`` as a :class:`PlainCommit`; None when it is not a plain one."""
    headers, _, message = body.partition(b"\n\n")
    fields = [ln.split(b" ", 1) for ln in headers.split(b"\n")]
    if [f[0] for f in fields] != [b"tree", b"parent", b"author", b"committer"] \
            or any(len(f) != 2 for f in fields):
        return None
    return PlainCommit(fields[0][1].decode(), fields[1][1].decode(), fields[2][1],
                       fields[3][1], message)


def diff_tree_each(repo: str | Path, commits: Sequence[str], args: Sequence[str], *,
                   sep: bytes = b"\n", config: Sequence[str] = (),
                   env: dict[str, str] | None = None) -> dict[str, bytes]:
    """``git [CONFIG] diff-tree --stdin --always ARGS`` for ``commits`` (full ids, each
    against its parent) in ONE process, split back per commit: git prints each commit's id
    and ``sep`` (``\\0`` with ``-z``) before its part."""
    raw = git([*config, "diff-tree", "--stdin", "--always", *args], cwd=repo, text=False,
              input="".join(f"{c}\n" for c in commits).encode(), env=env).stdout
    return split_diff_tree(raw, commits, sep)


def split_diff_tree(raw: bytes, commits: Sequence[str], sep: bytes = b"\n") -> dict[str, bytes]:
    """The output ``raw`` of ``git diff-tree --stdin --always`` for ``commits``, per commit
    (:func:`diff_tree_each`)."""
    out: dict[str, bytes] = {}
    pos = 0
    for i, c in enumerate(commits):
        head = c.encode() + sep
        if raw[pos:pos + len(head)] != head:
            raise GitError(["diff-tree", "--stdin"], 0, "", f"unexpected output at {c}")
        pos += len(head)
        nxt = raw.find(sep + commits[i + 1].encode() + sep, pos - 1) \
            if i + 1 < len(commits) else len(raw) - 1
        end = nxt + 1 if nxt >= 0 else len(raw)
        out[c], pos = raw[pos:end], end
    return out


def is_sha(value: str) -> bool:
    return bool(_SHA_RE.match(value or ""))


def is_abbrev(value: str) -> bool:
    """Whether ``value`` can be an abbreviated commit SHA (4 to 39 lower-case hex digits,
    git's own minimum).  A tag or branch of that name, if there is one, takes precedence."""
    return bool(_ABBREV_RE.match(value or ""))


def commits_with_prefix(repo: str | Path, prefix: str) -> list[str]:
    """The full SHAs of the commits in ``repo`` whose id starts with ``prefix`` (an
    :func:`is_abbrev` value), sorted; objects of other types do not count."""
    if not is_abbrev(prefix):
        return []
    found = git(["rev-parse", f"--disambiguate={prefix}"], cwd=repo, check=False).stdout.split()
    if not found:
        return []
    listing = git(["cat-file", "--batch-check=%(objectname) %(objecttype)"], cwd=repo,
                  input="".join(f"{sha}\n" for sha in found), check=False).stdout
    return sorted(sha for sha, _, kind in (line.partition(" ") for line in listing.splitlines())
                  if kind == "commit")


def check_ref(ref: str, *, what: str) -> str:
    """Validate a user-supplied ref (tag/branch/sha) so it can never act as a git option."""
    if not isinstance(ref, str) or not ref or _REF_BAD.search(ref) or ref.endswith("."):
        raise UnsafeInputError(
            f"{what}: {ref!r} is not a valid git ref",
            fix="use a tag, branch name or full commit SHA (no leading '-', no spaces, no '..')",
        )
    return ref


_PROGRESS_RE = re.compile(r"^(?P<phase>[A-Za-z ]+):\s+"
                          r"(?:(?P<pct>\d+)%\s+\((?P<done>\d+)/(?P<total>\d+)\)|(?P<count>\d+))")


def git_progress(
    args: Sequence[str],
    *,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    on_progress=None,
) -> subprocess.CompletedProcess:
    """Like :func:`git` (same safety settings) for long commands run with ``--progress``:
    git's stderr is read as it comes and each progress line (``Receiving objects:  45%
    (450/1000)``) is passed to ``on_progress(phase, done, total)`` (``total`` is ``None`` when
    git does not know it).  Raises :class:`GitError` on failure, with the full stderr."""
    import subprocess
    cmd = ["git", *SAFE_CONFIG, *args]
    proc = procs.popen(cmd, cwd=cwd, env=base_env(env), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stderr is not None and proc.stdout is not None
    try:
        err_lines: list[str] = []
        buf = b""
        while True:
            chunk = proc.stderr.read1(4096)
            if not chunk:
                break
            buf += chunk
            *parts, buf = re.split(rb"[\r\n]", buf)
            for raw in parts:
                line = raw.decode("utf-8", "replace")
                if not line:
                    continue
                m = _PROGRESS_RE.match(line.removeprefix("remote: "))
                if m and on_progress is not None:
                    if m.group("total"):
                        on_progress(m.group("phase"), int(m.group("done")),
                                    int(m.group("total")))
                    else:
                        on_progress(m.group("phase"), int(m.group("count")), None)
                if not m:
                    err_lines.append(line)
        if buf:
            err_lines.append(buf.decode("utf-8", "replace"))
        stdout = proc.stdout.read().decode("utf-8", "replace")
        code = proc.wait()
    except BaseException:
        procs.kill_group(proc, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        procs.forget(proc)
    stderr = "\n".join(err_lines)
    if code != 0:
        raise GitError(args, code, stdout, stderr)
    return subprocess.CompletedProcess(cmd, code, stdout, stderr)
