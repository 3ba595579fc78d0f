"""Two CI "machines" (separate HOME, project checkout, cache and work directory) sharing one
registry (the build cache and the image) and one mirror, through the CLI as a fleet runs it.

Machine A builds the example profile's userspace (cmm, dpa_app, fmc and their libraries: the
example kernel is Debian's whole linux 6.1, over 30 minutes on 2 cores, too slow for CI) with
``--cache-remote ... --cache-push``, writes the mirror (``inv mirror``), makes the image
(``--partial``: no kernel) and pushes it.  Machine B starts from empty directories, fetches from
the mirror only (``ASKBUILD_MIRRORS``; the example upstreams under its own work dir,
``file://{work}/example-upstreams/``, are published from its checkout, as on any machine of
the example profile, so the mirror holds the kernel tarball), builds ``--offline``
with every component taken from the shared cache and no compiler run, gets a byte-identical
archive with the same image id (its Debian base layer made from the Debian mirror, as on A),
and pulls the pushed image back by digest.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import pytest
from registryfixtures import Machine, Registry

from askbuild import oci

USERSPACE = "cmm,dpa_app,fmc"
COMPONENTS = {"cmm", "dpa_app", "fmc", "fmlib", "libfci", "libnetfilter_conntrack",
              "libnfnetlink"}


def mirrors_line(stdout: str) -> str:
    m = re.search(r'^ASKBUILD_MIRRORS="([^"]*)"', stdout, re.M)
    assert m, stdout
    return m.group(1)


def build_on_b(b: Machine, reg: Registry, line: str) -> subprocess.CompletedProcess:
    """Machine B's build: offline, through the mirror ``line``, every component from the
    shared build cache ``reg``."""
    return b.ok("build", "--component", USERSPACE, "--offline", "--locked", "--cache-remote",
                f"oci://{reg.address}/askbuild/cache", extra_env={"ASKBUILD_MIRRORS": line})


def run_fleet(tmp, reg: Registry) -> dict:
    """Machine A then machine B; returns what each did (and their wall times)."""
    cache = f"oci://{reg.address}/askbuild/cache"
    a = Machine.make(tmp / "a")
    t0 = time.monotonic()
    a.ok("build", "--component", USERSPACE, "--cache-remote", cache, "--cache-push")
    a_build = time.monotonic() - t0
    # the mirror holds what a runner cannot make itself: the kernel tarball (the example
    # upstreams are published from each checkout into its own work dir, file://{work}/...)
    line = mirrors_line(a.ok("mirror", "--output", str(tmp / "mirror"), "--source",
                             "linux").stdout)
    a.ok("image", "--partial", "--no-load", "--tag", "fleet", "--push",
         f"{reg.address}/monok8s/cmm:fleet")
    # the lock A recorded (the example kernel ships unlocked) is what B's checkout holds
    b = Machine.make(tmp / "b", project_from=a.project, wrap_compilers=True)
    mirrors = {"ASKBUILD_MIRRORS": line}
    t0 = time.monotonic()
    fetched = b.ok("fetch", "--locked", extra_env=mirrors)
    b.ok("patch", "--offline", "--locked", extra_env=mirrors)
    b_sources = time.monotonic() - t0
    t1 = time.monotonic()
    build_on_b(b, reg, line)
    b_build = time.monotonic() - t1
    # (the Debian base layer comes from the Debian mirror, as on A: not --offline)
    b.ok("image", "--partial", "--no-load", "--tag", "fleet", extra_env=mirrors)
    return {"a": a, "b": b, "fetched": fetched, "line": line, "a_build": a_build,
            "b_build": b_build, "b_sources": b_sources}


@pytest.mark.slow
def test_machine_b_takes_everything_from_machine_a(tmp_path):
    reg = Registry.start(tmp_path / "registry")
    try:
        r = run_fleet(tmp_path, reg)
        a, b = r["a"], r["b"]
        # B's sources came from the mirror (the kernel tarball), not from /usr/src
        assert f"file://{tmp_path / 'mirror'}" in r["fetched"].stderr
        assert "download linux: file:///usr/src/" not in r["fetched"].stderr
        # every component from the remote cache, and no compiler ran on B
        man_a, man_b = a.manifest(), b.manifest()
        assert set(man_b["components"]) == COMPONENTS
        for n, c in man_b["components"].items():
            assert c["origin"] == "remote", (n, c)
            assert c["remote"]["digest"] == man_a["components"][n]["pushed"]["digest"]
            assert c["key"] == man_a["components"][n]["key"]
        assert b.compiler_log.read_text() == ""
        # byte-identical archive, same image id
        rec_a = json.loads((a.work / "image/image.json").read_text())
        rec_b = json.loads((b.work / "image/image.json").read_text())
        assert rec_b["image_id"] == rec_a["image_id"]
        assert (b.work / "image/cmm.tar").read_bytes() == (a.work / "image/cmm.tar").read_bytes()
        # the pushed image, pulled back by digest, is A's manifest and blobs
        local = oci.read_archive_index(a.work / "image/cmm.tar")["index.json"]
        digest = local["manifests"][0]["digest"]
        pulled = tmp_path / "pulled"
        subprocess.run(["skopeo", "copy", "--quiet", "--preserve-digests",
                        "--src-tls-verify=false",
                        f"docker://{reg.address}/monok8s/cmm@{digest}", f"oci:{pulled}:x"],
                       check=True, capture_output=True, timeout=300)
        index = json.loads((pulled / "index.json").read_text())
        assert index["manifests"][0]["digest"] == digest
        manifest = json.loads((pulled / "blobs/sha256" / digest.split(":")[1]).read_bytes())
        with __import__("tarfile").open(a.work / "image/cmm.tar") as tf:
            for d in [manifest["config"]["digest"], *(x["digest"] for x in manifest["layers"])]:
                name = f"blobs/sha256/{d.split(':')[1]}"
                assert (pulled / name).read_bytes() == tf.extractfile(name).read()
        assert rec_a["image_id"] == manifest["config"]["digest"]
    finally:
        reg.stop()
        shutil.rmtree(tmp_path / "a" / "work" / "src", ignore_errors=True)
        shutil.rmtree(tmp_path / "b" / "work" / "src", ignore_errors=True)
