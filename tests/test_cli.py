"""The verbs as a user runs them: exit codes, messages, doctor's truthfulness."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INV = [sys.executable, "-m", "invoke", "--search-root", str(ROOT)]


def run_inv(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, CI="true")
    full_env.update(env or {})
    return subprocess.run([*INV, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=600)


def test_list_shows_every_verb():
    proc = run_inv("--list")
    assert proc.returncode == 0, proc.stderr
    for verb in ("setup", "doctor", "lock", "fetch", "patch", "rebase", "build", "image",
                 "image.test", "patches.edit", "patches.export", "all", "test"):
        assert f"  {verb} " in proc.stdout or f"  {verb}\n" in proc.stdout, verb


def test_user_error_is_one_paragraph_exit_1_no_traceback(tmp_path):
    proc = run_inv("fetch", "--profile", "no-such-profile", "--work-dir", str(tmp_path))
    assert proc.returncode == 1
    assert "profile 'no-such-profile'" in proc.stderr
    assert "fix: use one of: default" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_debug_flag_shows_the_traceback(tmp_path):
    proc = run_inv("fetch", "--profile", "no-such-profile", "--debug")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr
    assert "profile 'no-such-profile'" in proc.stderr


def test_bad_mirror_env_names_the_variable():
    proc = run_inv("fetch", env={"ASKBUILD_MIRRORS": "not-a-pair"})
    assert proc.returncode == 1
    assert "ASKBUILD_MIRRORS: 'not-a-pair' is not PREFIX=REPLACEMENT" in proc.stderr


def test_config_file_unknown_key_names_file_and_key(tmp_path):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('cache_dirr = "/tmp/x"\n')
    proc = run_inv("fetch", env={"ASKBUILD_CONFIG": str(cfg)})
    assert proc.returncode == 1
    assert str(cfg) in proc.stderr and "cache_dirr" in proc.stderr


def test_doctor_reports_all_present_here():
    proc = run_inv("doctor")
    assert proc.returncode == 0, proc.stderr
    for name in ("python", "git", "cross compiler", "arm64 dev packages", "qemu binfmt",
                 "docker engine"):
        assert name in proc.stderr
    assert "all required prerequisites present" in proc.stderr


def test_doctor_tells_the_truth_about_a_missing_compiler(tmp_path):
    # A PATH with git and python but no cross compiler.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("git", "dpkg-query", "dpkg"):
        os.symlink(shutil.which(tool), bindir / tool)
    proc = run_inv("doctor", env={"PATH": str(bindir)})
    assert proc.returncode == 1
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("cross compiler"))
    assert "MISSING" in line and "aarch64-linux-gnu-gcc not found" in line
    assert "missing host prerequisites: cross compiler" in proc.stderr


def test_setup_check_lists_commands_without_running(monkeypatch):
    from askbuild import hostdeps
    cmds = hostdeps.setup_commands(["libxml2-dev:arm64", "flex"], binfmt=True)
    assert cmds[0] == ["dpkg", "--add-architecture", "arm64"]
    assert ["apt-get", "install", "-y", "--no-install-recommends", "libxml2-dev:arm64",
            "flex"] in cmds
    assert cmds[-1] == ["update-binfmts", "--enable", "qemu-aarch64"]


@pytest.mark.skipif(os.environ.get("ASKBUILD_INNER_TEST") == "1", reason="no recursion")
def test_test_verb_fails_when_no_test_is_collected():
    proc = run_inv("test", "-k", "zz_no_such_test_zz", env={"ASKBUILD_INNER_TEST": "1"})
    assert proc.returncode == 2
    assert "collected no tests" in proc.stderr
