"""One missing input stops only what needs it, and the manifest describes the whole staging
tree.  Small synthetic projects (shell steps, real git work trees, the real engine):

* a component whose inputs are missing -- a source work tree that is not there (and cannot be
  fetched), a ``uses`` path missing in a tree, an arm64 library, ``depmod`` for a kernel -- fails
  alone with a message saying where the inputs come from; with ``--keep-going`` everything
  independent is built, dependents are skipped with the reason and the summary lists every
  failure; without it nothing is built and the same message says so;
* ``build-manifest.json`` after a ``--component`` run still lists the components built earlier
  whose done record is current (status ``current``, with their sources and the kernel), and
  names what is missing or stale.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from buildfixtures import (
    FAKE_RELEASE,
    REPO,
    fake_kernel,
    init_tree,
    shell_project,
    shell_recipe,
)

from askbuild import building, gitutil, manifest, toolchain
from askbuild.errors import MissingToolError, UserError

OK = "echo built > out.txt"

#: fmlib reads the kernel's FMan headers (a tree without them: mainline or Debian's kernel);
#: fmc links fmlib; "other" is built from a source whose tree was never fetched; lib/app build.
RECIPES = {
    "fmlib": shell_recipe(script=OK, extra='[uses]\nlinux = ["include/uapi/linux/fmd"]'),
    "fmc": shell_recipe(depends=["fmlib"], script=OK),
    "lib": shell_recipe(script=OK),
    "app": shell_recipe(depends=["lib"], script=OK),
    "other": shell_recipe(script=OK).replace('source = "s"', 'source = "absent"'),
}
SOURCES = """\
[linux]
kind = "git"
url = "https://github.com/nxp-qoriq/linux.git"
ref = "lf-6.18.20-2.0.0"
description = "the NXP LSDK kernel"
"""


def project(tmp_path: Path, recipes: dict[str, str] = RECIPES):
    s = shell_project(tmp_path, recipes)
    (s.recipes_dir / "sources.toml").write_text(SOURCES)
    linux = tmp_path / "linux-upstream"
    (linux / "include/uapi/linux").mkdir(parents=True)
    (linux / "include/uapi/linux/netfilter.h").write_text("/* no fmd/ here */\n")
    init_tree(s.src_dir / "linux", from_dir=linux)
    return s


def kernel_and_tool(tmp_path: Path):
    """The stand-in kernel project (kernel, mod) plus "tool", a userspace component."""
    s = fake_kernel(tmp_path)
    (s.recipes_dir / "components/tool.toml").write_text(
        shell_recipe(script=OK).replace('source = "s"', 'source = "linux"').replace("NAME", "tool"))
    return s


def statuses(man: dict) -> dict[str, str]:
    return {n: c["status"] for n, c in man["components"].items()}


def test_keep_going_builds_everything_independent_and_lists_every_failure(tmp_path):
    s = project(tmp_path)
    with pytest.raises(UserError) as ei:
        building.build(s, [], prepare=False, keep_going=True)
    msg = str(ei.value)
    assert ei.value.exit_code == 1
    assert (f"fmlib needs linux:include/uapi/linux/fmd (from the NXP LSDK kernel, source linux):"
            f" not in {s.src_dir / 'linux'} at HEAD") in msg
    assert (f"other needs absent:. (source absent): its work tree {s.src_dir / 'absent'} does "
            "not exist") in msg
    assert "not built because of the failure: fmc" in msg
    assert "inv fetch --source absent && inv patch --source absent" in msg
    man = manifest.read(s)
    assert statuses(man) == {"fmlib": "failed", "fmc": "skipped", "lib": "built",
                             "app": "built", "other": "failed"}
    assert "not in" in man["components"]["fmlib"]["error"]
    assert man["components"]["fmc"]["reason"] == "dependency fmlib did not build"
    assert man["complete"] is False and set(man["missing"]) == {"fmlib", "fmc", "other"}
    assert (s.staging_dir / "usr/share/t/app.txt").read_text() == "built\n"
    assert not s.build_record("fmlib").exists()
    assert not (s.logs_dir / "fmlib.log").exists()            # nothing ran for it


def test_without_keep_going_nothing_is_built_and_the_message_is_the_same(tmp_path):
    s = project(tmp_path)
    with pytest.raises(UserError) as ei:
        building.build(s, [], prepare=False)
    msg = str(ei.value)
    assert "fmlib needs linux:include/uapi/linux/fmd (from the NXP LSDK kernel" in msg
    assert "other needs absent:. (source absent)" in msg
    assert ("nothing was built; `inv build --keep-going` builds what does not need fmlib, "
            "other (app, lib)") in msg
    assert manifest.read(s) is None and not s.staging_dir.exists()
    assert not s.build_record("lib").exists()
    # Asking only for what does not need the missing inputs builds it.
    man = building.build(s, ["app"], prepare=False)
    assert statuses(man) == {"lib": "built", "app": "built"}


def test_inputs_that_appear_later_build_without_redoing_the_rest(tmp_path):
    s = project(tmp_path)
    with pytest.raises(UserError):
        building.build(s, [], prepare=False, keep_going=True)
    fmd = s.src_dir / "linux/include/uapi/linux/fmd"
    fmd.mkdir()
    (fmd / "fm_ioctls.h").write_text("/* FMan UAPI */\n")
    gitutil.git(["add", "-A"], cwd=s.src_dir / "linux")
    gitutil.git(["commit", "-qm", "the NXP kernel's headers"], cwd=s.src_dir / "linux",
                         env=gitutil.FIXED_IDENTITY)
    with pytest.raises(UserError, match="other needs absent"):
        building.build(s, [], prepare=False, keep_going=True)
    assert statuses(manifest.read(s)) == {"fmlib": "built", "fmc": "built", "lib": "cached",
                                          "app": "cached", "other": "failed"}


def test_a_source_that_cannot_be_fetched_fails_alone(tmp_path):
    """prepare: the missing tree is fetched on its own; its failure is that component's."""
    s = project(tmp_path)
    (s.recipes_dir / "sources.toml").write_text(
        SOURCES + f'\n[absent]\nkind = "git"\nurl = "file://{tmp_path}/no-such.git"\n'
                  'ref = "v1"\ndescription = "a vendor tree nobody mirrored"\n')
    with pytest.raises(UserError) as ei:
        building.build(s, ["other", "app"], keep_going=True)
    msg = str(ei.value)
    assert "other needs absent:. (from a vendor tree nobody mirrored, source absent): " \
        "`inv fetch`/`inv patch` of it failed:" in msg
    assert "no-such.git" in msg
    assert statuses(manifest.read(s)) == {"other": "failed", "lib": "built", "app": "built"}


BAD_PATCH = """\
--- a/no-such-file.c
+++ b/no-such-file.c
@@ -1 +1 @@
-old
+new
"""


def test_a_fetched_tree_whose_patches_fail_is_never_built(tmp_path, git_upstream):
    """prepare fetches the missing tree, then its series fails to apply: the tree exists but
    is not the patched state, so that component fails (naming the patch step) and is not
    built unpatched; the rest is built."""
    up = git_upstream("widget")
    up.release("v1", {"input.txt": "widget\n"})
    s = shell_project(tmp_path, {
        "w": shell_recipe(script=OK).replace('source = "s"', 'source = "widget"'),
        "plain": shell_recipe(script=OK)})
    (s.recipes_dir / "sources.toml").write_text(
        f'[widget]\nkind = "git"\nurl = "{up.url}"\nref = "v1"\n')
    (s.recipes_dir / "patches.toml").write_text('[widget]\nlocal = ["patches/widget"]\n')
    series = s.project_root / "patches/widget"
    series.mkdir(parents=True)
    (series / "0001-bad.patch").write_text(BAD_PATCH)
    (series / "series").write_text("0001-bad.patch\n")
    with pytest.raises(UserError) as ei:
        building.build(s, [], keep_going=True)
    msg = str(ei.value)
    assert "w needs widget:. (source widget): `inv fetch`/`inv patch` of it failed:" in msg
    assert "0001-bad.patch" in msg
    assert (s.src_dir / "widget/input.txt").is_file()          # fetched...
    assert statuses(manifest.read(s)) == {"w": "failed", "plain": "built"}
    assert not (s.logs_dir / "w.log").exists()                 # ...but never built


def test_missing_arm64_library_fails_only_the_component_linking_it(tmp_path, monkeypatch):
    monkeypatch.setitem(toolchain.KNOWN_LIBS, "libnothere",
                        ("libnothere-dev:arm64", ["nothere/nothere.h"], ["libnothere"]))
    s = shell_project(tmp_path, {"needs": shell_recipe(script=OK, extra='host_libs = '
                                                       '["libnothere", "libxml2"]'),
                                 "plain": shell_recipe(script=OK)})
    with pytest.raises(MissingToolError) as ei:
        building.build(s, [], prepare=False, keep_going=True)
    msg = str(ei.value)
    assert ("needs needs arm64 development packages missing: libnothere (header "
            "/usr/include/nothere/nothere.h missing)") in msg
    assert "apt-get install libnothere-dev:arm64" in msg
    assert statuses(manifest.read(s)) == {"needs": "failed", "plain": "built"}


@pytest.mark.skipif(not shutil.which("aarch64-linux-gnu-gcc"), reason="needs the cross compiler")
def test_missing_depmod_fails_the_kernel_alone_with_keep_going(tmp_path, monkeypatch):
    s = kernel_and_tool(tmp_path)
    monkeypatch.setattr(toolchain, "SBIN_DIRS", ())
    monkeypatch.setenv("PATH", "/usr/local/bin:/usr/bin:/bin")
    assert shutil.which("depmod") is None
    with pytest.raises(MissingToolError) as ei:
        building.build(s, [], prepare=False, keep_going=True)
    assert "kernel needs host tool(s) not found: depmod (package kmod" in str(ei.value)
    assert "not built because of the failure: mod" in str(ei.value)
    assert statuses(manifest.read(s)) == {"kernel": "failed", "mod": "skipped", "tool": "built"}


def test_inv_build_keep_going_through_the_cli(tmp_path):
    s = project(tmp_path)
    env = dict(os.environ, ASKBUILD_PROJECT_ROOT=str(s.project_root), CI="true")
    inv = [str(Path(sys.executable).parent / "inv"), "-r", str(REPO)]
    proc = subprocess.run([*inv, "build", "--keep-going", "--work-dir", str(s.work_dir)],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert "error: fmlib needs linux:include/uapi/linux/fmd" in proc.stderr
    assert "other needs absent" in proc.stderr and "Traceback" not in proc.stderr
    assert "build app: built" in proc.stderr
    assert "build fmc: skipped dependency fmlib did not build" in proc.stderr


# -- the manifest describes the whole staging tree ------------------------------------------

def test_manifest_keeps_the_components_built_earlier(tmp_path):
    s = shell_project(tmp_path, {"a": shell_recipe(script=OK),
                                 "b": shell_recipe(depends=["a"], script=OK),
                                 "c": shell_recipe(script=OK)})
    first = building.build(s, [], prepare=False)
    assert first["complete"] is True and first["missing"] == {}
    again = building.build(s, ["a"], prepare=False)
    assert again["options"]["components"] == ["a"]
    assert statuses(again) == {"a": "cached", "b": "current", "c": "current"}
    assert again["complete"] is True
    for n in "bc":
        assert again["components"][n]["key"] == first["components"][n]["key"]
        assert again["components"][n]["artifacts"] == first["components"][n]["artifacts"]
    assert set(again["sources"]) == {"s"}
    # c's recipe changes: its record is stale; its staged file vanishing is said too.
    rec = s.recipes_dir / "components/c.toml"
    rec.write_text(rec.read_text().replace(OK, "echo v2 > out.txt"))
    (s.staging_dir / "usr/share/t/b.txt").unlink()
    man = building.build(s, ["a"], prepare=False)
    assert statuses(man) == {"a": "cached"}
    assert man["complete"] is False
    assert man["missing"]["c"].startswith("stale: built from other inputs")
    assert "inv build --component c" in man["missing"]["c"]
    assert man["missing"]["b"].startswith("its staged files are not in the staging tree")
    assert manifest.read(s) == man


@pytest.mark.skipif(not shutil.which("aarch64-linux-gnu-gcc"), reason="needs the cross compiler")
def test_userspace_rebuild_keeps_the_kernel_in_the_manifest(tmp_path):
    """The bug of issue 14: after a userspace-only rebuild the kernel entry was null."""
    s = kernel_and_tool(tmp_path)
    full = building.build(s, [], prepare=False)
    assert full["kernel"] == {"component": "kernel", "release": FAKE_RELEASE}
    rec = s.recipes_dir / "components/tool.toml"
    rec.write_text(rec.read_text().replace(OK, "echo v2 > out.txt"))
    man = building.build(s, ["tool"], prepare=False)
    assert statuses(man) == {"tool": "built", "kernel": "current", "mod": "current"}
    assert man["kernel"] == {"component": "kernel", "release": FAKE_RELEASE}
    assert man["complete"] is True and "linux" in man["sources"]
    assert [a["staged"] for a in man["components"]["mod"]["artifacts"]] == [
        f"lib/modules/{FAKE_RELEASE}/extra/mod.ko"]
    on_disk = json.loads(s.build_manifest.read_text())
    assert on_disk["schema"] == manifest.SCHEMA and on_disk["kernel"]["release"] == FAKE_RELEASE
