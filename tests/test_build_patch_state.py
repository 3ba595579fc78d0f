"""`inv build` builds a source only when its work tree is exactly the current patch series on
the current lock: a series edited since `inv patch`, or uncommitted edits in the work tree, stop
the components reading that source (named, with the fix), never a silent build of whatever the
tree holds.  Real git trees and the real patch step (tests/patchfixtures.py)."""

from __future__ import annotations

import pytest
from patchfixtures import make_project

from askbuild import building, patchqueue
from askbuild.errors import AskbuildError

RECIPE = """\
source = "up"
inputs = ["."]
steps = [["sh", "-c", "cat lib/*.c > out.txt"]]
[[artifacts]]
path = "out.txt"
"""


@pytest.fixture
def patched(tmp_path):
    project = make_project(tmp_path, kinds=["clean"])
    comp = project.root / "recipes" / "components"
    comp.mkdir(parents=True, exist_ok=True)
    (comp / "app.toml").write_text(RECIPE)
    patchqueue.patch(project.settings, ["up"])
    return project


def test_the_current_series_builds(patched):
    building.build(patched.settings, ["app"])
    assert (patched.settings.out_dir / "app" / "src" / "out.txt").is_file()


def test_a_series_changed_since_patch_is_not_built(patched):
    patch = next(p for p in sorted((patched.root / "patches" / "up").glob("*.patch")))
    patch.write_text(patch.read_text().replace("\n+", "\n+ changed ", 1))
    with pytest.raises(AskbuildError) as ei:
        building.build(patched.settings, ["app"], keep_going=True)
    msg = str(ei.value)
    assert "not the current patch series" in msg and patch.name in msg
    assert "inv patch --source up" in msg
    assert not (patched.settings.out_dir / "app" / "src" / "out.txt").exists()


def test_uncommitted_edits_in_the_tree_are_named_not_ignored(patched):
    tree = patched.settings.src_dir / "up"
    edited = next(p for p in sorted((tree / "lib").glob("*.c")))
    edited.write_text(edited.read_text() + "a local edit\n")
    with pytest.raises(AskbuildError) as ei:
        building.build(patched.settings, ["app"], keep_going=True)
    assert "uncommitted" in str(ei.value) and edited.name in str(ei.value)
    assert edited.read_text().endswith("a local edit\n"), "the user's edit must survive"
