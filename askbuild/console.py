"""Terminal output: rich on a terminal, plain lines when not a TTY or under CI.

Use :func:`get_console` everywhere; never ``print`` directly from the engine.

``rich`` costs tens of milliseconds to import, so it is imported only when output goes to an
interactive terminal; plain output (CI, pipes, tests, ``ASKBUILD_PLAIN``) is written by
:class:`PlainConsole`, which takes the same ``print`` calls the engine makes.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from typing import Any


def is_interactive() -> bool:
    """True when we may draw live progress (a TTY and not CI)."""
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        return False
    if os.environ.get("ASKBUILD_PLAIN"):
        return False
    return sys.stderr.isatty()


class PlainConsole:
    """The non-interactive console: ``print`` writes plain text lines to the current
    ``sys.stderr`` (no colour, no markup, no wrapping).  Only strings and objects whose
    ``str()`` is their text are printed (the engine draws tables only when interactive)."""

    is_terminal = False

    def print(self, *objects: Any, sep: str = " ", end: str = "\n", **_: Any) -> None:
        stream = sys.stderr
        stream.write(sep.join(str(o) for o in objects) + end)
        stream.flush()

    @property
    def file(self):
        return sys.stderr


@lru_cache(maxsize=1)
def get_console() -> Any:
    """The shared console (stderr): a rich ``Console`` on an interactive terminal, else a
    :class:`PlainConsole` (no colour, no live views, rich not imported)."""
    if is_interactive():
        from rich.console import Console
        return Console(stderr=True)
    return PlainConsole()


def reset_console() -> None:
    """Forget the cached console (tests change CI / TTY state)."""
    get_console.cache_clear()


def info(message: str) -> None:
    get_console().print(message, markup=False, highlight=False)


def _prefixed(prefix: str, style: str, message: str) -> None:
    con = get_console()
    if isinstance(con, PlainConsole):
        con.print(f"{prefix} {message}")
    else:
        from rich.markup import escape
        con.print(f"[{style}]{prefix}[/] {escape(message)}", highlight=False)


def step(message: str) -> None:
    """A headline for a phase of work ("fetch ask", "patch linux")."""
    _prefixed("==>", "bold cyan", message)


def warn(message: str) -> None:
    _prefixed("warning:", "yellow", message)


def error(message: str) -> None:
    _prefixed("error:", "bold red", message)
