"""Where the container engine is (``DOCKER_HOST``, else Docker's own socket), and whether a
local socket is there at all: when it is not, no engine can answer and the Docker SDK (some
0.1 s to import) need not be imported to say so.  Only ``os`` and ``stat``: the host checks
and the image step both ask."""

from __future__ import annotations

import os
import stat

DEFAULT = "unix:///var/run/docker.sock"


def engine_host() -> str:
    """The engine's address, as the Docker SDK's ``from_env`` reads it."""
    return os.environ.get("DOCKER_HOST", DEFAULT)


def no_engine_socket() -> bool:
    """Whether the engine is a local socket (``unix://PATH``) that is not there (or is no
    socket).  False for any other address: only connecting can tell."""
    host = engine_host()
    if not host.startswith("unix://"):
        return False
    try:
        return not stat.S_ISSOCK(os.stat(host[len("unix://"):]).st_mode)
    except OSError:
        return True
