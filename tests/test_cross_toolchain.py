"""The cross toolchain is a setting: `inv doctor` and `inv build` check the compiler that
``CROSS_COMPILE`` (``--cross-compile``, config ``cross_compile``) names, not a fixed one."""

from __future__ import annotations

import shutil

import faults
import pytest
from buildfixtures import shell_project, shell_recipe

from askbuild.settings import DEFAULT_CROSS_COMPILE

PREFIX = "/nonexistent/bin/aarch64-linux-gnu-"
GCC = f"{PREFIX}gcc"


def _row(stderr: str, name: str) -> tuple[str, str]:
    """The plain-output row of check ``name`` and its fix line (empty when it passed)."""
    lines = stderr.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith(name))
    fix = lines[i + 1].strip() if i + 1 < len(lines) else ""
    return lines[i], fix if fix.startswith("fix:") else ""


def test_doctor_checks_the_compiler_cross_compile_names():
    proc = faults.inv("doctor", env={"CROSS_COMPILE": PREFIX})
    assert proc.returncode == 1, proc.stderr
    row, fix = _row(proc.stderr, "cross compiler")
    assert "MISSING" in row and f"{GCC} not found" in row
    assert "CROSS_COMPILE" in fix and DEFAULT_CROSS_COMPILE in fix
    assert "missing host prerequisites: cross compiler" in proc.stderr
    faults.assert_clean_message(proc)


@pytest.mark.skipif(not shutil.which(f"{DEFAULT_CROSS_COMPILE}gcc"),
                    reason="needs the default cross compiler")
def test_doctor_the_default_compiler_passes_where_it_is_installed():
    """The control for the test above: same check, installed compiler: ok."""
    proc = faults.inv("doctor")
    row, fix = _row(proc.stderr, "cross compiler")
    assert " ok " in row and not fix, proc.stderr


def test_setup_does_not_claim_a_missing_cross_compiler_is_present():
    """A prefix whose compiler no package provides: `inv setup --check` says what is missing
    and how to fix it, instead of "all present"."""
    proc = faults.inv("setup", "--check", env={"CROSS_COMPILE": PREFIX})
    if "would run:" in proc.stderr:      # packages missing here: setup would install them
        pytest.skip("host packages missing on this machine")
    assert proc.returncode == 1, proc.stderr
    faults.assert_clean_message(proc, "cannot install", f"{GCC} not found", "CROSS_COMPILE")


@pytest.mark.skipif(not shutil.which(f"{DEFAULT_CROSS_COMPILE}gcc"),
                    reason="needs the default cross compiler")
def test_build_refuses_to_start_without_the_compiler_cross_compile_names(tmp_path):
    s = shell_project(tmp_path, {"a": shell_recipe(script="echo x > out.txt")})
    args = ("build", "--work-dir", str(s.work_dir), "--cache-dir", str(s.cache_dir))
    env = {"ASKBUILD_PROJECT_ROOT": str(s.project_root)}
    proc = faults.inv(*args, env={**env, "CROSS_COMPILE": PREFIX})
    assert proc.returncode == 1, proc.stderr
    faults.assert_clean_message(proc, f"cross compiler {GCC} not found", "CROSS_COMPILE")
    assert not s.build_record("a").exists()
    assert not (s.staging_dir / "usr/share/t/a.txt").exists()
    # The control: the same build with the default compiler builds.
    proc = faults.inv(*args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (s.staging_dir / "usr/share/t/a.txt").read_text() == "x\n"
