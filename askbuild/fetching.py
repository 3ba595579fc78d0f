"""``inv fetch``: every source into the shared download cache and its work tree, verified.

Cache (``settings.cache_dir``, shared by all work dirs and profiles):

* ``git/<name>.git``: a bare repository per git source.  Only pinned commits are fetched
  (``git fetch --depth 1 -- URL <sha>``; when a server refuses a bare SHA: the ref, shallow,
  then the ref's full history).  Every commit askbuild needed is kept reachable by
  ``refs/askbuild/keep/<sha>``, so the cache never forgets a pin and later fetches only send
  what is new (git negotiates with what the cache holds).
* ``tarballs/<sha256>/<file>``: verified release tarballs; ``tarballs/quarantine/``: files
  that failed verification, kept for inspection and never used.
* ``locks/<name>.lock``: a :mod:`filelock` per source, so concurrent runs do not corrupt the
  cache or a work tree.

Work tree ``<work>/src/<name>``: a git repository, HEAD detached at the base, lightweight tag
``askbuild/base``.  Git sources borrow the cache's objects (``objects/info/alternates``, plus a
copy of the cache's ``shallow`` list); tarball sources are extracted safely and committed as
one deterministic commit (:data:`askbuild.gitutil.FIXED_IDENTITY`).  A tree already at its base
is left alone (the patch step's ``askbuild/patched`` branch included); a base move on a tree
with uncommitted changes is refused (:class:`DirtyTreeError`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from . import console, gitutil
from .archive import safe_extract
from .download import download, network_fix, progress
from .errors import (
    DirtyTreeError,
    NetworkError,
    OfflineError,
    SourceError,
    UnlockedSourceError,
    VerificationError,
)
from .fsutil import sha256_file
from .gitutil import GitError, check_ref, is_sha
from .settings import Settings
from .sources import Source, load_sources, select, write_lock
from .urls import apply_mirrors, check_url

BASE_TAG = "askbuild/base"
KEEP_PREFIX = "refs/askbuild/keep/"
SHA256_TRAILER = "Askbuild-Sha256"

# git's words for "the remote cannot be reached at all" (no point in trying other requests).
_UNREACHABLE = re.compile(
    r"Could not resolve host|unable to access|Failed to connect|Connection refused|"
    r"Connection timed out|Network is unreachable|does not appear to be a git repository|"
    r"Could not read from remote repository|Repository not found|unable to connect|"
    r"Name or service not known|Temporary failure in name resolution|No route to host",
    re.IGNORECASE)


# -- small helpers ------------------------------------------------------------------------

def cache_repo(settings: Settings, source: Source) -> Path:
    """The bare cache repository of a git source."""
    return settings.git_cache / f"{source.name}.git"


def work_tree(settings: Settings, source: Source) -> Path:
    return settings.src_dir / source.name


def remote_url(settings: Settings, source: Source) -> str:
    """The URL to fetch from: the declared one rewritten by mirrors, checked again."""
    url = apply_mirrors(source.url, settings.mirrors)
    if url != source.url:
        check_url(url, kind=source.kind, what=f"source {source.name} (mirror of {source.url})")
    return url


_LOCKS: dict[Path, FileLock] = {}


@contextlib.contextmanager
def cache_lock(settings: Settings, name: str) -> Iterator[None]:
    """Hold the per-source cache lock (re-entrant within this process)."""
    path = settings.cache_dir / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = _LOCKS.setdefault(path, FileLock(path))
    try:
        lock.acquire(timeout=1)
    except Timeout:
        console.info(f"source {name}: waiting for another askbuild run (lock {path}) ...")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def record_lock(settings: Settings, source: Source, **fields: object) -> Source:
    with cache_lock(settings, "_sources-file"):   # "_": no source can be named so
        write_lock(settings, source.name, **fields)
    return dataclasses.replace(source, **fields)


def _short(sha: str | None) -> str:
    return (sha or "")[:12]


def _rel(settings: Settings, path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# -- git cache ----------------------------------------------------------------------------

def _init_cache(repo: Path) -> None:
    if (repo / "HEAD").exists():
        return
    repo.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{repo.name}.", dir=repo.parent))
    gitutil.git(["init", "-q", "--bare", "--", str(tmp)])
    tmp.rename(repo)


def has_commit(repo: Path, sha: str) -> bool:
    if not (repo / "HEAD").exists():
        return False
    return gitutil.git(["cat-file", "-e", f"{sha}^{{commit}}"], cwd=repo,
                       check=False).returncode == 0


def _keep(repo: Path, sha: str) -> None:
    gitutil.git(["update-ref", f"{KEEP_PREFIX}{sha}", sha], cwd=repo)


def _is_unreachable(err: GitError) -> bool:
    return bool(_UNREACHABLE.search(err.stderr))


def _network_error(source: Source, url: str, err: GitError) -> NetworkError:
    detail = err.stderr.strip().splitlines()
    detail = "; ".join(line.removeprefix("fatal: ") for line in detail[-2:]) or str(err)
    return NetworkError(f"source {source.name}: cannot fetch from {url}: {detail}",
                        fix=network_fix())


def _git_fetch(source: Source, repo: Path, url: str, opts: list[str], refs: list[str],
               label: str) -> None:
    """``git fetch --progress --no-tags OPTS -- URL REFS`` with a progress display.
    ``opts`` are askbuild's own; ``refs`` (user values, validated) come after ``--``."""
    for ref in refs:
        check_ref(ref, what=f"source {source.name} ref")
    args = ["fetch", "--progress", "--no-tags"]
    with progress(f"fetch {source.name}: {label}", None, unit="objects") as update:
        def on_progress(phase: str, done: int, total: int | None) -> None:
            if phase.strip() == "Receiving objects":
                update(done, total)

        gitutil.git_progress([*args, *opts, "--", url, *refs], cwd=repo,
                             on_progress=on_progress)


def _offline_error(source: Source, what: str, where: Path) -> OfflineError:
    return OfflineError(
        f"source {source.name}: --offline, and {what} is not in the cache ({where})",
        fix=f"run `inv fetch --source {source.name}` once with network access (or a mirror), "
            "then --offline works; or drop --offline")


def fetch_commit(settings: Settings, source: Source, sha: str) -> None:
    """Make sure the cache repository holds commit ``sha`` of a git source.

    No network when it is already there.  Raises :class:`VerificationError` when upstream no
    longer has the commit and its ref points elsewhere (a moved tag is never followed).
    """
    repo = cache_repo(settings, source)
    with cache_lock(settings, source.name):
        if has_commit(repo, sha):
            _keep(repo, sha)
            return
        if settings.offline:
            raise _offline_error(source, f"the locked commit {sha}", repo)
        _init_cache(repo)
        url = remote_url(settings, source)
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
                if _is_unreachable(e):
                    raise _network_error(source, url, e) from e
                last = e
                continue
            if what == source.ref:
                ref_tip = gitutil.out(["rev-parse", "--verify", "-q", "FETCH_HEAD^{commit}"],
                                      cwd=repo, check=False) or ref_tip
            if has_commit(repo, sha):
                _keep(repo, sha)
                _sync_shallow(settings, source)
                return
        if ref_tip:
            raise VerificationError(
                f"source {source.name}: the locked commit {sha} is not available from {url}, "
                f"and its ref {source.ref!r} now points at {ref_tip}: the tag was moved or the "
                f"history rewritten upstream; askbuild does not follow it",
                fix=f"if the new commit is intended, review it and run `inv lock --update "
                    f"--source {source.name}`; otherwise fetch from a mirror that still has "
                    f"{_short(sha)} (ASKBUILD_MIRRORS)")
        detail = last.stderr.strip().splitlines()[-1] if last and last.stderr.strip() else ""
        raise SourceError(
            f"source {source.name}: cannot fetch commit {sha} or ref {source.ref!r} from "
            f"{url}: {detail}",
            fix="check the ref and URL in the sources file, or lock again with "
                f"`inv lock --update --source {source.name}`")


def fetch_ref(settings: Settings, source: Source, ref: str) -> str:
    """Bring ``ref`` (tag, branch or full SHA) of a git source into its cache repository and
    return the full commit SHA (annotated tags peeled).  Mirrors and ``--offline`` honoured."""
    check_ref(ref, what=f"source {source.name} ref")
    if source.kind != "git":
        raise SourceError(f"source {source.name} is a {source.kind} source, not git")
    repo = cache_repo(settings, source)
    if is_sha(ref):
        fetch_commit(settings, source, ref)
        return ref
    if settings.offline:
        raise _offline_error(source, f"ref {ref!r} (refs are resolved upstream)", repo)
    url = remote_url(settings, source)
    with cache_lock(settings, source.name):
        _init_cache(repo)
        try:
            _git_fetch(source, repo, url, ["--depth", "1"], [ref], ref)
        except GitError as e:
            if _is_unreachable(e):
                raise _network_error(source, url, e) from e
            raise SourceError(
                f"source {source.name}: ref {ref!r} not found at {url}",
                fix="check the tag/branch name (git ls-remote URL) and the sources file") from e
        sha = gitutil.out(["rev-parse", "--verify", "FETCH_HEAD^{commit}"], cwd=repo)
        _keep(repo, sha)
        _sync_shallow(settings, source)
    return sha


def remote_ref(settings: Settings, source: Source, ref: str) -> str | None:
    """What ``ref`` points at upstream (peeled), by ``git ls-remote``; ``None`` if absent."""
    check_ref(ref, what=f"source {source.name} ref")
    url = remote_url(settings, source)
    try:
        listing = gitutil.out(["ls-remote", "--", url, ref])
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
    with cache_lock(settings, source.name):
        def ancestor() -> bool:
            return gitutil.git(["merge-base", "--is-ancestor", old, new], cwd=repo,
                               check=False).returncode == 0

        if not has_commit(repo, old) and not settings.offline:
            # The old pin is needed as the end of the log (one shallow commit is enough).
            try:
                _git_fetch(source, repo, remote_url(settings, source), ["--depth", "1"], [old],
                           f"old pin {_short(old)}")
                _keep(repo, old)
            except GitError:
                pass
        depth = 16
        while not ancestor() and (repo / "shallow").exists() and depth <= max_depth \
                and not settings.offline and has_commit(repo, old):
            try:
                _git_fetch(source, repo, remote_url(settings, source), [f"--deepen={depth}"],
                           [source.ref], f"history of {source.ref}")
            except GitError:
                break
            depth *= 4
        _sync_shallow(settings, source)
        is_anc = ancestor()
        lines = gitutil.out(["log", "--oneline", "--no-decorate", f"{old}..{new}", "--"],
                            cwd=repo, check=False).splitlines() if has_commit(repo, old) else []
    return lines, is_anc


# -- work trees ---------------------------------------------------------------------------

def _tree_git(tree: Path, args: list[str], **kw):
    return gitutil.git(args, cwd=tree, **kw)


def _base_of(tree: Path) -> str | None:
    if not (tree / ".git").exists():
        return None
    # The tag is lightweight: its target needs no object access (the cache may be gone).
    r = _tree_git(tree, ["rev-parse", "-q", "--verify", f"refs/tags/{BASE_TAG}"], check=False)
    return r.stdout.strip() or None


def _tree_has(tree: Path, sha: str) -> bool:
    return _tree_git(tree, ["cat-file", "-e", f"{sha}^{{commit}}"], check=False).returncode == 0


def _sync_shallow(settings: Settings, source: Source) -> None:
    """Copy the cache's shallow list into the work tree that borrows its objects."""
    tree = work_tree(settings, source)
    if (tree / ".git").is_dir() and (tree / ".git" / "objects" / "info" / "alternates").exists():
        _link_cache(tree / ".git", cache_repo(settings, source))


def _link_cache(git_dir: Path, repo: Path) -> None:
    alt = git_dir / "objects" / "info" / "alternates"
    alt.parent.mkdir(parents=True, exist_ok=True)
    want = str((repo / "objects").resolve()) + "\n"
    if not alt.exists() or alt.read_text() != want:
        alt.write_text(want)
    src = repo / "shallow"
    dst = git_dir / "shallow"
    if src.exists():
        tmp = dst.with_name("shallow.askbuild-tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    elif dst.exists():
        dst.unlink()


def _check_clean(settings: Settings, source: Source, tree: Path, old: str | None,
                 new: str) -> None:
    status = _tree_git(tree, ["status", "--porcelain"]).stdout.splitlines()
    if not status:
        return
    shown = ", ".join(line[3:] for line in status[:5]) + (" ..." if len(status) > 5 else "")
    t = _rel(settings, tree)
    raise DirtyTreeError(
        f"source {source.name}: work tree {t} has uncommitted changes ({shown}) and its base "
        f"must move from {_short(old) or '(none)'} to {_short(new)}; refusing to touch it",
        fix=f"save them (`git -C {t} stash -u`, or commit them on a branch) or discard them "
            f"(`git -C {t} reset --hard && git -C {t} clean -fd`), then run again")


def _checkout_base(settings: Settings, source: Source, tree: Path, commit: str) -> None:
    _tree_git(tree, ["checkout", "-q", "--detach", commit])
    _tree_git(tree, ["tag", "-f", BASE_TAG, commit])
    head = _tree_git(tree, ["rev-parse", "HEAD"]).stdout.strip()
    if head != commit:
        raise VerificationError(
            f"source {source.name}: work tree {tree} is at {head}, expected {commit}",
            fix=f"remove {tree} and fetch again")


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


def _git_work_tree(settings: Settings, source: Source, commit: str) -> Path:
    tree = work_tree(settings, source)
    repo = cache_repo(settings, source)
    base = _existing_tree(settings, source, tree)
    if base == commit:
        _link_cache(tree / ".git", repo)        # the cache was rebuilt: borrow from it again
        return tree
    if base is not None:
        _check_clean(settings, source, tree, base, commit)
        _link_cache(tree / ".git", repo)
        _checkout_base(settings, source, tree, commit)
        console.info(f"source {source.name}: base moved {_short(base)} -> {_short(commit)}")
        return tree
    settings.src_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{source.name}.tmp-", dir=settings.src_dir))
    try:
        gitutil.git(["init", "-q", "--", str(tmp)])
        _link_cache(tmp / ".git", repo)
        _checkout_base(settings, source, tmp, commit)
        tmp.rename(tree)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tree


def _tarball_base_sha256(tree: Path) -> str | None:
    msg = _tree_git(tree, ["show", "-s", "--format=%B", f"refs/tags/{BASE_TAG}"],
                    check=False).stdout
    m = re.search(rf"^{SHA256_TRAILER}: ([0-9a-f]{{64}})$", msg, re.MULTILINE)
    return m.group(1) if m else None


def _import_tarball(settings: Settings, source: Source, archive: Path, dest: Path) -> str:
    """Extract ``archive`` into the new directory ``dest`` and commit it; return the commit."""
    safe_extract(archive, dest, strip_components=source.strip_components, what=source.name)
    # The user's global git config (filters, attributes, ...) must not change the commit.
    env = {"GIT_CONFIG_GLOBAL": os.devnull}
    gitutil.git(["init", "-q", "--", str(dest)], env=env)
    gitutil.git(["add", "-A", "-f", "--", "."], cwd=dest, env=env)
    message = (f"Import {source.filename} ({source.name} {source.ref})\n\n"
               f"{SHA256_TRAILER}: {source.sha256}\n")
    gitutil.git(["commit", "-q", "--allow-empty", "--no-verify", "-m", message], cwd=dest,
                env={**gitutil.FIXED_IDENTITY, **env})
    return gitutil.out(["rev-parse", "HEAD"], cwd=dest)


def _tarball_work_tree(settings: Settings, source: Source, archive: Path) -> Path:
    tree = work_tree(settings, source)
    base = _existing_tree(settings, source, tree)
    if base is not None and _tarball_base_sha256(tree) == source.sha256:
        return tree
    settings.src_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{source.name}.import-", dir=settings.src_dir))
    try:
        new_tree = scratch / "tree"
        commit = _import_tarball(settings, source, archive, new_tree)
        if base is None:
            _tree_git(new_tree, ["tag", BASE_TAG, commit])
            new_tree.rename(tree)
        else:
            _check_clean(settings, source, tree, base, commit)
            _tree_git(tree, ["fetch", "-q", "--no-tags", "--", str(new_tree), commit])
            _checkout_base(settings, source, tree, commit)
            console.info(f"source {source.name}: base moved {_short(base)} -> {_short(commit)}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return tree


# -- tarballs -----------------------------------------------------------------------------

def cached_tarball(settings: Settings, source: Source) -> Path:
    """Where the verified tarball of a locked source lives in the cache."""
    return settings.tarball_cache / str(source.sha256) / source.filename


def _quarantine(settings: Settings, path: Path, name: str) -> Path:
    qdir = settings.tarball_cache / "quarantine"
    qdir.mkdir(parents=True, exist_ok=True)
    dest = qdir / f"{name}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}"
    os.replace(path, dest)
    return dest


def _verify_tarball(settings: Settings, source: Source, path: Path, url: str,
                    sha: str, size: int) -> None:
    if size == source.size and sha == source.sha256:
        return
    q = _quarantine(settings, path, source.filename)
    raise VerificationError(
        f"source {source.name}: {url} does not match the lock: expected sha256 "
        f"{source.sha256} ({source.size} bytes), got {sha} ({size} bytes); the file was moved "
        f"to {q} and is not used",
        fix="if upstream re-released the file on purpose, check why, then record the new hash "
            f"with `inv lock --update --source {source.name}`; if a mirror served it, fix the "
            "mirror")


def fetch_tarball(settings: Settings, source: Source) -> Path:
    """The verified cached tarball of a locked tarball source (downloads when missing)."""
    dest = cached_tarball(settings, source)
    with cache_lock(settings, source.name):
        if dest.exists():
            sha, size = sha256_file(dest)
            _verify_tarball(settings, source, dest, str(dest), sha, size)
            return dest
        if settings.offline:
            raise _offline_error(source, f"{source.filename} (sha256 {_short(source.sha256)})",
                                 settings.tarball_cache)
        url = remote_url(settings, source)
        got = download(url, settings.tarball_cache, what=source.name,
                       filename=source.filename, expected_size=source.size)
        _verify_tarball(settings, source, got.path, url, got.sha256, got.size)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(got.path, dest)
        return dest


def resolve_tarball(settings: Settings, source: Source) -> tuple[str, int, Path]:
    """Download a tarball source (ignoring its lock) and put it in the cache under its
    content hash.  Returns ``(sha256, size, path)``."""
    if settings.offline:
        raise _offline_error(source, f"{source.filename} (not locked yet: it must be "
                             "downloaded to learn its hash)", settings.tarball_cache)
    url = remote_url(settings, source)
    with cache_lock(settings, source.name):
        got = download(url, settings.tarball_cache, what=source.name, filename=source.filename)
        dest = settings.tarball_cache / got.sha256 / source.filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(got.path, dest)
    return got.sha256, got.size, dest


# -- the verb ------------------------------------------------------------------------------

def _unlocked(settings: Settings, source: Source) -> None:
    if settings.locked:
        raise UnlockedSourceError(
            f"source {source.name} has no lock entry in {settings.sources_file} and --locked "
            f"forbids resolving it",
            fix=f"run `inv lock --source {source.name}` (online) and commit the sources file")


def resolve_unlocked(settings: Settings, source: Source) -> Source:
    """Resolve and record the lock of an unlocked source (the Cargo.lock rule)."""
    _unlocked(settings, source)
    if source.kind == "git":
        sha = fetch_ref(settings, source, source.ref)
        source = record_lock(settings, source, commit=sha)
        console.info(f"source {source.name}: not locked; resolved {source.ref} to {sha} and "
                     f"recorded it in {settings.sources_file}")
    else:
        sha, size, _ = resolve_tarball(settings, source)
        source = record_lock(settings, source, sha256=sha, size=size)
        console.info(f"source {source.name}: not locked; {source.filename} has sha256 {sha} "
                     f"({size} bytes), recorded in {settings.sources_file}")
    return source


def ensure_source(settings: Settings, source: Source) -> Path:
    """One source's work tree at its locked base (resolving + recording the lock when the
    source is unlocked, unless ``settings.locked``).  Returns the work tree."""
    if not source.locked:
        source = resolve_unlocked(settings, source)
    tree = work_tree(settings, source)
    if source.kind == "git":
        commit = str(source.commit)
        if _existing_tree(settings, source, tree) == commit and _tree_has(tree, commit):
            return tree                                         # fast path: nothing to do
        fetch_commit(settings, source, commit)
        with cache_lock(settings, source.name):
            return _git_work_tree(settings, source, commit)
    if tree.exists() and _existing_tree(settings, source, tree) and \
            _tarball_base_sha256(tree) == source.sha256:
        return tree
    archive = fetch_tarball(settings, source)
    with cache_lock(settings, source.name):
        return _tarball_work_tree(settings, source, archive)


def fetch(settings: Settings, names: list[str] | tuple[str, ...] | None = None) -> dict[str, Path]:
    """``inv fetch``: every named source (all when none) ready in its work tree."""
    selected = select(load_sources(settings), names, settings)
    if settings.locked:
        missing = [s.name for s in selected if not s.locked]
        if missing:
            opts = "".join(f" --source {m}" for m in missing) if len(missing) <= 3 else ""
            raise UnlockedSourceError(
                f"source(s) {', '.join(missing)} have no lock entry in {settings.sources_file} "
                f"and --locked forbids resolving them",
                fix=f"run `inv lock{opts}` (online) and commit the sources file")
    trees: dict[str, Path] = {}
    for source in selected:
        console.step(f"fetch {source.name}")
        tree = ensure_source(settings, source)
        base = _base_of(tree)
        console.info(f"source {source.name}: {_rel(settings, tree)} at {base}")
        trees[source.name] = tree
    return trees
