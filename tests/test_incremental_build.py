"""An edit rebuilds like make does: the build tree is kept, only changed files are brought in
(unchanged ones keep their timestamps, deleted ones go), and the result is the clean build's.
A changed recipe, flag or dependency, or a build that did not finish, means a clean build, with
the reason in the log and the done record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from buildfixtures import (
    REPO,
    commit_all,
    make_fixture_sources,
    make_project,
    settings_for,
    shell_project,
    shell_recipe,
)

from askbuild import building
from askbuild.errors import BuildFailed


def _record(s, name: str) -> dict:
    return json.loads(s.build_record(name).read_text())


def _artifacts(man: dict, name: str) -> dict[str, str]:
    return {a["path"]: a["sha256"] for a in man["components"][name]["artifacts"]}


def test_one_file_edit_of_cmm_recompiles_one_object_and_equals_a_clean_build(tmp_path):
    project = make_project(tmp_path / "project")
    s = settings_for(tmp_path, project)
    make_fixture_sources(s)
    building.build(s, ["cmm"], prepare=False)
    objs = s.out_dir / "cmm/src/cmm/src"
    before = {o: (objs / o).stat().st_mtime_ns for o in ("cmm.o", "rules.o")}
    header = (objs / "cmm.h").stat().st_mtime_ns

    ask = s.src_dir / "ask"
    rules = ask / "cmm/src/rules.c"
    rules.write_text(rules.read_text() + "\nint cmm_incremental_probe(void) { return 42; }\n")
    commit_all(ask, "edit rules.c")
    time.sleep(0.01)
    man = building.build(s, ["cmm"], prepare=False)

    assert {n: c["status"] for n, c in man["components"].items() if n != "cmm"} == \
        dict.fromkeys(("libfci", "libnetfilter_conntrack", "libnfnetlink"), "cached")
    assert _record(s, "cmm")["build_tree"] == "incremental: 1 file(s) changed, 0 deleted"
    after = {o: (objs / o).stat().st_mtime_ns for o in ("cmm.o", "rules.o")}
    assert after["cmm.o"] == before["cmm.o"]            # not recompiled
    assert after["rules.o"] > before["rules.o"]         # the edited file's object was
    assert (objs / "cmm.h").stat().st_mtime_ns == header  # unchanged input: same timestamp
    log = s.log_file("cmm").read_text()
    assert "rules.c" in log and "-o src/cmm.o" not in log
    incremental = _artifacts(man, "cmm")

    # The same inputs from scratch give the same bytes.
    (s.out_dir / "cmm/tree-state.json").unlink()
    s.build_record("cmm").unlink()
    clean = building.build(s, ["cmm"], prepare=False)
    assert _record(s, "cmm")["build_tree"] == "clean build: no previous build tree"
    assert _artifacts(clean, "cmm") == incremental


def _project(tmp_path, script: str, files: dict[str, str], env: str = ""):
    s = shell_project(tmp_path, {"c": shell_recipe(script=script, extra=env)})
    src = s.src_dir / "s"
    for rel, text in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    commit_all(src, "files")
    return s, src


CAT = "cat $(find . -name '*.txt' ! -name out.txt | sort) > out.txt; echo $CFLAGS >> out.txt"


def test_deleted_files_leave_the_tree_and_the_result_equals_a_clean_build(tmp_path):
    s, src = _project(tmp_path, CAT, {"a.txt": "a\n", "d/b.txt": "b\n", "d/c.txt": "c\n"})
    building.build(s, [], prepare=False)
    tree = s.out_dir / "c/src"
    kept = (tree / "a.txt").stat().st_mtime_ns
    (src / "d/b.txt").unlink()
    (src / "d/c.txt").unlink()
    (src / "e.txt").write_text("e\n")
    commit_all(src, "delete, add")
    building.build(s, [], prepare=False)
    assert _record(s, "c")["build_tree"] == "incremental: 1 file(s) changed, 2 deleted"
    assert not (tree / "d").exists()
    assert (tree / "a.txt").stat().st_mtime_ns == kept
    incremental = (tree / "out.txt").read_text()
    (s.out_dir / "c/tree-state.json").unlink()
    s.build_record("c").unlink()
    building.build(s, [], prepare=False)
    assert _record(s, "c")["build_tree"].startswith("clean build")
    assert (tree / "out.txt").read_text() == incremental == "a\ne\nhello\n\n"


def test_a_changed_flag_means_a_clean_build_and_says_why(tmp_path):
    s, src = _project(tmp_path, CAT, {"a.txt": "a\n"}, env='[env]\nCFLAGS = "-O1"')
    building.build(s, [], prepare=False)
    (s.out_dir / "c/src/stale.txt").write_text("left by the previous build\n")
    recipe = s.project_root / "recipes/components/c.toml"
    recipe.write_text(recipe.read_text().replace('"-O1"', '"-O2"'))
    building.build(s, [], prepare=False)
    why = _record(s, "c")["build_tree"]
    assert why.startswith("clean build:") and "flags" in why
    assert why in s.log_file("c").read_text()
    assert not (s.out_dir / "c/src/stale.txt").exists()
    assert (s.out_dir / "c/src/out.txt").read_text().endswith("-O2\n")


def test_a_failed_build_is_not_built_on(tmp_path):
    s, src = _project(tmp_path, "test -f ok.txt || exit 1; " + CAT, {"ok.txt": "ok\n"})
    building.build(s, [], prepare=False)
    (src / "ok.txt").unlink()
    commit_all(src, "break it")
    with pytest.raises(BuildFailed):
        building.build(s, [], prepare=False)
    (src / "ok.txt").write_text("ok\n")
    commit_all(src, "fix it")
    building.build(s, [], prepare=False)
    assert _record(s, "c")["build_tree"] == \
        "clean build: the previous build did not finish (killed or failed)"


KILLED_BUILD = """
import sys
from pathlib import Path
from askbuild import building
from askbuild.settings import Settings
s = Settings(project_root=Path(sys.argv[1]), work_dir=Path(sys.argv[2]),
             cache_dir=Path(sys.argv[3]), jobs=2)
building.build(s, [], prepare=False)
"""


def test_a_build_killed_mid_way_is_rebuilt_from_scratch(tmp_path):
    marker = tmp_path / "step-started"
    script = f"touch {marker}; sleep 30; " + CAT
    s, src = _project(tmp_path, f"if ! test -f slow.txt; then {CAT}; exit 0; fi; " + script,
                      {"a.txt": "a\n"})
    building.build(s, [], prepare=False)          # a clean tree from a finished build
    (src / "slow.txt").write_text("the step now hangs\n")
    commit_all(src, "slow")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(s.project_root),
                             str(s.work_dir), str(s.cache_dir)], cwd=REPO,
                            env={**os.environ, "CI": "true"}, start_new_session=True)
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (src / "slow.txt").unlink()
    commit_all(src, "fast again")
    building.build(s, [], prepare=False)
    assert _record(s, "c")["build_tree"] == \
        "clean build: the previous build did not finish (killed or failed)"
