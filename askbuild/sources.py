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
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import tomlkit

from .errors import ConfigError
from .gitutil import check_ref, is_sha
from .settings import Settings
from .urls import check_url

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
GIT_KEYS = {"kind", "url", "ref", "commit", "description"}
TARBALL_KEYS = {"kind", "url", "ref", "sha256", "size", "strip_components", "description"}
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Source:
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


def _parse(name: str, table: dict, path: Path, settings: Settings) -> Source:
    where = f"{path}: [{name}]"
    if not NAME_RE.match(name):
        raise ConfigError(f"{where}: invalid source name (use lower case letters, digits, -_.)")
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    kind = table.get("kind")
    if kind not in ("git", "tarball"):
        raise ConfigError(f"{where}: kind must be \"git\" or \"tarball\", got {kind!r}")
    allowed = GIT_KEYS if kind == "git" else TARBALL_KEYS
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}",
                          fix=f"allowed for {kind} sources: {', '.join(sorted(allowed))}")
    for key in ("url", "ref"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise ConfigError(f"{where}: missing or empty {key!r}")
    url = _expand(table["url"], settings)
    check_url(url, kind=kind, what=f"{where} url")
    if kind == "git":
        check_ref(table["ref"], what=f"{where} ref")
        commit = table.get("commit")
        if commit is not None and not (isinstance(commit, str) and is_sha(commit)):
            raise ConfigError(f"{where}: commit must be a full 40-hex SHA, got {commit!r}")
        return Source(name, kind, url, table["ref"], commit=commit,
                      description=table.get("description", ""))
    sha = table.get("sha256")
    size = table.get("size")
    if sha is not None and not (isinstance(sha, str) and SHA256_RE.match(sha)):
        raise ConfigError(f"{where}: sha256 must be 64 lower-case hex digits, got {sha!r}")
    if size is not None and not (isinstance(size, int) and size > 0):
        raise ConfigError(f"{where}: size must be a positive integer, got {size!r}")
    if (sha is None) != (size is None):
        raise ConfigError(f"{where}: sha256 and size are locked together; give both or neither")
    strip = table.get("strip_components", 1)
    if not isinstance(strip, int) or strip < 0:
        raise ConfigError(f"{where}: strip_components must be a non-negative integer")
    return Source(name, kind, url, table["ref"], sha256=sha, size=size,
                  strip_components=strip, description=table.get("description", ""))


def load_sources(settings: Settings) -> dict[str, Source]:
    """All sources of the active profile, in file order."""
    path = settings.sources_file
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: sources file not found") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    profile = data.pop("profile", None)
    if profile is not None:
        _prepare_profile(profile, path, settings)
    return {name: _parse(name, table, path, settings) for name, table in data.items()}


PROFILE_KEYS = {"description", "publish_examples"}


def _prepare_profile(profile: object, path: Path, settings: Settings) -> None:
    """The optional ``[profile]`` table of a sources file.  ``publish_examples = true`` makes
    the example vendor tree available as local upstreams first (see askbuild.examples)."""
    if not isinstance(profile, dict) or set(profile) - PROFILE_KEYS:
        raise ConfigError(f"{path}: [profile] allows only {', '.join(sorted(PROFILE_KEYS))}")
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


def write_lock(settings: Settings, name: str, **fields: object) -> None:
    """Set lock fields (``commit`` / ``sha256`` + ``size``) of one source, keeping the file's
    comments and layout; atomic replace.  ``ref`` may be passed too (rebase moves it)."""
    path = settings.sources_file
    doc = tomlkit.parse(path.read_text())
    if name not in doc:
        raise ConfigError(f"{path}: no source named {name!r}")
    table = doc[name]
    for key, value in fields.items():
        table[key] = value
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(tomlkit.dumps(doc))
    tmp.replace(path)
