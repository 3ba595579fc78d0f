"""The user's configuration and cache homes, by the XDG Base Directory rules (askbuild runs on
Linux): ``$XDG_CONFIG_HOME`` / ``$XDG_CACHE_HOME`` when set to an absolute path (the rules
say to ignore a relative one), else ``~/.config`` / ``~/.cache``.  Only ``os``: the no-op
records (:mod:`askbuild.noopmemo`) need it before anything else is imported."""

from __future__ import annotations

import os

_HOMES = {"config": ("XDG_CONFIG_HOME", ".config"), "cache": ("XDG_CACHE_HOME", ".cache")}


def user_dir(kind: str) -> str:
    """askbuild's directory in the user's ``kind`` home ("config" or "cache")."""
    var, default = _HOMES[kind]
    base = os.environ.get(var, "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), default)
    return os.path.join(base, "askbuild")
