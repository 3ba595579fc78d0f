"""Where things live and how a run is configured.

Resolution order for every setting: explicit argument (CLI option) > environment variable >
config file > default.

Config files (TOML), later ones win: ``~/.config/askbuild/config.toml`` (platformdirs),
``<project>/askbuild.toml``, then the file named by ``ASKBUILD_CONFIG``.  Keys::

    cache_dir = "/srv/askbuild-cache"    # shared download cache
    work_dir  = "/data/askbuild"         # work trees, build outputs, staging, image
    profile   = "default"                # which recipes/sources file
    [mirrors]                            # URL prefix -> replacement (see askbuild.urls)
    "https://github.com/" = "file:///srv/git-mirrors/github.com/"

Environment: ``ASKBUILD_CACHE_DIR``, ``ASKBUILD_WORK_DIR``, ``ASKBUILD_PROFILE``,
``ASKBUILD_MIRRORS`` (space-separated ``PREFIX=REPLACEMENT`` pairs, these win over files),
``ASKBUILD_CONFIG``, ``ASKBUILD_PROJECT_ROOT`` (where ``recipes/`` and ``patches/`` are read
from; default: this checkout; tests point it at fixture projects).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from .errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
KNOWN_CONFIG_KEYS = {"cache_dir", "work_dir", "profile", "mirrors"}


def _read_config(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}", fix="correct the file's syntax") from e
    unknown = set(data) - KNOWN_CONFIG_KEYS
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))}",
            fix=f"allowed keys: {', '.join(sorted(KNOWN_CONFIG_KEYS))}",
        )
    mirrors = data.get("mirrors", {})
    if not isinstance(mirrors, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in mirrors.items()
    ):
        raise ConfigError(f"{path}: [mirrors] must map URL prefixes to URL strings")
    return data


def config_files(project_root: Path = PROJECT_ROOT) -> list[Path]:
    files = [
        Path(platformdirs.user_config_dir("askbuild")) / "config.toml",
        project_root / "askbuild.toml",
    ]
    if os.environ.get("ASKBUILD_CONFIG"):
        files.append(Path(os.environ["ASKBUILD_CONFIG"]))
    return files


def parse_mirror_env(value: str) -> dict[str, str]:
    """``"PREFIX=REPL PREFIX2=REPL2"`` -> dict.  Names the bad pair on error."""
    out: dict[str, str] = {}
    for pair in value.split():
        prefix, sep, repl = pair.partition("=")
        if not sep or not prefix or not repl:
            raise ConfigError(
                f"ASKBUILD_MIRRORS: {pair!r} is not PREFIX=REPLACEMENT",
                fix='e.g. ASKBUILD_MIRRORS="https://github.com/=file:///srv/mirrors/"',
            )
        out[prefix] = repl
    return out


@dataclass
class Settings:
    """Everything a run needs to know about locations and policy."""

    project_root: Path = PROJECT_ROOT
    cache_dir: Path = field(default_factory=lambda: Path(platformdirs.user_cache_dir("askbuild")))
    work_dir: Path = PROJECT_ROOT / "build"
    profile: str = "default"
    mirrors: dict[str, str] = field(default_factory=dict)
    offline: bool = False
    locked: bool = False
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    debug: bool = False

    # -- derived locations -------------------------------------------------------------
    @property
    def recipes_dir(self) -> Path:
        return self.project_root / "recipes"

    @property
    def sources_file(self) -> Path:
        """The sources + lock file of the active profile."""
        if self.profile == "default":
            return self.recipes_dir / "sources.toml"
        return self.recipes_dir / "profiles" / f"{self.profile}.toml"

    @property
    def src_dir(self) -> Path:
        """Source work trees: ``<work>/src/<name>`` (git trees, base tagged)."""
        return self.work_dir / "src"

    @property
    def state_dir(self) -> Path:
        """Stamps and records of completed steps."""
        return self.work_dir / "state"

    @property
    def out_dir(self) -> Path:
        """Per-component build output directories."""
        return self.work_dir / "out"

    @property
    def staging_dir(self) -> Path:
        return self.work_dir / "staging"

    @property
    def logs_dir(self) -> Path:
        return self.work_dir / "logs"

    @property
    def git_cache(self) -> Path:
        return self.cache_dir / "git"

    @property
    def tarball_cache(self) -> Path:
        return self.cache_dir / "tarballs"

    @classmethod
    def load(
        cls,
        *,
        project_root: Path | None = None,
        cache_dir: str | Path | None = None,
        work_dir: str | Path | None = None,
        profile: str | None = None,
        offline: bool = False,
        locked: bool = False,
        jobs: int | None = None,
        debug: bool = False,
    ) -> Settings:
        if project_root:
            root = Path(project_root)
        elif os.environ.get("ASKBUILD_PROJECT_ROOT"):
            root = Path(os.environ["ASKBUILD_PROJECT_ROOT"])
        else:
            root = PROJECT_ROOT
        merged: dict = {"mirrors": {}}
        for f in config_files(root):
            data = _read_config(f)
            mirrors = data.pop("mirrors", {})
            merged.update(data)
            merged["mirrors"].update(mirrors)
        env = os.environ
        mirrors = dict(merged["mirrors"])
        if env.get("ASKBUILD_MIRRORS"):
            mirrors.update(parse_mirror_env(env["ASKBUILD_MIRRORS"]))

        def pick(arg, env_name, key, default):
            if arg not in (None, ""):
                return arg
            if env.get(env_name):
                return env[env_name]
            if key in merged:
                return merged[key]
            return default

        s = cls(
            project_root=root,
            cache_dir=Path(pick(cache_dir, "ASKBUILD_CACHE_DIR", "cache_dir",
                                platformdirs.user_cache_dir("askbuild"))).expanduser(),
            work_dir=Path(pick(work_dir, "ASKBUILD_WORK_DIR", "work_dir",
                               root / "build")).expanduser(),
            profile=str(pick(profile, "ASKBUILD_PROFILE", "profile", "default")),
            mirrors=mirrors,
            offline=offline,
            locked=locked,
            jobs=int(jobs) if jobs else (os.cpu_count() or 1),
            debug=debug,
        )
        if not s.sources_file.is_file():
            profiles = sorted(p.stem for p in (s.recipes_dir / "profiles").glob("*.toml"))
            raise ConfigError(
                f"profile {s.profile!r}: {s.sources_file} does not exist",
                fix=f"use one of: default, {', '.join(profiles) or '(none)'}",
            )
        if s.jobs < 1:
            raise ConfigError(f"--jobs must be at least 1 (got {s.jobs})")
        return s
