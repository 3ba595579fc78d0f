"""Terminal output: rich on a terminal, plain lines when not a TTY or under CI.

Use :func:`get_console` everywhere; never ``print`` directly from the engine.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache

from rich.console import Console
from rich.markup import escape


def is_interactive() -> bool:
    """True when we may draw live progress (a TTY and not CI)."""
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        return False
    if os.environ.get("ASKBUILD_PLAIN"):
        return False
    return sys.stderr.isatty()


@lru_cache(maxsize=1)
def get_console() -> Console:
    """The shared console (stderr).  Plain (no colour, no live views) when not interactive."""
    if is_interactive():
        return Console(stderr=True)
    return Console(stderr=True, force_terminal=False, no_color=True, highlight=False,
                   soft_wrap=True, width=200)


def reset_console() -> None:
    """Forget the cached console (tests change CI / TTY state)."""
    get_console.cache_clear()


def info(message: str) -> None:
    get_console().print(message, markup=False, highlight=False)


def _prefixed(prefix: str, style: str, message: str) -> None:
    con = get_console()
    if is_interactive():
        con.print(f"[{style}]{prefix}[/] {escape(message)}", highlight=False)
    else:
        con.print(f"{prefix} {message}", markup=False, highlight=False)


def step(message: str) -> None:
    """A headline for a phase of work ("fetch ask", "patch linux")."""
    _prefixed("==>", "bold cyan", message)


def warn(message: str) -> None:
    _prefixed("warning:", "yellow", message)


def error(message: str) -> None:
    _prefixed("error:", "bold red", message)
