"""Import a release tarball into git: one deterministic commit of the safely extracted tree.

Contract (unchanged since the first import, so every tarball keeps its commit id): the archive
is extracted by :func:`askbuild.archive.safe_extract` (every member checked, the ``data``
filter, links resolved; a hostile member is refused with the same message, nothing left
behind), then ``git init``, ``git add -A -f`` of every file (``.gitignore`` does not apply,
the tree's own ``.gitattributes`` do, the user's and the system's git config do not), and one
commit with :data:`askbuild.gitutil.FIXED_IDENTITY` and the message of :func:`import_message`.
Empty directories are not in the commit (git tracks files), but are in the work tree.

How it is stored (issue 9, measured in ``benchmarks/bench_import.py``): the files are checked
in by :mod:`askbuild.checkin`, not by ``git add``: Python hashes every file and deflates each
new blob at level 1 into *one* pack on every core, and writes the index with each file's stat
data; git's own ``ls-files --others`` and ``diff-files`` then confirm the index holds every
file unchanged, and ``git commit`` makes the trees and the commit from it as after ``git
add``.  A tree with content-converting ``.gitattributes`` (``text``, ``eol``, ``ident``, ...)
or names git treats specially, or a check-in git does not confirm, goes through ``git add``
as before, with ``core.bigFileThreshold=1`` (git's bulk check-in: also one pack).  Object ids
are content hashes: storage and compression cannot change them.  The tests compare the
commit id with the plain import on fixtures with symlinks, executables, hard links, empty
directories, long and pax names and converting attributes (``tests/test_tarimport.py``,
``tests/test_checkin.py``).  On Debian's kernel tarball (83k files, 1.24 GB), bench run of
2026-12-01 14:52: cold import 52.8 s (the bulk ``git add`` 60.3 s, the plain one 60.3 s,
``tar -x`` 34.1 s); phase-timed, the check-in alone takes 19-21 s on 2 cores (32.7 s on
one; the bulk ``git add`` ~55 s), of which deflate is most (level 1: ~19 s of CPU; level 0
saved a few seconds but wrote a 1.3 GB pack): docs/benchmarks.md.  The
extraction is one streaming pass of ``xz -dc``, Python's member checks and GNU tar at once
(:mod:`askbuild.archive`: 25-30 s).

Every import after the first of a tarball starts from the objects the first one stored in
the download cache (:mod:`askbuild.importcache`): only the files' ids are then computed.

Considered and not done: ``git fast-import`` fed from the tar stream would have to re-implement
what ``git add`` does to the extracted files (attribute conversions, which of two same-named
members or hard-link modes wins on disk); measured on 20k files it saved no time over the bulk
check-in, and fed beside GNU tar from the same stream (its blobs only as a head start for the
``git add``) it made the kernel import slower on 2 cores (tar's system time tripled); so did
``git add`` of each finished directory while tar extracted the rest (72 s against 61 s one
after the other).  The Python check-in reads the extracted files (from the page cache) after
the extraction, rather than the bytes in the stream, for the same reason: what is on disk is
what ``git add`` would have seen.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import checkin, gitutil
from .archive import safe_extract
from .download import NO_SPACE, no_space_error
from .errors import SourceError
from .importcache import ImportCache

#: The commit message trailer naming the tarball's sha256 (fetch reads it back).
SHA256_TRAILER = "Askbuild-Sha256"

#: ``git add`` settings (when it is git that checks the files in) that change how objects are
#: *stored*, never their ids: every blob streamed into one pack (bulk check-in) instead of one
#: loose object file per file, fast deflate.  ``gc.auto=0`` (in gitutil) keeps a background
#: gc from repacking the new repo.
BULK_ADD = ["-c", "core.bigFileThreshold=1", "-c", "core.compression=1"]

#: The user's global git config (filters, attributes, ...) must not change the commit;
#: gitutil already drops the system config and sets core.autocrlf=false.
_NO_USER_CONFIG = {"GIT_CONFIG_GLOBAL": os.devnull}
#: Nor the user's attributes file (``$XDG_CONFIG_HOME/git/attributes`` is read even without
#: a global config): an attribute there could convert what ``git add`` stores.
_NO_USER_ATTRIBUTES = ["-c", f"core.attributesFile={os.devnull}"]
#: how :func:`commit_tree` checks the files in (the first is the shipped one)
METHODS = ("python", "bulk", "plain")


def import_message(filename: str, name: str, ref: str, sha256: str) -> str:
    """The import commit's message: part of the commit id, so it never changes."""
    return f"Import {filename} ({name} {ref})\n\n{SHA256_TRAILER}: {sha256}\n"


def _checked_in(tree: Path) -> bool:
    """The Python check-in (:func:`askbuild.checkin.check_in`), then git's own look at the
    result: every file tracked (``ls-files --others`` lists none) and none differing from its
    index entry (``diff-files``).  False, with what it wrote removed, when ``git add`` must
    do it."""
    written = checkin.check_in(tree)
    if written is None:
        return False
    others = gitutil.out([*_NO_USER_ATTRIBUTES, "ls-files", "-z", "--others", "--", "."],
                         cwd=tree, env=_NO_USER_CONFIG)
    differ = gitutil.git([*_NO_USER_ATTRIBUTES, "diff-files", "--quiet", "--"], cwd=tree,
                         env=_NO_USER_CONFIG, check=False).returncode
    if not others and differ == 0:
        return True
    for p in [*written, tree / ".git" / "index"]:
        p.unlink(missing_ok=True)
    return False


def commit_tree(tree: Path, message: str, *, method: str = "python",
                cache: ImportCache | None = None) -> str:
    """Make the directory ``tree`` a git repository holding every file of it as one commit
    with the fixed identity; returns the commit id.  ``method``: ``python`` (the shipped
    one, :mod:`askbuild.checkin`, falling back to ``bulk`` when the tree needs ``git add``),
    ``bulk`` (git's bulk check-in into one pack), ``plain`` (the ``git add`` of the first
    askbuilds: one loose object per file); the last two are the benchmark's "before".  With
    a ``cache``, the repository starts with the objects of an earlier import of the same
    tarball when there is one (only the files' ids are then computed: nothing is deflated
    again), and keeps its own objects there when there is none."""
    if method not in METHODS:
        raise ValueError(f"commit_tree: method {method!r} is none of {', '.join(METHODS)}")
    gitutil.git(["init", "-q", "--", str(tree)], env=_NO_USER_CONFIG)
    cached = cache is not None and cache.take(tree / ".git")
    if not (method == "python" and _checked_in(tree)):
        bulk = method != "plain" and not cached
        gitutil.git([*_NO_USER_ATTRIBUTES, *(BULK_ADD if bulk else []), "add", "-A", "-f",
                     "--", "."], cwd=tree, env=_NO_USER_CONFIG)
    gitutil.git([*_NO_USER_ATTRIBUTES, *(BULK_ADD[2:] if method != "plain" else []),
                 "commit", "-q", "--allow-empty", "--no-verify", "-m", message], cwd=tree,
                env={**gitutil.FIXED_IDENTITY, **_NO_USER_CONFIG})
    if cache is not None and not cached:
        cache.put(tree / ".git")
    return gitutil.out(["rev-parse", "HEAD"], cwd=tree)


def import_tarball(archive: Path, dest: Path, *, strip_components: int, what: str,
                   message: str, method: str = "python", cache: ImportCache | None = None
                   ) -> str:
    """Extract ``archive`` safely into the new directory ``dest`` and commit it; returns the
    commit id (``cache``: :func:`commit_tree`).  Refusals and failures are those of
    :func:`askbuild.archive.safe_extract` (nothing is left at ``dest`` when extraction
    fails); a failed ``git`` step raises :class:`~askbuild.gitutil.GitError`, a full disk
    while the files are checked in :class:`~askbuild.errors.NoSpaceError`, another failure
    to write there :class:`~askbuild.errors.SourceError`, and the caller throws ``dest`` away
    (it builds the import under a temporary name)."""
    safe_extract(archive, dest, strip_components=strip_components, what=what)
    try:
        return commit_tree(dest, message, method=method, cache=cache)
    except OSError as e:
        if e.errno in NO_SPACE:
            raise no_space_error(what, f"check {archive.name} into git", dest) from e
        raise SourceError(f"source {what}: cannot check {archive.name} into git in {dest}: "
                          f"{e.strerror or e}",
                          fix=f"check that {dest.parent} is writable, then run it again") from e
