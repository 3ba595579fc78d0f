"""The shared build cache (``--cache-remote oci://...``) against a real registry: two work
directories ("machines") of the same project; what one builds and uploads the other takes
instead of building, verified by digest, installed as its own build would have left it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from buildfixtures import (
    FAKE_KERNEL_FILES,
    FAKE_KERNEL_RECIPES,
    fault_project,
    init_tree,
    write_files,
)
from registryfixtures import Registry, free_port

from askbuild import building
from askbuild.building import remote
from askbuild.settings import Settings

#: libx installs a header, a library and a .pc file naming its prefix into the sysroot (like
#: ``./configure --prefix={sysroot} && make install``); app compiles against them; both log
#: each run of a step to $STEP_LOG.
LIBX_SCRIPT = (
    "echo libx >> $STEP_LOG; mkdir -p $1/include $1/lib/pkgconfig && cp lib/x.h $1/include/"
    " && {cross}gcc -c lib/x.c -o x.o && {cross}ar rcs $1/lib/libx.a x.o"
    " && printf 'prefix=%s\\nLibs: -L%s/lib -lx\\n' $1 $1 > $1/lib/pkgconfig/x.pc")
APP_SCRIPT = ("echo app >> $STEP_LOG; {cross}gcc -static -I$1/include -o app/app app/main.c"
              " $(sed -n 's/^Libs: //p' $1/lib/pkgconfig/x.pc)")
RECIPES = {
    "libx": """\
source = "s"
inputs = ["lib"]
steps = LIBX_STEPS
[[artifacts]]
path = "{sysroot}/lib/libx.a"
[[artifacts]]
path = "{sysroot}/lib/pkgconfig/x.pc"
""".replace("LIBX_STEPS", json.dumps([["sh", "-c", LIBX_SCRIPT, "step", "{sysroot}"]])),
    "app": """\
source = "s"
inputs = ["app"]
depends = ["libx"]
steps = APP_STEPS
[[artifacts]]
path = "app/app"
stage = "usr/bin/app"
mode = "0755"
[[artifacts]]
path = "app/app.conf"
stage = "etc/app.conf"
""".replace("APP_STEPS", json.dumps([["sh", "-c", APP_SCRIPT, "step", "{sysroot}"]])),
}
FILES = {
    "lib/x.h": "int x(void);\n",
    "lib/x.c": "int x(void) { return 41; }\n",
    "app/main.c": '#include <x.h>\nint main(void) { return x() == 41 ? 0 : 1; }\n',
    "app/app.conf": "mode = fast\n",
}


@pytest.fixture
def reg(tmp_path):
    r = Registry.start(tmp_path / "registry")
    yield r
    r.stop()


@pytest.fixture
def step_log(tmp_path, monkeypatch):
    log = tmp_path / "steps.log"
    log.write_text("")
    monkeypatch.setenv("STEP_LOG", str(log))
    return log


def machine(tmp_path: Path, name: str, project: Path, remote_url: str = "", *,
            push: bool = False, files: dict[str, str] | None = None) -> Settings:
    """A "machine": its own work dir and cache, the project's source ``s`` made there."""
    s = Settings(project_root=project, work_dir=tmp_path / name / "work",
                 cache_dir=tmp_path / name / "cache", jobs=2, cache_remote=remote_url,
                 cache_push=push)
    up = tmp_path / name / "upstream"
    write_files(up, files or FILES)
    init_tree(s.src_dir / "s", from_dir=up)
    return s


def url(reg: Registry) -> str:
    return f"oci://{reg.address}/askbuild/cache"


def components(s: Settings) -> dict:
    return json.loads(s.build_manifest.read_text())["components"]


def test_b_takes_every_component_from_what_a_uploaded(tmp_path, reg, step_log, capfd):
    project = fault_project(tmp_path / "proj", RECIPES)
    a = machine(tmp_path, "a", project, url(reg), push=True)
    building.build(a, [])
    assert step_log.read_text().split() == ["libx", "app"]
    man_a = components(a)
    assert {n: c["origin"] for n, c in man_a.items()} == {"libx": "built", "app": "built"}
    assert all(c["pushed"]["location"].startswith(url(reg)) for c in man_a.values())

    step_log.write_text("")
    b = machine(tmp_path, "b", project, url(reg))
    building.build(b, [])
    assert step_log.read_text() == ""                  # no step ran: nothing compiled
    man_b = components(b)
    for n in ("libx", "app"):
        assert man_b[n]["key"] == man_a[n]["key"]
        assert man_b[n]["origin"] == "remote"
        tag = remote.tag_for(n, man_a[n]["key"])
        assert man_b[n]["remote"] == {"location": f"{url(reg)}:{tag}",
                                      "digest": man_a[n]["pushed"]["digest"]}
        assert reg.tag_digest("askbuild/cache", tag) == man_a[n]["pushed"]["digest"]
    # the staged files are A's bytes; the sysroot is what B's own build would have written
    for rel in ("usr/bin/app", "etc/app.conf"):
        assert (b.staging_dir / rel).read_bytes() == (a.staging_dir / rel).read_bytes()
    assert (b.staging_dir / "usr/bin/app").stat().st_mode & 0o777 == 0o755
    assert (b.sysroot_dir / "include/x.h").read_text() == FILES["lib/x.h"]
    pc = (b.sysroot_dir / "lib/pkgconfig/x.pc").read_text()
    assert f"prefix={b.sysroot_dir}\n" in pc and str(a.work_dir) not in pc
    rec = json.loads(b.build_record("app").read_text())
    assert rec["origin"]["kind"] == "remote"
    assert all(Path(x["file"]).is_relative_to(b.work_dir) for x in rec["artifacts"])
    assert "from the shared build cache 2" in capfd.readouterr().err

    # B again: everything is now B's own (cached); A again uploads nothing new
    building.build(b, [])
    assert {n: c["origin"] for n, c in components(b).items()} == {"libx": "cached",
                                                                  "app": "cached"}
    uploads = reg.uploads()
    building.build(a, [])
    assert reg.uploads() == uploads and step_log.read_text() == ""


def test_a_dependent_builds_locally_against_what_was_taken(tmp_path, reg, step_log):
    """B's app differs (its own key): libx comes from the remote, app compiles against the
    header, library and relocated .pc file libx put into B's sysroot."""
    project = fault_project(tmp_path / "proj", RECIPES)
    building.build(machine(tmp_path, "a", project, url(reg), push=True), [])
    step_log.write_text("")
    files = {**FILES, "app/main.c": FILES["app/main.c"] + "/* B's change */\n"}
    b = machine(tmp_path, "b", project, url(reg), files=files)
    building.build(b, [])
    assert step_log.read_text().split() == ["app"]
    assert {n: c["origin"] for n, c in components(b).items()} == {"libx": "remote",
                                                                  "app": "built"}
    assert (b.staging_dir / "usr/bin/app").is_file()


def test_a_tampered_blob_is_refused_and_the_component_built_locally(tmp_path, reg, step_log,
                                                                    capfd):
    project = fault_project(tmp_path / "proj", RECIPES)
    a = machine(tmp_path, "a", project, url(reg), push=True)
    building.build(a, [])
    key = components(a)["app"]["key"]
    manifest = json.loads(reg.blob_file(components(a)["app"]["pushed"]["digest"]).read_bytes())
    layer = reg.blob_file(manifest["layers"][0]["digest"])
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    layer.write_bytes(bytes(data))
    capfd.readouterr()
    step_log.write_text("")
    b = machine(tmp_path, "b", project, url(reg))
    building.build(b, [])
    err = capfd.readouterr().err
    assert "refusing the shared build cache's artifact of app" in err
    assert f"key {key}" in err and url(reg) in err and "building app locally" in err
    assert step_log.read_text().split() == ["app"]
    assert {n: c["origin"] for n, c in components(b).items()} == {"libx": "remote",
                                                                  "app": "built"}
    assert (b.staging_dir / "usr/bin/app").read_bytes() == \
        (a.staging_dir / "usr/bin/app").read_bytes()      # the same compiler, the same bytes


def test_an_artifact_of_another_component_or_key_is_refused(tmp_path, reg, step_log, capfd):
    """A tag that points at an artifact whose config names another component (a registry
    that was written to by hand, a collision) is refused like a digest mismatch."""
    project = fault_project(tmp_path / "proj", RECIPES)
    a = machine(tmp_path, "a", project, url(reg), push=True)
    building.build(a, [])
    comps = components(a)
    app_tag = remote.tag_for("app", comps["app"]["key"])
    libx_tag = remote.tag_for("libx", comps["libx"]["key"])
    link = reg.storage / "docker/registry/v2/repositories/askbuild/cache/_manifests/tags"
    shutil.copy(link / libx_tag / "current/link", link / app_tag / "current/link")
    capfd.readouterr()
    step_log.write_text("")
    building.build(machine(tmp_path, "b", project, url(reg)), [])
    err = capfd.readouterr().err
    assert "refusing the shared build cache's artifact of app" in err
    assert "names component 'libx'" in err
    assert step_log.read_text().split() == ["app"]


def test_an_unreachable_remote_is_one_warning_and_the_build_goes_on(tmp_path, step_log, capfd):
    project = fault_project(tmp_path / "proj", RECIPES)
    down = f"oci://127.0.0.1:{free_port()}/askbuild/cache"
    b = machine(tmp_path, "b", project, down, push=True)
    building.build(b, [])
    err = capfd.readouterr().err
    assert err.count(f"shared build cache {down} not used") == 1
    assert "cannot reach the registry" in err
    assert step_log.read_text().split() == ["libx", "app"]
    assert {n: c["origin"] for n, c in components(b).items()} == {"libx": "built",
                                                                  "app": "built"}
    assert json.loads(b.build_manifest.read_text())["status"] == "success"


def test_an_upload_refused_is_a_warning_not_a_failed_build(tmp_path, step_log, capfd):
    reg = Registry.start(tmp_path / "registry", users={"ci": "secret-pw"})
    try:
        project = fault_project(tmp_path / "proj", RECIPES)
        a = machine(tmp_path, "a", project, url(reg), push=True)
        building.build(a, [])
        err = capfd.readouterr().err
        assert "refused the credentials" in err and "secret-pw" not in err
        assert json.loads(a.build_manifest.read_text())["status"] == "success"
        assert reg.uploads() == 0
    finally:
        reg.stop()


def test_a_kernel_taken_from_the_remote_serves_a_module_built_locally(tmp_path, reg,
                                                                       monkeypatch):
    """The stand-in kernel comes from the remote with its build tree's parts (release,
    configuration): the module the remote lacks compiles against it, vermagic and depmod
    pass."""
    project = fault_project(tmp_path / "kproj", FAKE_KERNEL_RECIPES)

    def kmachine(name: str) -> Settings:
        s = Settings(project_root=project, work_dir=tmp_path / name / "work",
                     cache_dir=tmp_path / name / "cache", jobs=2, cache_remote=url(reg),
                     cache_push=name == "a")
        up = tmp_path / name / "upstream"
        write_files(up, FAKE_KERNEL_FILES)
        init_tree(s.src_dir / "linux", from_dir=up)
        return s

    a = kmachine("a")
    building.build(a, ["kernel"])             # only the kernel is uploaded
    b = kmachine("b")
    building.build(b, [])
    comps = components(b)
    assert comps["kernel"]["origin"] == "remote" and comps["mod"]["origin"] == "built"
    rel = json.loads(b.build_manifest.read_text())["kernel"]["release"]
    moddir = b.staging_dir / "lib/modules" / rel
    assert (moddir / "kernel/fake.ko").read_bytes() == \
        (a.staging_dir / "lib/modules" / rel / "kernel/fake.ko").read_bytes()
    assert (moddir / "extra/mod.ko").is_file() and (moddir / "modules.dep").is_file()
    assert (b.out_tree("kernel") / "build/include/config/kernel.release").read_text().strip() \
        == rel
    assert (b.out_tree("kernel") / "build/.config").is_file()


def test_downloads_start_ahead_of_the_dag_and_what_nobody_takes_is_removed(tmp_path, reg,
                                                                          step_log,
                                                                          monkeypatch):
    """B's download of app starts while libx, which app depends on, is still being
    downloaded: a skopeo first on PATH holds libx's copy until app's has started (without the
    downloads started ahead, app's would only start once libx is installed, and the copy of
    libx says it waited in vain).  Nothing of the downloads is left in the work dir; a
    download started ahead that no component takes is removed when the build ends."""
    project = fault_project(tmp_path / "proj", RECIPES)
    a = machine(tmp_path, "a", project, url(reg), push=True)
    building.build(a, [])
    keys = {n: c["key"] for n, c in components(a).items()}
    real = shutil.which("skopeo")
    marks = tmp_path / "marks"
    marks.mkdir()
    wrap = tmp_path / "wrap-bin"
    wrap.mkdir()
    libx_tag = remote.tag_for("libx", keys["libx"])
    (wrap / "skopeo").write_text(
        "#!/bin/sh\n"
        f'case "$*" in *"{libx_tag}"*)\n'
        "  i=0\n"
        f"  while [ ! -e '{marks}/app' ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done\n"
        f"  [ -e '{marks}/app' ] || touch '{marks}/libx-waited-in-vain' ;;\n"
        f"  *:app-*) touch '{marks}/app' ;;\n"
        "esac\n"
        f'exec "{real}" "$@"\n')
    (wrap / "skopeo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrap}:{__import__('os').environ['PATH']}")
    step_log.write_text("")
    b = machine(tmp_path, "b", project, url(reg))
    building.build(b, [])
    assert sorted(p.name for p in marks.iterdir()) == ["app"]
    assert step_log.read_text() == ""
    assert {n: c["origin"] for n, c in components(b).items()} == {"libx": "remote",
                                                                  "app": "remote"}
    assert not list(b.out_dir.glob(".remote-*"))

    from askbuild.building.prefetch import Prefetch
    c = machine(tmp_path, "c", project, url(reg))
    ahead = Prefetch(remote.RemoteCache(c), [("libx", keys["libx"]), ("app", keys["app"])])
    assert ahead.take("libx", keys["libx"]).config["component"] == "libx"
    ahead.close(wait=True)
    assert not list(c.out_dir.glob(".remote-*"))
    assert ahead.take("app", keys["app"]) is None       # closed: nothing new is downloaded
    assert not list(c.out_dir.glob(".remote-*"))
