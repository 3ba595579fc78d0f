"""Fixture histories for the maintainer's rebase on real history (issue 10): an "ask-like"
upstream with three releases and a five-patch series written the way maintainers write them.

Upstream ``ask`` (a bare repository served over ``file://``; invented content, no vendor code):

* ``v1``: ``cdx/``, ``cmm-17.03.1/src/`` (with ``module_l2tp.c``), ``dpa_app/``;
* ``v2``: the backport we carry (``cdx/cdx_main.c`` line 20) is upstream, ``module_l2tp.c`` is
  deleted, a line next to our ``dpa_app/dpa.c`` change moved, README reworded;
* ``v3``: ``v2`` plus the directory ``cmm-17.03.1/`` renamed to ``cmm/``.

The series ``patches/ask`` (order of application; :data:`EXPECTED` gives each verdict):

====  ==========================================  ===========================================
 #    file                                        onto v2 / onto v3
====  ==========================================  ===========================================
 1    ``0001-cdx-raise-the-queue-depth.patch``     clean / clean
 2    ``0002-cdx-backport-the-overflow-fix.patch`` upstream / upstream (a backport)
 3    ``0003-cmm-run-in-the-foreground.patch``     clean / 3way (follows cmm-17.03.1/ -> cmm/)
 4    ``0004-cmm-l2tp-keepalive.patch``            conflict (modify/delete) / same
 5    ``0005-dpa-tune-the-buffers.patch``          3way / 3way
====  ==========================================  ===========================================

The patch files are real ``git format-patch`` mails of a maintainer's clone (``From <sha>``
line of their commit, ``[PATCH n/5]``, ``--abbrev=7`` index lines, a diffstat and the
signature ``-- \\n2.39.2``), except patch 5: no diffstat (``-p``) and 12-digit index lines.
The ``series`` file (:data:`SERIES_TEXT`) has comments everywhere: a leading block, section
headers, comments above entries, inline ``# ...`` after entries, blank lines, a trailing block.

:func:`make_project` copies a session-wide template (built once) into a test's directory and
writes the project root (``recipes/sources.toml`` locked to v1, ``recipes/patches.toml``), or
with ``profile=NAME`` only ``recipes/profiles/NAME.toml`` and ``recipes/profiles/NAME/
patches.toml`` (so a command that forgets ``--profile`` cannot work).  The work tree is made by
askbuild itself (``inv fetch`` / ``inv patch``), not here.
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from upstreams import GitUpstream

from askbuild import gitutil
from askbuild.settings import Settings

NAME = "ask"
SERIES = "patches/ask"
SIGNATURE = "2.39.2"
MAINTAINER = {"GIT_AUTHOR_NAME": "Ada Maintainer", "GIT_AUTHOR_EMAIL": "ada@example.org",
              "GIT_COMMITTER_NAME": "Ada Maintainer", "GIT_COMMITTER_EMAIL": "ada@example.org"}

CDX_Q = "cdx/cdx_queue.c"
CDX_MAIN = "cdx/cdx_main.c"
CMM_OLD = "cmm-17.03.1/src/cmm.c"
CMM_NEW = "cmm/src/cmm.c"
L2TP = "cmm-17.03.1/src/module_l2tp.c"
DPA = "dpa_app/dpa.c"

P1 = "0001-cdx-raise-the-queue-depth.patch"
P2 = "0002-cdx-backport-the-overflow-fix.patch"
P3 = "0003-cmm-run-in-the-foreground.patch"
P4 = "0004-cmm-l2tp-keepalive.patch"
P5 = "0005-dpa-tune-the-buffers.patch"
PATCHES = [P1, P2, P3, P4, P5]

EXPECTED = {
    "v2": {P1: "clean", P2: "upstream", P3: "clean", P4: "conflict", P5: "3way"},
    "v3": {P1: "clean", P2: "upstream", P3: "3way", P4: "conflict", P5: "3way"},
}

SERIES_TEXT = f"""\
# Local patches carried on top of the ask-like vendor tree.
# Keep this file in the order the patches apply.

# == cdx ==
# queue depth: the gateway needs deeper queues (ticket 12)
{P1}   # ours for good
{P2}  # backport of upstream's overflow fix; drop once upstream

# == cmm ==
{P3}
# l2tp keepalive for the gateway (ticket 31)
{P4} # needs the l2tp module

# == dpa ==
{P5}\t# tab before this comment

# end of series: new patches go above this line
"""

# the series after a rebase that drops P2 (already upstream) and P4 (skipped): every other
# line byte for byte; P2's inline comment and P4's comment line and entry go with them
SERIES_AFTER_DROPS = f"""\
# Local patches carried on top of the ask-like vendor tree.
# Keep this file in the order the patches apply.

# == cdx ==
# queue depth: the gateway needs deeper queues (ticket 12)
{P1}   # ours for good

# == cmm ==
{P3}

# == dpa ==
{P5}\t# tab before this comment

# end of series: new patches go above this line
"""


def lines(prefix: str, n: int) -> str:
    return "".join(f"{prefix} line {i}\n" for i in range(1, n + 1))


def with_line(text: str, n: int, new: str) -> str:
    rows = text.splitlines(keepends=True)
    rows[n - 1] = new + "\n"
    return "".join(rows)


V1 = {
    "README": "ask-like upstream (invented content for askbuild's tests)\n",
    CDX_Q: lines("cdx queue", 30),
    CDX_MAIN: lines("cdx main", 30),
    CMM_OLD: lines("cmm", 30),
    "cmm-17.03.1/src/conntrack.c": lines("conntrack", 20),
    L2TP: lines("l2tp", 60),
    DPA: lines("dpa", 30),
}

# (subject, body, file, line, new text): our five commits, in series order
OURS = [
    ("cdx: raise the queue depth", "The gateway drops packets under load with 64 entries.\n",
     CDX_Q, 12, "cdx queue line 12 depth 512"),
    ("cdx: backport the overflow fix", "Backport of the upstream fix for the counter overflow.\n",
     CDX_MAIN, 20, "cdx main line 20 overflow fixed"),
    ("cmm: run in the foreground", "So that the supervisor sees it exit.\n",
     CMM_OLD, 15, "cmm line 15 OURS foreground"),
    ("cmm: l2tp keepalive", "Keep l2tp sessions alive across NAT.\n",
     L2TP, 30, "l2tp line 30 OURS keepalive"),
    ("dpa: tune the buffers", "Bigger buffers for the 10G ports.\n",
     DPA, 10, "dpa line 10 OURS buffers"),
]


@dataclass
class AskUpstream:
    bare: Path
    v1: str
    v2: str
    v3: str

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def rev(self, ref: str) -> str:
        return gitutil.out(["rev-parse", f"{ref}^{{commit}}"], cwd=self.bare)


def make_upstream(root: Path) -> AskUpstream:
    """The bare repository ``root/ask.git`` with annotated tags v1, v2, v3."""
    up = GitUpstream(root, NAME)
    v1 = up.release("v1", dict(V1))
    up.commit({"README": V1["README"] + "now maintained by the vendor\n"}, "README: reword")
    up.commit({CDX_MAIN: with_line(V1[CDX_MAIN], 20, "cdx main line 20 overflow fixed")},
              "cdx: fix the counter overflow")
    up.commit({L2TP: None}, "cmm: remove the l2tp module (moved to the kernel)")
    v2 = up.release("v2", {DPA: with_line(V1[DPA], 8, "dpa line 8 changed upstream")})
    tree = up.dev
    renamed = {}
    for p in sorted((tree / "cmm-17.03.1").rglob("*")):
        if p.is_file():
            rel = p.relative_to(tree).as_posix()
            renamed[rel.replace("cmm-17.03.1/", "cmm/", 1)] = p.read_text()
            renamed[rel] = None
    v3 = up.release("v3", renamed)
    return AskUpstream(up.bare, v1, v2, v3)


def _g(cwd: Path, *args: str, env: dict | None = None) -> str:
    return gitutil.out(list(args), cwd=cwd, env=env)


def make_series(directory: Path, upstream: AskUpstream, scratch: Path) -> None:
    """Our five commits in a maintainer's clone at v1, written with ``git format-patch`` as
    described in the module docstring, plus :data:`SERIES_TEXT`."""
    work = scratch / "maintainer-clone"
    _g(scratch, "clone", "-q", "--", upstream.url, str(work))
    _g(work, "checkout", "-q", "--detach", upstream.v1)
    for i, (subject, body, rel, n, new) in enumerate(OURS, start=1):
        f = work / rel
        f.write_text(with_line(f.read_text(), n, new))
        date = f"2026-03-0{i}T10:00:00Z"
        _g(work, "commit", "-q", "-a", "-m", f"{subject}\n\n{body}",
           env={**MAINTAINER, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date})
    directory.mkdir(parents=True, exist_ok=True)
    fmt = ["-c", "diff.noprefix=false", "-c", "diff.mnemonicPrefix=false", "format-patch",
           "-q", "-5", "--numbered", f"--signature={SIGNATURE}", "--no-cover-letter"]
    env = {"GIT_CONFIG_GLOBAL": "/dev/null"}
    with_stat, no_stat = scratch / "with-stat", scratch / "no-stat"
    _g(work, *fmt, "--stat", "--abbrev=7", "-o", str(with_stat), "HEAD", env=env)
    _g(work, *fmt, "-p", "--abbrev=12", "-o", str(no_stat), "HEAD", env=env)
    for name in PATCHES:
        src = (no_stat if name == P5 else with_stat) / name
        shutil.copyfile(src, directory / name)
    (directory / "series").write_text(SERIES_TEXT)
    for d in (work, with_stat, no_stat):
        shutil.rmtree(d)


_TEMPLATE: dict[str, tuple[Path, AskUpstream]] = {}


def template() -> tuple[Path, AskUpstream]:
    """Upstream and series are deterministic: built once per test session, copied after."""
    if "t" not in _TEMPLATE:
        base = Path(tempfile.mkdtemp(prefix="askbuild-rebasefixture-"))
        atexit.register(shutil.rmtree, base, True)
        up = make_upstream(base / "upstreams")
        make_series(base / "series", up, base)
        _TEMPLATE["t"] = (base, up)
    return _TEMPLATE["t"]


@dataclass
class AskProject:
    """A fixture project: ``root`` (recipes, patches), ``work``, ``cache`` (any may hold a
    space), the upstream, and the profile its sources file belongs to."""

    root: Path
    work: Path
    cache: Path
    upstream: AskUpstream
    profile: str = "default"

    def settings(self, **kw) -> Settings:
        profile = None if self.profile == "default" else self.profile
        return Settings.load(project_root=self.root, work_dir=self.work, cache_dir=self.cache,
                             profile=profile, **kw)

    @property
    def sources_file(self) -> Path:
        if self.profile == "default":
            return self.root / "recipes" / "sources.toml"
        return self.root / "recipes" / "profiles" / f"{self.profile}.toml"

    @property
    def series_dir(self) -> Path:
        return self.root / SERIES

    @property
    def tree(self) -> Path:
        return self.work / "src" / NAME

    def options(self) -> list[str]:
        """The CLI options that point a verb at this project's work dir, cache and profile."""
        opts = ["--work-dir", str(self.work), "--cache-dir", str(self.cache)]
        return opts + (["--profile", self.profile] if self.profile != "default" else [])


def make_project(tmp: Path, *, profile: str = "default", dirs: str = "") -> AskProject:
    """A project for source ``ask`` locked to v1 with the series ``patches/ask``.  ``dirs`` is
    put in the names of the work and cache directories (e.g. ``" with space"``)."""
    base, tup = template()
    shutil.copytree(base / "upstreams" / tup.bare.name, tmp / "upstreams" / tup.bare.name,
                    symlinks=True)
    up = AskUpstream(tmp / "upstreams" / tup.bare.name, tup.v1, tup.v2, tup.v3)
    root = tmp / "project"
    recipes = root / "recipes"
    entry = (f'# ask-like fixture sources\n\n[{NAME}]\nkind = "git"\nurl = "{up.url}"\n'
             f'ref = "v1"\ncommit = "{up.v1}"\n')
    layers = f'[{NAME}]\nlocal = ["{SERIES}"]\n'
    if profile == "default":
        recipes.mkdir(parents=True)
        (recipes / "sources.toml").write_text(entry)
        (recipes / "patches.toml").write_text(layers)
    else:
        (recipes / "profiles" / profile).mkdir(parents=True)
        (recipes / "profiles" / f"{profile}.toml").write_text(entry)
        (recipes / "profiles" / profile / "patches.toml").write_text(layers)
    shutil.copytree(base / "series", root / SERIES)
    return AskProject(root, tmp / f"work{dirs}", tmp / f"cache{dirs}", up, profile)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def ambiguous_pair(upstream: AskUpstream, digits: int = 7) -> tuple[str, str, str]:
    """Two new commits in the upstream (tags ``probe-a``, ``probe-b``, children of v1) whose
    SHAs share their first ``digits`` hex digits: returns (prefix, sha_a, sha_b).  The SHAs
    are searched for in Python (a commit's id is the SHA-1 of its text), then written."""
    bare = upstream.bare
    tree = _g(bare, "rev-parse", f"{upstream.v1}^{{tree}}")
    seen: dict[str, bytes] = {}
    i = 0
    while True:
        body = (f"tree {tree}\nparent {upstream.v1}\n"
                f"author Probe <probe@example.org> 1704067200 +0000\n"
                f"committer Probe <probe@example.org> 1704067200 +0000\n\nprobe {i}\n").encode()
        sha = hashlib.sha1(b"commit %d\0" % len(body) + body).hexdigest()
        if sha[:digits] in seen:
            shas = []
            for text in (seen[sha[:digits]], body):
                shas.append(gitutil.git(["hash-object", "-t", "commit", "-w", "--stdin"],
                                        cwd=bare, input=text, text=False).stdout.decode().strip())
            _g(bare, "tag", "probe-a", shas[0])
            _g(bare, "tag", "probe-b", shas[1])
            assert shas[0][:digits] == shas[1][:digits] and shas[0] != shas[1]
            return shas[0][:digits], shas[0], shas[1]
        seen[sha[:digits]] = body
        i += 1
