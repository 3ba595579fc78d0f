"""A no-op verb answered from a stat of its record, before anything is imported.

A no-op ``askbuild fetch`` / ``patch`` / ``build`` / ``image --no-load`` already decides
"nothing changed" from file stats alone (no git process), but it pays Python's imports of the
engine (~0.1-0.2 s) to get there.  This module is how make and ninja answer a no-op: the first
time a memoizable verb (``@verb(memo=True)`` in tasks.py) runs and changes nothing, it records

* the **key**: the command line, the working directory, the whole environment (but ``_``,
  ``OLDPWD``, ``SHLVL``, ``PWD``), the interpreter, the user, the host name, the number of
  CPUs it may use (the default job budget), and whether stdout/stderr are terminals (with the
  terminal's size);
* the **witnesses**: every file and directory the run looked at, with its stat signature
  (inode, size, mode, mtime and ctime in ns; or "absent"), found by tracing the run:
  ``os.stat``/``os.lstat``/``os.access``/``os.readlink`` (so ``pathlib`` and ``os.path``
  too), every ``open`` (Python's ``open`` audit event), every directory listed
  (``os.listdir``/``os.scandir``, ``DirEntry.stat``), plus askbuild's own source files;
* the **output**: what it printed, in order, on stdout and stderr.

The next run with the same key re-stats the witnesses (a few hundred ``stat`` calls) and, when
every signature is unchanged, prints the recorded output and exits 0 without importing the
engine.  A ctime cannot be set back by anyone but the kernel, so any write to a witness since
the record, ``touch`` included, is seen.

A run is recorded only when it is a pure observation: exit 0, no child process, no socket, no
file written, renamed, removed or chmod-ed (but lock files and their owner notes, declared by
their owner with :func:`bookkeeping`), every witness unchanged between the first look and the
end of the run, and every witness's last change at least :data:`RACY_NS` (0.1 s; 2 s on a file
system with whole-second times) before the run started (a file changed within the file
system's timestamp granularity could change again unseen, as in git's "racily clean" index
entries).  Anything else is simply not recorded: the next run does the work.

A build that changes nothing leaves its manifest as it is (askbuild/manifest.py), so a no-op
``build`` is recorded too.  ``askbuild --list`` is recorded the same way.

Records live in ``<user cache>/askbuild/noop/`` (:func:`askbuild.xdg.user_dir`), one file
per key, written atomically; ``ASKBUILD_NO_MEMO=1`` turns both recording and replay off.  With
``ASKBUILD_MEMO_DEBUG=1`` a run says on stderr whether it replayed, recorded, or why not.

This module imports nothing beyond the interpreter's built-ins (``os``, ``sys``, ``marshal``,
``zlib``) and :mod:`askbuild.xdg` (``os`` only), so that a replay costs a few milliseconds over
``python -c pass``.
"""

from __future__ import annotations

import marshal
import os
import sys
import time
import zlib

from . import xdg

VERSION = 1
# a witness changed this shortly before the run is not trusted: a second change within the
# file system's timestamp granularity could leave the same times (git's "racily clean").
# Linux file systems stamp at the kernel's tick (1-10 ms); a whole-second stamp (ext4 with
# small inodes, some network file systems) means a second-granular one.
RACY_NS = 100_000_000
COARSE_RACY_NS = 2_000_000_000
MAX_WITNESSES = 50_000
MAX_RECORDS = 512               # records kept; the oldest go first
VOLATILE_ENV = frozenset({"_", "OLDPWD", "SHLVL", "PWD"})
ROOT = os.path.dirname(os.path.abspath(__file__))
# the functions a recording run traces, as they are before it wraps them
_REAL = {n: getattr(os, n) for n in ("stat", "lstat", "access", "readlink", "scandir")}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# audit events that make a run impure: it changed something, or asked something not a file
# (os.mkdir, os.remove, os.rmdir and os.rename: Recorder._audit decides those itself)
_IMPURE = ("os.chmod", "os.chown",
           "os.utime", "os.symlink", "os.link", "os.truncate", "os.setxattr",
           "os.removexattr", "os.chflags", "shutil.", "subprocess.", "os.system", "os.exec",
           "os.posix_spawn", "os.spawn", "os.fork", "os.kill", "os.killpg", "socket.",
           "urllib.", "http.", "ftplib.", "os.putenv", "os.unsetenv", "sqlite3.", "ctypes.",
           "tempfile.")


# files a run writes for its own coordination (lock files, their owner notes), not as outputs:
# writing them does not make a run impure (their owners register them: askbuild/runlock.py)
_BOOKKEEPING: set[str] = set()


def bookkeeping(*paths: str | os.PathLike) -> None:
    """Declare ``paths`` coordination files: a recorded run may open them for writing."""
    _BOOKKEEPING.update(os.path.abspath(p) for p in paths)


def enabled() -> bool:
    return os.environ.get("ASKBUILD_NO_MEMO", "") in ("", "0")


def _debug(message: str) -> None:
    if os.environ.get("ASKBUILD_MEMO_DEBUG", "") not in ("", "0"):
        sys.__stderr__.write(f"askbuild memo: {message}\n")
        sys.__stderr__.flush()


def memo_dir() -> str:
    return os.path.join(xdg.user_dir("cache"), "noop")


def _terminal(fd: int) -> tuple:
    try:
        if os.isatty(fd):
            size = os.get_terminal_size(fd)
            return (True, size.columns, size.lines)
    except OSError:
        pass
    return (False, 0, 0)


def key(argv: list[str]) -> tuple:
    """Everything besides files that a verb's output may depend on."""
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k not in VOLATILE_ENV))
    return (VERSION, tuple(argv), os.getcwd(), env, sys.executable, sys.version,
            os.getuid(), os.getgid(), _terminal(1), _terminal(2), os.uname().nodename,
            len(os.sched_getaffinity(0)))


def _path(k: tuple) -> str:
    blob = repr(k).encode("utf-8", "surrogateescape")
    return os.path.join(memo_dir(), f"{zlib.crc32(blob):08x}{zlib.adler32(blob):08x}.memo")


def _sig(st: os.stat_result) -> tuple:
    return (st.st_mode, st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _look(path: str, follow: bool) -> tuple | None:
    """The stat signature of ``path`` now (None: it does not exist; ``("error", errno)``)."""
    try:
        return _sig(_REAL["stat"](path, follow_symlinks=follow))
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    except OSError as e:
        return ("error", e.errno)


def _code_witnesses() -> dict[tuple[str, bool], tuple | None]:
    """askbuild's own sources (and tasks.py next to the package) and the site-packages
    directories: a changed askbuild or dependency never replays an old answer."""
    out: dict[tuple[str, bool], tuple | None] = {}
    for entry in sys.path:          # site-packages: an installed or removed package moves it
        if entry.startswith(sys.prefix) and entry.endswith("-packages"):
            out[(entry, True)] = _look(entry, True)
    tasks = os.path.join(os.path.dirname(ROOT), "tasks.py")
    out[(tasks, True)] = _look(tasks, True)
    stack = [ROOT]
    while stack:
        top = stack.pop()
        out[(top, True)] = _look(top, True)
        with _REAL["scandir"](top) as it:
            for e in it:
                if e.name == "__pycache__":
                    continue
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.name.endswith((".py", ".sh")):
                    out[(e.path, True)] = _look(e.path, True)
    return out


# -- replay -------------------------------------------------------------------------------------

def replayable(argv: list[str]) -> bool:
    """A command line a record can exist for: a verb first (its options after it), or
    ``--list``."""
    return (bool(argv) and not argv[0].startswith("-")) or argv in (["--list"], ["-l"])


def recorded_output(argv: list[str]) -> tuple | None:
    """The recorded output of ``argv`` (``((stream, text), ...)``, stream 1 or 2) when a record
    with this key exists and every witness is unchanged; None otherwise."""
    if not enabled():
        return None
    k = key(argv)
    try:
        with open(_path(k), "rb") as f:
            memo = marshal.load(f)
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if not isinstance(memo, dict) or memo.get("key") != k:
        return None
    for (path, follow), sig in memo["witnesses"]:
        if _look(path, follow) != sig:
            _debug(f"not replayed: {path} changed")
            return None
    _debug(f"replayed ({len(memo['witnesses'])} witnesses unchanged)")
    return memo["output"]


def write_output(output: tuple) -> None:
    """Print a record's output as the run printed it."""
    for stream, text in output:
        out = sys.stdout if stream == 1 else sys.stderr
        out.write(text)
        out.flush()


def replay(argv: list[str]) -> bool:
    """Print the recorded output of ``argv`` and return True when :func:`recorded_output`
    has it; False (nothing printed) otherwise."""
    output = recorded_output(argv)
    if output is None:
        return False
    write_output(output)
    return True


# -- recording ----------------------------------------------------------------------------------

class _Tee:
    """A text stream that passes everything to ``inner`` and keeps what was written."""

    def __init__(self, inner, fd: int, chunks: list) -> None:
        self._inner, self._fd, self._chunks = inner, fd, chunks

    def write(self, s: str) -> int:
        self._chunks.append((self._fd, s))
        return self._inner.write(s)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


class _Entry:
    """A ``DirEntry`` whose ``stat()`` is traced."""

    def __init__(self, entry, trace: Recorder) -> None:
        self._entry, self._trace = entry, trace

    def stat(self, *, follow_symlinks: bool = True):
        st = self._entry.stat(follow_symlinks=follow_symlinks)
        self._trace.saw(self._entry.path, follow_symlinks)
        return st

    def __fspath__(self) -> str:
        return self._entry.path

    def __getattr__(self, name: str):
        return getattr(self._entry, name)


class _Scandir:
    def __init__(self, it, trace: Recorder) -> None:
        self._it, self._trace = it, trace

    def __iter__(self):
        return self

    def __next__(self):
        return _Entry(next(self._it), self._trace)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._it.close()

    def close(self) -> None:
        self._it.close()


class Recorder:
    """Traces one run of a verb (see the module docstring) and writes its record."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = list(argv)
        self.key = key(argv)
        self.start_ns = time.time_ns()
        self.witnesses: dict[tuple[str, bool], tuple | None] = {}
        self.impure: str = ""
        self.chunks: list[tuple[int, str]] = []
        self.active = False
        self._skip = tuple(p + os.sep for p in {sys.prefix, sys.base_prefix, sys.exec_prefix,
                                               sys.pycache_prefix or sys.prefix} if p)

    # what the run looked at
    def saw(self, path, follow: bool = True) -> None:
        if not self.active or self.impure or isinstance(path, int):
            return
        try:
            p = os.fsdecode(path)
        except (TypeError, ValueError):
            return
        p = os.path.join(os.getcwd(), p) if not os.path.isabs(p) else p
        if self._ignored(p):
            return
        k = (p, follow)
        if k not in self.witnesses:
            if len(self.witnesses) >= MAX_WITNESSES:
                self.taint(f"more than {MAX_WITNESSES} files looked at")
                return
            self.witnesses[k] = _look(p, follow)

    def _ignored(self, path: str) -> bool:
        """Python's own files and bytecode, the process's own view of the kernel (``/proc``,
        ``/dev``), and coordination files: never witnesses, and writing them does not make a
        run impure."""
        return (path.startswith(self._skip) or f"{os.sep}__pycache__{os.sep}" in path
                or path.startswith(("/proc/", "/dev/"))
                or os.path.abspath(path) in _BOOKKEEPING)

    def taint(self, why: str) -> None:
        """The run is not a pure observation: it will not be recorded, so stop tracing (a
        real build or patch run then pays nothing more for the recorder)."""
        if self.active and not self.impure:
            self.impure = why
            self._unwrap()

    def _audit(self, event: str, args: tuple) -> None:
        if not self.active or self.impure:
            return
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            writing = (any(c in mode for c in "wax+") if isinstance(mode, str)
                       else bool(isinstance(flags, int) and flags & _WRITE_FLAGS))
            if writing and not isinstance(path, int):   # (an fd: opened, and traced, before)
                name = os.fsdecode(path) if isinstance(path, (str, bytes)) else ""
                if not name or not self._ignored(os.path.abspath(name)):
                    self.taint(f"wrote {name or path!r}")
                return
            self.saw(path)
        elif event in ("os.listdir", "os.scandir"):
            self.saw(args[0] if args and args[0] is not None else ".")
        elif event == "os.mkdir":
            name = os.path.abspath(os.fsdecode(args[0]))
            if not self._ignored(name) and _look(name, True) is None:  # else EEXIST
                self.taint(f"os.mkdir {name}")
        elif event in ("os.remove", "os.rmdir", "os.rename"):
            name = os.path.abspath(os.fsdecode(args[0]))
            if self._ignored(name):
                return
            if event == "os.rename" or _look(name, False) is not None:  # else nothing gone
                self.taint(f"{event} {name}")
        elif event.startswith(_IMPURE):
            self.taint(f"{event} {args[0] if args else ''}")

    def _wrap(self) -> None:
        """Trace ``os.stat``/``lstat``/``access``/``readlink`` (and so ``pathlib`` and
        ``os.path``) and ``DirEntry.stat`` of ``os.scandir`` (and so ``os.walk``, ``glob``)."""
        trace = self

        def traced(fn, follow: bool):
            def call(path, *a, **kw):
                try:
                    return fn(path, *a, **kw)
                finally:
                    if kw.get("dir_fd") is None:
                        trace.saw(path, follow and kw.get("follow_symlinks", True))
            return call

        def scandir(*a):
            return _Scandir(_REAL["scandir"](*a), trace)

        os.stat = traced(_REAL["stat"], True)
        os.lstat = traced(_REAL["lstat"], False)
        os.access = traced(_REAL["access"], True)
        os.readlink = traced(_REAL["readlink"], False)
        os.scandir = scandir

    def __enter__(self) -> Recorder:
        self._wrap()
        sys.addaudithook(self._audit)
        self._streams = (sys.stdout, sys.stderr)
        sys.stdout = _Tee(sys.stdout, 1, self.chunks)
        sys.stderr = _Tee(sys.stderr, 2, self.chunks)
        self.active = True
        return self

    @staticmethod
    def _unwrap() -> None:
        for name, fn in _REAL.items():
            setattr(os, name, fn)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.active = False
        self._unwrap()
        sys.stdout, sys.stderr = self._streams
        if exc_type is not None:
            code = getattr(exc, "code", 1) if exc_type is SystemExit else 1
            if code not in (0, None):
                _debug(f"not recorded: exit {code}")
                return
        self.finish()

    def finish(self) -> None:
        """Write the record if the run was a pure, settled observation."""
        why = self.impure or self._unsettled()
        if why:
            _debug(f"not recorded: {why}")
            return
        witnesses = {**self.witnesses, **_code_witnesses()}
        memo = {"key": self.key, "witnesses": tuple(witnesses.items()),
                "output": tuple(self.chunks)}
        try:
            _write(_path(self.key), marshal.dumps(memo))
        except (OSError, ValueError) as e:
            _debug(f"not recorded: {e}")
            return
        _debug(f"recorded ({len(witnesses)} witnesses)")

    def _unsettled(self) -> str:
        """Why the witnesses cannot be trusted ("" when they can)."""
        for (path, follow), sig in self.witnesses.items():
            if _look(path, follow) != sig:
                return f"{path} changed during the run"
            if sig is None or sig[0] == "error":
                continue
            changed = max(sig[4], sig[5])
            racy = COARSE_RACY_NS if changed % 1_000_000_000 == 0 else RACY_NS
            if changed >= self.start_ns - racy:
                return f"{path} changed less than {racy / 1e9:g} s before the run"
        return ""


def _write(path: str, data: bytes) -> None:
    """Atomically replace ``path``; keep at most :data:`MAX_RECORDS` records."""
    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    names = os.listdir(d)
    if len(names) > MAX_RECORDS:
        aged = []
        for n in names:
            try:
                aged.append((os.stat(os.path.join(d, n)).st_mtime_ns, n))
            except OSError:
                continue
        for _, n in sorted(aged)[:len(names) - MAX_RECORDS]:
            try:
                os.unlink(os.path.join(d, n))
            except OSError:
                pass
