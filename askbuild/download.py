"""Downloading tarballs: streamed to a temporary file, hashed while writing, bounded retries.

:func:`download` never leaves a partial file under a final name: the data goes to a
``.part`` file (a name unique to the run: pid + random) in the destination directory and is only
returned when every byte arrived: all the server announced, and, when the lock knows the size,
all of it (a body cut short without a ``Content-Length`` is a truncated download, retried, never
a "different file").  A partial file is deleted.  Callers verify the result (size + sha256)
before they move it into place.

A full disk is reported as such (:class:`NoSpaceError`: the path and the free space), never as a
network problem; :func:`no_space_error` builds that message for the other fetch modules.

Also home of :func:`progress`, the one progress display of the fetch code: a rich Progress bar
on a terminal, a start and an end line otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from . import console
from .errors import (
    NO_SPACE,
    NetworkError,
    NoSpaceError,
    SourceError,
    VerificationError,
    os_error_message,
)

if TYPE_CHECKING:             # requests (~0.1 s to import) is loaded only when downloading
    import requests

CHUNK = 1 << 16
#: Attempts per download (connection errors, 5xx answers and bodies cut short all count).
ATTEMPTS = 3
#: Seconds between attempts after a body was cut short (doubles each time).
BACKOFF = 0.2
#: Seconds to wait for a connection / between two reads.
TIMEOUT = 30




def no_space_error(what: str, doing: str, path: Path | str) -> NoSpaceError:
    """``source WHAT: cannot DOING: PATH: no space left on device (N MiB free on ...)``."""
    msg, fix = os_error_message(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)))
    return NoSpaceError(f"source {what}: cannot {doing}: {msg}", fix=fix)


def unique_name(prefix: str) -> str:
    """``PREFIX<pid>-<random>``: a temporary name no other run (or thread) can pick."""
    import secrets
    return f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Downloaded:
    """A complete download: ``path`` is a temporary file the caller must move or delete."""

    path: Path
    sha256: str
    size: int


@contextlib.contextmanager
def progress(label: str, total: int | None, *, unit: str = "bytes") -> Iterator[Callable]:
    """Yield ``update(done, total=None)``; rich bar on a terminal, plain lines otherwise."""
    if not console.is_interactive():
        console.info(f"{label} ...")
        last: dict[str, int | None] = {"done": 0, "total": total}

        def plain_update(done: int, total: int | None = None) -> None:
            last["done"] = done
            if total is not None:
                last["total"] = total

        yield plain_update
        done, tot = last["done"], last["total"]
        if tot:
            console.info(f"{label}: done ({done}/{tot} {unit})")
        elif done:
            console.info(f"{label}: done ({done} {unit})")
        else:
            console.info(f"{label}: done")
        return

    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    columns = [TextColumn("{task.description}"), BarColumn()]
    if unit == "bytes":
        columns += [DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
    else:
        columns += [MofNCompleteColumn(), TextColumn(unit)]
    with Progress(*columns, console=console.get_console(), transient=True) as bar:
        task = bar.add_task(label, total=total)

        def rich_update(done: int, total: int | None = None) -> None:
            if total is not None:
                bar.update(task, completed=done, total=total)
            else:
                bar.update(task, completed=done)

        yield rich_update
    console.info(f"{label}: done")


def _session() -> requests.Session:
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry
    retry = Retry(total=ATTEMPTS - 1, connect=ATTEMPTS - 1, read=ATTEMPTS - 1,
                  status=ATTEMPTS - 1, backoff_factor=BACKOFF,
                  status_forcelist=(429, 500, 502, 503, 504),
                  allowed_methods=frozenset({"GET"}), raise_on_status=False)
    s = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.headers["User-Agent"] = "askbuild"
    s.trust_env = True
    return s


class _Incomplete(Exception):
    pass


class _TooBig(Exception):
    pass


class _WriteFailed(Exception):
    """Writing the local file failed (a full disk, ...): not a network problem."""


def _write(fh, h, chunk: bytes, size: int, limit: int | None) -> int:
    size += len(chunk)
    if limit is not None and size > limit:
        raise _TooBig(size)
    try:
        fh.write(chunk)
    except OSError as e:
        raise _WriteFailed(e) from e
    h.update(chunk)
    return size


def _fetch_http(session: requests.Session, url: str, fh, h, update, limit) -> int:
    with session.get(url, stream=True, timeout=TIMEOUT, allow_redirects=True) as r:
        if r.status_code != 200:
            raise SourceError(f"HTTP {r.status_code} {r.reason}")
        length = r.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        size = 0
        update(0, expected)
        try:
            for chunk in r.raw.stream(CHUNK, decode_content=False):
                size = _write(fh, h, chunk, size, limit)
                update(size)
        except (_TooBig, _WriteFailed):
            raise
        except Exception as e:  # requests', urllib3's and socket errors alike
            raise _Incomplete(f"connection lost after {size} bytes ({type(e).__name__})") from e
        if expected is not None and size != expected:
            raise _Incomplete(f"truncated: got {size} of {expected} bytes")
        if expected is None and limit is not None and size < limit:
            # No Content-Length: only the lock says how much should have come.
            raise _Incomplete(f"truncated: got {size} of {limit} bytes (the size in the lock)")
        return size


def _fetch_file(url: str, fh, h, update, limit) -> int:
    path = Path(unquote(urlsplit(url).path))
    try:
        total = path.stat().st_size
        size = 0
        update(0, total)
        with path.open("rb") as src:
            while chunk := src.read(CHUNK):     # (write errors are _WriteFailed)
                size = _write(fh, h, chunk, size, limit)
                update(size)
    except OSError as e:
        raise SourceError(f"cannot read {path}: {e.strerror}") from e
    return size


def download(url: str, directory: Path, *, what: str, filename: str = "download",
             expected_size: int | None = None, update_command: str = "") -> Downloaded:
    """Download ``url`` into a new temporary file in ``directory`` (created if needed).

    Retries connection errors, 5xx answers and bodies cut short, ``ATTEMPTS`` times in all; the
    result only exists once every byte the server announced (and, with ``expected_size``, every
    byte the lock records) has arrived.  With ``expected_size`` (the lock), a body growing past
    it is stopped (:class:`VerificationError`; its advice prints ``update_command``, the
    ``inv lock --update`` of this run, when given).  ``what`` names the source in messages.  Raises
    :class:`NetworkError` when it cannot be completed, :class:`NoSpaceError` when the disk is
    full.  A partial file is always deleted.
    """
    import requests
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _local_error(what, url, directory, e) from e
    scheme = urlsplit(url).scheme.lower()
    session = _session() if scheme in ("http", "https") else None
    last_error = ""
    truncated = False
    try:
        for attempt in range(1, ATTEMPTS + 1):
            tmp = directory / f"{unique_name(f'.{filename}.')}.part"
            try:
                return _attempt(session, url, tmp, label=f"download {what}: {url}",
                                expected_size=expected_size)
            except _Incomplete as e:
                tmp.unlink(missing_ok=True)
                truncated = str(e).startswith("truncated")
                last_error = f"download interrupted: {e}"
                if attempt < ATTEMPTS:
                    console.warn(f"{what}: {last_error}; retrying ({attempt}/{ATTEMPTS - 1})")
                    time.sleep(BACKOFF * (2 ** (attempt - 1)))
            except _TooBig as e:
                tmp.unlink(missing_ok=True)
                raise VerificationError(
                    f"source {what}: {url} sends more than the {expected_size} bytes the lock "
                    f"records; stopped at {e.args[0]} bytes, nothing kept",
                    fix="check the URL and mirrors; if upstream re-released the file on "
                        f"purpose, review it and run "
                        f"`{update_command or f'inv lock --update --source {what}'}`") from e
            except _WriteFailed as e:
                tmp.unlink(missing_ok=True)
                raise _local_error(what, url, directory, e.args[0]) from e
            except SourceError as e:
                tmp.unlink(missing_ok=True)
                raise _network_error(what, url, str(e)) from e
            except requests.RequestException as e:
                tmp.unlink(missing_ok=True)
                raise _network_error(what, url, _describe(e, url)) from e
            except OSError as e:                  # creating, flushing or syncing the file
                tmp.unlink(missing_ok=True)
                raise _local_error(what, url, directory, e) from e
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
    finally:
        if session is not None:
            session.close()
    if truncated:
        raise NetworkError(
            f"source {what}: cannot download {url}: {last_error} ({ATTEMPTS} attempts); the "
            "partial file was deleted",
            fix="run the same command again (the download starts over); if it is cut short "
                "every time, check the network or map the URL to a mirror (ASKBUILD_MIRRORS)")
    raise _network_error(what, url, f"{last_error} ({ATTEMPTS} attempts)")


def _attempt(session: requests.Session | None, url: str, tmp: Path, *, label: str,
             expected_size: int | None) -> Downloaded:
    """One try: the whole body into the new file ``tmp``, flushed to disk."""
    import hashlib
    h = hashlib.sha256()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as fh, progress(label, expected_size) as update:
        if session is not None:
            size = _fetch_http(session, url, fh, h, update, expected_size)
        else:
            size = _fetch_file(url, fh, h, update, expected_size)
        fh.flush()
        os.fsync(fh.fileno())
    return Downloaded(tmp, h.hexdigest(), size)


def _local_error(what: str, url: str, directory: Path, e: OSError) -> Exception:
    """A local file-system failure while downloading into ``directory``: a full disk says so
    (with the free space), anything else names the directory and the cause."""
    if e.errno in NO_SPACE:
        return no_space_error(what, f"download {url}", directory)
    return SourceError(f"source {what}: cannot download {url}: cannot write into {directory}: "
                       f"{e.strerror or e}",
                       fix="check the permissions of that directory (or use another "
                           "--cache-dir), then run again")


def _describe(e: requests.RequestException, url: str) -> str:
    import requests
    host = urlsplit(url).hostname or "?"
    if isinstance(e, requests.Timeout):
        return f"{host} did not answer in time"
    if isinstance(e, requests.ConnectionError):
        reason = e.args[0] if e.args else e
        reason = getattr(reason, "reason", reason)      # urllib3's MaxRetryError -> cause
        text = str(reason)
        if "NameResolution" in type(reason).__name__ or "resolve" in text.lower():
            return f"cannot resolve host {host}"
        if "refused" in text.lower():
            return f"connection to {host} refused"
        return f"cannot connect to {host} ({text[-160:]})"
    return str(e)[:300]


def network_fix() -> str:
    return ("check the network, or map the URL to a reachable mirror (ASKBUILD_MIRRORS="
            "\"PREFIX=REPLACEMENT\" or a [mirrors] table in askbuild.toml), or use the cache "
            "only with --offline, or try the self-contained sources with --profile example")


def _network_error(what: str, url: str, detail: str) -> NetworkError:
    return NetworkError(f"source {what}: cannot download {url}: {detail}", fix=network_fix())
