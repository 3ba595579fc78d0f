"""The bridge between a user verb (Invoke task) and the engine: settings, errors, exit codes.

``tasks.py`` calls :func:`main` with the engine function to run; this module turns
:class:`~askbuild.errors.AskbuildError` into one clear paragraph and an exit code (1 for user
errors, 2 for failed steps).  A traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from . import console
from .errors import AskbuildError
from .settings import Settings


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


def main(fn: Callable[[Settings], Any], *, debug: bool = False, **settings_opts: Any) -> Any:
    """Load settings, run ``fn(settings)``, map errors to exit codes."""
    debug = debug or bool(os.environ.get("ASKBUILD_DEBUG"))
    try:
        settings = Settings.load(debug=debug, **settings_opts)
        return fn(settings)
    except AskbuildError as e:
        if debug:
            traceback.print_exc()
        console.error(str(e))
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        console.error("interrupted")
        sys.exit(130)
