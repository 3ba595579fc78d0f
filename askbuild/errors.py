"""The one exception hierarchy of askbuild.

Every failure a user can act on is an :class:`AskbuildError`.  The CLI layer prints
``str(error)`` (a message plus, where known, the fix) and exits with ``error.exit_code``:

* :class:`UserError` (exit 1): bad input, a missing tool, an unlocked source, an
  unreachable URL... the user fixes something and runs again.
* :class:`StepFailed` (exit 2): a build or patch step ran and failed.

A traceback is never the message; ``--debug`` shows it in addition.
"""

from __future__ import annotations

import errno
from pathlib import Path


class AskbuildError(Exception):
    """Base class. ``message`` says what is wrong, ``fix`` what to do about it."""

    exit_code = 1

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    @property
    def headline(self) -> str:
        """The first line of the message (the class name when there is no message)."""
        return self.message.strip().splitlines()[0] if self.message.strip() else \
            type(self).__name__

    def __str__(self) -> str:
        if self.fix:
            return f"{self.message}\n  fix: {self.fix}"
        return self.message


class UserError(AskbuildError):
    """Something the user can fix: input, environment, configuration (exit 1)."""

    exit_code = 1


class ConfigError(UserError):
    """A recipes/sources/config file or an option is invalid (names the file and key)."""


class MissingToolError(UserError):
    """A host tool or package is missing."""


class UnsafeInputError(UserError):
    """Refused for safety: a URL scheme, a ref, an archive member..."""


class SourceError(UserError):
    """A source cannot be resolved, fetched or verified (names the source and URL)."""


class UnlockedSourceError(SourceError):
    """A source has no lock entry and resolving was not allowed (``--locked``)."""


class VerificationError(SourceError):
    """Fetched content does not match the lock (checksum, size, commit)."""


class NetworkError(SourceError):
    """An upstream could not be reached."""


class OfflineError(SourceError):
    """``--offline`` and the cache does not hold what is needed."""


class NoSpaceError(UserError):
    """The disk (or quota) holding the cache or the work directory is full."""


class DirtyTreeError(UserError):
    """A work tree holds local edits that an operation would throw away."""


class SourcesFailed(UserError):
    """``inv patch`` / ``inv fetch --keep-going``: several sources failed or were skipped (the
    message lists each with its reason; the exit code is the worst of theirs)."""


class StepFailed(AskbuildError):
    """A build or patch step ran and failed (exit 2)."""

    exit_code = 2


class PatchFailed(StepFailed):
    """A patch did not apply (names the series, patch, files and hunks).

    ``partial``: when a queue stopped at this patch, what applied before it (``layer``,
    ``layer_start``, ``applied``, ``index``, ``head``: the last good commit), else None."""

    partial: dict | None = None


class BuildFailed(StepFailed):
    """A build step failed or did not produce a declared artifact."""


class ImageError(StepFailed):
    """Assembling, loading or testing the image failed."""


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


def free_space(path: str | Path | None) -> str:
    """``N MiB free on the file system of P`` for the nearest existing parent of ``path``."""
    import shutil
    p = Path(path) if path else Path.cwd()
    for cand in (p, *p.parents):
        try:
            usage = shutil.disk_usage(cand)
        except OSError:
            continue
        return f"{usage.free / (1 << 20):.0f} MiB free on the file system of {cand}"
    return "free space unknown"


#: the ``errno`` values of a file system that ran full
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def os_error_message(e: OSError) -> tuple[str, str]:
    """(message, fix) for an operating-system error, naming the path and the real cause (a full
    disk: the free space there)."""
    where = str(e.filename) if e.filename is not None else None
    what = f"{where}: " if where else ""
    if e.errno in NO_SPACE:
        return (f"{what}no space left on device ({free_space(where)})",
                "free some space (or point --work-dir / --cache-dir elsewhere), then run the "
                "same command again: it resumes where it stopped")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"{what}{e.strerror or e}", "check the permissions of that path, or use "
                "another --work-dir / --cache-dir")
    return (f"{what}{e.strerror or e}", "check that path, then run the same command again")
