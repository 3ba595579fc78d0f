"""Child processes that never outlive askbuild.

Every long-running child (build steps, git, mmdebstrap, ...) is started through :func:`popen`
(or :func:`run`): in its own process group, registered here, and with the kernel told to kill
it when askbuild dies (``PR_SET_PDEATHSIG``, so even ``kill -9`` of askbuild stops ``make``).
On SIGTERM/SIGINT the CLI calls :func:`terminate_all`, which sends SIGTERM to every registered
group (make and all its compilers), waits a moment and then SIGKILLs what is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import subprocess

_PR_SET_PDEATHSIG = 1
T = TypeVar("T")
_REGISTRY: set[subprocess.Popen] = set()
_LOCK = threading.Lock()

_LIBC = None     # libc for prctl, loaded by popen before its first fork (not at start-up)


def _load_libc() -> None:
    global _LIBC
    if _LIBC is None:
        import ctypes  # ~3 ms: only when a child is started
        try:
            _LIBC = ctypes.CDLL(None, use_errno=True)
        except OSError:  # pragma: no cover - not Linux
            _LIBC = False


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _child_setup() -> None:
    """Runs in the child between fork and exec: die with the parent."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    if _LIBC:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def popen(args: Sequence[str], *, quick: bool = False, **kw: Any) -> subprocess.Popen:
    """``subprocess.Popen`` in a new process group, registered for :func:`terminate_all`.

    SIGINT/SIGTERM are held back while the child is created and registered: a signal arriving
    inside fork (Python's at-fork handlers) would otherwise be reported as "ignored" and lost,
    and a child created but not yet registered would escape :func:`terminate_all`.  The signal
    is delivered right after.

    ``quick``: a short read-only child (a git query: ``status``, ``cat-file``, ``rev-list``...)
    that leaves nothing half-done when it is killed or outlives askbuild by a moment.  It is
    started without the Python ``preexec_fn`` (which forces a full ``fork`` of askbuild: ~4 ms
    per child, more as askbuild grows) so ``vfork`` can be used (~1 ms): it gets no PDEATHSIG
    (after a ``kill -9`` of askbuild it ends by itself, at the latest at its next write to the
    closed pipe) and signals are not held back around it (a signal in that moment may leave it
    unregistered: it still ends by itself)."""
    import subprocess
    kw.setdefault("start_new_session", True)
    if quick and "preexec_fn" not in kw:
        proc = subprocess.Popen(list(args), **kw)
        with _LOCK:
            _REGISTRY.add(proc)
        return proc
    _load_libc()
    kw.setdefault("preexec_fn", _child_setup)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        with _LOCK:
            proc = subprocess.Popen(list(args), **kw)
            _REGISTRY.add(proc)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return proc


#: A supervised child runs as the background child of this small ``sh``, the leader of the
#: child's own process group.  The sh gets SIGTERM when askbuild dies, even by ``kill -9``
#: (PDEATHSIG), and on SIGTERM stops the whole group: TERM first (make deletes its half-written
#: targets), KILL once the child has exited or after 2 s.  When the child ends normally,
#: processes it left behind in its group are sent TERM.  Without it, a compiler started by make
#: would outlive a killed askbuild (PDEATHSIG only reaches the direct child).
SUPERVISOR = (
    'trap \'trap "" TERM; kill -TERM 0; (sleep 2; kill -KILL 0) & wait "$p"; kill -KILL 0\' '
    'TERM; "$@" & p=$!; wait "$p"; rc=$?; trap "" TERM; kill -TERM 0 2>/dev/null; exit $rc'
)


def _term_with_parent() -> None:
    """Between fork and exec: SIGTERM (which the supervisor traps) when askbuild dies."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    if _LIBC:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def supervised_popen(args: Sequence[str], **kw: Any) -> subprocess.Popen:
    """:func:`popen` of ``args`` under :data:`SUPERVISOR`: for children that start children of
    their own (make, mmdebstrap).  The exit status is the child's (``128 + n`` when a signal
    ``n`` killed it)."""
    return popen(["/bin/sh", "-c", SUPERVISOR, "askbuild-step", *args],
                 preexec_fn=_term_with_parent, **kw)


def forget(proc: subprocess.Popen) -> None:
    with _LOCK:
        _REGISTRY.discard(proc)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Signal the whole process group of a child started by :func:`popen` (its group id is
    its pid); members may outlive the leader (make gone, a compiler still running)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(sig)


def stop(proc: subprocess.Popen) -> None:
    """Kill ``proc``'s whole group, reap it (at most 5 s) and unregister it."""
    kill_group(proc, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(timeout=5)
    forget(proc)


def run(args: Sequence[str], *, input: bytes | str | None = None, timeout: float | None = None,
        check: bool = False, **kw: Any) -> subprocess.CompletedProcess:
    """Like ``subprocess.run``, through :func:`popen` (``quick=`` goes there); on any exception
    (an interrupt included) the child's whole group is killed before the exception goes on."""
    import subprocess
    if input is not None:
        kw["stdin"] = subprocess.PIPE
    capture = kw.pop("capture_output", False)
    if capture:
        kw["stdout"] = subprocess.PIPE
        kw["stderr"] = subprocess.PIPE
    proc = popen(args, **kw)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except BaseException:
        kill_group(proc, signal.SIGKILL)
        with contextlib.suppress(Exception):
            proc.communicate(timeout=5)
        raise
    finally:
        forget(proc)
    code = proc.poll()
    if check and code:
        raise subprocess.CalledProcessError(code, list(args), out, err)
    return subprocess.CompletedProcess(list(args), code if code is not None else -1, out, err)


def terminate_all(grace: float = 1.5) -> None:
    """SIGTERM every registered child group; SIGKILL what still runs after ``grace`` s."""
    import subprocess
    with _LOCK:
        procs = list(_REGISTRY)
    for p in procs:
        kill_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        left = deadline - time.monotonic()
        try:
            p.wait(timeout=max(0.0, left))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        kill_group(p, signal.SIGKILL)
        with contextlib.suppress(Exception):
            p.wait(timeout=2)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (this one always does; another user's counts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def in_background(fn: Callable[..., T], *args: object) -> Callable[[], T]:
    """Start ``fn(*args)`` on a thread (a git query: it runs while this one waits on
    another); the returned function waits for its value (or raises its error).  Only for
    quick git queries (``gitutil.QUICK``): another child gets a parent-death signal, which
    Linux sends when the thread that started it ends."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - raised again by the caller below
            box["error"] = e
    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def result() -> T:
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["value"]
    return result
