"""``inv fetch``: every source into the shared download cache and its work tree, verified.

Cache (``settings.cache_dir``, shared by all work dirs, checkouts and profiles):

* ``git/<name>.git``: a bare repository per git source.  Only pinned commits are fetched
  (``git fetch --depth 1 -- URL <sha>``; when a server refuses a bare SHA: the ref, shallow,
  then the ref's full history).  A commit counts as present only when it is *complete*: its
  tree and every blob in it readable and its history whole down to the shallow boundary
  (``git rev-list --objects``, :func:`has_commit`), so the objects a killed or disk-full fetch
  left behind are never taken for a fetched commit.  Every complete commit askbuild needed is
  kept reachable by ``refs/askbuild/keep/<sha>``, so the cache never forgets a pin and later
  fetches only send what is new.  An incomplete commit is fetched again, a damaged repository
  is rebuilt (one line says so): it is a cache.
* Other refs (:func:`fetch_ref`: ``--onto``, ``inv fetch --ref``, ``inv lock``): a tag or
  branch is fetched shallow and remembered as ``refs/askbuild/seen/<ref>`` (once it is, a
  ``git ls-remote`` that finds it unmoved stands for the fetch); an abbreviated
  SHA (4+ hex, when no tag or branch has that name) is looked up among the cache's commits and
  upstream's branch and tag tips, and when that cannot settle it, in the whole history of
  every upstream branch and tag (fetched once into ``refs/askbuild/upstream/``).  ``--offline``
  answers from these refs: what upstream had on the last online contact.
* ``tarballs/<sha256>/<file>``: verified release tarballs, downloaded into
  ``tarballs/.incoming/<name>/`` and moved into place only once verified;
  ``tarballs/quarantine/``: files that failed verification, kept for inspection and never used.
  A cached file that no longer verifies is quarantined and downloaded again.
* ``locks/<name>.lock``: the per-source cache lock (:func:`askbuild.runlock.cache`), held
  while a source's cache entry is read or changed, so runs from any number of checkouts and
  work dirs share one cache safely.

Work tree ``<work>/src/<name>``: a git repository, HEAD detached at the base, lightweight tag
``askbuild/base``.  Git sources borrow the cache's objects (``objects/info/alternates``, plus a
copy of the cache's ``shallow`` list); tarball sources are extracted safely and committed as
one deterministic commit (:data:`askbuild.gitutil.FIXED_IDENTITY`).  A new tree is built under
a temporary name unique to the run (``src/.<name>.tmp-<pid>-<random>``,
``src/.<name>.import-...``), checked (every tracked file is there) and renamed into place, so
a tree that exists is complete.  A tree already at its base is left alone (the patch step's
``askbuild/patched`` branch included); a base move on a tree with uncommitted changes is
refused (:class:`DirtyTreeError`).  A base move writes ``.git/askbuild-base-move.json`` first
and removes it last: the next run finishes a move that was interrupted, after checking that
every changed file holds the old or the new version (anything else is a user edit: refused).

Leftovers of killed runs (temporary trees, ``.part`` files, git lock and temporary files) are
removed by the next run, only while it holds the lock that covers them (the work-dir lock for
``src/``, the source's cache lock for its cache entry), so a live run's files are never touched.
Every git failure is a :class:`SourceError` naming the source and URL; a full disk is a
:class:`~askbuild.errors.NoSpaceError` naming the path and the free space.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from . import console, gitutil, runlock
from . import sources as sources_mod
from .download import (
    NoSpaceError,
    download,
    network_fix,
    no_space_error,
    progress,
    unique_name,
)
from .errors import (
    AskbuildError,
    ConfigError,
    DirtyTreeError,
    NetworkError,
    OfflineError,
    SourceError,
    UnlockedSourceError,
    VerificationError,
    summary_error,
)
from .fsutil import discard, read_json, sha256_file, write_json_atomic
from .gitutil import GitError, check_ref, is_abbrev, is_sha
from .refs import BASE_REF, BASE_TAG, KEEP_PREFIX, SEEN_PREFIX, UPSTREAM_PREFIX
from .settings import Settings
from .sources import Source, load_sources, select, write_lock
from .urls import apply_mirrors, check_url, scheme_of


def __getattr__(name: str):
    """``SHA256_TRAILER`` is tarimport's (imported here only when asked for: tarimport brings
    tarfile and the download code, which a fetch of git sources does not need)."""
    if name == "SHA256_TRAILER":
        from .tarimport import SHA256_TRAILER
        return SHA256_TRAILER
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: In a work tree's ``.git``: a base move in progress (``{"from": sha, "to": sha}``).
MOVE_MARKER = "askbuild-base-move.json"

# git's words for "the remote cannot be reached at all" (no point in trying other requests).
_UNREACHABLE = re.compile(
    r"Could not resolve host|unable to access|Failed to connect|Connection refused|"
    r"Connection timed out|Network is unreachable|does not appear to be a git repository|"
    r"Could not read from remote repository|Repository not found|unable to connect|"
    r"Name or service not known|Temporary failure in name resolution|No route to host",
    re.IGNORECASE)
# git's words for a damaged local repository (objects missing or corrupt).
_DAMAGED = re.compile(
    r"corrupt|bad object|bad tree object|unable to read|missing (?:blob|tree|commit) object|"
    r"invalid object|did not send all necessary objects|unable to parse|"
    r"Failed to traverse parents|not a git repository",
    re.IGNORECASE)


class _Damaged(Exception):
    """The cache repository is damaged: rebuild it and try once more."""


# -- small helpers ------------------------------------------------------------------------

def cache_repo(settings: Settings, source: Source) -> Path:
    """The bare cache repository of a git source (``Settings.git_cache_repo``)."""
    return settings.git_cache_repo(source.name)


def remote_url(settings: Settings, source: Source) -> str:
    """The URL to fetch from: the declared one rewritten by mirrors, checked again."""
    url = apply_mirrors(source.url, settings.mirrors)
    if url != source.url:
        check_url(url, kind=source.kind, what=f"source {source.name} (mirror of {source.url})")
    return url


def local_mirror(settings: Settings, source: Source) -> bool:
    """Whether a mirror rewrites ``source`` to a ``file://`` URL: ``--offline`` still reads
    the locked commit or tarball from it (no network: a fleet runner with ``inv mirror``'s
    directory on a share, docs/mirror.md).  Refs are never resolved from it offline."""
    url = apply_mirrors(source.url, settings.mirrors)
    return url != source.url and scheme_of(url) == "file"


def record_lock(settings: Settings, source: Source, **fields: object) -> Source:
    with runlock.cache(settings, "_sources-file"):   # "_": no source can be named so
        write_lock(settings, source.name, **fields)
    return source._replace(**fields)


def _short(sha: str | None) -> str:
    return (sha or "")[:12]


def _rel(settings: Settings, path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _stderr_detail(stderr: str) -> str:
    """The last two lines of git's stderr, without their ``fatal:``/``error:`` prefixes."""
    lines = [ln.removeprefix("fatal: ").removeprefix("error: ")
             for ln in stderr.strip().splitlines() if ln.strip()]
    return "; ".join(lines[-2:])


def _git_detail(err: GitError) -> str:
    return _stderr_detail(err.stderr) or f"exit status {err.returncode}"


def _git_failure(source: Source, url: str, place: Path, err: GitError) -> Exception:
    """A git failure as the user should see it: a full disk, or the source, URL and cause."""
    if gitutil.says_no_space(err.stderr):
        return no_space_error(source.name, f"run git {err.args_[0]}", place)
    return SourceError(
        f"source {source.name} ({url}): git {' '.join(err.args_[:2])} failed in {place}: "
        f"{_git_detail(err)}",
        fix=f"run the same command again (askbuild repairs its own cache); if it fails the "
            f"same way, fix what git reports in {place}, or run with --debug and report it")


@contextlib.contextmanager
def _git_errors(source: Source, url: str, place: Path) -> Iterator[None]:
    """Turn a :class:`GitError` escaping the block into a :class:`SourceError` (or a
    :class:`NoSpaceError`) naming the source, the URL and ``place``."""
    try:
        yield
    except GitError as e:
        raise _git_failure(source, url, place, e) from e


# -- leftovers of killed runs ---------------------------------------------------------------

def _remove(paths: list[Path]) -> None:
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _matching(directory: Path, pattern: re.Pattern[str]) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if pattern.fullmatch(p.name))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _clean_work_leftovers(settings: Settings, source: Source) -> None:
    """Remove the temporary trees killed runs left in ``src/`` for this source.  The caller
    holds the work-dir lock, so no live run owns them."""
    name = re.escape(source.name)
    found = _matching(settings.src_dir, re.compile(rf"\.{name}\.(?:tmp|import)-[A-Za-z0-9_-]+"))
    if found:
        console.info(f"source {source.name}: removing what an interrupted run left behind: "
                     f"{', '.join(p.name for p in found)}")
        _remove(found)


def _stale_git_files(repo: Path) -> list[Path]:
    """Lock and temporary files a killed git left in the cache repository ``repo``."""
    if not repo.is_dir():
        return []
    found = list(repo.glob("*.lock"))
    found += (repo / "refs").rglob("*.lock") if (repo / "refs").is_dir() else []
    objects = repo / "objects"
    found += objects.glob("pack/tmp_*")
    found += objects.glob("tmp_obj_*")
    found += objects.glob("??/tmp_obj_*")
    return sorted(found)


def _clean_cache_leftovers(settings: Settings, source: Source) -> None:
    """Remove what killed runs left in this source's cache entry.  The caller holds the
    source's cache lock (every askbuild access to that entry does), so nothing found here
    belongs to a live run."""
    if source.kind == "git":
        repo = cache_repo(settings, source)
        name = re.escape(repo.name)
        found = _matching(settings.git_cache, re.compile(
            rf"\.{name}\.(?:(?:tmp|old)-[0-9]+-[0-9a-f]+|[a-z0-9_]{{8}})"))
        found += _stale_git_files(repo)
    else:
        found = _matching(settings.tarball_incoming(source.name), re.compile(r".*"))
        found += _matching(settings.tarball_cache, re.compile(
            rf"\.{re.escape(source.filename)}\.[a-z0-9_]{{8}}\.part"))    # older askbuilds
    if found:
        console.info(f"source {source.name}: removing {len(found)} file(s) an interrupted run "
                     f"left in the cache ({found[0].name}{', ...' if len(found) > 1 else ''})")
        _remove(found)


# -- git cache ----------------------------------------------------------------------------

def _valid_repo(repo: Path) -> bool:
    return (repo / "HEAD").is_file() and (repo / "objects").is_dir() and \
        (repo / "refs").is_dir()


def _init_cache(repo: Path) -> None:
    """Make ``repo`` a valid bare repository (built under a unique name, renamed into place);
    anything invalid in its place is discarded first."""
    if _valid_repo(repo):
        return
    if repo.exists() or repo.is_symlink():
        console.warn(f"the cache repository {repo} is not a valid git repository; rebuilding it")
        discard(repo)
    repo.parent.mkdir(parents=True, exist_ok=True)
    tmp = repo.parent / unique_name(f".{repo.name}.tmp-")
    try:
        gitutil.git(["init", "-q", "--bare", "--", str(tmp)])
        tmp.rename(repo)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _rebuild_cache(source: Source, repo: Path, why: str) -> None:
    console.warn(f"source {source.name}: the cache repository {repo} is damaged ({why}); "
                 "rebuilding it")
    discard(repo)
    _init_cache(repo)


def _tidy_cache(settings: Settings, source: Source) -> None:
    """Leftovers removed and, for git, an invalid repository discarded.  Cache lock held."""
    _clean_cache_leftovers(settings, source)
    repo = cache_repo(settings, source)
    if source.kind == "git" and repo.exists() and not _valid_repo(repo):
        console.warn(f"source {source.name}: the cache repository {repo} is not a valid git "
                     "repository; it will be rebuilt")
        discard(repo)


def _has_object(repo: Path, sha: str) -> bool:
    return gitutil.git(["cat-file", "-e", f"{sha}^{{commit}}"], cwd=repo,
                       check=False).returncode == 0


def has_commit(repo: Path, sha: str) -> bool:
    """Whether the cache repository holds commit ``sha`` *completely*: the commit, its tree
    and every blob in it (``rev-list --objects --no-walk``), and its history down to what
    the cache already holds or to the shallow boundary (git's own connectivity check).  The
    loose objects of an interrupted fetch never count."""
    if not is_sha(sha) or not _valid_repo(repo):
        return False
    for args in (["rev-list", "--quiet", "--objects", "--no-walk", sha],
                 ["rev-list", "--quiet", "--objects", sha, "--not", "--all"]):
        if gitutil.git(args, cwd=repo, check=False).returncode != 0:
            return False
    return True


def _keep(repo: Path, sha: str) -> None:
    gitutil.git(["update-ref", f"{KEEP_PREFIX}{sha}", sha], cwd=repo)


def _drop_keep(repo: Path, sha: str) -> None:
    """Forget the keep ref of an incomplete commit: while it exists, git would tell the
    server the cache already has that commit, and the missing objects would never come."""
    gitutil.git(["update-ref", "-d", f"{KEEP_PREFIX}{sha}"], cwd=repo, check=False)


def _is_unreachable(err: GitError) -> bool:
    return bool(_UNREACHABLE.search(err.stderr))


def _network_error(source: Source, url: str, err: GitError) -> NetworkError:
    return NetworkError(f"source {source.name}: cannot fetch from {url}: {_git_detail(err)}",
                        fix=network_fix())


def _fetch_failure(source: Source, url: str, repo: Path, err: GitError) -> Exception | None:
    """What a failed ``git fetch`` means: a full disk, an unreachable remote, a damaged cache
    (an exception to raise), or ``None``: the remote does not have what was asked."""
    if gitutil.says_no_space(err.stderr):
        return no_space_error(source.name, f"fetch {url}", repo)
    if _is_unreachable(err):
        return _network_error(source, url, err)
    if _DAMAGED.search(err.stderr):
        return _Damaged(_git_detail(err))
    return None


def _git_fetch(source: Source, repo: Path, url: str, opts: list[str], refs: list[str],
               label: str, *, specs: list[str] | None = None) -> None:
    """``git fetch --progress --no-tags OPTS -- URL REFS SPECS`` with a progress display.
    ``opts`` and ``specs`` (refspecs) are askbuild's own; ``refs`` (user values, validated)
    come after ``--``."""
    for ref in refs:
        check_ref(ref, what=f"source {source.name} ref")
    refs = [*refs, *(specs or [])]
    args = ["fetch", "--progress", "--no-tags"]
    with progress(f"fetch {source.name}: {label}", None, unit="objects") as update:
        def on_progress(phase: str, done: int, total: int | None) -> None:
            if phase.strip() == "Receiving objects":
                update(done, total)

        gitutil.git_progress([*args, *opts, "--", url, *refs], cwd=repo,
                             on_progress=on_progress)


def _offline_error(settings: Settings, source: Source, what: str, where: Path,
                   *, ref: str | None = None) -> OfflineError:
    """``--offline`` and ``what`` is not in the cache: fetch it once online (``ref``: the
    command brings that ref in with ``--ref``)."""
    words = ["--source", source.name, *(["--ref", ref] if ref else [])]
    cmd = settings.command("fetch", *words, without=("--offline",))
    return OfflineError(
        f"source {source.name}: --offline, and {what} is not in the cache ({where})",
        fix=f"run `{cmd}` once with network access (or a mirror), then --offline works; "
            "or drop --offline")


def fetch_commit(settings: Settings, source: Source, sha: str) -> None:
    """Make sure the cache repository holds commit ``sha`` of a git source, completely.

    No network when it is already there.  Raises :class:`VerificationError` when upstream no
    longer has the commit and its ref points elsewhere (a moved tag is never followed).
    """
    repo = cache_repo(settings, source)
    with runlock.cache(settings, source.name):
        _tidy_cache(settings, source)
        if has_commit(repo, sha):
            _keep(repo, sha)
            _sync_shallow(settings, source)
            return
        if settings.offline and not local_mirror(settings, source):
            raise _offline_error(settings, source, f"the locked commit {sha}", repo)
        url = remote_url(settings, source)
        with _git_errors(source, url, repo):
            _init_cache(repo)
            if _has_object(repo, sha):
                console.warn(f"source {source.name}: commit {_short(sha)} in the cache "
                             f"repository {repo} is incomplete (an earlier fetch was "
                             "interrupted); fetching it again")
                _drop_keep(repo, sha)
            try:
                _fetch_pin(settings, source, repo, url, sha)
            except _Damaged as e:
                _rebuild_cache(source, repo, str(e))
                try:
                    _fetch_pin(settings, source, repo, url, sha)
                except _Damaged as again:
                    raise _broken_upstream(source, url, sha, str(again)) from again
            _keep(repo, sha)
            _sync_shallow(settings, source)


def _broken_upstream(source: Source, url: str, what: str, detail: str) -> SourceError:
    return SourceError(
        f"source {source.name}: {what} fetched from {url} is incomplete even in a freshly "
        f"built cache repository: {detail}",
        fix="the upstream (or mirror) repository is damaged; fetch from another mirror "
            "(ASKBUILD_MIRRORS) or ask its maintainers")


def _fetch_pin(settings: Settings, source: Source, repo: Path, url: str, sha: str) -> None:
    """Fetch commit ``sha`` into ``repo`` until it is complete (see :func:`fetch_commit`);
    raises :class:`_Damaged` when git reports (or the result shows) a damaged cache."""
    attempts = [
        (lambda: ["--depth", "1"], sha, f"commit {_short(sha)}"),
        (lambda: ["--depth", "1"], source.ref, f"{source.ref} (server refused a bare SHA)"),
        (lambda: ["--unshallow"] if (repo / "shallow").exists() else [], source.ref,
         f"full history of {source.ref}"),
    ]
    ref_tip = None
    last: GitError | None = None
    for make_opts, what, label in attempts:
        try:
            _git_fetch(source, repo, url, make_opts(), [what], label)
        except GitError as e:
            failure = _fetch_failure(source, url, repo, e)
            if failure is not None:
                raise failure from e
            last = e
            continue
        if what == source.ref:
            ref_tip = gitutil.out(["rev-parse", "--verify", "-q", "FETCH_HEAD^{commit}"],
                                  cwd=repo, check=False) or ref_tip
        if has_commit(repo, sha):
            return
        if _has_object(repo, sha):
            raise _Damaged(f"commit {_short(sha)} is still incomplete after a fetch")
    if ref_tip:
        raise VerificationError(
            f"source {source.name}: the locked commit {sha} is not available from {url}, "
            f"and its ref {source.ref!r} now points at {ref_tip}: the tag was moved or the "
            f"history rewritten upstream; askbuild does not follow it",
            fix=f"if the new commit is intended, review it and run "
                f"`{_lock_command(settings, source, update=True)}`; otherwise fetch from a "
                "mirror that still has "
                f"{_short(sha)} (ASKBUILD_MIRRORS)")
    detail = _git_detail(last) if last else ""
    raise SourceError(
        f"source {source.name}: cannot fetch commit {sha} or ref {source.ref!r} from "
        f"{url}: {detail}",
        fix="check the ref and URL in the sources file, or lock again with "
            f"`{_lock_command(settings, source, update=True)}`")


def _fetch_ref_once(source: Source, repo: Path, url: str, ref: str) -> str | None:
    """Fetch the tag or branch ``ref`` (depth 1) into ``repo``; return its commit, complete,
    or ``None`` when upstream has no such ref."""
    try:
        _git_fetch(source, repo, url, ["--depth", "1"], [ref], ref)
    except GitError as e:
        failure = _fetch_failure(source, url, repo, e)
        if failure is not None:
            raise failure from e
        return None
    sha = gitutil.out(["rev-parse", "--verify", "FETCH_HEAD^{commit}"], cwd=repo)
    if not has_commit(repo, sha):
        raise _Damaged(f"commit {_short(sha)} of {ref} is incomplete after a fetch")
    return sha


def _remember(repo: Path, ref: str, sha: str) -> None:
    """Record what upstream's ``ref`` points at (``refs.SEEN_PREFIX``), for ``--offline``.
    A name git cannot store under that prefix is simply not remembered."""
    gitutil.git(["update-ref", f"{SEEN_PREFIX}{ref}", sha], cwd=repo, check=False)


def _seen_unchanged(repo: Path, url: str, ref: str) -> str | None:
    """The commit remembered for the tag or branch ``ref`` at its last fetch
    (``refs.SEEN_PREFIX``) when upstream's ``ref`` still names it and the cache still holds
    it complete: then ONE ``git ls-remote`` stands for the fetch and the checks and
    bookkeeping after it, which would find and write the same.  None (the fetch decides, and
    says what went wrong) for a ref never fetched, one that moved, a name upstream has both
    as a tag and a branch (or as ``refs/<ref>``), or a failing ``ls-remote``."""
    seen = gitutil.out(["rev-parse", "-q", "--verify", f"{SEEN_PREFIX}{ref}^{{commit}}"],
                       cwd=repo, check=False)
    if not is_sha(seen):
        return None
    proc = gitutil.git(["ls-remote", "--", url, ref, f"{ref}^{{}}"], check=False)
    if proc.returncode != 0:
        return None
    names: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        sha, _, name = line.partition("\t")
        names[name] = sha
    found = [n for n in (f"refs/{ref}", f"refs/tags/{ref}", f"refs/heads/{ref}") if n in names]
    if len(found) != 1 or found[0] == f"refs/{ref}":
        return None
    name = found[0]
    target = names.get(f"{name}^{{}}", names[name])      # (an annotated tag: peeled)
    return seen if target == seen and has_commit(repo, seen) else None


def _remembered(repo: Path, ref: str) -> str | None:
    """The complete commit ``ref`` pointed at on the last online contact: as resolved by name
    (``SEEN_PREFIX``), else as an upstream tag or branch (``UPSTREAM_PREFIX``); ``None``."""
    if not _valid_repo(repo):
        return None
    for name in (f"{SEEN_PREFIX}{ref}", f"{UPSTREAM_PREFIX}tags/{ref}",
                 f"{UPSTREAM_PREFIX}heads/{ref}"):
        sha = gitutil.out(["rev-parse", "-q", "--verify", f"{name}^{{commit}}"], cwd=repo,
                          check=False)
        if sha and has_commit(repo, sha):
            return sha
    return None


def _not_found(settings: Settings, source: Source, url: str, ref: str) -> SourceError:
    return SourceError(
        f"source {source.name}: {url} has no tag or branch {ref!r}"
        + (", and it is not an abbreviated commit SHA (4 to 39 hex digits) either"
           if not is_abbrev(ref) else ""),
        fix=f"check the name (`git ls-remote {shlex.quote(url)}` lists tags and branches), or "
            "give a full 40-hex commit SHA")


def _remote_tips(source: Source, url: str) -> dict[str, list[str]]:
    """Upstream's branches and tags by ``git ls-remote``: ``{commit: [names]}`` (annotated
    tags peeled)."""
    try:
        listing = gitutil.out(["ls-remote", "--heads", "--tags", "--", url])
    except GitError as e:
        raise _network_error(source, url, e) from e
    target: dict[str, str] = {}
    for line in listing.splitlines():
        sha, _, name = line.partition("\t")
        if name.endswith("^{}"):
            target[name[:-3]] = sha                 # the peeled line wins over the tag object
        else:
            target.setdefault(name, sha)
    tips: dict[str, list[str]] = {}
    for name, sha in sorted(target.items()):
        short = name.removeprefix("refs/heads/").removeprefix("refs/tags/")
        tips.setdefault(sha, []).append(short)
    return tips


def _fetch_all_history(settings: Settings, source: Source, repo: Path, url: str,
                       why: str) -> None:
    """Every branch and tag of upstream with its whole history into ``UPSTREAM_PREFIX``
    (pruned: what upstream deleted goes), so the cache can answer for any commit."""
    console.info(f"source {source.name}: {why}: fetching the history of every branch and tag "
                 f"of {url} (once; later fetches bring only what is new)")
    specs = [f"+refs/heads/*:{UPSTREAM_PREFIX}heads/*", f"+refs/tags/*:{UPSTREAM_PREFIX}tags/*"]
    opts = ["--prune", *(["--unshallow"] if (repo / "shallow").exists() else [])]
    try:
        _git_fetch(source, repo, url, opts, [], "every branch and tag", specs=specs)
    except GitError as e:
        failure = _fetch_failure(source, url, repo, e)
        if failure is not None:
            raise failure from e
        raise _git_failure(source, url, repo, e) from e
    _forget_shadowed(repo)
    _sync_shallow(settings, source)


def _forget_shadowed(repo: Path) -> None:
    """Drop the names remembered one by one (``SEEN_PREFIX``) that the complete listing just
    fetched also has: the listing is newer, and :func:`_remembered` reads ``SEEN_PREFIX``
    first."""
    seen = gitutil.out(["for-each-ref", "--format=%(refname)", SEEN_PREFIX], cwd=repo)
    have = set(gitutil.out(["for-each-ref", "--format=%(refname)", UPSTREAM_PREFIX],
                           cwd=repo).splitlines())
    stale = [r for r in seen.splitlines()
             if {f"{UPSTREAM_PREFIX}tags/{r.removeprefix(SEEN_PREFIX)}",
                 f"{UPSTREAM_PREFIX}heads/{r.removeprefix(SEEN_PREFIX)}"} & have]
    if stale:
        gitutil.git(["update-ref", "--stdin"], cwd=repo,
                    input="".join(f"delete {r}\n" for r in stale))


def _describe(repo: Path, sha: str, names: list[str]) -> str:
    """``<sha> (tag/branch names) <subject>`` for a list of candidates."""
    subject = gitutil.out(["log", "-1", "--format=%s", sha, "--"], cwd=repo, check=False)
    named = f" ({', '.join(names)})" if names else ""
    return f"{sha}{named}{' ' + subject if subject else ''}"


def _ambiguous(settings: Settings, source: Source, repo: Path, prefix: str,
               candidates: list[str], tips: dict[str, list[str]]) -> SourceError:
    shown = "; ".join(_describe(repo, c, tips.get(c, [])) for c in candidates[:10])
    more = f" and {len(candidates) - 10} more" if len(candidates) > 10 else ""
    return SourceError(
        f"source {source.name}: the abbreviated commit {prefix!r} is ambiguous: "
        f"{len(candidates)} commits start with it: {shown}{more}",
        fix="give more hex digits (or the full 40-hex SHA), or a tag or branch name")


def _unknown(settings: Settings, source: Source, prefix: str, where: str) -> SourceError:
    return SourceError(
        f"source {source.name}: no tag, branch or commit matches {prefix!r}: no commit "
        f"{where} starts with it",
        fix="give a full 40-hex commit SHA, or a tag or branch name of the source "
            "(check for a typo)")


def _resolve_abbrev_online(settings: Settings, source: Source, repo: Path, url: str,
                           prefix: str) -> str:
    """The one commit of upstream whose SHA starts with ``prefix``.  Cache lock held.

    Candidates are the cache's commits and upstream's branch and tag tips; a unique one of 7
    or more digits is taken at once.  Otherwise (none, or a short prefix that interior commits
    may share) the history of every branch and tag is fetched and the cache decides."""
    tips = _remote_tips(source, url)
    candidates = sorted(set(gitutil.commits_with_prefix(repo, prefix))
                        | {sha for sha in tips if sha.startswith(prefix)})
    if len(candidates) > 1:
        raise _ambiguous(settings, source, repo, prefix, candidates, tips)
    if not (len(candidates) == 1 and len(prefix) >= 7):
        _fetch_all_history(settings, source, repo, url,
                           f"{prefix!r} is no tag or branch, looking for the commit")
        candidates = gitutil.commits_with_prefix(repo, prefix)
        if len(candidates) > 1:
            raise _ambiguous(settings, source, repo, prefix, candidates, tips)
        if not candidates:
            raise _unknown(settings, source, prefix,
                           f"of any branch or tag of {url} (or in the cache)")
    sha = candidates[0]
    fetch_commit(settings, source, sha)
    console.info(f"source {source.name}: {prefix} is commit {sha}")
    return sha


def _resolve_offline(settings: Settings, source: Source, ref: str) -> str:
    """``--offline``: ``ref`` as upstream had it on the last online contact, or an abbreviated
    SHA of a complete commit in the cache."""
    repo = cache_repo(settings, source)
    with runlock.cache(settings, source.name):
        _tidy_cache(settings, source)
        sha = _remembered(repo, ref)
        if sha:
            _keep(repo, sha)
            _sync_shallow(settings, source)
            console.info(f"source {source.name}: --offline: {ref} is {sha}, as upstream had it "
                         "when askbuild last fetched it")
            return sha
        candidates = [c for c in gitutil.commits_with_prefix(repo, ref)
                      if has_commit(repo, c)] if _valid_repo(repo) else []
        if len(candidates) > 1:
            raise _ambiguous(settings, source, repo, ref, candidates, {})
        if candidates:
            _keep(repo, candidates[0])
            _sync_shallow(settings, source)
            return candidates[0]
    kind = "tag, branch or commit" if is_abbrev(ref) else "tag or branch"
    what = f"the {kind} {ref!r} (never resolved online with this cache)"
    raise _offline_error(settings, source, what, repo, ref=ref)


def fetch_ref(settings: Settings, source: Source, ref: str) -> str:
    """Bring ``ref`` of a git source into its cache repository and return the full commit
    SHA (annotated tags peeled).  Mirrors honoured.

    ``ref`` is a tag or branch (remembered under ``refs.SEEN_PREFIX`` for ``--offline``), a
    full SHA, or an abbreviated SHA (4+ hex digits, when no tag or branch has that name):
    resolved against the cache and upstream's branches and tags; an ambiguous or unknown one is
    a :class:`SourceError` listing the candidates or saying a full SHA is needed.  With
    ``--offline``: what the last online contact saw, else an :class:`OfflineError` printing the
    ``inv fetch --source S --ref REF`` to run online."""
    check_ref(ref, what=f"source {source.name} ref")
    if source.kind != "git":
        raise SourceError(f"source {source.name} is a {source.kind} source, not git",
                          fix="--ref and --onto name refs of git sources only")
    repo = cache_repo(settings, source)
    if is_sha(ref):
        fetch_commit(settings, source, ref)
        return ref
    if settings.offline:
        return _resolve_offline(settings, source, ref)
    url = remote_url(settings, source)
    with runlock.cache(settings, source.name), _git_errors(source, url, repo):
        _tidy_cache(settings, source)
        _init_cache(repo)
        sha = _seen_unchanged(repo, url, ref)
        if sha is not None:
            _sync_shallow(settings, source)
            return sha
        try:
            sha = _fetch_ref_once(source, repo, url, ref)
        except _Damaged as e:
            _rebuild_cache(source, repo, str(e))
            try:
                sha = _fetch_ref_once(source, repo, url, ref)
            except _Damaged as again:
                raise _broken_upstream(source, url, f"ref {ref!r}", str(again)) from again
        if sha is None:
            if not is_abbrev(ref):
                raise _not_found(settings, source, url, ref)
            return _resolve_abbrev_online(settings, source, repo, url, ref)
        _keep(repo, sha)
        _remember(repo, ref, sha)
        _sync_shallow(settings, source)
    return sha


def recorded_ref(ref: str, sha: str) -> str:
    """The ref to write in the sources file for ``ref`` resolved (by :func:`fetch_ref`) to
    ``sha``: the full SHA when ``ref`` is an abbreviation of it (an abbreviation can become
    ambiguous as upstream grows), else ``ref`` itself."""
    return sha if is_abbrev(ref) and sha.startswith(ref) else ref


def remote_ref(settings: Settings, source: Source, ref: str) -> str | None:
    """What ``ref`` points at upstream (peeled), by ``git ls-remote``; ``None`` if absent.
    (``ls-remote`` lists an annotated tag's peeled line ``refs/tags/T^{}`` only when asked
    for ``T^{}`` too.)"""
    check_ref(ref, what=f"source {source.name} ref")
    url = remote_url(settings, source)
    try:
        listing = gitutil.out(["ls-remote", "--", url, ref, f"{ref}^{{}}"])
    except GitError as e:
        raise _network_error(source, url, e) from e
    refs: dict[str, str] = {}
    for line in listing.splitlines():
        sha, _, name = line.partition("\t")
        refs[name] = sha
    for name in (f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}", f"refs/heads/{ref}", ref):
        if name in refs:
            return refs[name]
    return None


def upstream_log(settings: Settings, source: Source, old: str, new: str,
                 *, max_depth: int = 2048) -> tuple[list[str], bool]:
    """``git log --oneline old..new`` from the cache, deepening the shallow history of
    ``source.ref`` until ``old`` is reached (bounded).  Returns (lines, old_is_ancestor)."""
    repo = cache_repo(settings, source)
    url = remote_url(settings, source)
    with runlock.cache(settings, source.name), _git_errors(source, url, repo):
        _tidy_cache(settings, source)
        _init_cache(repo)

        def ancestor() -> bool:
            return gitutil.git(["merge-base", "--is-ancestor", old, new], cwd=repo,
                               check=False).returncode == 0

        if not _has_object(repo, old) and not settings.offline:
            # The old pin is needed as the end of the log (one shallow commit is enough).
            try:
                _git_fetch(source, repo, url, ["--depth", "1"], [old], f"old pin {_short(old)}")
                if has_commit(repo, old):
                    _keep(repo, old)
            except GitError:
                pass
        depth = 16
        while not ancestor() and (repo / "shallow").exists() and depth <= max_depth \
                and not settings.offline and _has_object(repo, old):
            try:
                _git_fetch(source, repo, url, [f"--deepen={depth}"], [source.ref],
                           f"history of {source.ref}")
            except GitError:
                break
            depth *= 4
        _sync_shallow(settings, source)
        is_anc = ancestor()
        lines = gitutil.out(["log", "--oneline", "--no-decorate", f"{old}..{new}", "--"],
                            cwd=repo, check=False).splitlines() if _has_object(repo, old) else []
    return lines, is_anc


# -- work trees ---------------------------------------------------------------------------

def _tree_git(tree: Path, args: list[str], **kw):
    return gitutil.git(args, cwd=tree, **kw)


def _base_of(tree: Path) -> str | None:
    if not (tree / ".git").exists():
        return None
    # The tag is lightweight: its target needs no object access (the cache may be gone).
    r = _tree_git(tree, ["rev-parse", "-q", "--verify", BASE_REF], check=False)
    return r.stdout.strip() or None


def _tree_has(tree: Path, sha: str) -> bool:
    return _tree_git(tree, ["cat-file", "-e", f"{sha}^{{commit}}"], check=False).returncode == 0


def _marker(tree: Path) -> Path:
    return tree / ".git" / MOVE_MARKER


def _settled(tree: Path, commit: str) -> bool:
    """The tree sits on ``commit`` with no base move pending (the fast path: no lock)."""
    return (_base_of(tree) == commit and not _marker(tree).exists()
            and _tree_has(tree, commit))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(unique_name(f".{path.name}.tmp-"))
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _sync_shallow(settings: Settings, source: Source) -> None:
    """Copy the cache's shallow list into the work tree that borrows its objects."""
    tree = settings.source_tree(source.name)
    if (tree / ".git").is_dir() and (tree / ".git" / "objects" / "info" / "alternates").exists():
        _link_cache(tree / ".git", cache_repo(settings, source))


def _link_cache(git_dir: Path, repo: Path) -> None:
    """Make ``git_dir`` borrow the objects of the cache repository ``repo`` (atomic writes)."""
    alt = git_dir / "objects" / "info" / "alternates"
    alt.parent.mkdir(parents=True, exist_ok=True)
    want = str((repo / "objects").resolve()) + "\n"
    if not alt.exists() or alt.read_text() != want:
        _write_atomic(alt, want)
    src = repo / "shallow"
    dst = git_dir / "shallow"
    if src.exists():
        _write_atomic(dst, src.read_text())
    elif dst.exists():
        dst.unlink()


def _check_clean(settings: Settings, source: Source, tree: Path, old: str | None,
                 new: str) -> None:
    status = _tree_git(tree, ["status", "--porcelain"]).stdout.splitlines()
    if not status:
        return
    shown = ", ".join(line[3:] for line in status[:5]) + (" ..." if len(status) > 5 else "")
    t = _rel(settings, tree)
    q = shlex.quote(t)
    raise DirtyTreeError(
        f"source {source.name}: work tree {t} has uncommitted changes ({shown}) and its base "
        f"must move from {_short(old) or '(none)'} to {_short(new)}; refusing to touch it",
        fix=f"save them (`git -C {q} stash -u`, or commit them on a branch) or discard them "
            f"(`git -C {q} reset --hard && git -C {q} clean -fd`), then run again")


def _verify_checkout(source: Source, tree: Path, commit: str) -> None:
    """HEAD is ``commit`` and every tracked file is there with its content (git's checkout
    exits 0 even when objects are missing)."""
    head = _tree_git(tree, ["rev-parse", "HEAD"]).stdout.strip()
    if head != commit:
        raise VerificationError(
            f"source {source.name}: work tree {tree} is at {head}, expected {commit}",
            fix="run the same command again")
    changed = _tree_git(tree, ["status", "--porcelain", "--untracked-files=no"]).stdout
    if changed.strip():
        files = [line[3:] for line in changed.splitlines()]
        raise VerificationError(
            f"source {source.name}: checking out {_short(commit)} in {tree} left "
            f"{len(files)} file(s) missing or different ({', '.join(files[:5])}"
            f"{' ...' if len(files) > 5 else ''})",
            fix="run the same command again (the cache is checked and repaired first)")


def _checkout(source: Source, tree: Path, commit: str, *, force: bool = False) -> None:
    """``git checkout --detach commit``, then :func:`_verify_checkout`.  Files git could not
    write (a full disk: git may still exit 0) are reported with the free space."""
    r = _tree_git(tree, ["checkout", "-q", *(["-f"] if force else []), "--detach", commit],
                  check=False)
    if r.returncode != 0:
        raise GitError(["checkout", commit], r.returncode, r.stdout, r.stderr)
    if "unable to write" in r.stderr:
        raise SourceError(
            f"source {source.name}: checking out {_short(commit)}: git could not write every "
            f"file into {tree} ({_stderr_detail(r.stderr)}); "
            f"{shutil.disk_usage(tree).free >> 20} MiB free there",
            fix="free some space if the disk is full, then run the same command again")
    _verify_checkout(source, tree, commit)


def _finish_move(source: Source, tree: Path, commit: str, *, force: bool) -> None:
    """Check out ``commit``, verify, move the base tag, then drop the move marker."""
    _checkout(source, tree, commit, force=force)
    _tree_git(tree, ["tag", "-f", BASE_TAG, commit])
    _marker(tree).unlink(missing_ok=True)


def _move_base(settings: Settings, source: Source, tree: Path, base: str, commit: str) -> None:
    """Move a clean tree from ``base`` to ``commit``, resumable after a kill."""
    _check_clean(settings, source, tree, base, commit)
    head = _tree_git(tree, ["rev-parse", "HEAD"]).stdout.strip()
    write_json_atomic(_marker(tree), {"from": head, "to": commit})
    _finish_move(source, tree, commit, force=False)
    console.info(f"source {source.name}: base moved {_short(base)} -> {_short(commit)}")


def _blob_id(data: bytes) -> str:
    import hashlib
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _versions(tree: Path, commits: list[str]) -> list[dict[str, str]]:
    """``{path: blob id}`` of each commit's tree (the commits the tree is known to have)."""
    maps = []
    for c in commits:
        r = _tree_git(tree, ["ls-tree", "-r", "-z", "--full-tree", c], check=False, text=False)
        if r.returncode != 0:
            continue
        entries: dict[str, str] = {}
        for item in r.stdout.split(b"\0"):
            meta, _, path = item.partition(b"\t")
            if path:
                entries[os.fsdecode(path)] = meta.split()[2].decode()
        maps.append(entries)
    return maps


def _changes_since(tree: Path, commits: list[str]) -> tuple[list[str], list[str]]:
    """Paths ``git status`` reports in ``tree``: (those whose content is none of ``commits``'
    versions: edits of the user, untracked paths that hold one of those versions)."""
    raw = _tree_git(tree, ["status", "--porcelain", "-z", "--untracked-files=all",
                           "--no-renames"], text=False).stdout
    entries = [(e[:2].decode(), os.fsdecode(e[3:])) for e in raw.split(b"\0") if e]
    if not entries:
        return [], []
    maps = _versions(tree, commits)
    paths = [p for _, p in entries]
    files = [p for p in paths if (tree / p).is_file() and not (tree / p).is_symlink()]
    hashed = _tree_git(tree, ["hash-object", "--stdin-paths"],
                       input="".join(f"{p}\n" for p in files)).stdout.split() if files else []
    current: dict[str, str | None] = dict(zip(files, hashed, strict=True))
    for p in paths:
        full = tree / p
        if full.is_symlink():
            current[p] = _blob_id(os.fsencode(os.readlink(full)))
        elif not full.exists():
            current[p] = None
        elif p not in current:
            current[p] = "(directory)"
    foreign = [p for p in paths if current[p] not in {m.get(p) for m in maps}]
    ours_untracked = [p for code, p in entries if code == "??" and p not in foreign]
    return foreign, ours_untracked


def _resume_move(settings: Settings, source: Source, tree: Path, commit: str) -> None:
    """Finish a base move a killed run left half done (its marker is there).  Every changed
    file must hold the version of the old HEAD or of a target: anything else was edited
    since, and is never overwritten (:class:`DirtyTreeError`)."""
    data = read_json(_marker(tree)) or {}
    known = [c for c in (data.get("from"), data.get("to"), commit)
             if isinstance(c, str) and is_sha(c) and _tree_has(tree, c)]
    for lock in ("index.lock", "HEAD.lock", f"{BASE_REF}.lock"):
        (tree / ".git" / lock).unlink(missing_ok=True)      # the killed checkout's
    foreign, ours_untracked = _changes_since(tree, known)
    t = _rel(settings, tree)
    q = shlex.quote(t)
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise DirtyTreeError(
            f"source {source.name}: a run moving the base of {t} to "
            f"{_short(data.get('to'))} was interrupted, and {shown} changed since; refusing "
            "to touch the tree",
            fix=f"save those changes (`git -C {q} stash -u`) or discard them (`git -C {q} "
                f"checkout -f HEAD && git -C {q} clean -fd`), then run again")
    console.warn(f"source {source.name}: finishing the interrupted base move of {t} "
                 f"({_short(data.get('from'))} -> {_short(commit)})")
    _remove([tree / p for p in ours_untracked])
    _finish_move(source, tree, commit, force=True)


def _existing_tree(settings: Settings, source: Source, tree: Path) -> str | None:
    """Base of an existing work tree; ``None`` if there is none.  Refuses foreign dirs."""
    if not tree.exists():
        return None
    base = _base_of(tree)
    if base is None:
        raise DirtyTreeError(
            f"source {source.name}: {tree} exists but is not an askbuild work tree "
            f"(no git repository with tag {BASE_TAG})",
            fix="move it away (or delete it if it holds nothing of value), then run again")
    return base


def _head_readable(tree: Path) -> bool:
    return _tree_git(tree, ["rev-list", "--quiet", "--objects", "--no-walk", "HEAD"],
                     check=False).returncode == 0


def _ensure_head_readable(settings: Settings, source: Source, tree: Path, base: str) -> None:
    """The files of the tree's HEAD must be readable to tell user edits from a clean tree;
    they live in the cache, which may have been deleted or rebuilt: fetch the old base."""
    if _head_readable(tree):
        return
    try:
        fetch_commit(settings, source, base)
    except SourceError as e:
        raise SourceError(
            f"source {source.name}: the files of {tree}'s current base {_short(base)} are no "
            f"longer in the cache and cannot be fetched again ({e.message}); askbuild cannot "
            "tell whether the tree holds uncommitted changes",
            fix=f"if {tree} holds nothing of value, remove it and run again") from e
    _link_cache(tree / ".git", cache_repo(settings, source))


def _new_git_tree(settings: Settings, source: Source, commit: str) -> Path:
    """A new work tree at ``commit``, built under a unique temporary name and renamed into
    place only when complete."""
    tree = settings.source_tree(source.name)
    settings.src_dir.mkdir(parents=True, exist_ok=True)
    tmp = settings.src_dir / unique_name(f".{source.name}.tmp-")
    try:
        gitutil.git(["init", "-q", "--", str(tmp)])
        _link_cache(tmp / ".git", cache_repo(settings, source))
        _checkout(source, tmp, commit)
        _tree_git(tmp, ["tag", "-f", BASE_TAG, commit])
        tmp.rename(tree)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tree


def _git_work_tree(settings: Settings, source: Source, commit: str) -> Path:
    tree = settings.source_tree(source.name)
    base = _existing_tree(settings, source, tree)
    if base is None:
        return _new_git_tree(settings, source, commit)
    _link_cache(tree / ".git", cache_repo(settings, source))   # the cache may be rebuilt
    if _marker(tree).exists():
        _ensure_head_readable(settings, source, tree, base)
        _resume_move(settings, source, tree, commit)
    elif base != commit:
        _ensure_head_readable(settings, source, tree, base)
        _move_base(settings, source, tree, base, commit)
    return tree


def _tarball_base_sha256(tree: Path) -> str | None:
    from .tarimport import SHA256_TRAILER
    msg = _tree_git(tree, ["show", "-s", "--format=%B", BASE_REF],
                    check=False).stdout
    m = re.search(rf"^{SHA256_TRAILER}: ([0-9a-f]{{64}})$", msg, re.MULTILINE)
    return m.group(1) if m else None


def _tarball_settled(settings: Settings, source: Source, tree: Path) -> bool:
    return (tree.exists() and _existing_tree(settings, source, tree) is not None
            and not _marker(tree).exists() and _tarball_base_sha256(tree) == source.sha256)


def _import_tarball(settings: Settings, source: Source, archive: Path, dest: Path) -> str:
    """Extract ``archive`` into the new directory ``dest`` and commit it; return the commit
    (:func:`askbuild.tarimport.import_tarball`: the same commit id as every earlier import,
    from the objects of an earlier import of the tarball when the cache has them)."""
    from . import tarimport
    from .importcache import ImportCache
    message = tarimport.import_message(source.filename, source.name, str(source.ref),
                                       str(source.sha256))
    cache = ImportCache(settings.tarball_import(str(source.sha256)), source.name,
                        lock=lambda: runlock.cache(settings, source.name))
    return tarimport.import_tarball(archive, dest, strip_components=source.strip_components,
                                    what=source.name, message=message, cache=cache)


def _tarball_work_tree(settings: Settings, source: Source, archive: Path) -> Path:
    tree = settings.source_tree(source.name)
    base = _existing_tree(settings, source, tree)
    if _tarball_settled(settings, source, tree):
        return tree
    settings.src_dir.mkdir(parents=True, exist_ok=True)
    scratch = settings.src_dir / unique_name(f".{source.name}.import-")
    try:
        scratch.mkdir()
        new_tree = scratch / "tree"
        try:
            commit = _import_tarball(settings, source, archive, new_tree)
        except NoSpaceError as e:   # name the work tree's place, not the scratch directory
            raise no_space_error(source.name, f"extract {archive.name}",
                                 settings.src_dir) from e
        if base is None:
            _tree_git(new_tree, ["tag", BASE_TAG, commit])
            new_tree.rename(tree)
            return tree
        _tree_git(tree, ["fetch", "-q", "--no-tags", "--", str(new_tree), commit])
        if _marker(tree).exists():
            _resume_move(settings, source, tree, commit)
        else:
            _move_base(settings, source, tree, base, commit)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return tree


# -- tarballs -----------------------------------------------------------------------------

def _quarantine(settings: Settings, path: Path, name: str) -> Path:
    qdir = settings.tarball_quarantine
    qdir.mkdir(parents=True, exist_ok=True)
    dest = qdir / unique_name(f"{name}.{time.strftime('%Y%m%dT%H%M%S')}.")
    os.replace(path, dest)
    return dest


def _verify_tarball(settings: Settings, source: Source, path: Path, url: str,
                    sha: str, size: int) -> None:
    if size == source.size and sha == source.sha256:
        return
    q = _quarantine(settings, path, source.filename)
    if source.size is not None and size < source.size:
        raise VerificationError(
            f"source {source.name}: {url} gave {size} of the {source.size} bytes the lock "
            f"records (sha256 {sha}): the download was truncated, or the server now serves a "
            f"shorter file; it was moved to {q} and is not used",
            fix="run the same command again (a new download starts); if every download stops "
                "at the same size, check the URL and mirrors")
    raise VerificationError(
        f"source {source.name}: {url} does not match the lock: expected sha256 "
        f"{source.sha256} ({source.size} bytes), got {sha} ({size} bytes); the file was moved "
        f"to {q} and is not used",
        fix="if upstream re-released the file on purpose, check why, then record the new hash "
            f"with `{_lock_command(settings, source, update=True)}`; if a mirror served it, "
            "fix the "
            "mirror")


def _download(settings: Settings, source: Source, url: str, *, locked: bool):
    return download(url, settings.tarball_incoming(source.name), what=source.name,
                    filename=source.filename, expected_size=source.size if locked else None,
                    update_command=_lock_command(settings, source, update=True))


def _move_in(got_path: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(got_path, dest)
    with contextlib.suppress(OSError):
        got_path.parent.rmdir()


def fetch_tarball(settings: Settings, source: Source) -> Path:
    """The verified cached tarball of a locked tarball source (downloads when missing; a
    cached file that no longer verifies is quarantined and downloaded again)."""
    dest = settings.tarball_file(str(source.sha256), source.filename)
    with runlock.cache(settings, source.name):
        _tidy_cache(settings, source)
        if dest.exists():
            sha, size = sha256_file(dest)
            if size == source.size and sha == source.sha256:
                return dest
            q = _quarantine(settings, dest, source.filename)
            console.warn(f"source {source.name}: the cached {dest} does not match the lock "
                         f"(damaged?); moved to {q}, downloading it again")
        if settings.offline and not local_mirror(settings, source):
            raise _offline_error(settings, source,
                                 f"{source.filename} (sha256 {_short(source.sha256)})",
                                 settings.tarball_cache)
        url = remote_url(settings, source)
        got = _download(settings, source, url, locked=True)
        _verify_tarball(settings, source, got.path, url, got.sha256, got.size)
        _move_in(got.path, dest)
        return dest


def resolve_tarball(settings: Settings, source: Source) -> tuple[str, int, Path]:
    """Download a tarball source (ignoring its lock) and put it in the cache under its
    content hash.  Returns ``(sha256, size, path)``."""
    if settings.offline:
        raise _offline_error(settings, source, f"{source.filename} (not locked yet: it must be "
                             "downloaded to learn its hash)", settings.tarball_cache)
    url = remote_url(settings, source)
    with runlock.cache(settings, source.name):
        _tidy_cache(settings, source)
        got = _download(settings, source, url, locked=False)
        dest = settings.tarball_file(got.sha256, source.filename)
        _move_in(got.path, dest)
    return got.sha256, got.size, dest


# -- the verb ------------------------------------------------------------------------------

def _lock_command(settings: Settings, source: Source, *, update: bool = False) -> str:
    """``inv lock [--update] --source NAME`` with this run's options (not --locked/--offline:
    locking resolves upstream)."""
    return settings.command("lock", *(["--update"] if update else []), "--source", source.name,
                            without=("--locked", "--offline"))


def _unlocked(settings: Settings, source: Source) -> None:
    if settings.locked:
        raise UnlockedSourceError(
            f"source {source.name} has no lock entry in {settings.sources_file} and --locked "
            f"forbids resolving it",
            fix=f"run `{_lock_command(settings, source)}` (online) and commit the sources "
                "file")


def resolve_unlocked(settings: Settings, source: Source) -> Source:
    """Resolve and record the lock of an unlocked source (the Cargo.lock rule)."""
    _unlocked(settings, source)
    if source.kind == "git":
        ref = source.ref
        sha = fetch_ref(settings, source, ref)
        full = {"ref": sha} if recorded_ref(ref, sha) != ref else {}
        source = record_lock(settings, source, commit=sha, **full)
        console.info(f"source {source.name}: not locked; resolved {ref} to {sha} and "
                     f"recorded it in {settings.sources_file}"
                     + (" (the full SHA replaces the abbreviated ref)" if full else ""))
    else:
        sha, size, _ = resolve_tarball(settings, source)
        source = record_lock(settings, source, sha256=sha, size=size)
        console.info(f"source {source.name}: not locked; {source.filename} has sha256 {sha} "
                     f"({size} bytes), recorded in {settings.sources_file}")
    return source


def ensure_source(settings: Settings, source: Source) -> Path:
    """One source's work tree at its locked base (resolving + recording the lock when the
    source is unlocked, unless ``settings.locked``).  Returns the work tree.

    Holds the work-dir lock (re-entrant: callers of a verb already hold it), cleans what
    killed runs left for this source, repairs the cache and finishes interrupted base moves.
    No-op fast path: when the fetch stamp (``sources.fetched``) proves nothing changed since
    the last successful fetch, no git process runs."""
    with runlock.work_dir(settings, "fetch"):
        if sources_mod.fetched(settings, source):
            return settings.source_tree(source.name)
        tree = _ensure_source(settings, source)
        sources_mod.stamp_fetched(settings, source)     # (unlocked: stamped next time)
        return tree


def _ensure_source(settings: Settings, source: Source) -> Path:
    with runlock.work_dir(settings, "fetch"):
        _clean_work_leftovers(settings, source)
        if not source.locked:
            source = resolve_unlocked(settings, source)
        tree = settings.source_tree(source.name)
        with _git_errors(source, source.url, settings.src_dir):
            if source.kind == "git":
                commit = str(source.commit)
                if _settled(tree, commit):
                    return tree                                 # fast path: nothing to do
                with runlock.cache(settings, source.name):      # one hold: cache + tree
                    fetch_commit(settings, source, commit)
                    return _git_work_tree(settings, source, commit)
            if _tarball_settled(settings, source, tree):
                return tree
            archive = fetch_tarball(settings, source)
            with runlock.cache(settings, source.name):
                return _tarball_work_tree(settings, source, archive)


def _fetch_one_ref(settings: Settings, sources: list[Source], ref: str) -> dict[str, Path]:
    """``inv fetch --source S --ref REF``: bring ``ref`` of the one git source ``S`` into the
    cache (remembered for ``--offline``); the pin and the work tree do not move."""
    if len(sources) != 1 or sources[0].kind != "git":
        named = ", ".join(s.name for s in sources) or "none"
        raise ConfigError(
            f"--ref {ref} needs exactly one git source named with --source (named: {named}"
            + (f", a {sources[0].kind} source" if len(sources) == 1 else "") + ")",
            fix="name one git source: "
                f"`{settings.command('fetch', '--source', 'NAME', '--ref', ref)}`")
    source = sources[0]
    console.step(f"fetch {source.name} {ref}")
    sha = fetch_ref(settings, source, ref)
    pin = f"the pin stays at {_short(source.commit)}" if source.locked else "not locked yet"
    console.info(f"source {source.name}: {ref} is {sha}, in the cache for later --offline use "
                 f"({pin}; to move to it: "
                 f"`{settings.command('rebase', source.name, '--onto', ref)}`)")
    return {source.name: cache_repo(settings, source)}


def _refuse_unlocked(settings: Settings, selected: list[Source]) -> None:
    """``--locked`` without ``keep_going``: refuse before anything if a source has no lock."""
    missing = [s.name for s in selected if not s.locked]
    if missing:
        words = [w for m in missing for w in ("--source", m)] if len(missing) <= 3 else []
        raise UnlockedSourceError(
            f"source(s) {', '.join(missing)} have no lock entry in {settings.sources_file} "
            f"and --locked forbids resolving them",
            fix=f"run `{settings.command('lock', *words, without=('--locked', '--offline'))}` "
                "(online) and commit the sources file")


@runlock.exclusive("fetch")
def fetch(settings: Settings, names: list[str] | tuple[str, ...] | None = None,
          keep_going: bool = False, ref: str | None = None) -> dict[str, Path]:
    """``inv fetch``: every named source (all when none) ready in its work tree.

    Without ``keep_going`` the first source that cannot be fetched stops the verb (and
    ``--locked`` refuses before anything when a source has no lock).  With ``keep_going``
    every source is tried; the error at the end lists each failure with its reason
    (``errors.summary_error``; exit 1).  A full disk always stops at once.

    With ``ref`` (``--ref``): exactly one git source must be named; only that ref is brought
    into its cache repository (:func:`fetch_ref`), for a later ``--offline`` rebase; the pin,
    the sources file and the work tree do not change.  Returns ``{name: cache repository}``."""
    selected = select(load_sources(settings), names, settings)
    if ref is not None:
        return _fetch_one_ref(settings, selected if names else [], ref)
    if settings.locked and not keep_going:
        _refuse_unlocked(settings, selected)
    trees: dict[str, Path] = {}
    failures: list[tuple[str, AskbuildError]] = []
    for source in selected:
        console.step(f"fetch {source.name}")
        try:
            tree = ensure_source(settings, source)
        except NoSpaceError:
            raise
        except AskbuildError as e:
            if not keep_going:
                raise
            console.error(f"source {source.name}: {e.message}")
            failures.append((source.name, e))
            continue
        base = sources_mod.fetched(settings, source) or _base_of(tree)
        console.info(f"source {source.name}: {_rel(settings, tree)} at {base}")
        trees[source.name] = tree
    if failures:
        raise summary_error("inv fetch", failures, [])
    return trees
