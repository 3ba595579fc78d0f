"""Where things live and how a run is configured.

Resolution order for every setting: explicit argument (CLI option) > environment variable >
config file > default.

Config files (TOML), later ones win: ``~/.config/askbuild/config.toml`` (``$XDG_CONFIG_HOME``:
:mod:`askbuild.xdg`),
``<project>/askbuild.toml``, then the file named by ``ASKBUILD_CONFIG`` (which must exist).
Keys::

    cache_dir = "/srv/askbuild-cache"    # shared download cache
    work_dir  = "/data/askbuild"         # work trees, build outputs, staging, image
    profile   = "default"                # which recipes/sources file
    cross_compile = "aarch64-linux-gnu-"  # cross toolchain prefix ({cross}); {host} derives
    [mirrors]                            # URL prefix -> replacement (see askbuild.urls)
    "https://github.com/" = "file:///srv/git-mirrors/github.com/"

Environment: ``ASKBUILD_CACHE_DIR``, ``ASKBUILD_WORK_DIR``, ``ASKBUILD_PROFILE``,
``ASKBUILD_MIRRORS`` (space-separated ``PREFIX=REPLACEMENT`` pairs, these win over files),
``ASKBUILD_CONFIG``, ``CROSS_COMPILE`` (the cross toolchain prefix, as for the kernel's make),
``ASKBUILD_PROJECT_ROOT`` (where ``recipes/`` and ``patches/`` are read
from; default: this checkout; tests point it at fixture projects), ``ASKBUILD_RAM_DIR`` (a
file system in RAM for throw-away scratch repositories, default ``/dev/shm``; empty: none,
they stay in the work directory: :func:`askbuild.patchqueue.scratch.scratch_home`).

Paths are made absolute once, here, and every later step uses them as they are:

* a ``--work-dir`` / ``--cache-dir`` option or an ``ASKBUILD_*`` variable that is relative is
  taken relative to the directory askbuild was started in;
* a relative ``work_dir`` / ``cache_dir`` in a config file is taken relative to the directory
  of that config file;
* ``~`` is expanded first.

Every value is checked when it is loaded (type, a directory path that is not a file, a known
profile name, ``--jobs`` a positive whole number); a bad one is a :class:`ConfigError` naming
the option, variable or file and key, the value and the fix.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import stat
from pathlib import Path

from . import xdg
from .errors import ConfigError
from .fsutil import read_toml
from .urls import check_url, redact

PROJECT_ROOT = Path(__file__).resolve().parent.parent
KNOWN_CONFIG_KEYS = {"cache_dir", "work_dir", "profile", "mirrors", "cross_compile",
                     "cache", "ccache", "registry"}
# the config tables of the machines beyond this one (docs/fleet.md): key -> (type, example)
REMOTE_TABLES: dict[str, dict[str, tuple[type, str]]] = {
    "cache": {"remote": (str, '"oci://registry.example:5000/askbuild/cache"'),
              "push": (bool, "true")},
    "ccache": {"remote": (str, '"redis://redis.example:6379"')},
    "registry": {"insecure": (list, '["registry.example:5000"]')},
}
CACHE_REMOTE_SCHEMES = ("oci",)
CCACHE_REMOTE_SCHEMES = ("redis", "redis+unix", "http", "https", "file")
DEFAULT_CROSS_COMPILE = "aarch64-linux-gnu-"
# Debian's multiarch tuple of the target (arm64): where the arm64 -dev packages put headers and
# libraries (/usr/lib/<MULTIARCH>) and the base layer's library directory.  A fact about Debian,
# not about the toolchain: an ARM toolchain's triplet (aarch64-none-linux-gnu) differs.
MULTIARCH = "aarch64-linux-gnu"
#: the file system in RAM (tmpfs) throw-away scratch repositories go to when it has room
RAM_DIR = Path("/dev/shm")
# the options of Settings.given that take a value
VALUE_OPTIONS = ("--work-dir", "--cache-dir", "--profile", "--cross-compile")
# verbs that accept only some of those options (tasks.py `@verb(common=...)`); every other verb
# accepts all of them
VERB_OPTIONS = {"setup": (), "test": (), "doctor": ("--cross-compile",),
                "image.push": ("--work-dir", "--cache-dir"),
                "rehearse": ("--cache-dir", "--cross-compile")}
TARGET_ARCH = "arm64"
CROSS_COMPILE_RE = re.compile(r"[A-Za-z0-9_./+][A-Za-z0-9_./+-]*")
PROFILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
REGISTRY_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?")
REPO_RE = re.compile(r"[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*")
MAX_SHOWN = 60


def got(value: object) -> str:
    """How an error message shows a value read from a file or an option: TOML-like, short."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def absolute(path: str | Path, base: Path | None = None) -> Path:
    """``path`` with ``~`` expanded, made absolute against ``base`` (default: the current
    directory) and normalised (``a/../b`` -> ``b``); an absolute path keeps its place."""
    p = Path(os.path.expanduser(os.fspath(path)))
    if not p.is_absolute():
        if base is None:
            try:
                base = Path.cwd()
            except FileNotFoundError:
                raise ConfigError(f"cannot make {str(p)!r} absolute: the current directory "
                                  "no longer exists", fix="cd to an existing directory, or "
                                  "give absolute paths") from None
        p = base / p
    return Path(os.path.normpath(p))


# -- config files ------------------------------------------------------------------------------

def _check_config(path: Path, data: dict) -> dict:
    """Validate the keys and value types of one config file."""
    unknown = set(data) - KNOWN_CONFIG_KEYS
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))}",
            fix=f"allowed keys: {', '.join(sorted(KNOWN_CONFIG_KEYS))}",
        )
    for key in ("cache_dir", "work_dir"):
        if key in data and not (isinstance(data[key], str) and data[key].strip()):
            raise ConfigError(f"{path}: {key}: must be a directory path string "
                              f"(got {got(data[key])})",
                              fix=f'e.g. {key} = "/srv/askbuild" (relative paths are relative '
                                  "to this file's directory)")
    if "profile" in data:
        check_profile(data["profile"], f"{path}: profile")
    if "cross_compile" in data:
        check_cross_compile(data["cross_compile"], f"{path}: cross_compile")
    for table, keys in REMOTE_TABLES.items():
        _check_table(path, table, data.get(table), keys)
    if "remote" in data.get("cache", {}):
        check_cache_remote(data["cache"]["remote"], f"{path}: cache.remote")
    if "remote" in data.get("ccache", {}):
        check_ccache_remote(data["ccache"]["remote"], f"{path}: ccache.remote")
    for i, host in enumerate(data.get("registry", {}).get("insecure", [])):
        check_registry_host(host, f"{path}: registry.insecure[{i}]")
    mirrors = data.get("mirrors", {})
    if not isinstance(mirrors, dict):
        raise ConfigError(f"{path}: mirrors: must be a table of URL prefix = \"replacement\" "
                          f"(got {got(mirrors)})", fix=MIRROR_FIX)
    for prefix, repl in mirrors.items():
        check_mirror(prefix, repl, f"{path}: mirrors.{prefix!r}")
    return data


def _check_table(path: Path, table: str, value: object,
                 keys: dict[str, tuple[type, str]]) -> None:
    """``[table]`` of a config file: a table of the known ``keys``, each of its type."""
    if value is None:
        return
    example = "\n".join(f"{k} = {ex}" for k, (_t, ex) in keys.items())
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {table}: must be a table (got {got(value)})",
                          fix=f"e.g.\n[{table}]\n{example}")
    for key, item in value.items():
        if key not in keys:
            raise ConfigError(f"{path}: {table}.{key}: unknown key",
                              fix=f"[{table}] knows: {', '.join(keys)}")
        want = keys[key][0]
        if not isinstance(item, want) or (want is int and isinstance(item, bool)):
            raise ConfigError(f"{path}: {table}.{key}: must be a {want.__name__} "
                              f"(got {got(item)})", fix=f"e.g. {key} = {keys[key][1]}")


def _scheme(value: object) -> str:
    return value.partition("://")[0] if isinstance(value, str) and "://" in value else ""


def check_cache_remote(value: object, where: str) -> str:
    """The shared build cache: ``oci://HOST[:PORT]/REPO`` (an OCI distribution registry
    repository; docs/fleet.md)."""
    rest = value.partition("://")[2] if isinstance(value, str) else ""
    host, _, repo = rest.partition("/")
    if _scheme(value) not in CACHE_REMOTE_SCHEMES or not host or not repo \
            or not REGISTRY_HOST_RE.fullmatch(host) or not REPO_RE.fullmatch(repo):
        raise ConfigError(f"{where}: not an OCI cache location (got {got(value)})",
                          fix="oci://HOST[:PORT]/REPOSITORY, e.g. "
                              "oci://registry.example:5000/askbuild/cache")
    return value


def check_ccache_remote(value: object, where: str) -> str:
    """ccache's remote storage (``CCACHE_REMOTE_STORAGE``): one URL, ``redis://`` usually."""
    if _scheme(value) not in CCACHE_REMOTE_SCHEMES or any(c.isspace() for c in value) \
            or value.startswith("-"):
        shown = got(redact(value)) if isinstance(value, str) else got(value)
        raise ConfigError(f"{where}: not a ccache remote storage URL (got {shown})",
                          fix="e.g. redis://redis.example:6379 (schemes: "
                              + ", ".join(CCACHE_REMOTE_SCHEMES) + ")")
    return value


def check_registry_host(value: object, where: str) -> str:
    """A registry named by ``HOST[:PORT]`` (``[registry] insecure``, ``--insecure``)."""
    if not isinstance(value, str) or not REGISTRY_HOST_RE.fullmatch(value):
        raise ConfigError(f"{where}: not a registry HOST[:PORT] (got {got(value)})",
                          fix="e.g. registry.example:5000")
    return value


MIRROR_FIX = ('e.g. [mirrors] "https://github.com/" = "file:///srv/git-mirrors/github.com/"')


def check_mirror(prefix: object, repl: object, where: str) -> None:
    """One mirror entry: a non-empty prefix and a replacement URL of an allowed scheme
    (:func:`askbuild.urls.check_url` with the git schemes, the widest set; the mirrored URL is
    checked again for its source's kind when it is used)."""
    if not isinstance(repl, str) or not repl or not prefix:
        raise ConfigError(f"{where}: must map a URL prefix to a replacement URL string "
                          f"(got {got(repl)})", fix=MIRROR_FIX)
    check_url(repl, kind="git", what=where)


def _read_config(path: Path, *, required: bool = False) -> dict:
    """One config file as a validated dict; ``{}`` when it does not exist (unless
    ``required``).  Unreadable, not UTF-8, not TOML, wrong keys or types: ConfigError."""
    return _check_config(path, read_toml(path, missing_ok=not required))


def config_files(project_root: Path = PROJECT_ROOT) -> list[Path]:
    files = [
        Path(xdg.user_dir("config")) / "config.toml",
        project_root / "askbuild.toml",
    ]
    if os.environ.get("ASKBUILD_CONFIG"):
        files.append(absolute(os.environ["ASKBUILD_CONFIG"]))
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
        check_mirror(prefix, repl, f"ASKBUILD_MIRRORS: {prefix!r}")
        out[prefix] = repl
    return out


# -- option checks -----------------------------------------------------------------------------

def check_profile(value: object, where: str) -> str:
    """A profile name: a plain file-name stem (it names ``recipes/profiles/<profile>.toml``)."""
    if not isinstance(value, str) or not PROFILE_RE.fullmatch(value) or ".." in value:
        raise ConfigError(f"{where}: not a profile name (got {got(value)})",
                          fix="a profile is a name like 'default' or 'example' (letters, "
                              "digits, '-', '_', '.'): a file recipes/profiles/<name>.toml")
    return value


def check_cross_compile(value: object, where: str) -> str:
    """A cross toolchain prefix such as ``aarch64-linux-gnu-`` or ``/opt/tc/bin/aarch64-none-
    linux-gnu-``: ``<prefix>gcc`` is the C compiler.  It never starts with ``-`` (it is passed
    as ``CROSS_COMPILE=<prefix>`` to make) and holds no spaces or shell characters."""
    if not isinstance(value, str) or not CROSS_COMPILE_RE.fullmatch(value) \
            or not value.endswith("-"):
        raise ConfigError(f"{where}: not a cross toolchain prefix (got {got(value)})",
                          fix=f"a prefix ending in '-' that names <prefix>gcc, e.g. "
                              f"{DEFAULT_CROSS_COMPILE} (the default) or "
                              "/opt/toolchain/bin/aarch64-linux-gnu-")
    return value


def parse_jobs(value: object, where: str = "--jobs") -> int | None:
    """``--jobs``: a positive whole number; ``None``, ``""`` or ``0`` mean "the default"."""
    if value is None or value == "" or value == 0:
        return None
    if isinstance(value, bool):
        n = None
    elif isinstance(value, int):
        n = value
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit() \
            and value.strip().isascii():
        n = int(value.strip())
    else:
        n = None
    if n is None or n < 1:
        raise ConfigError(f"{where}: must be a whole number of jobs, at least 1 (got "
                          f"{got(value)})", fix=f"e.g. {where} 4 (default: the number of CPUs)")
    return n


def check_dir_path(path: Path, where: str) -> Path:
    """``path`` can be (or become) a directory: neither it nor any existing parent is a file
    (or a dangling link).  ``where`` names the option / variable / config key."""
    for p in (path, *path.parents):
        try:
            st = os.stat(p)
        except FileNotFoundError:
            if os.path.lexists(p):
                raise ConfigError(f"{where}: {p} is a dangling symbolic link",
                                  fix="remove the link or point it at a directory") from None
            continue
        except NotADirectoryError:
            continue        # a parent is a file: found further up
        except ValueError:
            raise ConfigError(f"{where}: a path cannot contain a NUL character "
                              f"(got {got(str(path))})") from None
        except OSError as e:
            if e.errno == errno.EACCES:
                raise ConfigError(f"{where}: {p}: permission denied",
                                  fix="choose a directory you can write to") from None
            raise ConfigError(f"{where}: {p}: {e.strerror or e}") from None
        if stat.S_ISDIR(st.st_mode):
            return path
        what = "is a file" if stat.S_ISREG(st.st_mode) else "is not a directory"
        inside = "" if p == path else f" ({path} would be inside it)"
        raise ConfigError(f"{where}: {p} {what}, not a directory{inside}",
                          fix="name a directory (it is created when missing)")
    return path


# -- the settings ------------------------------------------------------------------------------

class Settings:
    """Everything a run needs to know about locations and policy.  ``project_root``,
    ``cache_dir`` and ``work_dir`` are always absolute (made so at construction).  (A plain
    class, not a dataclass: ``dataclasses`` imports ``inspect``, some 10 ms of every verb's
    start.)"""

    #: the settings, in order (equality, :meth:`replace`, the representation)
    FIELDS = ("project_root", "cache_dir", "work_dir", "profile", "mirrors", "offline",
              "locked", "jobs", "debug", "cross_compile", "cache_remote", "cache_push",
              "ccache_remote", "insecure_registries", "ram_dir", "given")

    def __init__(self, *, project_root: Path = PROJECT_ROOT, cache_dir: Path | None = None,
                 work_dir: Path = PROJECT_ROOT / "build", profile: str = "default",
                 mirrors: dict[str, str] | None = None, offline: bool = False,
                 locked: bool = False, jobs: int | None = None, debug: bool = False,
                 cross_compile: str = DEFAULT_CROSS_COMPILE, cache_remote: str = "",
                 cache_push: bool = False, ccache_remote: str = "",
                 insecure_registries: tuple[str, ...] = (), ram_dir: Path | None = RAM_DIR,
                 given: tuple[str, ...] = ()) -> None:
        self.project_root = absolute(project_root)
        self.cache_dir = absolute(Path(xdg.user_dir("cache")) if cache_dir is None
                                  else cache_dir)
        self.work_dir = absolute(work_dir)
        self.profile = profile
        self.mirrors = {} if mirrors is None else mirrors
        self.offline = offline
        self.locked = locked
        self.jobs = (os.cpu_count() or 1) if jobs is None else jobs
        self.debug = debug
        self.cross_compile = cross_compile
        # beyond this machine (docs/fleet.md): the shared build cache, whether this run
        # uploads to it, ccache's remote storage, registries allowed over plain HTTP
        self.cache_remote = cache_remote
        self.cache_push = cache_push
        self.ccache_remote = ccache_remote
        self.insecure_registries = insecure_registries
        # a file system in RAM for throw-away scratch repositories (None: the work dir
        # holds them)
        self.ram_dir = ram_dir
        # the options given on the command line that shape the settings, as words (absolute
        # paths): what a printed command must repeat to act on the same work dir, cache and
        # profile
        self.given = given

    def replace(self, **changes: object) -> Settings:
        """A copy with ``changes`` (setting names), made as the constructor makes one."""
        unknown = set(changes) - set(self.FIELDS)
        if unknown:
            raise TypeError(f"not a setting: {', '.join(sorted(unknown))}")
        return type(self)(**{**{f: getattr(self, f) for f in self.FIELDS}, **changes})

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.FIELDS)

    __hash__ = None     # (mutable, compared by value)

    def __repr__(self) -> str:
        return f"Settings({', '.join(f'{f}={getattr(self, f)!r}' for f in self.FIELDS)})"

    def command(self, verb: str, *words: str, without: tuple[str, ...] = ()) -> str:
        """A command line to print in a message: ``inv VERB WORDS...`` plus the options this run
        was given (``--work-dir``, ``--cache-dir``, ``--profile``, ``--cross-compile``,
        ``--offline``, ``--locked``), shell-quoted, so that pasting it in the same shell acts on
        the same work directory, cache and profile.  ``without``: flags of this run the advice
        must not repeat (e.g. ``("--offline",)`` in "fetch it online first")."""
        given: list[str] = []
        words_given = list(self.given)
        while words_given:
            word = words_given.pop(0)
            takes_value = word in VALUE_OPTIONS
            value = [words_given.pop(0)] if takes_value and words_given else []
            accepted = VERB_OPTIONS.get(verb)
            if word not in without and (accepted is None or word in accepted):
                given += [word, *value]
        return shlex.join(["inv", verb, *words, *given])

    # -- the cross toolchain ---------------------------------------------------------
    @property
    def host_triplet(self) -> str:
        """The GNU host triplet of the cross toolchain (``{host}`` in recipes, ``--host`` of
        configure): the prefix's file name without its trailing ``-``."""
        return self.cross_compile.rsplit("/", 1)[-1].rstrip("-")

    @property
    def multiarch(self) -> str:
        """Debian's multiarch tuple of the target (``/usr/lib/<multiarch>``)."""
        return MULTIARCH

    @property
    def cross_gcc(self) -> str:
        """The cross C compiler actually used: ``<cross_compile>gcc``."""
        return f"{self.cross_compile}gcc"

    # -- layout: every path askbuild reads or writes has its owner here ------------------
    # Project (read): recipes, sources file.  Work dir (written): see docs/ARCHITECTURE.md
    # "Work directory layout".  Cache (shared between work dirs): "Cache layout".
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

    def source_tree(self, name: str) -> Path:
        """The work tree of source ``name``: ``<work>/src/<name>``."""
        return self.src_dir / name

    @property
    def state_dir(self) -> Path:
        """Records of completed steps, journals of pending ones, the work-dir lock."""
        return self.work_dir / "state"

    def patch_record(self, name: str) -> Path:
        """What ``inv patch`` applied to source ``name`` (``patchqueue.tree_state``)."""
        return self.state_dir / f"patch-{name}.json"

    def failed_patch_record(self, name: str) -> Path:
        """The patch that stopped the last ``inv patch`` of ``name`` (for ``patches.edit``)."""
        return self.state_dir / f"failed-patch-{name}.json"

    def edit_record(self, source: str, layer_slug: str) -> Path:
        """An open ``inv patches.edit`` of one layer of ``source``."""
        return self.state_dir / f"edit-{source}-{layer_slug}.json"

    def series_pending(self, key: str) -> Path:
        """The journal of a series directory being rewritten (all or nothing)."""
        return self.state_dir / f"series-pending-{key}.json"

    def rebase_state(self, name: str) -> Path:
        """The phase and progress of an ``inv rebase`` of ``name`` in progress."""
        return self.state_dir / f"rebase-{name}.json"

    def rebase_backup(self, name: str) -> Path:
        """What ``inv rebase --abort`` restores: the series and sources file as they were."""
        return self.state_dir / f"rebase-{name}"

    def fetch_stamp(self, name: str) -> Path:
        """What the last successful fetch of ``name`` saw (stat signatures): a no-op fetch
        answers from it without running git."""
        return self.state_dir / f"fetch-{name}.json"

    def patch_stamp(self, name: str) -> Path:
        """What the last successful ``inv patch`` of ``name`` saw (ref contents and stat
        signatures, ``patchqueue.record``): a no-op patch and ``patch_state_problem`` answer
        from it without running git."""
        return self.state_dir / f"stamp-patch-{name}.json"

    @property
    def image_stamp(self) -> Path:
        """What the last ``inv image`` saw (stat signatures of its inputs and archive, the
        options): a no-op ``inv image --no-load`` answers from it (``imaging``)."""
        return self.image_dir / "image-stamp.json"

    def build_record(self, name: str) -> Path:
        """The done record of component ``name`` (its content key and staged files)."""
        return self.state_dir / f"build-{name}.json"

    @property
    def build_stamp(self) -> Path:
        """What a no-op build answers from without git, gcc or dpkg-query (tree ids by commit,
        the toolchain and package versions by stat signatures)."""
        return self.state_dir / "stamp-build.json"

    @property
    def run_lock(self) -> Path:
        """The work-dir lock file (``runlock.work_dir``)."""
        return self.state_dir / "askbuild.lock"

    @property
    def out_dir(self) -> Path:
        """Per-component build output directories."""
        return self.work_dir / "out"

    def out_tree(self, name: str) -> Path:
        """Component ``name``'s output directory: ``<work>/out/<name>``."""
        return self.out_dir / name

    @property
    def sysroot_dir(self) -> Path:
        """Headers, libraries and pkg-config files components install for each other."""
        return self.work_dir / "sysroot"

    @property
    def staging_dir(self) -> Path:
        """The root file system of the image-to-be."""
        return self.work_dir / "staging"

    @property
    def logs_dir(self) -> Path:
        return self.work_dir / "logs"

    def log_file(self, name: str) -> Path:
        """The build log of component ``name`` (or of a step such as ``image-base``)."""
        return self.logs_dir / f"{name}.log"

    @property
    def build_manifest(self) -> Path:
        """``build-manifest.json``: what the staging tree holds, built from what."""
        return self.work_dir / "build-manifest.json"

    @property
    def ccache_bin_dir(self) -> Path:
        """Compiler wrappers (``<cross>gcc`` -> ccache) put first on PATH with ``--ccache``."""
        return self.work_dir / "ccache-bin"

    @property
    def image_dir(self) -> Path:
        """The image archive (``cmm.tar``), its app layer and its record."""
        return self.work_dir / "image"

    @property
    def image_record(self) -> Path:
        return self.image_dir / "image.json"

    @property
    def image_tests_record(self) -> Path:
        """``{engine id: [image ids that passed image.test]}`` (``inv all`` skips a passed id)."""
        return self.image_dir / "image-tests.json"

    @property
    def example_upstreams_dir(self) -> Path:
        """The example profile's upstreams, published from ``examples/vendor`` (``examples``)."""
        return self.work_dir / "example-upstreams"

    @property
    def rehearsal_dir(self) -> Path:
        """The default work directory of ``inv rehearse`` (its own layout, as this one)."""
        return self.work_dir / "rehearsal"

    @property
    def ram_scratch_dir(self) -> Path | None:
        """This user's directory for throw-away scratch repositories in RAM,
        ``<ram_dir>/askbuild-<uid>`` (shared by every work dir of the user: a scratch there
        is named after its work dir, :attr:`scratch_key`); None when ``ram_dir`` is off.
        Whether it is used: :func:`askbuild.patchqueue.scratch.scratch_home`."""
        return None if self.ram_dir is None else self.ram_dir / f"askbuild-{os.geteuid()}"

    @property
    def scratch_key(self) -> str:
        """What names this work directory's scratch repositories in :attr:`ram_scratch_dir`
        (part of a digest of its path)."""
        import hashlib
        return hashlib.sha256(os.fsencode(self.work_dir)).hexdigest()[:16]

    # -- the shared cache ----------------------------------------------------------------
    @property
    def git_cache(self) -> Path:
        return self.cache_dir / "git"

    def git_cache_repo(self, name: str) -> Path:
        """The bare cache repository of git source ``name``."""
        return self.git_cache / f"{name}.git"

    @property
    def tarball_cache(self) -> Path:
        """Verified tarballs at ``<sha256>/<file>``; ``.incoming/<name>/`` while downloading,
        ``quarantine/`` for files that failed verification, ``imports/<sha256>/`` for the
        objects of their imports."""
        return self.cache_dir / "tarballs"

    def tarball_file(self, sha256: str, filename: str) -> Path:
        return self.tarball_cache / sha256 / filename

    def tarball_import(self, sha256: str) -> Path:
        """The cached import of the tarball ``sha256``: the git objects its first import made
        (:mod:`askbuild.importcache`)."""
        return self.tarball_cache / "imports" / sha256

    def tarball_incoming(self, name: str) -> Path:
        return self.tarball_cache / ".incoming" / name

    @property
    def tarball_quarantine(self) -> Path:
        return self.tarball_cache / "quarantine"

    def cache_lock(self, name: str) -> Path:
        """The per-source (or per-entry) cache lock file (``runlock.cache``)."""
        return self.cache_dir / "locks" / f"{name}.lock"

    @property
    def ccache_dir(self) -> Path:
        """ccache's store (``CCACHE_DIR`` unless the environment sets one)."""
        return self.cache_dir / "ccache"

    @property
    def base_layer_cache(self) -> Path:
        """The Debian base layers, one directory per content key."""
        return self.cache_dir / "image" / "base"

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
        jobs: int | str | None = None,
        debug: bool = False,
        cross_compile: str | None = None,
        cache_remote: str | None = None,
        cache_push: bool = False,
        ccache_remote: str | None = None,
        insecure: str | list[str] | None = None,
    ) -> Settings:
        """Resolve every setting (option > environment > config files > default), check it and
        make paths absolute (see the module docstring for the rule)."""
        root = _project_root(project_root)
        merged, origin = _merge_config_files(root)
        mirrors = dict(merged["mirrors"])
        if os.environ.get("ASKBUILD_MIRRORS"):
            mirrors.update(parse_mirror_env(os.environ["ASKBUILD_MIRRORS"]))
        cache = _pick_dir(cache_dir, "--cache-dir", "ASKBUILD_CACHE_DIR", "cache_dir", merged,
                          origin, Path(xdg.user_dir("cache")))
        work = _pick_dir(work_dir, "--work-dir", "ASKBUILD_WORK_DIR", "work_dir", merged,
                         origin, root / "build")
        s = cls(
            given=_given(cache_dir=cache, work_dir=work, profile=profile, offline=offline,
                         locked=locked, cross_compile=cross_compile,
                         explicit={"cache_dir": cache_dir, "work_dir": work_dir}),
            project_root=root,
            cache_dir=cache,
            work_dir=work,
            profile=_pick_profile(profile, merged),
            mirrors=mirrors,
            offline=bool(offline),
            locked=bool(locked),
            jobs=parse_jobs(jobs) or (os.cpu_count() or 1),
            debug=bool(debug),
            cross_compile=_pick_cross_compile(cross_compile, merged, origin),
            cache_remote=_pick_remote(cache_remote, "--cache-remote", "ASKBUILD_CACHE_REMOTE",
                                      merged.get("cache", {}), check_cache_remote),
            cache_push=bool(cache_push) or merged.get("cache", {}).get("push", False),
            ccache_remote=_pick_remote(ccache_remote, "--ccache-remote",
                                       "ASKBUILD_CCACHE_REMOTE", merged.get("ccache", {}),
                                       check_ccache_remote),
            insecure_registries=_pick_insecure(insecure, merged.get("registry", {})),
            ram_dir=_ram_dir(),
        )
        if not s.sources_file.is_file():
            profiles = sorted(p.stem for p in (s.recipes_dir / "profiles").glob("*.toml"))
            raise ConfigError(
                f"profile {s.profile!r}: {s.sources_file} does not exist",
                fix=f"use one of: default, {', '.join(profiles) or '(none)'}",
            )
        return s


def _project_root(arg: Path | str | None) -> Path:
    if arg:
        return absolute(arg)
    value = os.environ.get("ASKBUILD_PROJECT_ROOT")
    if not value:
        return PROJECT_ROOT
    return _env_dir("ASKBUILD_PROJECT_ROOT", value,
                    "point it at an askbuild project (the directory holding recipes/), or "
                    "unset it")


def _env_dir(name: str, value: str, fix: str) -> Path:
    """The directory the environment variable ``name`` says (``value``), made absolute; a
    :class:`ConfigError` with ``fix`` when it is not a directory."""
    path = absolute(value)
    if not path.is_dir():
        raise ConfigError(f"{name}: {path} is not a directory (got {value!r})", fix=fix)
    return path


def _ram_dir() -> Path | None:
    """``ASKBUILD_RAM_DIR``: unset, :data:`RAM_DIR`; empty, None (no scratch in RAM); else
    that directory, which must exist."""
    value = os.environ.get("ASKBUILD_RAM_DIR")
    if value is None:
        return RAM_DIR
    if not value:
        return None
    return _env_dir("ASKBUILD_RAM_DIR", value,
                    "point it at a file system in RAM (a tmpfs such as /dev/shm), set it "
                    "empty to keep scratch repositories in the work directory, or unset it")


def _merge_config_files(root: Path) -> tuple[dict, dict[str, Path]]:
    """Merged config values, and for each key the file it came from (later files win)."""
    merged: dict = {"mirrors": {}}
    origin: dict[str, Path] = {}
    files = config_files(root)
    explicit = absolute(os.environ["ASKBUILD_CONFIG"]) if os.environ.get("ASKBUILD_CONFIG") \
        else None
    for f in files:
        try:
            data = dict(_read_config(f, required=f == explicit))
        except ConfigError as e:
            if f == explicit and not e.message.startswith("ASKBUILD_CONFIG"):
                raise ConfigError(f"ASKBUILD_CONFIG: {e.message}",
                                  fix=e.fix or "point ASKBUILD_CONFIG at a TOML file, or "
                                               "unset it") from None
            raise
        merged["mirrors"].update(data.pop("mirrors", {}))
        for table in REMOTE_TABLES:         # later files win key by key, not table by table
            merged.setdefault(table, {}).update(data.pop(table, {}))
        for key, value in data.items():
            merged[key] = value
            origin[key] = f
    return merged, origin


def _pick_dir(arg: str | Path | None, option: str, env_name: str, key: str, merged: dict,
              origin: dict[str, Path], default: Path) -> Path:
    """One directory setting, absolute, checked, with the name of where it came from."""
    if arg is not None and not isinstance(arg, str | os.PathLike):
        raise ConfigError(f"{option}: must be a directory path (got {got(arg)})")
    if arg not in (None, ""):
        return check_dir_path(absolute(arg), option)
    if os.environ.get(env_name):
        return check_dir_path(absolute(os.environ[env_name]), env_name)
    if key in merged:
        where = f"{origin[key]}: {key}"
        return check_dir_path(absolute(merged[key], origin[key].parent), where)
    return check_dir_path(absolute(default), f"the default {key} ({option} to change it)")


def _given(*, cache_dir: Path, work_dir: Path, profile: str | None, offline: bool,
           locked: bool, cross_compile: str | None, explicit: dict) -> tuple[str, ...]:
    """The command-line options of this run as words for :meth:`Settings.command` (directory
    options as the absolute paths they resolved to)."""
    words: list[str] = []
    if explicit["work_dir"] not in (None, ""):
        words += ["--work-dir", str(work_dir)]
    if explicit["cache_dir"] not in (None, ""):
        words += ["--cache-dir", str(cache_dir)]
    if profile not in (None, ""):
        words += ["--profile", str(profile)]
    if cross_compile not in (None, ""):
        words += ["--cross-compile", str(cross_compile)]
    words += ["--offline"] * bool(offline) + ["--locked"] * bool(locked)
    return tuple(words)


def _pick_cross_compile(arg: str | None, merged: dict, origin: dict[str, Path]) -> str:
    if arg not in (None, ""):
        return check_cross_compile(arg, "--cross-compile")
    if os.environ.get("CROSS_COMPILE"):
        return check_cross_compile(os.environ["CROSS_COMPILE"], "CROSS_COMPILE")
    if "cross_compile" in merged:
        return merged["cross_compile"]
    return DEFAULT_CROSS_COMPILE


def _pick_remote(arg: str | None, option: str, env_name: str, table: dict,
                 check) -> str:
    """A remote location: option > environment > config table's ``remote`` > none."""
    if arg not in (None, ""):
        return check(arg, option)
    if os.environ.get(env_name):
        return check(os.environ[env_name], env_name)
    return table.get("remote", "")


def _pick_insecure(arg: str | list[str] | None, table: dict) -> tuple[str, ...]:
    """Registries allowed over plain HTTP: ``--insecure HOST[:PORT]`` (repeatable or
    comma-separated) plus ``[registry] insecure``.  127.0.0.1 and localhost always are."""
    given = [arg] if isinstance(arg, str) else list(arg or [])
    hosts = [h.strip() for a in given for h in a.split(",") if h.strip()]
    for h in hosts:
        check_registry_host(h, "--insecure")
    return tuple(dict.fromkeys([*table.get("insecure", []), *hosts]))


def _pick_profile(arg: str | None, merged: dict) -> str:
    if arg not in (None, ""):
        return check_profile(arg, "--profile")
    if os.environ.get("ASKBUILD_PROFILE"):
        return check_profile(os.environ["ASKBUILD_PROFILE"], "ASKBUILD_PROFILE")
    if "profile" in merged:
        return merged["profile"]
    return "default"
