"""Helpers for the build tests: fixture projects and source work trees made directly with git.

The work trees follow the fetch/patch contract (``<work>/src/<name>``: a git repository, tag
``askbuild/base`` on the upstream import, one commit per patch on top) without using the fetch or
patch code, so these tests depend only on the build engine.  The patches are those the example
profile applies (``recipes/profiles/example/patches.toml``: vendor layers of the example ASK
tree, then the profile's local series), read from that file so the fixture follows its data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from askbuild.fsutil import read_toml
from askbuild.gitutil import FIXED_IDENTITY, git
from askbuild.settings import Settings

REPO = Path(__file__).resolve().parent.parent
VENDOR = REPO / "examples" / "vendor"
#: The example profile's patch layers: which vendor patches apply to which source.
EXAMPLE_LAYERS = REPO / "recipes" / "profiles" / "example" / "patches.toml"


def _series(d: Path) -> list[Path]:
    """The patches a ``series`` file lists, in order."""
    return [d / ln.strip() for ln in (d / "series").read_text().splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")]


def profile_patches(source: str) -> list[Path]:
    """The patches the example profile applies to ``source``, in order, chosen the way the
    patch step reads its layers: each vendor layer (its ``patches`` list, else its ``series``
    file, else every ``*.patch`` sorted -- the kernel directory holds two generations of the
    port and only the one the profile names applies), then each local series."""
    table = read_toml(EXAMPLE_LAYERS).get(source, {})
    out: list[Path] = []
    for layer in table.get("vendor", []):
        d = VENDOR / layer["from"] / layer["dir"]
        if "patches" in layer:
            out += [d / name for name in layer["patches"]]
        elif (d / "series").is_file():
            out += _series(d)
        else:
            out += sorted(d.glob("*.patch"))
    for local in table.get("local", []):
        out += _series(REPO / local)
    return out


#: source name -> (fixture directory, the example profile's patches applied on top)
FIXTURE_SOURCES = {
    "ask": (VENDOR / "ask", profile_patches("ask")),
    "fmlib": (VENDOR / "fmlib", profile_patches("fmlib")),
    "fmc": (VENDOR / "fmc", profile_patches("fmc")),
    "libnfnetlink": (VENDOR / "libnfnetlink-1.0.2", profile_patches("libnfnetlink")),
    "libnetfilter_conntrack": (VENDOR / "libnetfilter_conntrack-1.1.0",
                               profile_patches("libnetfilter_conntrack")),
}
KERNEL_PATCHES = profile_patches("linux")
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


def run_aarch64(binary: Path, *args: str, cwd: Path | None = None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env=None if env is None else {**os.environ, **env})


def elf_machine(path: Path) -> str:
    from elftools.elf.elffile import ELFFile
    with path.open("rb") as f:
        return ELFFile(f)["e_machine"]


# -- small synthetic projects (shell steps) ---------------------------------------------------

def shell_recipe(*, depends=(), script="true", artifact="out.txt", parallel=True, extra="",
                 stage="usr/share/t/NAME.txt") -> str:
    """A recipe of source ``s`` whose one step is ``sh -c SCRIPT`` (args: ``{out}``,
    ``{jobs}``); ``NAME`` in the text becomes the component name (see :func:`shell_project`)."""
    import json
    import textwrap
    steps = json.dumps([["sh", "-c", script, "step", "{out}", "{jobs}"]])
    stage_line = f'stage = "{stage}"' if stage else ""
    return textwrap.dedent(f"""\
        source = "s"
        depends = {json.dumps(list(depends))}
        parallel = {"true" if parallel else "false"}
        steps = {steps}
        {extra}
        [[artifacts]]
        path = "{artifact}"
        {stage_line}
        """)


def shell_project(tmp_path: Path, recipes: dict[str, str], jobs: int = 2,
                  shared: str = "") -> Settings:
    """A project whose components (``recipes``: name -> text) build source ``s`` (one file,
    ``input.txt``), its work tree already made; ``shared`` is ``_shared.toml``."""
    root = tmp_path / "proj"
    comp = root / "recipes" / "components"
    comp.mkdir(parents=True)
    (root / "recipes" / "sources.toml").write_text("")
    if shared:
        (comp / "_shared.toml").write_text(shared)
    for name, text in recipes.items():
        (comp / f"{name}.toml").write_text(text.replace("NAME", name))
    s = Settings(project_root=root, work_dir=tmp_path / "work", cache_dir=tmp_path / "cache",
                 jobs=jobs)
    src = tmp_path / "upstream"
    src.mkdir()
    (src / "input.txt").write_text("hello\n")
    init_tree(s.src_dir / "s", from_dir=src)
    return s


# -- a cross-compiled fixture for the fault suite ---------------------------------------------
# Source "app": a static library of several compile units (one of them waits FIXTURE_SLEEP
# seconds before compiling, long enough to be killed), a program linking it, and a data file.
# FIXTURE_SLEEP comes from the environment, so it is not part of any key.  FIXTURE_GATE (a
# path): that unit also waits until the file exists, for tests that need a step held open.

FAULT_FILES = {
    "conf/app.conf": "# fixture configuration\nmode = fast\n",
    "lib/Makefile": (
        "OBJS = u1.o u2.o u3.o u4.o slow.o\n"
        "liba.a: $(OBJS)\n\t$(AR) rcsD $@ $(OBJS)\n"
        "slow.o: slow.c\n\tsleep $${FIXTURE_SLEEP:-0}\n"
        "\twhile [ -n \"$${FIXTURE_GATE:-}\" ] && [ ! -e \"$${FIXTURE_GATE:-}\" ]; "
        "do sleep 0.1; done\n"
        "\t$(CC) -O1 -c -o $@ slow.c\n"
        "%.o: %.c\n\t$(CC) -O1 -c -o $@ $<\n"),
    **{f"lib/u{i}.c": f"int u{i}(int x) {{ return x * {i} + {i * 7}; }}\n" for i in range(1, 5)},
    "lib/slow.c": "int slow(int x) { return x - 1; }\n",
    "app/Makefile": "app: main.c\n\t$(CC) -O1 -o app main.c $(LIBA)\n",
    "app/main.c": (
        "#include <stdio.h>\n"
        "int u1(int), u2(int), u3(int), u4(int), slow(int);\n"
        "int main(void) { printf(\"fixture app %d\\n\", u1(1) + u2(2) + u3(3) + u4(4) + "
        "slow(5)); return 0; }\n"),
}

FAULT_RECIPES = {
    "data": """\
source = "app"
inputs = ["conf"]
steps = [["cp", "conf/app.conf", "app.conf"]]
[[artifacts]]
path = "app.conf"
stage = "etc/app.conf"
mode = "0644"
""",
    "liba": """\
source = "app"
inputs = ["lib"]
depends = ["data"]
steps = [["make", "-C", "lib", "-j{jobs}", "CC={cross}gcc", "AR={cross}ar"]]
[[artifacts]]
path = "lib/liba.a"
""",
    "app": """\
source = "app"
inputs = ["app"]
depends = ["liba"]
steps = [["make", "-C", "app", "CC={cross}gcc", "LIBA={src:liba}/lib/liba.a"]]
[[artifacts]]
path = "app/app"
stage = "usr/bin/app"
mode = "0755"
""",
}


def write_files(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def fault_project(root: Path, recipes: dict[str, str] | None = None) -> Path:
    """A project root holding :data:`FAULT_RECIPES` (or ``recipes``)."""
    comp = root / "recipes" / "components"
    comp.mkdir(parents=True)
    (root / "recipes" / "sources.toml").write_text("# the work trees are made by the tests\n")
    for name, text in (recipes or FAULT_RECIPES).items():
        (comp / f"{name}.toml").write_text(text)
    return root


def fault_sources(work: Path, files: dict[str, str] | None = None) -> None:
    """The work tree ``<work>/src/app`` (base commit tagged, as fetch leaves it)."""
    upstream = work.parent / f"{work.name}-upstream"
    write_files(upstream, files or FAULT_FILES)
    init_tree(work / "src" / "app", from_dir=upstream)
    shutil.rmtree(upstream)


# -- a stand-in kernel: the kernel recipe interface in a few make rules -----------------------
FAKE_RELEASE = "6.1.0-askbuild-fake"
MODULE_C = r"""
__attribute__((section(".modinfo"), used, aligned(1)))
static const char modinfo[] = "vermagic=" RELEASE " SMP preempt mod_unload aarch64\0"
                              "name=" NAME "\0license=GPL";
int init_module(void) { return 0; }
void cleanup_module(void) { }
"""
FAKE_KERNEL_FILES = {
    "defconfig": "CONFIG_MODULES=y\n",
    "module.c": MODULE_C,
    "Makefile": (
        f"RELEASE := {FAKE_RELEASE}\n"
        "olddefconfig:\n\ttest -f $(O)/.config\n"
        "Image:\n\tmkdir -p $(O)/include/config $(O)/arch/arm64/boot\n"
        "\techo $(RELEASE) > $(O)/include/config/kernel.release\n"
        "\tsleep $${FIXTURE_SLEEP:-0}\n"
        "\t$(CROSS_COMPILE)gcc -c -DRELEASE='\"$(RELEASE)\"' -DNAME='\"fake\"' "
        "-o $(O)/fake.ko module.c\n"
        "\tcp $(O)/fake.ko $(O)/arch/arm64/boot/Image\n"
        "modules: Image\n"
        "modules_install:\n\tmkdir -p $(INSTALL_MOD_PATH)/lib/modules/$(RELEASE)/kernel\n"
        "\tcp $(O)/fake.ko $(INSTALL_MOD_PATH)/lib/modules/$(RELEASE)/kernel/fake.ko\n"),
}
FAKE_KERNEL_RECIPES = {
    "kernel": """\
kind = "kernel"
source = "linux"
defconfig = "{tree:linux}/defconfig"
require = ["CONFIG_MODULES=y"]
[[artifacts]]
path = "arch/arm64/boot/Image"
""",
    "mod": """\
source = "linux"
inputs = ["module.c"]
depends = ["kernel"]
steps = [["{cross}gcc", "-c", "-DRELEASE=\\"{kernel_release}\\"", "-DNAME=\\"mod\\"",
          "-o", "mod.ko", "module.c"]]
[[artifacts]]
path = "mod.ko"
stage = "lib/modules/{kernel_release}/extra/mod.ko"
mode = "0644"
""",
}


def fake_kernel(tmp: Path) -> Settings:
    """A project with :data:`FAKE_KERNEL_RECIPES` and its ``linux`` work tree: a kernel
    component (configure, build, modules_install) and an out-of-tree module, in a second."""
    project = fault_project(tmp / "kproject", FAKE_KERNEL_RECIPES)
    s = Settings(project_root=project, work_dir=tmp / "kwork", cache_dir=tmp / "kcache", jobs=2)
    upstream = tmp / "linux-upstream"
    write_files(upstream, FAKE_KERNEL_FILES)
    init_tree(s.src_dir / "linux", from_dir=upstream)
    return s
