"""Helpers for the build tests: fixture projects and source work trees made directly with git.

The work trees follow the fetch/patch contract (``<work>/src/<name>``: a git repository, tag
``askbuild/base`` on the upstream import, one commit per patch on top) without using the fetch or
patch code, so these tests depend only on the build engine.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from askbuild.gitutil import FIXED_IDENTITY, git
from askbuild.settings import Settings

REPO = Path(__file__).resolve().parent.parent
VENDOR = REPO / "examples" / "vendor"
ASK_PATCHES = VENDOR / "ask" / "patches"

#: source name -> (fixture directory, ASK vendor patches applied on top)
FIXTURE_SOURCES = {
    "ask": (VENDOR / "ask", []),
    "fmlib": (VENDOR / "fmlib", sorted((ASK_PATCHES / "fmlib").glob("*.patch"))),
    "fmc": (VENDOR / "fmc", sorted((ASK_PATCHES / "fmc").glob("*.patch"))),
    "libnfnetlink": (VENDOR / "libnfnetlink-1.0.2",
                     sorted((ASK_PATCHES / "libnfnetlink/1.0.2").glob("*.patch"))),
    "libnetfilter_conntrack": (VENDOR / "libnetfilter_conntrack-1.1.0",
                               sorted((ASK_PATCHES / "libnetfilter-conntrack/1.1.0")
                                      .glob("*.patch"))),
}
KERNEL_PATCHES = sorted((ASK_PATCHES / "kernel").glob("*.patch"))
USERSPACE = ["cmm", "dpa_app", "fmc"]


def commit_all(tree: Path, message: str) -> str:
    git(["add", "-A"], cwd=tree)
    git(["commit", "-q", "--allow-empty", "-m", message], cwd=tree, env=FIXED_IDENTITY)
    return git(["rev-parse", "HEAD"], cwd=tree).stdout.strip()


def apply_patch(tree: Path, patch: Path) -> str:
    git(["apply", "--whitespace=nowarn", str(patch)], cwd=tree)
    return commit_all(tree, f"apply {patch.name}")


def init_tree(tree: Path, *, from_dir: Path | None = None, patches: list[Path] = ()) -> Path:
    """A work tree like fetch + patch make: base commit tagged, one commit per patch."""
    if from_dir is not None:
        shutil.copytree(from_dir, tree, symlinks=True, ignore=shutil.ignore_patterns("patches"))
    else:
        tree.mkdir(parents=True)
    git(["init", "-q"], cwd=tree)
    commit_all(tree, "upstream")
    git(["tag", "askbuild/base"], cwd=tree)
    for p in patches:
        apply_patch(tree, p)
    return tree


def make_project(root: Path, *, recipes_from: Path | None = None) -> Path:
    """A project root with the real recipes (or others) and kernel fragments."""
    (root / "recipes").mkdir(parents=True)
    (root / "recipes" / "sources.toml").write_text("# sources are made by the tests\n")
    shutil.copytree(recipes_from or (REPO / "recipes" / "components"),
                    root / "recipes" / "components")
    shutil.copytree(REPO / "kernel", root / "kernel")
    return root


def settings_for(tmp: Path, project: Path, jobs: int = 2) -> Settings:
    return Settings(project_root=project, work_dir=tmp / "work", cache_dir=tmp / "cache",
                    jobs=jobs)


def make_fixture_sources(settings: Settings, *, linux: Path | None = None) -> None:
    """Every fixture source as a patched work tree; ``linux`` defaults to a stand-in holding
    only what the kernel patch adds (enough for fmlib, which reads the kernel source)."""
    for name, (d, patches) in FIXTURE_SOURCES.items():
        init_tree(settings.src_dir / name, from_dir=d, patches=patches)
    if linux is None:
        init_tree(settings.src_dir / "linux", patches=KERNEL_PATCHES)


def run_aarch64(binary: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd)


def elf_machine(path: Path) -> str:
    from elftools.elf.elffile import ELFFile
    with path.open("rb") as f:
        return ELFFile(f)["e_machine"]
