"""Fixture upstreams and projects for the patch-queue and rebase tests (real git, tiny trees).

``make_upstream`` writes a bare repository with two releases:

* ``v1``: the tree our series is written against;
* ``v2``: an unrelated change (README), a change near our patch in ``lib/near.c`` (3-way), a
  change of the very line our patch changes in ``lib/conflict.c`` (conflict), the same change as
  our patch in ``lib/up.c`` (already upstream), the directory ``cmm-17.03.1/`` renamed to
  ``cmm/`` and a change near our patch in the CRLF file ``fmc/model.cpp``.

``make_series`` writes the local series (one ``git format-patch`` mail per patch, in this
order): clean, near, conflict, upstream, rename, crlf.  ``make_project`` writes a project root
(``recipes/sources.toml`` pointing at the upstream over file://, locked to v1,
``recipes/patches.toml``) and a work tree ``src/<name>`` tagged ``askbuild/base`` as fetch
would leave it.

``make_long_project`` is the same with a long generated series (one small change per patch,
contexts never overlapping, a new file every third patch): ``git am`` of it takes seconds, for
the fault suite (tests/test_faults_patch.py).
"""

from __future__ import annotations

import atexit
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from askbuild import gitutil
from askbuild.patchqueue import format_patch
from askbuild.settings import Settings

DEV = {"GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.org",
       "GIT_COMMITTER_NAME": "Dev", "GIT_COMMITTER_EMAIL": "dev@example.org"}

PATCH_ORDER = ["clean", "near", "conflict", "upstream", "rename", "crlf"]


def g(cwd: Path, *args: str, env: dict | None = None, input: bytes | str | None = None) -> str:
    return gitutil.git(list(args), cwd=cwd, env=env, input=input).stdout.strip()


def commit_all(repo: Path, msg: str, *, date: str = "2026-01-01T00:00:00Z",
               who: dict | None = None) -> str:
    env = {**(who or DEV), "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    g(repo, "add", "-A", "--", ".")
    g(repo, "commit", "-q", "--allow-empty", "-m", msg, env=env)
    return g(repo, "rev-parse", "HEAD")


def lines(prefix: str, n: int = 20, eol: str = "\n") -> str:
    return "".join(f"{prefix} line {i}{eol}" for i in range(1, n + 1))


def put(repo: Path, rel: str, content: str | bytes) -> None:
    p = repo / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode()
    p.write_bytes(content)


def change_line(repo: Path, rel: str, n: int, new: str) -> None:
    p = repo / rel
    data = p.read_bytes().split(b"\n")
    eol = b"\r" if data[n - 1].endswith(b"\r") else b""
    data[n - 1] = new.encode() + eol
    p.write_bytes(b"\n".join(data))


@dataclass
class Upstream:
    bare: Path
    url: str
    v1: str
    v2: str


def v1_tree(repo: Path) -> None:
    put(repo, "README", "tiny upstream\n")
    put(repo, "lib/clean.c", lines("clean"))
    put(repo, "lib/near.c", lines("near"))
    put(repo, "lib/conflict.c", lines("conflict"))
    put(repo, "lib/up.c", lines("up"))
    put(repo, "cmm-17.03.1/src/cmm.c", lines("cmm"))
    put(repo, "cmm-17.03.1/src/conf.c", lines("conf"))
    put(repo, "fmc/model.cpp", lines("model", eol="\r\n"))


def make_upstream(root: Path, name: str = "up") -> Upstream:
    work = root / f"{name}-work"
    work.mkdir(parents=True)
    g(work, "init", "-q")
    v1_tree(work)
    v1 = commit_all(work, "release v1", who={**DEV, "GIT_AUTHOR_NAME": "Upstream"})
    g(work, "tag", "v1")
    # v2: one commit per kind of change
    put(work, "README", "tiny upstream\nnow with more words\n")
    commit_all(work, "unrelated change", date="2026-02-01T00:00:00Z")
    change_line(work, "lib/near.c", 7, "near line 7 changed upstream")
    commit_all(work, "nearby change", date="2026-02-02T00:00:00Z")
    change_line(work, "lib/conflict.c", 10, "conflict line 10 THEIRS")
    commit_all(work, "conflicting change", date="2026-02-03T00:00:00Z")
    change_line(work, "lib/up.c", 3, "up line 3 fixed")
    commit_all(work, "same change as ours", date="2026-02-04T00:00:00Z")
    g(work, "mv", "cmm-17.03.1", "cmm")
    commit_all(work, "rename cmm-17.03.1 to cmm", date="2026-02-05T00:00:00Z")
    change_line(work, "fmc/model.cpp", 2, "model line 2 changed upstream")
    v2 = commit_all(work, "crlf change", date="2026-02-06T00:00:00Z")
    g(work, "tag", "v2")
    bare = root / f"{name}.git"
    g(root, "clone", "-q", "--bare", "--", str(work), str(bare))
    shutil.rmtree(work)
    return Upstream(bare, f"file://{bare}", v1, v2)


def our_changes(repo: Path) -> list[tuple[str, str]]:
    """Make our six commits on a v1 checkout; returns ``[(kind, commit)]``."""
    out = []
    steps = [
        ("clean", "lib/clean.c", 5, "clean line 5 OURS", "lib: make clean.c better"),
        ("near", "lib/near.c", 10, "near line 10 OURS", "lib: tune near.c"),
        ("conflict", "lib/conflict.c", 10, "conflict line 10 OURS", "lib: our conflict.c fix"),
        ("upstream", "lib/up.c", 3, "up line 3 fixed", "lib: fix up.c (sent upstream)"),
        ("rename", "cmm-17.03.1/src/cmm.c", 12, "cmm line 12 OURS", "cmm: run in foreground"),
        ("crlf", "fmc/model.cpp", 5, "model line 5 OURS", "fmc: keep CR"),
    ]
    for i, (kind, rel, n, new, msg) in enumerate(steps):
        change_line(repo, rel, n, new)
        out.append((kind, commit_all(repo, msg, date=f"2026-03-0{i + 1}T00:00:00Z")))
    # not in the default series: a new file inside the directory upstream renames
    put(repo, "cmm-17.03.1/src/extra.c", "extra\n")
    out.append(("newfile", commit_all(repo, "cmm: add extra.c", date="2026-03-09T00:00:00Z")))
    return out


def make_series(directory: Path, upstream: Upstream, scratch: Path,
                kinds: list[str] | None = None) -> list[str]:
    """Write our series (format-patch mails) for ``kinds`` into ``directory``; file names."""
    kinds = kinds or PATCH_ORDER
    work = scratch / "series-work"
    if work.exists():
        shutil.rmtree(work)
    g(scratch, "clone", "-q", "--", upstream.url, str(work))
    g(work, "checkout", "-q", "--detach", upstream.v1)
    changes = our_changes(work)
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for i, (kind, c) in enumerate([x for x in changes if x[0] in kinds], start=1):
        name = f"{i:04d}-{kind}.patch"
        (directory / name).write_bytes(format_patch(work, c))
        names.append(name)
    (directory / "series").write_text("# our series\n" + "".join(n + "\n" for n in names))
    shutil.rmtree(work)
    return names


@dataclass
class Project:
    root: Path
    settings: Settings
    upstream: Upstream

    @property
    def tree(self) -> Path:
        return self.settings.src_dir / "up"

    @property
    def series_dir(self) -> Path:
        return self.root / "patches" / "up"


def write_sources(root: Path, entries: dict[str, tuple[str, str, str]]) -> None:
    """``{name: (url, ref, commit)}`` -> recipes/sources.toml."""
    text = "# fixture sources\n"
    for name, (url, ref, commit) in entries.items():
        text += (f"\n[{name}]\nkind = \"git\"\nurl = \"{url}\"\nref = \"{ref}\"\n"
                 f"commit = \"{commit}\"\n")
    (root / "recipes").mkdir(parents=True, exist_ok=True)
    (root / "recipes" / "sources.toml").write_text(text)


def left_scratches(settings: Settings) -> list[Path]:
    """The scratch repositories of ``settings``' work dir there are: in the work dir and in
    RAM (named after the work dir: ``scratch.scratch_home``)."""
    found = list(settings.work_dir.glob("patch-scratch-*"))
    ram = settings.ram_scratch_dir
    if ram is not None and ram.is_dir():
        found += ram.glob(f"patch-scratch-{settings.scratch_key}-*")
    return found


def make_tree(settings: Settings, name: str, url: str, commit: str) -> Path:
    """A work tree as fetch leaves it: clone, HEAD at ``commit``, tag askbuild/base."""
    tree = settings.src_dir / name
    tree.parent.mkdir(parents=True, exist_ok=True)
    g(tree.parent, "clone", "-q", "--no-checkout", "--", url, str(tree))
    g(tree, "checkout", "-q", "--detach", commit)
    g(tree, "tag", "-f", "askbuild/base", commit)
    return tree


_TEMPLATES: dict[tuple[str, ...], tuple[Path, Upstream]] = {}


def _template(kinds: list[str] | None) -> tuple[Path, Upstream]:
    """Upstream + series are deterministic: build them once per test session, copy after."""
    key = tuple(kinds or PATCH_ORDER)
    if key not in _TEMPLATES:
        base = Path(tempfile.mkdtemp(prefix="askbuild-patchfixture-"))
        atexit.register(shutil.rmtree, base, True)
        up = make_upstream(base / "upstreams")
        make_series(base / "series", up, base, list(key))
        _TEMPLATES[key] = (base, up)
    return _TEMPLATES[key]


def make_project(tmp: Path, *, kinds: list[str] | None = None, with_tree: bool = True
                 ) -> Project:
    base, tup = _template(kinds)
    return _project_from(base, tup, tmp, with_tree)


def _project_from(base: Path, tup: Upstream, tmp: Path, with_tree: bool) -> Project:
    """A project in ``tmp`` from a template (``base``: its upstreams and series)."""
    shutil.copytree(base / "upstreams", tmp / "upstreams", symlinks=True)
    bare = tmp / "upstreams" / tup.bare.name
    up = Upstream(bare, f"file://{bare}", tup.v1, tup.v2)
    root = tmp / "project"
    write_sources(root, {"up": (up.url, "v1", up.v1)})
    (root / "recipes" / "patches.toml").write_text('[up]\nlocal = ["patches/up"]\n')
    settings = Settings(project_root=root, work_dir=tmp / "work", cache_dir=tmp / "cache")
    shutil.copytree(base / "series", root / "patches" / "up")
    if with_tree:
        make_tree(settings, "up", up.url, up.v1)
    return Project(root, settings, up)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes (for byte-for-byte comparisons)."""
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


# -- a long series (the fault suite) --------------------------------------------------------

LONG_FILES = 10


def _long_v1(n: int) -> dict[str, str]:
    blocks = n // LONG_FILES + 1
    return {f"lib/m{k}.c": "".join(f"m{k} block {b} line {i}\n" for b in range(blocks)
                                    for i in range(10))
            for k in range(LONG_FILES)}


def long_patch(i: int) -> bytes:
    """Patch ``i`` (1-based) of the long series: a one-line change in its own block of
    ``lib/m<i % 10>.c`` (contexts never overlap), plus a new file every third patch."""
    k, b = i % LONG_FILES, i // LONG_FILES
    first = 10 * b + 3                      # 1-based: lines 3..9 of the block, line 6 changes
    ctx = [f"m{k} block {b} line {j}" for j in range(2, 9)]
    body = (f"diff --git a/lib/m{k}.c b/lib/m{k}.c\n--- a/lib/m{k}.c\n+++ b/lib/m{k}.c\n"
            f"@@ -{first},7 +{first},7 @@\n"
            + "".join(f" {c}\n" for c in ctx[:3]) + f"-{ctx[3]}\n+{ctx[3]} PATCHED {i}\n"
            + "".join(f" {c}\n" for c in ctx[4:]))
    if i % 3 == 0:
        body += (f"diff --git a/gen/p{i:04d}.txt b/gen/p{i:04d}.txt\nnew file mode 100644\n"
                 f"--- /dev/null\n+++ b/gen/p{i:04d}.txt\n@@ -0,0 +1,2 @@\n+new file {i}\n"
                 f"+second line\n")
    day = 1 + i % 28
    return (f"From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
            f"From: Dev <dev@example.org>\nDate: Sun, {day} Mar 2026 00:00:{i % 60:02d} +0000\n"
            f"Subject: [PATCH] change {i:04d}\n\nGenerated change number {i}.\n---\n"
            + body + "--\n2.39.5\n\n").encode()


def make_long_project(tmp: Path, n: int = 150, *, with_tree: bool = True,
                      filler: int = 0) -> Project:
    """A project whose source ``up`` carries a series of ``n`` small generated patches
    (one commit each; ``git am`` of all of them takes seconds).  ``filler``: that many more
    small files in the upstream (ten per directory, under ``tree/``) that no patch touches,
    for a tree the size of a real one (the benchmarks)."""
    key = ("long", n, filler)
    if key not in _TEMPLATES:
        base = Path(tempfile.mkdtemp(prefix="askbuild-longfixture-"))
        atexit.register(shutil.rmtree, base, True)
        work = base / "upstreams" / "up-work"
        work.mkdir(parents=True)
        g(work, "init", "-q")
        put(work, "README", "long upstream\n")
        for rel, text in _long_v1(n).items():
            put(work, rel, text)
        for i in range(filler):
            put(work, f"tree/d{i // 10:05d}/f{i:06d}.c", f"filler file {i}\n")
        v1 = commit_all(work, "release v1", who={**DEV, "GIT_AUTHOR_NAME": "Upstream"})
        g(work, "tag", "v1")
        bare = base / "upstreams" / "up.git"
        g(base, "clone", "-q", "--bare", "--", str(work), str(bare))
        shutil.rmtree(work)
        sdir = base / "series"
        sdir.mkdir()
        names = [f"{i:04d}-change.patch" for i in range(1, n + 1)]
        for i, name in enumerate(names, start=1):
            (sdir / name).write_bytes(long_patch(i))
        (sdir / "series").write_text("".join(f"{name}\n" for name in names))
        _TEMPLATES[key] = (base, Upstream(bare, f"file://{bare}", v1, v1))
    base, tup = _TEMPLATES[key]
    return _project_from(base, tup, tmp, with_tree)


def add_release_v2(project: Project) -> None:
    """Tag ``v2`` in the project's upstream: v1 plus one change of the README (no patch of a
    long series meets it)."""
    work = project.root.parent / "upstream-v2"
    g(project.root.parent, "clone", "-q", "--", str(project.upstream.bare), str(work))
    put(work, "README", "long upstream, v2\n")
    commit_all(work, "release v2", who={**DEV, "GIT_AUTHOR_NAME": "Upstream"})
    g(work, "tag", "v2")
    g(work, "push", "-q", "origin", "HEAD:refs/heads/v2-branch", "v2")


def logging_git(tmp: Path, path: str | None = None, body: str = "") -> tuple[str, Path]:
    """A ``git`` (in a new directory under ``tmp``) that logs each call's arguments, then runs
    ``body`` (shell, ``$REAL`` the real git found on ``path``, default ``$PATH``; default body:
    exec the real git): that ``path`` with the wrapper first, and the log file (tests count git
    processes with :func:`git_calls`; the benchmarks too)."""
    path = os.environ["PATH"] if path is None else path
    real = next(Path(d) / "git" for d in path.split(os.pathsep) if (Path(d) / "git").is_file())
    bindir = Path(tempfile.mkdtemp(prefix="git-log-", dir=tmp))
    log = bindir / "git.log"
    wrapper = bindir / "git"
    wrapper.write_text(f'#!/bin/sh\nREAL="{real}"\necho "$*" >> "{log}"\n'
                       + (body or 'exec "$REAL" "$@"\n'))
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return f"{bindir}{os.pathsep}{path}", log


def git_logger(tmp: Path, monkeypatch) -> Path:
    """:func:`logging_git` first on the test's ``PATH``: the log file."""
    path, log = logging_git(tmp)
    monkeypatch.setenv("PATH", path)
    return log


def git_calls(log: Path, word: str) -> int:
    """How many logged git calls have ``word`` among their arguments."""
    text = log.read_text() if log.exists() else ""
    return sum(1 for ln in text.splitlines() if f" {word} " in f" {ln} ")
