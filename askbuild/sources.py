"""The sources file: every upstream input and its lock entry.

``recipes/sources.toml`` (or ``recipes/profiles/<profile>.toml``) has one table per source::

    [ask]
    kind = "git"                                   # "git" or "tarball"
    url = "https://github.com/we-are-mono/ASK.git"
    ref = "mt-6.12.49-2.2.0"                       # what humans track: tag or branch
    commit = "0123...40 hex"                       # lock: written by `inv lock` / first fetch

    [libnfnetlink]
    kind = "tarball"
    url = "https://www.netfilter.org/projects/libnfnetlink/files/libnfnetlink-1.0.2.tar.bz2"
    ref = "1.0.2"
    sha256 = "..."                                 # lock
    size = 123456                                  # lock

The lock fields live beside the declaration; they are rewritten with tomlkit so an update is a
minimal diff that keeps comments.  URLs may use ``{project}`` (the askbuild checkout) and
``{work}`` (the work directory) placeholders, for profiles that point at local trees.

Every field is checked strictly when the file is loaded, and every error names the file, the
source and the key, the value and the fix:

* the source name is safe as one path component (``src/<name>``): lower-case letters, digits,
  ``-_.``, starting with a letter or digit, no ``..``;
* ``kind`` is ``git`` or ``tarball``; ``url`` and ``ref`` are non-empty strings, the URL of an
  allowed scheme (:func:`askbuild.urls.check_url`), the ref of a git source a safe ref;
* ``commit`` is 40 lower-case hex digits; ``sha256`` 64; ``size`` a positive integer (``true``
  is not a number); ``strip_components`` an integer 0..16; ``description`` a string.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from .errors import ConfigError
from .fsutil import read_toml, stat_sig, write_bytes_atomic
from .gitutil import check_ref
from .settings import Settings, got
from .urls import check_url

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*")
MAX_NAME = 100
KINDS = ("git", "tarball")
GIT_KEYS = {"kind", "url", "ref", "commit", "description"}
TARBALL_KEYS = {"kind", "url", "ref", "sha256", "size", "strip_components", "description"}
COMMIT_RE = re.compile(r"[0-9a-f]{40}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
MAX_STRIP = 16
PROFILE_KEYS = {"description": str, "publish_examples": bool}


class Source(NamedTuple):
    name: str
    kind: str            # "git" | "tarball"
    url: str             # as declared, placeholders expanded, mirrors NOT applied
    ref: str
    commit: str | None = None        # git lock
    sha256: str | None = None        # tarball lock
    size: int | None = None          # tarball lock
    strip_components: int = 1
    description: str = ""

    @property
    def locked(self) -> bool:
        if self.kind == "git":
            return self.commit is not None
        return self.sha256 is not None and self.size is not None

    @property
    def identity(self) -> str:
        """The locked identity as one string (commit or sha256); ``""`` when unlocked."""
        return (self.commit if self.kind == "git" else self.sha256) or ""

    @property
    def filename(self) -> str:
        """Tarball file name taken from the URL."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]


def _expand(url: str, settings: Settings) -> str:
    return url.replace("{project}", str(settings.project_root)).replace(
        "{work}", str(settings.work_dir))


def check_name(name: object, where: str) -> str:
    """A source name usable as one path component (``<work>/src/<name>``, cache file names)."""
    if (not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name
            or len(name) > MAX_NAME):
        raise ConfigError(f"{where}: invalid source name (got {got(name)})",
                          fix="use lower case letters, digits and -_. (starting with a letter "
                              f"or digit, no '..', at most {MAX_NAME} characters)")
    return name


def _string(table: dict, key: str, where: str, *, required: bool) -> str | None:
    value = table.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        what = "missing" if value is None else "must be a non-empty string"
        raise ConfigError(f"{where} {key}: {what} (got {got(value)})",
                          fix=f"write {key} = \"...\" in the table")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ConfigError(f"{where} {key}: control characters (newline, tab, NUL...) are not "
                          f"allowed (got {got(value)})", fix=f"write {key} on one line")
    return value


def _hex(table: dict, key: str, where: str, pattern: re.Pattern, digits: int,
         lock_cmd: str = "inv lock") -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if not (isinstance(value, str) and pattern.fullmatch(value)):
        raise ConfigError(f"{where} {key}: must be {digits} lower-case hex digits "
                          f"(got {got(value)})",
                          fix=f"remove the {key} line and run `{lock_cmd}` to record it again")
    return value


def _int(table: dict, key: str, where: str, lo: int, hi: int | None) -> int | None:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < lo \
            or (hi is not None and value > hi):
        span = f"{lo}..{hi}" if hi is not None else f"at least {lo}"
        raise ConfigError(f"{where} {key}: must be a whole number {span} (got {got(value)})",
                          fix=f"write {key} = <number> (no quotes, not true/false)")
    return value


def _parse(name: str, table: object, path: Path, settings: Settings) -> Source:
    where = f"{path}: [{name}]"
    check_name(name, f"{path}: [{name}]")
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table of kind, url, ref... (got {got(table)})",
                          fix=f"write it as [{name}] followed by its keys")
    kind = table.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where} kind: must be \"git\" or \"tarball\" (got {got(kind)})",
                          fix='write kind = "git" or kind = "tarball"')
    allowed = GIT_KEYS if kind == "git" else TARBALL_KEYS
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}",
                          fix=f"allowed for {kind} sources: {', '.join(sorted(allowed))}")
    raw_url = _string(table, "url", where, required=True)
    ref = _string(table, "ref", where, required=True)
    description = table.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where} description: must be a string (got {got(description)})",
                          fix='write description = "..." (quoted)')
    url = _expand(raw_url, settings)
    check_url(url, kind=kind, what=f"{where} url")
    lock_cmd = settings.command("lock", "--source", name, without=("--locked", "--offline"))
    if kind == "git":
        check_ref(ref, what=f"{where} ref")
        commit = _hex(table, "commit", where, COMMIT_RE, 40, lock_cmd)
        return Source(name, kind, url, ref, commit=commit, description=description)
    sha = _hex(table, "sha256", where, SHA256_RE, 64, lock_cmd)
    size = _int(table, "size", where, 1, None)
    if (sha is None) != (size is None):
        raise ConfigError(f"{where}: sha256 and size are locked together; give both or neither",
                          fix=f"remove both lines and run `{lock_cmd}` to record them")
    strip = _int(table, "strip_components", where, 0, MAX_STRIP)
    return Source(name, kind, url, ref, sha256=sha, size=size,
                  strip_components=1 if strip is None else strip, description=description)


def load_sources(settings: Settings) -> dict[str, Source]:
    """All sources of the active profile, in file order.  Any unreadable file or invalid entry
    is a :class:`ConfigError` (or ``UnsafeInputError`` for a refused URL/ref)."""
    path = settings.sources_file
    data = read_toml(path)
    profile = data.pop("profile", None)
    sources = {name: _parse(name, table, path, settings) for name, table in data.items()}
    if profile is not None:
        _prepare_profile(profile, path, settings)
    return sources


def _prepare_profile(profile: object, path: Path, settings: Settings) -> None:
    """The optional ``[profile]`` table of a sources file.  ``publish_examples = true`` makes
    the example vendor tree available as local upstreams first (see askbuild.examples)."""
    if not isinstance(profile, dict) or set(profile) - set(PROFILE_KEYS):
        raise ConfigError(f"{path}: [profile]: allows only "
                          f"{', '.join(sorted(PROFILE_KEYS))} (got {got(profile)})",
                          fix='e.g. [profile] description = "..." publish_examples = true')
    for key, typ in PROFILE_KEYS.items():
        if key in profile and not isinstance(profile[key], typ):
            want = "true or false" if typ is bool else "a string"
            raise ConfigError(f"{path}: [profile] {key}: must be {want} "
                              f"(got {got(profile[key])})",
                              fix=f"write {key} = " + ("true" if typ is bool else '"..."'))
    if profile.get("publish_examples"):
        from . import examples
        examples.publish(settings)


def select(sources: dict[str, Source], names: list[str] | tuple[str, ...] | None,
           settings: Settings) -> list[Source]:
    """The named sources (all when ``names`` is empty); unknown names are an error."""
    if not names:
        return list(sources.values())
    unknown = [n for n in names if n not in sources]
    if unknown:
        raise ConfigError(
            f"unknown source(s) {', '.join(unknown)} in {settings.sources_file}",
            fix=f"known sources: {', '.join(sources)}",
        )
    return [sources[n] for n in names]


@contextlib.contextmanager
def _locked_file(path: Path) -> Iterator[int]:
    """An exclusive ``flock`` on ``path`` itself, held while it is read and replaced.  A waiter
    whose file was replaced meanwhile (new inode) locks the new file instead, so concurrent
    writers (two work directories, one project) never lose each other's update."""
    while True:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise ConfigError(f"{path}: cannot open: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield fd
                return
        finally:
            os.close(fd)


def _check_lock_fields(path: Path, name: str, fields: dict[str, object]) -> None:
    """The values :func:`write_lock` writes pass the same checks as a loaded file."""
    where = f"{path}: [{name}]"
    patterns = {"commit": (COMMIT_RE, 40), "sha256": (SHA256_RE, 64)}
    for key, value in fields.items():
        if key in patterns:
            _hex({key: value}, key, where, *patterns[key])
        elif key == "size":
            _int({key: value}, key, where, 1, None)
        elif key == "ref":
            _string({key: value}, key, where, required=True)
        else:
            raise ConfigError(f"{where}: write_lock cannot set {key!r}")


def write_lock(settings: Settings, name: str, **fields: object) -> None:
    """Set lock fields (``commit`` / ``sha256`` + ``size``) of one source, keeping the file's
    comments and layout; atomic replace (a killed run leaves the old file or the new one),
    serialised against other askbuild processes writing the same file.  ``ref`` may be passed
    too (rebase moves it)."""
    import tomlkit  # only here: the import costs every other verb ~15-40 ms
    import tomlkit.exceptions

    path = settings.sources_file
    _check_lock_fields(path, name, fields)
    with _locked_file(path) as fd:
        raw = b""
        while chunk := os.read(fd, 1 << 20):
            raw += chunk
        try:
            doc = tomlkit.parse(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomlkit.exceptions.TOMLKitError) as e:
            raise ConfigError(f"{path}: cannot update the lock of [{name}]: {e}",
                              fix="correct the file: it must be valid TOML") from None
        table = doc.get(name)
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: no source table named [{name}]")
        for key, value in fields.items():
            table[key] = value
        write_bytes_atomic(path, tomlkit.dumps(doc).encode("utf-8"))


# -- the fetch stamp: a no-op fetch without git ---------------------------------------------

def _fetch_facts(settings: Settings, source: Source) -> dict | None:
    """Everything a fetch of ``source`` depends on, read with stats and one small read: the
    lock entry, the base tag's loose ref (its content), the work tree's ``.git`` directory
    (any rename in it: a base-move marker, ``packed-refs``, ``HEAD``, ``shallow``...), the
    alternates file, and for git sources the cache repository's object directories.  None
    when the tree has no loose base ref (then only git can tell)."""
    tree = settings.source_tree(source.name)
    git = tree / ".git"
    try:
        base = (git / "refs" / "tags" / "askbuild" / "base").read_text().strip()
    except OSError:
        return None
    facts: dict = {"kind": source.kind, "identity": source.identity, "url": source.url,
                   "base": base, "git": stat_sig(git),
                   "refs": stat_sig(git / "refs" / "tags" / "askbuild"),
                   "info": stat_sig(git / "objects" / "info"),
                   "alternates": stat_sig(git / "objects" / "info" / "alternates")}
    if source.kind == "git":
        repo = settings.git_cache_repo(source.name)
        facts["cache"] = [stat_sig(p) for p in (repo, repo / "objects", repo / "objects" / "pack",
                                                 repo / "shallow")]
    return facts


def fetched(settings: Settings, source: Source) -> str | None:
    """The base commit of ``source``'s work tree when the fetch stamp proves that nothing a
    fetch looks at changed since the last successful fetch (no git process); else None."""
    if not source.locked:
        return None
    from .fsutil import read_json
    stamp = read_json(settings.fetch_stamp(source.name))
    if not stamp:
        return None
    facts = _fetch_facts(settings, source)
    if facts is None or stamp != facts:
        return None
    return facts["base"]


def stamp_fetched(settings: Settings, source: Source) -> None:
    """Record what the fetch of ``source`` that just succeeded sees (after it, never for a
    failed one; a stale stamp only ever costs the full check)."""
    from .fsutil import write_json_atomic
    facts = _fetch_facts(settings, source) if source.locked else None
    if facts is None:
        settings.fetch_stamp(source.name).unlink(missing_ok=True)
    else:
        write_json_atomic(settings.fetch_stamp(source.name), facts)
