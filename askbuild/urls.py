"""URL policy: allowed schemes and mirror rewriting.

Allowed: ``https``, ``http`` (tarballs only: they are hash-checked), ``git``, ``ssh`` (also
scp-like ``user@host:path``) and ``file``.  Everything else, notably git's remote helpers
``ext::`` and ``fd::``, is refused before any tool sees the URL.

Mirrors rewrite a URL by its longest matching prefix (like git's ``insteadOf``).  A mirrored
fetch is still verified against the lock: a mirror can make things faster or possible, never
different.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from .errors import UnsafeInputError

GIT_SCHEMES = {"https", "http", "git", "ssh", "file"}
TARBALL_SCHEMES = {"https", "http", "file"}
_SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:(?!//)[^\s]+$")


def scheme_of(url: str) -> str:
    """The URL's scheme (``ssh`` for scp-like ``user@host:path``); ``""`` when the URL cannot
    be parsed at all (e.g. an unbalanced ``[`` IPv6 host)."""
    if _SCP_LIKE.match(url):
        return "ssh"
    try:
        parts = urlsplit(url)
        parts.port          # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return ""
    return parts.scheme.lower()


def check_url(url: str, *, kind: str, what: str) -> str:
    """Return ``url`` if its scheme is allowed for ``kind`` (``git``/``tarball``), else raise.

    ``what`` names the source (or option) for the message.
    """
    if not isinstance(url, str) or not url:
        raise UnsafeInputError(f"{what}: empty URL")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url) or url.startswith("-"):
        raise UnsafeInputError(f"{what}: refusing URL {url!r} (control character or leading '-')",
                               fix="write the URL without control characters (tab, newline, "
                                   "NUL...) and without a leading '-'")
    if "::" in url.split("/", 1)[0]:
        raise UnsafeInputError(
            f"{what}: refusing URL {url!r}: git remote helpers (ext::, fd::, ...) are not allowed",
            fix="use an https, git, ssh or file URL",
        )
    allowed = GIT_SCHEMES if kind == "git" else TARBALL_SCHEMES
    scheme = scheme_of(url)
    if not scheme and "://" in url:
        raise UnsafeInputError(f"{what}: {url!r} is not a valid URL (cannot be parsed)",
                               fix="correct the URL (a port is a number 1..65535, an IPv6 host is "
                                   "written [addr])")
    if scheme not in allowed:
        raise UnsafeInputError(
            f"{what}: refusing URL {url!r}: scheme {scheme or '(none)'!r} is not allowed "
            f"for {kind} sources",
            fix=f"use one of: {', '.join(sorted(allowed))}",
        )
    if scheme == "file" and not url.startswith("file:///"):
        raise UnsafeInputError(f"{what}: file URLs must be absolute (file:///path), got {url!r}")
    return url


def apply_mirrors(url: str, mirrors: dict[str, str]) -> str:
    """Rewrite ``url`` by the longest matching mirror prefix; unchanged if none matches."""
    best = ""
    for prefix in mirrors:
        if url.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    if not best:
        return url
    return mirrors[best] + url[len(best):]


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^@/\s|]*)@")


def redact(text: str) -> str:
    """``text`` with the password of every ``SCHEME://[USER:]PASSWORD@`` in it replaced by
    ``***`` (``redis://:pw@h`` -> ``redis://:***@h``, ``redis://u:pw@h`` -> ``redis://u:***@h``,
    ``redis://pw@h`` -> ``redis://***@h``: ccache reads a lone userinfo as the password)."""
    def hide(m: re.Match) -> str:
        user, sep, _ = m["user"].rpartition(":")
        return f"{m['scheme']}{user}{sep}***@" if sep else f"{m['scheme']}***@"
    return _USERINFO.sub(hide, text)
