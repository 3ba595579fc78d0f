"""Issue 9 item 2: a no-op ``inv build`` answers from files and stats -- no git, no compiler, no
``dpkg-query`` process -- and every kind of change is still seen.

The real CLI runs in a subprocess with logging wrappers of ``git``, ``aarch64-linux-gnu-gcc``
and ``dpkg-query`` first on PATH.  The project: one locked git source ``up`` with a one-patch
series (tests/patchfixtures.py) and one component ``app`` reading ``up:lib`` and linking
``libxml2`` (so the package versions are part of its key).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import faults
import pytest
from patchfixtures import _template

from askbuild import toolchain
from askbuild.building.headfiles import head_commit, ref_value

CROSS_GCC = "aarch64-linux-gnu-gcc"
RECIPE = """\
source = "up"
inputs = ["lib"]
host_libs = ["libxml2"]
steps = [["sh", "-c", "cat lib/*.c > out.txt"]]
[[artifacts]]
path = "out.txt"
stage = "usr/share/t/app.txt"
"""
LOGGED = ("git", CROSS_GCC, "dpkg-query")

needs_toolchain = pytest.mark.skipif(
    not shutil.which(CROSS_GCC) or not shutil.which("dpkg-query")
    or bool(toolchain.lib_problems(["libxml2"])),
    reason="needs the cross compiler, dpkg-query and libxml2-dev:arm64")


class Project:
    """The fixture project, its work/cache directories and the logging wrappers."""

    def __init__(self, tmp: Path) -> None:
        base, up = _template(["clean"])
        shutil.copytree(base / "upstreams", tmp / "upstreams", symlinks=True)
        url = f"file://{tmp / 'upstreams' / up.bare.name}"
        self.root = tmp / "project"
        recipes = self.root / "recipes"
        (recipes / "components").mkdir(parents=True)
        (recipes / "sources.toml").write_text(
            f'[up]\nkind = "git"\nurl = "{url}"\nref = "v1"\ncommit = "{up.v1}"\n')
        (recipes / "patches.toml").write_text('[up]\nlocal = ["patches/up"]\n')
        self.recipe = recipes / "components" / "app.toml"
        self.recipe.write_text(RECIPE)
        shutil.copytree(base / "series", self.root / "patches" / "up")
        self.work, self.cache = tmp / "work", tmp / "cache"
        self.bin, self.log = tmp / "logbin", tmp / "calls.log"
        self.bin.mkdir()
        for tool in LOGGED:
            self.wrap(tool)
        self.env = {"ASKBUILD_PROJECT_ROOT": str(self.root),
                    "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}"}

    def wrap(self, tool: str, before: str = "") -> None:
        """A ``tool`` first on PATH logging each call, then running the real one (``before``:
        shell lines run first, e.g. to answer some arguments itself)."""
        real = shutil.which(tool, path=os.environ["PATH"])
        w = self.bin / tool
        w.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{self.log}"\n{before}'
                     f'exec "{real}" "$@"\n')
        w.chmod(0o755)

    def inv(self, *args: str) -> subprocess.CompletedProcess:
        return faults.inv(*args, "--work-dir", str(self.work), "--cache-dir", str(self.cache),
                          env=self.env, timeout=300)

    def build(self) -> tuple[str, list[str]]:
        """``inv build`` (must succeed): (its stderr, the logged calls of the tools)."""
        self.log.unlink(missing_ok=True)
        proc = self.inv("build")
        assert proc.returncode == 0, proc.stderr
        calls = self.log.read_text().splitlines() if self.log.exists() else []
        return proc.stderr, calls

    @property
    def staged(self) -> Path:
        return self.work / "staging" / "usr" / "share" / "t" / "app.txt"

    def manifest(self) -> dict:
        return json.loads((self.work / "build-manifest.json").read_text())


@pytest.fixture
def proj(tmp_path) -> Project:
    p = Project(tmp_path)
    out, calls = p.build()
    assert "built 1" in out
    assert any(c.startswith(f"{CROSS_GCC} ") for c in calls)      # the wrappers are in use
    assert any(c.startswith("dpkg-query ") for c in calls)
    return p


def _tools(calls: list[str]) -> set[str]:
    return {c.split(" ", 1)[0] for c in calls}


@needs_toolchain
def test_a_second_build_spawns_no_git_compiler_or_dpkg_and_says_the_same(proj):
    first = proj.manifest()
    out, calls = proj.build()
    assert calls == []
    assert "build app: cached" in out and "built 0, up to date 1" in out
    again = proj.manifest()
    # what the stamps answered is what git, the compiler and dpkg said the first time
    assert again["sources"] == first["sources"]
    assert again["toolchain"] == first["toolchain"]
    assert again["components"]["app"]["key"] == first["components"]["app"]["key"]
    assert again["components"]["app"]["inputs"] == first["components"]["app"]["inputs"]
    tree = proj.work / "src" / "up"
    head = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD", "HEAD^{tree}",
                           "HEAD:lib"], capture_output=True, text=True, check=True).stdout.split()
    src = again["sources"]["up"]
    assert [src["head"], src["tree"], again["components"]["app"]["inputs"]["lib"]] == head


@needs_toolchain
def test_a_new_commit_from_an_edited_patch_is_built(proj):
    key = proj.manifest()["components"]["app"]["key"]
    patch = next((proj.root / "patches" / "up").glob("*.patch"))
    patch.write_text(patch.read_text().replace("clean line 5 OURS", "clean line 5 EDITED"))
    done = proj.inv("patch")
    assert done.returncode == 0, done.stderr
    out, calls = proj.build()
    assert "built 1" in out
    assert "git" in _tools(calls)
    assert "clean line 5 EDITED" in proj.staged.read_text()
    assert proj.manifest()["components"]["app"]["key"] != key
    assert proj.build()[1] == []          # and the new commit's ids are stamped in turn


@needs_toolchain
def test_an_edited_recipe_is_built(proj):
    key = proj.manifest()["components"]["app"]["key"]
    proj.recipe.write_text(RECIPE.replace("cat lib/*.c > out.txt",
                                          "cat lib/*.c lib/*.c > out.txt"))
    out, _ = proj.build()
    assert "built 1" in out
    text = proj.staged.read_text()
    assert text[:len(text) // 2] == text[len(text) // 2:]
    assert proj.manifest()["components"]["app"]["key"] != key


@needs_toolchain
def test_another_compiler_version_is_asked_and_gives_a_new_key(proj):
    key = proj.manifest()["components"]["app"]["key"]
    proj.wrap(CROSS_GCC, before='[ "$1" = -dumpfullversion ] && { echo 99.1.0; exit 0; }\n')
    out, calls = proj.build()
    assert f"{CROSS_GCC} -dumpfullversion -dumpversion" in calls
    assert "built 1" in out
    man = proj.manifest()
    assert man["toolchain"]["gcc_version"] == "99.1.0"
    assert man["components"]["app"]["key"] != key
    out, calls = proj.build()
    assert calls == [] and "up to date 1" in out


@needs_toolchain
def test_another_package_version_is_asked_and_gives_a_new_key(proj):
    key = proj.manifest()["components"]["app"]["key"]
    proj.wrap("dpkg-query", before='echo "libxml2-dev:arm64 9:9.9.9-test"; exit 0\n')
    out, calls = proj.build()
    assert "dpkg-query" in _tools(calls)
    assert "built 1" in out
    man = proj.manifest()
    assert man["toolchain"]["packages"] == {"libxml2-dev:arm64": "9:9.9.9-test"}
    assert man["components"]["app"]["key"] != key


@needs_toolchain
def test_an_artifact_deleted_from_staging_is_put_back(proj):
    staged = proj.staged.read_bytes()
    proj.staged.unlink()
    out, _ = proj.build()
    assert "up to date 1" in out
    assert proj.staged.read_bytes() == staged


@needs_toolchain
def test_a_deleted_build_output_is_built_again(proj):
    staged = proj.staged.read_bytes()
    (proj.work / "out" / "app" / "src" / "out.txt").unlink()
    out, _ = proj.build()
    assert "built 1" in out
    assert proj.staged.read_bytes() == staged


# -- HEAD and refs read from git's files agree with git ---------------------------------------

def _git(tree: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True,
                          check=True, env=env).stdout.strip()


def test_head_from_files_matches_git_in_every_layout(tmp_path):
    tree = tmp_path / "t"
    tree.mkdir()
    _git(tree, "init", "-q", "-b", "askbuild/patched")
    (tree / "f").write_text("1\n")
    _git(tree, "add", "f")
    _git(tree, "commit", "-q", "-m", "one")
    _git(tree, "tag", "-a", "-m", "base", "askbuild/base")
    assert head_commit(tree) == _git(tree, "rev-parse", "HEAD")             # loose branch
    assert ref_value(tree, "refs/tags/askbuild/base") == _git(tree, "rev-parse",
                                                              "askbuild/base")
    _git(tree, "pack-refs", "--all")
    assert not (tree / ".git" / "refs" / "heads" / "askbuild" / "patched").exists()
    assert head_commit(tree) == _git(tree, "rev-parse", "HEAD")             # packed
    (tree / "f").write_text("2\n")
    _git(tree, "commit", "-q", "-am", "two")                               # loose wins
    assert head_commit(tree) == _git(tree, "rev-parse", "HEAD")
    _git(tree, "checkout", "-q", "--detach", "HEAD~1")
    assert head_commit(tree) == _git(tree, "rev-parse", "HEAD")             # detached
    linked = tmp_path / "linked"
    _git(tree, "worktree", "add", "-q", "-b", "other", str(linked), "askbuild/patched")
    assert (linked / ".git").is_file()
    assert head_commit(linked) == _git(linked, "rev-parse", "HEAD")         # worktree
    _git(tree, "checkout", "-q", "--orphan", "unborn")
    assert head_commit(tree) is None                                        # unsure: git
    (tree / ".git" / "HEAD").write_text("garbage\n")
    assert head_commit(tree) is None


def test_stamped_ids_are_used_for_their_commit_only(tmp_path, monkeypatch):
    from askbuild.building.stamp import BuildStamp
    from askbuild.settings import Settings
    s = Settings(project_root=tmp_path, work_dir=tmp_path / "work", cache_dir=tmp_path / "c")
    tree = s.source_tree("t")
    (tree / "lib").mkdir(parents=True)
    (tree / "lib" / "a.c").write_text("1\n")
    _git(tree, "init", "-q")
    _git(tree, "add", "-A")
    _git(tree, "commit", "-q", "-m", "one")
    stamp = BuildStamp(s)
    assert stamp.tree_ids(tree, ["lib", "."]) == ({"lib": _git(tree, "rev-parse", "HEAD:lib"),
                                                   ".": _git(tree, "rev-parse", "HEAD^{tree}")},
                                                  [])
    stamp.save()
    lib = _git(tree, "rev-parse", "HEAD:lib")
    with monkeypatch.context() as m:            # no git on PATH: the stamp must answer
        m.setenv("PATH", str(tmp_path / "nothing"))
        assert BuildStamp(s).tree_ids(tree, ["lib"]) == ({"lib": lib}, [])
    (tree / "lib" / "a.c").write_text("2\n")
    _git(tree, "commit", "-q", "-am", "two")      # a new commit: asked again, not reused
    assert BuildStamp(s).tree_ids(tree, ["lib"]) == ({"lib": _git(tree, "rev-parse",
                                                                  "HEAD:lib")}, [])
    assert BuildStamp(s).tree_ids(tree, ["nope"]) == ({}, ["nope"])


def test_after_a_new_commit_one_git_call_answers_every_path_asked_before(tmp_path, monkeypatch):
    """After an edit, the paths every recipe asked for at the previous commit are resolved
    in one ``git rev-parse``: the recipes that come next need no git process of their own.
    A path the new commit deleted is still reported missing (and costs its own check)."""
    from askbuild.building.stamp import BuildStamp
    from askbuild.settings import Settings
    s = Settings(project_root=tmp_path, work_dir=tmp_path / "work", cache_dir=tmp_path / "c")
    tree = s.source_tree("t")
    for d in ("lib", "app", "docs"):
        (tree / d).mkdir(parents=True)
        (tree / d / "f").write_text(d)
    _git(tree, "init", "-q")
    _git(tree, "add", "-A")
    _git(tree, "commit", "-q", "-m", "one")
    stamp = BuildStamp(s)
    for paths in (["lib"], ["app", "lib"], ["docs"], ["."]):      # four recipes' questions
        stamp.tree_ids(tree, paths)
    stamp.save()
    (tree / "lib" / "f").write_text("edited")
    _git(tree, "commit", "-q", "-am", "two")
    stamp = BuildStamp(s)
    assert stamp.tree_ids(tree, ["lib"]) == ({"lib": _git(tree, "rev-parse", "HEAD:lib")}, [])
    want = {"app": _git(tree, "rev-parse", "HEAD:app"),
            "docs": _git(tree, "rev-parse", "HEAD:docs"),
            ".": _git(tree, "rev-parse", "HEAD^{tree}")}
    with monkeypatch.context() as m:            # no git on PATH: the first call answered all
        m.setenv("PATH", str(tmp_path / "nothing"))
        assert stamp.tree_ids(tree, ["app", "docs", "."]) == (want, [])
    stamp.save()
    _git(tree, "rm", "-q", "-r", "docs")
    _git(tree, "commit", "-q", "-m", "three")
    stamp = BuildStamp(s)
    assert stamp.tree_ids(tree, ["lib"]) == ({"lib": _git(tree, "rev-parse", "HEAD:lib")}, [])
    assert stamp.tree_ids(tree, ["docs"]) == ({}, ["docs"])
