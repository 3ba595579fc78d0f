"""The build stamp: what earlier builds learned from git, the compiler and dpkg, kept with what
it depends on, so a no-op ``inv build`` answers by reading files and stats (no git, compiler
or ``dpkg-query`` process).

- Git ids of input paths (and ``HEAD^{tree}``) per source, recorded with the commit they were
  read at: an id is a function of the commit and the path, and the commit HEAD is at is read
  from git's files (:mod:`.headfiles`; the build refuses a tree that is not exactly the
  current series, so uncommitted edits never count).  Another commit, or a HEAD the files do
  not tell for sure: git is asked (``git rev-parse <commit>:<path>...``), once per tree for
  every path the previous commit's entry knew (the paths every recipe asked for last time),
  not once per recipe: after an edit, one git process per changed tree.
- The peeled base commit, recorded with the base ref's value.
- The base..HEAD log of a tree without a patch record, recorded with both commits.
- The cross toolchain (:func:`askbuild.toolchain.check_compiler`) and the package versions
  (:func:`askbuild.toolchain.package_versions`), recorded with the stat signatures of the
  tools, PATH and the package database (:func:`askbuild.toolchain.compiler_signature`); any
  difference runs them again.

Only successful answers are recorded; the file is written atomically when it changed, under
the work-dir lock the build holds.  A missing, damaged or stale stamp only costs the full
check.
"""

from __future__ import annotations

from pathlib import Path

from .. import gitutil, toolchain
from ..errors import SourceError
from ..fsutil import read_json, write_json_atomic
from ..refs import BASE_REF
from ..settings import Settings
from .headfiles import head_commit, ref_value

SCHEMA = 1


def _rev(path: str) -> str:
    return "^{tree}" if path in (".", "") else f":{path.rstrip('/')}"


class BuildStamp:
    """The stamp of one build: read once, asked during the plan, :meth:`save`\\ d after it."""

    def __init__(self, settings: Settings) -> None:
        self.path = settings.build_stamp
        data = read_json(self.path)           # (None when missing or damaged)
        ok = isinstance(data, dict) and data.get("schema") == SCHEMA
        self.data: dict = data if ok else {"schema": SCHEMA}
        for k in ("trees", "toolchain", "packages"):
            if not isinstance(self.data.get(k), dict):
                self.data[k] = {}
        self.changed = False
        # {tree: paths the previous commit's entry knew}: asked for together on the first miss
        self.wanted: dict[str, list[str]] = {}

    def save(self) -> None:
        """Write the stamp when something was learnt (a failed write only costs a check)."""
        if not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, self.data)
        except OSError:
            return
        self.changed = False

    def _tree(self, tree: Path, head: str | None) -> dict | None:
        """The stamp's entry for work tree ``tree`` at commit ``head`` (made empty for a new
        commit); None when ``head`` is unknown (nothing is recorded then)."""
        if head is None:
            return None
        key = str(tree)
        entry = self.data["trees"].get(key)
        if not isinstance(entry, dict) or entry.get("head") != head \
                or not isinstance(entry.get("ids"), dict):
            base = entry.get("base") if isinstance(entry, dict) else None
            old = entry.get("ids") if isinstance(entry, dict) else None
            self.wanted[key] = [p for p in old if isinstance(p, str)] \
                if isinstance(old, dict) else []
            entry = {"head": head, "ids": {}, **({"base": base} if base else {})}
            self.data["trees"][key] = entry
        return entry

    # -- git -------------------------------------------------------------------------------
    def tree_ids(self, tree: Path, paths: list[str]) -> tuple[dict[str, str], list[str]]:
        """({path: git tree/blob id at HEAD}, [paths that do not exist at HEAD]) for the
        input paths ``paths`` of work tree ``tree`` (``"."``: the root tree)."""
        head = head_commit(tree)
        entry = self._tree(tree, head)
        known = entry["ids"] if entry else {}
        if all(isinstance(known.get(p), str) for p in paths):
            return {p: known[p] for p in paths}, []
        at = head or "HEAD"
        extra = [p for p in self.wanted.pop(str(tree), []) if p not in paths and p not in known]
        if extra and entry is not None:
            both = [*paths, *extra]
            proc = gitutil.git(["rev-parse", *(at + _rev(p) for p in both)], cwd=tree,
                               check=False)
            if proc.returncode == 0:              # (else a path is gone: ask for ours alone)
                known.update(zip(both, proc.stdout.split(), strict=True))
                self.changed = True
                return {p: known[p] for p in paths}, []
        revs = [at + _rev(p) for p in paths]
        proc = gitutil.git(["rev-parse", *revs], cwd=tree, check=False)
        if proc.returncode == 0:
            ids = dict(zip(paths, proc.stdout.split(), strict=True))
            if entry is not None:
                known.update(ids)
                self.changed = True
            return ids, []
        missing = [p for p, rev in zip(paths, revs, strict=True)
                   if gitutil.git(["rev-parse", "--verify", "--quiet", rev], cwd=tree,
                                  check=False).returncode != 0]
        if not missing:
            raise SourceError(f"{tree}: git rev-parse failed: {proc.stderr.strip()}")
        return {}, missing

    def head(self, tree: Path) -> str:
        """The commit HEAD of ``tree`` is at."""
        return head_commit(tree) or gitutil.out(["rev-parse", "HEAD"], cwd=tree)

    def base(self, tree: Path) -> str | None:
        """The commit of the base tag of ``tree`` (None when there is none)."""
        raw = ref_value(tree, BASE_REF)
        entry = self.data["trees"].get(str(tree))
        memo = entry.get("base") if isinstance(entry, dict) else None
        if raw is not None and isinstance(memo, list) and len(memo) == 2 and memo[0] == raw:
            return memo[1]
        proc = gitutil.git(["rev-parse", "--verify", "--quiet", f"{BASE_REF}^{{commit}}"],
                           cwd=tree, check=False)
        base = proc.stdout.strip() or None
        current = self._tree(tree, head_commit(tree))
        if raw is not None and base is not None and current is not None:
            current["base"] = [raw, base]
            self.changed = True
        return base

    def log(self, tree: Path, base: str, head: str) -> list[list[str]]:
        """``[[commit, subject], ...]`` from ``base`` (excluded) to ``head``, oldest first."""
        entry = self._tree(tree, head if head == head_commit(tree) else None)
        memo = entry.get("log") if entry else None
        if isinstance(memo, dict) and memo.get("base") == base \
                and isinstance(memo.get("commits"), list):
            return memo["commits"]
        out = gitutil.out(["log", "--reverse", "--format=%H %s", f"{base}..{head}", "--"],
                          cwd=tree)
        commits = [[ln.split(" ", 1)[0], ln.partition(" ")[2]] for ln in out.splitlines() if ln]
        if entry is not None:
            entry["log"] = {"base": base, "commits": commits}
            self.changed = True
        return commits

    # -- the toolchain ---------------------------------------------------------------------
    def toolchain(self, settings: Settings, packages: list[str]) -> toolchain.Toolchain:
        """The checked cross compiler (:func:`askbuild.toolchain.check_compiler`, raising as
        it does) with the versions of ``packages``; from the stamp when every signature is
        the same as when it was recorded."""
        sig = toolchain.compiler_signature(settings)
        memo = self.data["toolchain"]
        tc = toolchain.Toolchain.from_json(memo.get("value")) if memo.get("sig") == sig \
            else None
        if tc is None:
            tc = toolchain.check_compiler(settings)
            self.data["toolchain"] = {"sig": sig, "value": tc.to_json()}
            self.changed = True
        tc.packages = self._packages(packages)
        return tc

    def _packages(self, packages: list[str]) -> dict[str, str]:
        sig = toolchain.packages_signature(packages)
        memo = self.data["packages"]
        value = memo.get("value")
        if memo.get("sig") == sig and isinstance(value, dict):
            return dict(value)
        value = toolchain.package_versions(packages)
        self.data["packages"] = {"sig": sig, "value": value}
        self.changed = True
        return dict(value)
