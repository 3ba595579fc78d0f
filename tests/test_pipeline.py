"""The main job, end to end, the way the README tells a user to run it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
INV = [sys.executable, "-m", "invoke", "--search-root", str(ROOT)]
PROJECT_DATA = ["recipes", "patches", "kernel", "images", "examples"]


def inv(*args: str, env: dict, timeout: int = 3000) -> subprocess.CompletedProcess:
    return subprocess.run([*INV, *args], cwd=ROOT, env={**os.environ, "CI": "true", **env},
                          capture_output=True, text=True, timeout=timeout)


def copy_project(dest: Path) -> Path:
    """A copy of the project's data, so recording a lock never edits the checkout."""
    for name in PROJECT_DATA:
        shutil.copytree(ROOT / name, dest / name, symlinks=True)
    return dest


def test_main_job_fails_fast_on_an_unreachable_upstream(tmp_path):
    proc = inv("all", "--work-dir", str(tmp_path / "w"), "--cache-dir", str(tmp_path / "c"),
               env={"ASKBUILD_PROJECT_ROOT": str(copy_project(tmp_path / "p"))}, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "source ask: cannot fetch from https://github.com/we-are-mono/ASK.git" in proc.stderr
    for hint in ("ASKBUILD_MIRRORS", "--offline", "--profile example"):
        assert hint in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.docker
@pytest.mark.qemu
def test_example_profile_runs_the_whole_pipeline(tmp_path, engine):
    """fetch, patch, cross-compile (kernel included), image, load, image.test: offline."""
    docker_engine = engine.client()
    project = copy_project(tmp_path / "project")
    work, cache = tmp_path / "work", tmp_path / "cache"
    tag = f"e2e-{uuid.uuid4().hex[:8]}"
    env = {"ASKBUILD_PROJECT_ROOT": str(project)}
    proc = inv("all", "--profile", "example", "--tag", tag, "--work-dir", str(work),
               "--cache-dir", str(cache), env=env)
    try:
        assert proc.returncode == 0, proc.stderr[-6000:]
        # The unlocked example kernel was resolved and recorded, in the project copy only.
        assert "not locked" in proc.stderr and "recorded in" in proc.stderr
        assert 'sha256 = "' in (project / "recipes/profiles/example.toml").read_text()

        manifest = json.loads((work / "build-manifest.json").read_text())
        assert manifest["status"] == "success"
        assert {"cmm", "dpa_app", "fmc", "cdx", "fci", "auto_bridge", "kernel"} <= set(
            manifest["components"])
        release = manifest["kernel"]["release"]
        for ko in ("cdx", "fci", "auto_bridge"):
            assert (work / "staging/lib/modules" / release / "extra" / f"{ko}.ko").is_file()

        image = docker_engine.images.get(f"localhost/monok8s/cmm:{tag}")
        assert image.attrs["Architecture"] == "arm64"
        labels = image.attrs["Config"]["Labels"]
        ask_base = subprocess.run(["git", "rev-parse", "askbuild/base"], cwd=work / "src/ask",
                                  capture_output=True, text=True).stdout.strip()
        assert ask_base in labels.values()
        assert release in labels.values()
        # image.test ran as the last step and passed.
        assert "image test" in proc.stderr

        # Nothing changed: a second main job rebuilds nothing and gives the same image, whose
        # test it does not run again.
        again = inv("all", "--profile", "example", "--tag", tag, "--work-dir", str(work),
                    "--cache-dir", str(cache), "--locked", env=env)
        assert again.returncode == 0, again.stderr[-6000:]
        manifest2 = json.loads((work / "build-manifest.json").read_text())
        assert {c["status"] for c in manifest2["components"].values()} == {"cached"}
        assert "image test skipped" in again.stderr
        assert docker_engine.images.get(f"localhost/monok8s/cmm:{tag}").id == image.id
        # A third one (the second said "cached" where the first said "built") leaves the
        # manifest as it is and does not make the image again.
        written = (work / "build-manifest.json").read_bytes()
        third = inv("all", "--profile", "example", "--tag", tag, "--work-dir", str(work),
                    "--cache-dir", str(cache), "--locked", env=env)
        assert third.returncode == 0, third.stderr[-6000:]
        assert (work / "build-manifest.json").read_bytes() == written
        assert f"image localhost/monok8s/cmm:{tag} unchanged" in third.stderr
        assert "image test skipped" in third.stderr

        # The Kubernetes objects of this build are schema-valid and their pod spec runs: the
        # init container picks the node's DPA set, cmm stays in the foreground (issue 11).
        dirs = ("--work-dir", str(work), "--cache-dir", str(cache))
        objs = inv("manifests", "--profile", "example", "--tag", tag, "--check", *dirs, env=env)
        assert objs.returncode == 0, objs.stderr[-6000:]
        daemonsets = [d for d in yaml.safe_load_all(objs.stdout) if d["kind"] == "DaemonSet"]
        pod = daemonsets[0]["spec"]["template"]
        assert pod["spec"]["containers"][0]["image"] == f"localhost/monok8s/cmm:{tag}"
        assert image.id in pod["metadata"]["annotations"].values()
        rehearsed = inv("manifests.rehearse", "--profile", "example", "--tag", tag, *dirs,
                        env=env)
        assert rehearsed.returncode == 0, rehearsed.stdout[-3000:] + rehearsed.stderr[-3000:]
    finally:
        try:
            docker_engine.images.remove(f"localhost/monok8s/cmm:{tag}", force=True)
        except Exception:  # noqa: BLE001 - cleanup only
            pass
