"""The engine's scheduling and failure semantics, with small synthetic recipes (shell steps):
parallel ordering, fail-fast vs --keep-going, declared artifacts, kill -9, toolchain checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import faults
import pytest
from buildfixtures import REPO, shell_project, shell_recipe

from askbuild import building, console, toolchain
from askbuild.errors import BuildFailed, MissingToolError
from askbuild.settings import Settings

recipe = shell_recipe
project = shell_project


# Each step appends "start NAME t" / "end NAME t" to a shared timeline file.
def timed(name: str, seconds: float, timeline: Path) -> str:
    return (f"echo start {name} $(date +%s.%N) >> {timeline}; sleep {seconds}; "
            f"echo built > out.txt; echo end {name} $(date +%s.%N) >> {timeline}")


def read_timeline(path: Path) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        what, name, t = line.split()
        out.setdefault(name, {})[what] = float(t)
    return out


def test_parallel_ordering(tmp_path):
    tl = tmp_path / "timeline"
    s = project(tmp_path, {
        "a": recipe(script=timed("a", 1.0, tl)),
        "b": recipe(script=timed("b", 1.0, tl)),
        "c": recipe(depends=["a", "b"], script=timed("c", 0.1, tl)),
        "d": recipe(depends=["c"], script=timed("d", 0.1, tl)),
    })
    man = building.build(s, [], prepare=False)
    assert {n: c["status"] for n, c in man["components"].items()} == dict.fromkeys("abcd",
                                                                                   "built")
    t = read_timeline(tl)
    # Independent components overlapped within the budget of 2...
    assert t["a"]["start"] < t["b"]["end"] and t["b"]["start"] < t["a"]["end"]
    # ...and dependents started only after their dependencies ended.
    assert t["c"]["start"] >= max(t["a"]["end"], t["b"]["end"])
    assert t["d"]["start"] >= t["c"]["end"]
    # Each of the two concurrent components got its share of the budget.
    assert man["components"]["a"]["jobs"] == 1 and man["components"]["d"]["jobs"] == 2
    assert (s.staging_dir / "usr/share/t/d.txt").read_text() == "built\n"


def test_job_budget_limits_concurrency(tmp_path):
    tl = tmp_path / "timeline"
    s = project(tmp_path, {n: recipe(script=timed(n, 0.3, tl)) for n in "abc"}, jobs=1)
    building.build(s, [], prepare=False)
    spans = sorted((v["start"], v["end"]) for v in read_timeline(tl).values())
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end


def test_not_parallel_component_gets_one_job(tmp_path):
    s = project(tmp_path, {"a": recipe(script='echo "$2" > out.txt', parallel=False)}, jobs=2)
    building.build(s, [], prepare=False)
    assert (s.out_dir / "a/src/out.txt").read_text() == "1\n"


FAIL = "echo compiling; echo 'error: boom in widget.c' >&2; exit 3"


def test_fail_fast(tmp_path):
    tl = tmp_path / "timeline"
    s = project(tmp_path, {
        "bad": recipe(script=FAIL),
        "child": recipe(depends=["bad"], script=timed("child", 0, tl)),
        "other": recipe(depends=["slow"], script=timed("other", 0, tl)),
        "slow": recipe(script=timed("slow", 1.0, tl)),
    })
    with pytest.raises(BuildFailed) as ei:
        building.build(s, [], prepare=False)
    err = ei.value
    assert err.exit_code == 2
    msg = str(err)
    assert "bad: `sh -c" in msg and "exit status 3" in msg
    assert "error: boom in widget.c" in msg                     # the last lines...
    assert str(s.logs_dir / "bad.log") in msg                   # ...and the log path
    man = json.loads((s.work_dir / "build-manifest.json").read_text())
    st = {n: c["status"] for n, c in man["components"].items()}
    assert man["status"] == "failed"
    assert st["bad"] == "failed" and st["child"] == "skipped"
    # Fail-fast: the running "slow" step was stopped, "other" never started.
    assert st["slow"] == "cancelled" and st["other"] == "skipped"
    assert not s.build_record("bad").exists()
    assert not s.build_record("slow").exists()


def test_keep_going(tmp_path):
    tl = tmp_path / "timeline"
    s = project(tmp_path, {
        "bad": recipe(script=FAIL),
        "child": recipe(depends=["bad"], script=timed("child", 0, tl)),
        "grandchild": recipe(depends=["child"], script=timed("gc", 0, tl)),
        "slow": recipe(script=timed("slow", 0.5, tl)),
        "other": recipe(depends=["slow"], script=timed("other", 0, tl)),
    })
    with pytest.raises(BuildFailed) as ei:
        building.build(s, [], prepare=False, keep_going=True)
    assert "not built because of the failure: child, grandchild" in str(ei.value)
    man = json.loads((s.work_dir / "build-manifest.json").read_text())
    st = {n: c["status"] for n, c in man["components"].items()}
    assert st == {"bad": "failed", "child": "skipped", "grandchild": "skipped",
                  "slow": "built", "other": "built"}
    assert "dependency bad did not build" in man["components"]["child"]["reason"]
    # Fixing the failure then builds only what is left.
    rec = s.recipes_dir / "components/bad.toml"
    rec.write_text(rec.read_text().replace("exit 3", "echo ok > out.txt"))
    man = building.build(s, [], prepare=False, keep_going=True)
    st = {n: c["status"] for n, c in man["components"].items()}
    assert st == {"bad": "built", "child": "built", "grandchild": "built",
                  "slow": "cached", "other": "cached"}


def test_missing_declared_artifact_fails_even_when_make_succeeds(tmp_path):
    s = project(tmp_path, {"a": recipe(script="echo nothing", artifact="lib/liba.a"),
                           "b": recipe(depends=["a"])})
    with pytest.raises(BuildFailed) as ei:
        building.build(s, [], prepare=False)
    assert "declared artifact(s) are missing" in str(ei.value)
    assert str(s.out_dir / "a/src/lib/liba.a") in str(ei.value)
    assert not s.build_record("a").exists()
    man = json.loads((s.work_dir / "build-manifest.json").read_text())
    assert man["components"]["b"]["status"] == "skipped"


def test_build_runs_on_a_clean_export_of_committed_inputs(tmp_path):
    s = project(tmp_path, {"a": recipe(script="cat input.txt > out.txt; ls -a > ls.txt")})
    (s.src_dir / "s" / "input.txt").write_text("uncommitted edit\n")
    building.build(s, [], prepare=False)
    assert (s.out_dir / "a/src/out.txt").read_text() == "hello\n"
    assert ".git" not in (s.out_dir / "a/src/ls.txt").read_text()


KILL_SCRIPT = ("echo partial > out.txt; touch {marker}; sleep ${{{{ASKBUILD_TEST_SLEEP:-0}}}}; "
               "echo complete > out.txt")


def test_kill_9_mid_build_then_rerun(tmp_path):
    marker = tmp_path / "started"
    s = project(tmp_path, {"dep": recipe(script="echo dep > out.txt"),
                           "victim": recipe(depends=["dep"],
                                            script=KILL_SCRIPT.format(marker=marker))})
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from askbuild import building
        from askbuild.settings import Settings
        s = Settings(project_root=__import__("pathlib").Path({str(s.project_root)!r}),
                     work_dir=__import__("pathlib").Path({str(s.work_dir)!r}),
                     cache_dir=__import__("pathlib").Path({str(s.cache_dir)!r}), jobs=2)
        building.build(s, [], prepare=False)
        """)
    env = dict(os.environ, ASKBUILD_TEST_SLEEP="60", CI="true")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "err", "w"))
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "the build ended before the step started"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # The killed step left no "done" record; its dependency did.
    assert s.build_record("dep").exists()
    assert not s.build_record("victim").exists()
    assert (s.out_dir / "victim/src/out.txt").read_text() == "partial\n"
    # The early manifest is there, saying what was being built.
    man = json.loads((s.work_dir / "build-manifest.json").read_text())
    assert man["status"] == "running" and set(man["components"]) == {"dep", "victim"}
    # Rerun: the dependency is kept, the killed step is redone from scratch.
    man = building.build(s, [], prepare=False)
    assert {n: c["status"] for n, c in man["components"].items()} == {"dep": "cached",
                                                                      "victim": "built"}
    assert (s.out_dir / "victim/src/out.txt").read_text() == "complete\n"
    assert (s.staging_dir / "usr/share/t/victim.txt").read_text() == "complete\n"


def test_plain_progress_lines_when_not_a_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CI", "true")
    console.reset_console()
    try:
        s = project(tmp_path, {"a": recipe(script="echo x > out.txt")})
        building.build(s, [], prepare=False)
        err = capsys.readouterr().err
    finally:
        console.reset_console()
    assert "build a: running" in err and "build a: built" in err
    assert "\x1b[" not in err


def test_toolchain_missing_compiler(tmp_path):
    s = project(tmp_path, {"a": recipe()})
    s.cross_compile = "nonexistent-linux-gnu-"   # --cross-compile / CROSS_COMPILE / config
    with pytest.raises(MissingToolError) as ei:
        building.build(s, [], prepare=False)
    assert "nonexistent-linux-gnu-gcc not found" in str(ei.value)
    assert "apt-get install crossbuild-essential-arm64" in str(ei.value)


def test_toolchain_missing_arm64_dev_packages(tmp_path):
    root = tmp_path / "root"
    (root / "usr/include/libmnl").mkdir(parents=True)
    (root / "usr/include/libmnl/libmnl.h").write_text("")
    with pytest.raises(MissingToolError) as ei:
        toolchain.check_libs(["libxml2", "libcli", "libmnl"], root=root)
    msg = str(ei.value)
    assert "libxml2 (header /usr/include/libxml2/libxml/parser.h missing)" in msg
    assert "libmnl (library" in msg
    assert "dpkg --add-architecture arm64" in msg
    assert "apt-get install libcli-dev:arm64 libmnl-dev:arm64 libxml2-dev:arm64" in msg
    # This machine has them all.
    toolchain.check_libs(list(toolchain.KNOWN_LIBS))
    tc = toolchain.check_compiler(Settings(project_root=tmp_path, work_dir=tmp_path / "w",
                                           cache_dir=tmp_path / "c"))
    assert tc.prefix == "aarch64-linux-gnu-" and tc.gcc_version[0].isdigit()


def test_second_build_in_same_work_dir_waits_for_the_first(tmp_path):
    """Another run holding the work directory: the build says so, waits, then builds."""
    from askbuild import runlock
    s = project(tmp_path, {"a": recipe(script="echo x > out.txt")})
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
            + "from askbuild import building\nfrom askbuild.settings import Settings\n"
            + "from pathlib import Path\n"
            + f"s = Settings(project_root=Path({str(s.project_root)!r}), "
              f"work_dir=Path({str(s.work_dir)!r}), cache_dir=Path({str(s.cache_dir)!r}))\n"
            + "print(building.build(s, [], prepare=False)['status'])\n")
    env = dict(os.environ, CI="true", ASKBUILD_PLAIN="1")
    with runlock.work_dir(s, "fetch"):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        said = faults.read_until(proc.stderr, "waiting")     # it waits while we hold the lock
        assert proc.poll() is None, (said, proc.communicate())
        assert not (s.work_dir / "build-manifest.json").exists()
    out, err = proc.communicate(timeout=120)
    err = said + err
    assert proc.returncode == 0, err
    assert f"pid {os.getpid()}, inv fetch" in err and "waiting" in err
    assert out.strip() == "success"
    assert (s.staging_dir / "usr/share/t/a.txt").read_text() == "x\n"


def test_live_view_on_a_terminal(tmp_path, monkeypatch):
    import io

    from rich.console import Console
    buf = io.StringIO()
    import types
    con = Console(file=buf, force_terminal=True, width=100)
    fake = types.SimpleNamespace(is_interactive=lambda: True, get_console=lambda: con,
                                 info=con.print, step=con.print, warn=con.print)
    monkeypatch.setattr(building.schedule, "console", fake)
    s = project(tmp_path, {"a": recipe(script="echo x > out.txt"),
                           "b": recipe(depends=["a"], script="echo y > out.txt")})
    building.build(s, [], prepare=False)
    out = buf.getvalue()
    assert "component" in out and "elapsed" in out and "built" in out


def test_inv_build_exit_codes(tmp_path):
    """Through the real command line: success, then a failing step exits 2 with the log tail."""
    s = project(tmp_path, {"a": recipe(script="echo x > out.txt")})
    env = dict(os.environ, ASKBUILD_PROJECT_ROOT=str(s.project_root), CI="true")
    inv = [str(Path(sys.executable).parent / "inv"), "-r", str(REPO)]
    ok = subprocess.run([*inv, "build", "--work-dir", str(s.work_dir), "--jobs", "1"],
                        env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "build a: built" in ok.stderr
    rec = s.recipes_dir / "components/a.toml"
    rec.write_text(rec.read_text().replace("echo x > out.txt", FAIL))
    bad = subprocess.run([*inv, "build", "--work-dir", str(s.work_dir), "--component", "a"],
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 2
    assert "error: build failed" in bad.stderr and "boom in widget.c" in bad.stderr
    assert "Traceback" not in bad.stderr
    unknown = subprocess.run([*inv, "build", "--work-dir", str(s.work_dir), "--component", "zz"],
                             env=env, capture_output=True, text=True)
    assert unknown.returncode == 1 and "unknown component(s) zz" in unknown.stderr
