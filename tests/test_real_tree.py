"""`inv rehearse --mirrors DIR`: the default recipes against mirrors laid out by URL.

* A fast test (always runs) with a tiny fixture mirror directory: a fake "ASK" git repository
  and a tarball placed where their https URLs map, proving the layout mapping, the table, the
  report and the exit codes, and that the user's sources file and work dir are not touched.
* ``real`` tests: only when ``ASKBUILD_REAL_MIRRORS`` names a mirror directory of the real
  trees (docs/rehearsal.md); CI skips them.  Nothing here depends on those trees otherwise.
"""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path

import pytest
from faults import assert_clean_message, inv
from upstreams import GitUpstream, release_tarball

from askbuild import gitutil

REAL_MIRRORS = os.environ.get("ASKBUILD_REAL_MIRRORS", "")

# -- the fast fixture ---------------------------------------------------------------------

SOURCES = """\
[ask]
kind = "git"
url = "https://github.com/example/ASK.git"
ref = "v1"

[lib]
kind = "tarball"
url = "https://files.example.org/lib/lib-1.0.tar.gz"
ref = "1.0"

[gone]
kind = "git"
url = "https://github.com/example/gone.git"
ref = "v1"
"""

LAYERS = """\
[lib]
vendor = [{ from = "ask", dir = "patches/lib" }]
"""

VENDOR_PATCH = """\
--- a/hello.txt
+++ b/hello.txt
@@ -1 +1 @@
-hello
+hello patched
"""

RECIPES = {
    # stages a file of the vendor tree
    "tool": """\
        source = "ask"
        inputs = ["tool"]
        steps = [["true"]]
        [[artifacts]]
        path = "tool/tool.conf"
        stage = "etc/tool.conf"
        mode = "0644"
        """,
    # builds only from the patched tarball
    "libx": """\
        source = "lib"
        steps = [["sh", "-c", "grep -qx 'hello patched' hello.txt && cp hello.txt libx.out"]]
        [[artifacts]]
        path = "libx.out"
        """,
    # reads a tree the mirrors do not have: skipped, saying which and why
    "needsgone": """\
        source = "ask"
        inputs = ["tool"]
        depends = ["tool"]
        steps = [["true"]]
        [uses]
        gone = ["include"]
        [[artifacts]]
        path = "tool/tool.conf"
        """,
    # fails with a compiler-like error
    "broken": """\
        source = "ask"
        inputs = ["tool"]
        steps = [["sh", "-c", "echo 'broken.c:1:2: error: no boom here' >&2; exit 1"]]
        [[artifacts]]
        path = "never"
        """,
}


@pytest.fixture
def fixture(tmp_path):
    """(project root, mirror dir, env) for a rehearsal of a tiny fixture project."""
    root = tmp_path / "project"
    comp = root / "recipes" / "components"
    comp.mkdir(parents=True)
    (root / "recipes" / "sources.toml").write_text(SOURCES)
    (root / "recipes" / "patches.toml").write_text(LAYERS)
    for name, text in RECIPES.items():
        (comp / f"{name}.toml").write_text(textwrap.dedent(text))
    (tmp_path / "upstreams").mkdir()
    ask = GitUpstream(tmp_path / "upstreams", "ASK")
    ask.release("v1", {"tool/tool.conf": "mode = fast\n", "patches/lib/01-fix.patch": VENDOR_PATCH})
    mirrors = tmp_path / "mirrors"
    (mirrors / "github.com/example").mkdir(parents=True)
    (mirrors / "github.com/example/ASK.git").symlink_to(ask.bare)
    tarball = mirrors / "files.example.org/lib/lib-1.0.tar.gz"
    tarball.parent.mkdir(parents=True)
    tarball.write_bytes(release_tarball("lib-1.0", {"hello.txt": "hello\n"}))
    env = {"ASKBUILD_PROJECT_ROOT": str(root), "ASKBUILD_WORK_DIR": str(tmp_path / "work"),
           "ASKBUILD_CACHE_DIR": str(tmp_path / "cache")}
    return root, mirrors, env, ask


def rows_of(report: dict) -> dict[tuple[str, str], dict]:
    return {(r["stage"], r["item"]): r for r in report["rows"]}


def test_rehearse_maps_urls_into_the_mirror_dir_reports_every_step_and_sets_the_exit_code(
        fixture, tmp_path):
    root, mirrors, env, ask = fixture
    sources_before = (root / "recipes" / "sources.toml").read_bytes()

    proc = inv("rehearse", "--mirrors", str(mirrors), "--json", env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert_clean_message(proc, "rehearsal: 1 step(s) failed: build broken")
    report = json.loads(proc.stdout)
    rows = rows_of(report)
    assert report["kind"] == "rehearse" and report["ok"] is False
    # layout: https://HOST/PATH -> DIR/HOST/PATH, for git directories and tarball files
    assert rows["fetch", "ask"]["status"] == "fetched"
    assert rows["fetch", "ask"]["mirror"] == str(mirrors / "github.com/example/ASK.git")
    assert rows["fetch", "ask"]["lock"]["commit"] == ask.rev("v1")
    assert rows["fetch", "lib"]["status"] == "fetched"
    assert rows["fetch", "gone"]["status"] == "skipped"
    assert str(mirrors / "github.com/example/gone.git") in rows["fetch", "gone"]["detail"]
    # patch --check, then the build uses the patched tree
    assert rows["patch", "lib"]["status"] == "applies"
    assert rows["patch", "lib"]["patches"] == [
        {"layer": "ask:patches/lib", "patch": "01-fix.patch", "status": "applied"}]
    assert rows["build", "libx"]["status"] == "built"
    assert rows["build", "tool"]["status"] == "built"
    assert rows["build", "tool"]["staged"] == ["etc/tool.conf"]
    skipped = rows["build", "needsgone"]
    assert skipped["status"] == "skipped"
    assert "source gone [include of gone]: not in the mirrors" in skipped["detail"]
    failed = rows["build", "broken"]
    assert failed["status"] == "failed"
    assert "error: no boom here" in failed["detail"]
    # the user's sources file and work dir are untouched: all of it lives in <work>/rehearsal
    assert (root / "recipes" / "sources.toml").read_bytes() == sources_before
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["rehearsal"]
    saved = json.loads((tmp_path / "work/rehearsal/rehearsal.json").read_text())
    assert saved["rows"] == report["rows"]
    staged = tmp_path / "work/rehearsal/staging/etc/tool.conf"
    assert staged.read_text() == "mode = fast\n"

    (root / "recipes/components/broken.toml").unlink()
    again = inv("rehearse", "--mirrors", str(mirrors), env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    table = again.stderr
    assert f"rehearsal of the default profile against {mirrors}" in table
    for line in (r"fetch\s+gone\s+skipped\s+not in the mirrors",
                 r"patch\s+lib\s+applies\s+1 patch\(es\): ask:patches/lib \(1\)",
                 r"build\s+libx\s+built\s+up to date",
                 r"build\s+needsgone\s+skipped\s+missing input"):
        assert re.search(f"^{line}", table, re.M), (line, table)
    assert "broken" not in table


def test_rehearse_without_a_mirror_dir_says_what_the_layout_is(fixture, tmp_path):
    _, _, env, _ = fixture
    proc = inv("rehearse", "--mirrors", str(tmp_path / "nowhere"), env=env, timeout=60)
    assert proc.returncode == 1
    assert_clean_message(proc, f"--mirrors: {tmp_path / 'nowhere'} is not a directory",
                         "DIR/HOST/PATH")


# -- the real trees (ASKBUILD_REAL_MIRRORS) -------------------------------------------------

needs_real = pytest.mark.skipif(not REAL_MIRRORS, reason="ASKBUILD_REAL_MIRRORS is not set "
                                "(a mirror directory of the real trees: docs/rehearsal.md)")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """One rehearsal of the default profile against the real mirrors (JSON report)."""
    mirrors = Path(REAL_MIRRORS).resolve()
    if not (mirrors / "github.com/we-are-mono/ASK.git").exists():
        pytest.fail(f"{mirrors} holds no github.com/we-are-mono/ASK.git: the rehearsal needs "
                    "at least ASK")
    base = tmp_path_factory.mktemp("real-rehearsal")
    proc = inv("rehearse", "--mirrors", str(mirrors), "--json", "--work-dir",
               str(base / "work"), "--cache-dir", str(base / "cache"), timeout=3600)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc, json.loads(proc.stdout), mirrors, base / "work"


@pytest.mark.real
@needs_real
def test_real_everything_the_mirrors_provide_builds(real_run):
    proc, report, _mirrors, _work = real_run
    rows = rows_of(report)
    failed = [f"{r['stage']} {r['item']}: {r['detail']}" for r in report["rows"]
              if r["status"] == "failed"]
    assert not failed, "\n".join(failed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert rows["build", "libfci"]["status"] == "built"
    # a netfilter library that built was patched by ASK's vendor layer (issue: silently not)
    for lib in ("libnfnetlink", "libnetfilter_conntrack"):
        if rows["build", lib]["status"] == "built":
            vendor = [p for p in rows["patch", lib]["patches"] if p["layer"].startswith("ask:")]
            assert vendor, f"{lib} built without ASK's patches: {rows['patch', lib]}"


@pytest.mark.real
@needs_real
def test_real_fastforward_staged_byte_for_byte(real_run):
    _proc, report, mirrors, work = real_run
    rows = rows_of(report)
    if rows["build", "cmm"]["status"] != "built":
        pytest.skip(f"cmm cannot be built from these mirrors: {rows['build', 'cmm']['detail']}")
    commit = rows["fetch", "ask"]["lock"]["commit"]
    ask = mirrors / "github.com/we-are-mono/ASK.git"
    vendor = gitutil.git(["cat-file", "blob", f"{commit}:config/fastforward"], cwd=ask,
                         text=False).stdout
    assert (work / "staging/etc/config/fastforward").read_bytes() == vendor
