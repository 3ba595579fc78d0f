"""Vendor layers with the real vendor layout (``patches/<name>/NN-*.patch``, no version
directory), loud failures when a layer matches nothing or matches competing patches, explicit
patch lists, profile layer files, and ``--keep-going`` for ``inv patch`` / ``inv fetch``.

Real git, real fetches over file://; every vendor tree here is a few lines written by the test.
"""

from __future__ import annotations

import pytest
from faults import inv

from askbuild import patchqueue as pq
from askbuild.errors import ConfigError, PatchFailed, SourcesFailed
from askbuild.settings import Settings

LIB_V1 = {"src/a.c": "".join(f"a line {i}\n" for i in range(1, 21))}


def new_file(path: str, text: str) -> str:
    return (f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n"
            f"+++ b/{path}\n@@ -0,0 +1 @@\n+{text}\n")


def change(line: int, new: str, path: str = "src/a.c") -> str:
    """A one-line change of ``path`` (a LIB_V1 file) at ``line``."""
    ctx = [f"a line {i}" for i in range(line - 3, line + 4)]
    return (f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n"
            f"@@ -{line - 3},7 +{line - 3},7 @@\n"
            + "".join(f" {c}\n" for c in ctx[:3]) + f"-{ctx[3]}\n+{new}\n"
            + "".join(f" {c}\n" for c in ctx[4:]))


class Layered:
    """A project: source ``vendor`` (a git tree shipping patch directories) and source ``lib``
    (the tree they patch, release 1.0), both locked; ``recipes/patches.toml`` as given."""

    def __init__(self, project, git_upstream, vendor_files: dict[str, str], layers: str):
        self.project = project
        self.vendor = git_upstream("vendor")
        self.vendor_v1 = self.vendor.release("v1", {"README": "vendor\n", **vendor_files})
        self.lib = git_upstream("lib")
        self.lib_v1 = self.lib.release("1.0", LIB_V1)
        project.add_git("vendor", self.vendor.url, "v1", self.vendor_v1)
        project.add_git("lib", self.lib.url, "1.0", self.lib_v1)
        (project.root / "recipes" / "patches.toml").write_text(layers)
        self.settings = project.settings()

    @property
    def tree(self):
        return self.settings.src_dir / "lib"

    def files(self) -> set[str]:
        return {p.relative_to(self.tree).as_posix() for p in self.tree.rglob("*")
                if p.is_file() and ".git" not in p.parts}


def layered(project, git_upstream, vendor_files, layers) -> Layered:
    return Layered(project, git_upstream, vendor_files, layers)


# -- a layer that matches nothing ------------------------------------------------------------

def test_a_version_directory_the_vendor_does_not_have_is_an_error_naming_what_is_there(
        project, git_upstream):
    # ASK keeps patches/libnfnetlink/01-*.patch: a layer written as .../{ref} matches nothing
    lay = layered(project, git_upstream,
                  {"patches/libx/01-nonblocking.patch": change(5, "a line 5 VENDOR")},
                  '[lib]\nvendor = [{ from = "vendor", dir = "patches/libx/{ref}" }]\n')
    with pytest.raises(ConfigError) as e:
        pq.patch(lay.settings, ["lib"])
    text = str(e.value)
    assert "vendor layer vendor:patches/libx/1.0" in text and "matches no patch" in text
    assert "patches/libx/1.0/ does not exist in vendor's tree" in text
    assert "patches/libx/ holds: 01-nonblocking.patch" in text
    assert 'set dir = "patches/libx"' in e.value.fix
    assert "optional" not in text.split("matches no patch", 1)[1]   # never "make it optional"
    # nothing was applied, nothing recorded as done
    assert pq.tree_state(lay.settings, "lib") is None
    assert "VENDOR" not in (lay.tree / "src/a.c").read_text()


def test_a_directory_holding_only_a_version_subdirectory_is_an_error(project, git_upstream):
    lay = layered(project, git_upstream,
                  {"patches/libx/1.0/01-nonblocking.patch": change(5, "a line 5 VENDOR")},
                  '[lib]\nvendor = [{ from = "vendor", dir = "patches/libx" }]\n')
    with pytest.raises(ConfigError) as e:
        pq.patch(lay.settings, ["lib"])
    assert "patches/libx/ holds no *.patch file" in str(e.value)
    assert "patches/libx/ holds: 1.0/" in str(e.value)


def test_optional_allows_only_a_whole_directory_to_be_absent_and_says_so(
        project, git_upstream, capsys):
    lay = layered(project, git_upstream,
                  {"patches/libx/README": "patches moved upstream\n"},
                  '[lib]\nvendor = [{ from = "vendor", dir = "patches/gone", optional = true },'
                  ' { from = "vendor", dir = "patches/libx", optional = true }]\n')
    with pytest.raises(ConfigError, match="vendor layer vendor:patches/libx .*matches no patch"):
        pq.patch(lay.settings, ["lib"])         # present but empty: an error even if optional
    f = lay.settings.recipes_dir / "patches.toml"
    f.write_text('[lib]\nvendor = [{ from = "vendor", dir = "patches/gone", optional = true }]\n')
    report = pq.patch(lay.settings, ["lib"])
    assert [(r["layer"], r["status"]) for r in report.rows] == [("vendor:patches/gone",
                                                                 "skipped")]
    err = capsys.readouterr().err
    assert "SKIPPED vendor layer vendor:patches/gone" in err and "optional = true" in err


# -- competing patches -------------------------------------------------------------------------

KERNEL_DIR = {
    # two generations of one port: both add the same header (the second can never apply)
    "patches/kernel/002-port-for-6.1.patch": new_file("include/uapi/fmd/fm_ioctls.h", "v7")
    + change(5, "a line 5 PORT 6.1"),
    "patches/kernel/999-port-for-5.4.patch": new_file("include/uapi/fmd/fm_ioctls.h", "v5")
    + change(5, "a line 5 PORT 5.4"),
}


def test_a_layer_matching_competing_patches_is_an_error_naming_both(project, git_upstream):
    lay = layered(project, git_upstream, KERNEL_DIR,
                  '[lib]\nvendor = [{ from = "vendor", dir = "patches/kernel" }]\n')
    with pytest.raises(ConfigError) as e:
        pq.patch(lay.settings, ["lib"])
    text = str(e.value)
    assert "vendor layer vendor:patches/kernel" in text and "competing patches" in text
    assert "002-port-for-6.1.patch and 999-port-for-5.4.patch: both create 1 file(s) " \
           "(e.g. include/uapi/fmd/fm_ioctls.h) and they touch 2 files in common (of 2 and 2)" \
        in text
    assert 'patches = ["002-port-for-6.1.patch"]' in e.value.fix
    assert pq.tree_state(lay.settings, "lib") is None
    assert lay.files() == set(LIB_V1)


def test_an_explicit_list_picks_one_generation(project, git_upstream):
    lay = layered(project, git_upstream, KERNEL_DIR,
                  '[lib]\nvendor = [{ from = "vendor", dir = "patches/kernel", '
                  'patches = ["002-port-for-6.1.patch"] }]\n')
    report = pq.patch(lay.settings, ["lib"])
    assert [(r["layer"], r["patch"], r["status"]) for r in report.rows] == [
        ("vendor:patches/kernel", "002-port-for-6.1.patch", "applied")]
    assert (lay.tree / "include/uapi/fmd/fm_ioctls.h").read_text() == "v7\n"
    assert "a line 5 PORT 6.1" in (lay.tree / "src/a.c").read_text()
    assert [p["file"] for p in pq.tree_state(lay.settings, "lib")["patches"]] == [
        "002-port-for-6.1.patch"]


def test_an_explicit_list_applies_in_its_own_order_and_names_missing_files(
        project, git_upstream):
    lay = layered(project, git_upstream,
                  {"patches/libx/01-a.patch": change(5, "a line 5 A"),
                   "patches/libx/02-b.patch": change(12, "a line 12 B")},
                  '[lib]\nvendor = [{ from = "vendor", dir = "patches/libx", '
                  'patches = ["02-b.patch", "01-a.patch"] }]\n')
    report = pq.patch(lay.settings, ["lib"])
    assert [r["patch"] for r in report.rows] == ["02-b.patch", "01-a.patch"]
    f = lay.settings.recipes_dir / "patches.toml"
    f.write_text(f.read_text().replace('"01-a.patch"', '"03-c.patch"'))
    with pytest.raises(ConfigError) as e:
        pq.patch(lay.settings, ["lib"])
    assert "patches names file(s) that patches/libx/ does not hold: 03-c.patch" in str(e.value)
    assert "it holds: 01-a.patch, 02-b.patch" in str(e.value)


def files(touched: list[str], created: list[str] = ()) -> pq.PatchFiles:
    return pq.PatchFiles(frozenset(touched), frozenset(created))


def test_what_competes():
    port = [f"drivers/fman/f{i}.c" for i in range(40)]
    # an older generation of the same port: most files in common
    assert pq.competing(files(port), files(port[:35] + ["old/only.c"] * 1))
    # a follow-up fix of a few files of the port: not a competitor
    assert pq.competing(files(port), files(port[:12])) is None
    # two small patches of one series touching the same file: ordinary
    assert pq.competing(files(["cmm/src/cmm.c"]), files(["cmm/src/cmm.c"])) is None
    # both create one file: always competitors
    assert "both create 1 file(s) (e.g. inc/x.h)" in pq.competing(
        files(["inc/x.h"], ["inc/x.h"]), files(["inc/x.h", "a.c"], ["inc/x.h"]))
    assert pq.patch_files(b"not a diff at all\n") is None
    pf = pq.patch_files(KERNEL_DIR["patches/kernel/002-port-for-6.1.patch"].encode())
    assert pf == files(["include/uapi/fmd/fm_ioctls.h", "src/a.c"],
                       ["include/uapi/fmd/fm_ioctls.h"])


# -- the layers file -------------------------------------------------------------------------

@pytest.mark.parametrize("text, needle", [
    ('[lib]\nvendor = { from = "vendor", dir = "p" }\n', "vendor must be an array"),
    ('[lib]\nlocal = "patches/lib"\n', "local must be an array"),
    ('[lib]\nvendor = [{ from = "vendor", dir = "p", patches = [] }]\n',
     "patches must be a non-empty array"),
    ('[lib]\nvendor = [{ from = "vendor", dir = "p", patches = "a.patch" }]\n',
     "patches must be a non-empty array"),
    ('[lib]\nvendor = [{ from = "vendor", dir = "p", patches = ["a.patch", "a.patch"] }]\n',
     "patches lists a.patch more than once"),
    ('[lib]\nvendor = [{ from = "vendor", dir = "p", patches = ["../x.patch"] }]\n',
     "invalid patch name"),
    ('[lib]\nvendor = [{ from = "vendor", dir = "p", optional = "yes" }]\n',
     "optional must be true or false"),
    ('[lib]\nvendor = [{ from = "vendor", dir = "p", include = ["*.patch"] }]\n',
     "unknown key(s): include"),
    ('[lib]\nvendor = [{ from = "nobody", dir = "p" }]\n', "no source named 'nobody'"),
])
def test_bad_layer_entries_are_named(project, git_upstream, text, needle):
    lay = layered(project, git_upstream, {}, text)
    with pytest.raises(ConfigError) as e:
        pq.load_layers(lay.settings)
    assert needle in str(e.value) and "patches.toml: [lib]" in str(e.value)


def test_a_profile_may_have_its_own_layers_file(project, git_upstream):
    lay = layered(project, git_upstream, {},
                  '[lib]\nlocal = ["patches/default"]\n\n[other]\nlocal = ["patches/o"]\n')
    root = project.root
    (root / "recipes/profiles/p").mkdir(parents=True)
    (root / "recipes/profiles/p.toml").write_text(
        (root / "recipes/sources.toml").read_text())
    (root / "recipes/profiles/p/patches.toml").write_text('[lib]\nlocal = ["patches/p"]\n')
    p = Settings.load(project_root=root, work_dir=project.work, cache_dir=project.cache,
                      profile="p")
    assert pq.layers_file(p) == root / "recipes/profiles/p/patches.toml"
    assert [ly.dir for ly in pq.load_layers(p)["lib"]] == ["patches/p"]
    # the default profile's file is untouched by the profile's and still strict
    with pytest.raises(ConfigError, match="no source named 'other'"):
        pq.load_layers(lay.settings)
    # a profile's own file is strict too
    (root / "recipes/profiles/p/patches.toml").write_text('[nope]\nlocal = ["patches/p"]\n')
    with pytest.raises(ConfigError, match="no source named 'nope'"):
        pq.load_layers(p)


# -- --keep-going ----------------------------------------------------------------------------

def keep_going_project(project, git_upstream) -> Settings:
    """Sources: ``vendor`` (ships patches/kernel/ with two generations), ``gone`` (its upstream
    disappeared, never fetched), ``bad`` (its vendor layer competes), ``nomatch`` (its vendor
    directory does not exist), ``lib`` (fine), ``dep`` (its vendor layer comes from ``gone``)."""
    vendor = git_upstream("vendor")
    v1 = vendor.release("v1", KERNEL_DIR)
    project.add_git("vendor", vendor.url, "v1", v1)
    gone = git_upstream("gone")
    g1 = gone.release("v1", {"patches/dep/01.patch": change(5, "a line 5 DEP")})
    project.add_git("gone", gone.url, "v1", g1)
    gone.remove()
    toml = ""
    for name, layer in [("bad", 'vendor = [{ from = "vendor", dir = "patches/kernel" }]'),
                        ("nomatch", 'vendor = [{ from = "vendor", dir = "patches/nomatch" }]'),
                        ("lib", 'vendor = [{ from = "vendor", dir = "patches/kernel", '
                                'patches = ["002-port-for-6.1.patch"] }]'),
                        ("dep", 'vendor = [{ from = "gone", dir = "patches/dep" }]')]:
        up = git_upstream(name)
        project.add_git(name, up.url, "1.0", up.release("1.0", LIB_V1))
        toml += f"[{name}]\n{layer}\n\n"
    (project.root / "recipes" / "patches.toml").write_text(toml)
    return project.settings()


def test_patch_keep_going_patches_every_independent_source_and_lists_all_failures(
        project, git_upstream):
    s = keep_going_project(project, git_upstream)
    env = {"ASKBUILD_PROJECT_ROOT": str(project.root)}
    where = ["--work-dir", str(project.work), "--cache-dir", str(project.cache)]
    # without it: the first failing source stops the verb
    first = inv("patch", "--source", "vendor,bad,nomatch,lib,dep", *where, env=env)
    assert first.returncode == 1, first.stderr
    assert "competing patches" in first.stderr
    assert pq.tree_state(s, "lib") is None
    proc = inv("patch", "--keep-going", *where, env=env)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr
    assert "Traceback" not in err
    assert "inv patch: 3 source(s) failed, 1 skipped:" in err
    assert "- gone: source gone: cannot fetch" in err
    assert "- bad: " in err and "competing patches" in err
    assert "- nomatch: " in err and "vendor layer vendor:patches/nomatch" in err
    assert ("- dep: skipped: its vendor layer gone:patches/dep comes from source gone, whose "
            "work tree could not be made") in err
    # the independent sources were patched
    assert [p["file"] for p in pq.tree_state(s, "lib")["patches"]] == ["002-port-for-6.1.patch"]
    assert pq.tree_state(s, "vendor") is not None
    for failed in ("bad", "nomatch"):
        assert pq.tree_state(s, failed) is None
        assert s.failed_patch_record(failed).is_file()


def test_patch_keep_going_exit_code_is_the_worst_failure(project, git_upstream):
    broken = change(5, "x").replace("a line 2", "a line 2 NOT THERE")
    lay = layered(project, git_upstream, {"patches/libx/01-a.patch": broken},
                  '[lib]\nvendor = [{ from = "vendor", dir = "patches/libx" }]\n'
                  '[vendor]\nvendor = [{ from = "vendor", dir = "patches/none" }]\n')
    with pytest.raises(SourcesFailed) as e:
        pq.patch(lay.settings, [], keep_going=True)
    assert e.value.exit_code == 2                 # a patch that did not apply: a failed step
    assert "- vendor: " in str(e.value) and "vendor layer vendor:patches/none" in str(e.value)
    assert "- lib: patch 1 of 1 of lib did not apply: 01-a.patch" in str(e.value)


def test_patch_check_keep_going_reports_every_source(project, git_upstream):
    s = keep_going_project(project, git_upstream)
    with pytest.raises(SourcesFailed) as e:
        pq.patch(s, ["vendor", "bad", "nomatch", "lib"], check=True, keep_going=True)
    assert "inv patch --check: 2 source(s) failed:" in str(e.value)
    assert "- bad: " in str(e.value) and "- nomatch: " in str(e.value)
    assert pq.tree_state(s, "lib") is None        # --check touches no build tree
    assert not s.failed_patch_record("bad").exists()


def test_fetch_keep_going_fetches_every_other_source(project, git_upstream):
    ups = {}
    for name in ("a", "b", "c", "d"):
        ups[name] = git_upstream(name)
        project.add_git(name, ups[name].url, "1.0", ups[name].release("1.0", LIB_V1))
    ups["b"].remove()
    ups["d"].remove()
    env = {"ASKBUILD_PROJECT_ROOT": str(project.root)}
    where = ["--work-dir", str(project.work), "--cache-dir", str(project.cache)]
    stop = inv("fetch", *where, env=env)
    assert stop.returncode == 1 and not (project.work / "src/c").exists()
    proc = inv("fetch", "--keep-going", *where, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "inv fetch: 2 source(s) failed:" in proc.stderr
    assert "- b: source b: cannot fetch" in proc.stderr
    assert "- d: source d: cannot fetch" in proc.stderr
    for ok in ("a", "c"):
        assert (project.work / "src" / ok / "src/a.c").is_file()


def test_patch_failure_message_of_a_single_source_is_unchanged(project, git_upstream):
    lay = layered(project, git_upstream, {"patches/libx/01-a.patch": change(5, "x").replace(
        "a line 2", "a line 2 NOT THERE")},
                  '[lib]\nvendor = [{ from = "vendor", dir = "patches/libx" }]\n')
    with pytest.raises(PatchFailed, match="patch 1 of 1 of lib did not apply: 01-a.patch"):
        pq.patch(lay.settings, ["lib"], keep_going=True)


def test_patch_state_problem_checks_the_vendor_provider_lock_and_vendor_patches(
        project, git_upstream):
    lay = layered(project, git_upstream,
                  {"patches/libx/01-a.patch": change(5, "a line 5 A")},
                  '[lib]\nvendor = [{ from = "vendor", dir = "patches/libx" }]\n')
    pq.patch(lay.settings, ["lib"])
    assert pq.patch_state_problem(lay.settings, "lib") is None
    v2 = lay.vendor.release("v2", {"patches/libx/01-a.patch": change(5, "a line 5 A2")})
    f = lay.settings.sources_file
    text = f.read_text()
    f.write_text(text.replace(lay.vendor_v1, v2))
    assert pq.patch_state_problem(lay.settings, "lib").startswith(
        f"vendor layer vendor:patches/libx of lib: source vendor is locked at {v2[:12]} but "
        "its tree")
    from askbuild import fetching
    fetching.fetch(lay.settings, ["vendor"])
    assert pq.patch_state_problem(lay.settings, "lib").startswith(
        "the series changed since `inv patch`: vendor:patches/libx/01-a.patch (changed)")
    pq.patch(lay.settings, ["lib"])
    assert pq.patch_state_problem(lay.settings, "lib") is None
