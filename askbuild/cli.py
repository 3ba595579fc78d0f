"""The bridge between a user verb (Invoke task) and the engine: settings, errors, exit codes.

``tasks.py`` calls :func:`main` with the engine function to run; this module turns every
failure into one clear paragraph and an exit code, never a traceback (``--debug`` adds it):

* :class:`~askbuild.errors.AskbuildError`: its message, exit 1 (user error) or 2 (failed step);
* a git failure askbuild did not expect: git's own words, exit 2;
* an operating-system error (no space left, permission denied, ...): the path, the cause and,
  for a full disk, the free space there, exit 1;
* SIGINT / SIGTERM: every child process group is stopped within a second or two, the step in
  progress is recorded as interrupted, exit 130 / 143;
* anything else is a bug in askbuild: said so, exit 3.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterable
from typing import Any

from . import console, procs
from .errors import AskbuildError, os_error_message  # noqa: F401 - re-exported
from .gitutil import GitError
from .settings import Settings


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like KeyboardInterrupt (``except Exception`` does not catch
    it), so every ``finally`` runs and records the step as interrupted."""

    exit_code = 143


def split_names(values: Iterable[str] | str | None) -> list[str]:
    """``["a,b", "c"]`` or ``"a,b"`` -> ``["a", "b", "c"]`` (order kept, duplicates dropped)."""
    if not values:
        return []
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for v in values:
        for part in v.split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def main(fn: Callable[[Settings], Any], *, debug: bool = False, **settings_opts: Any) -> Any:
    """Load settings, run ``fn(settings)``, map every failure to a message and exit code."""
    debug = debug or bool(os.environ.get("ASKBUILD_DEBUG"))
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        settings = Settings.load(debug=debug, **settings_opts)
        return fn(settings)
    except AskbuildError as e:
        _fail(debug, str(e), e.exit_code)
    except GitError as e:
        _fail(debug, f"git failed: {' '.join(e.args_[:3])}...: "
                     f"{e.stderr.strip() or f'exit status {e.returncode}'}", 2)
    except OSError as e:
        msg, fix = os_error_message(e)
        _fail(debug, f"{msg}\n  fix: {fix}", 1)
    except KeyboardInterrupt:
        procs.terminate_all()
        _fail(debug, "interrupted (SIGINT): stopped; run the same command again to resume", 130)
    except Terminated:
        procs.terminate_all()
        _fail(debug, "terminated (SIGTERM): stopped; run the same command again to resume", 143)
    except Exception as e:  # noqa: BLE001 - a bug: still no bare traceback
        _fail(debug, f"internal error in askbuild: {type(e).__name__}: {e}\n  fix: run again "
                     "with --debug for the traceback and report it", 3)
    finally:
        signal.signal(signal.SIGTERM, old)


def _fail(debug: bool, message: str, code: int) -> None:
    if debug:
        import traceback
        traceback.print_exc()
    procs.terminate_all(grace=0.5)
    console.error(message)
    sys.exit(code)
