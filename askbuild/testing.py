"""``inv test``: prepare the host, then run pytest and judge its exit honestly.

pytest's exit 5 ("no tests collected") is a failure here, never a silent pass.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

from . import console, hostdeps
from .errors import StepFailed
from .settings import Settings


class TestsFailed(StepFailed):
    """The test suite failed or ran no test."""

    __test__ = False  # not a pytest test class


def pytest_command(*, k: str = "", fast: bool = False, extra: str = "") -> list[str]:
    cmd = [sys.executable, "-m", "pytest"]
    if k:
        cmd += ["-k", k]
    if fast:
        cmd += ["-m", "not slow"]
    if extra:
        cmd += shlex.split(extra)
    return cmd


def run_tests(settings: Settings, *, k: str = "", fast: bool = False, extra: str = "") -> None:
    hostdeps.setup(settings)
    cmd = pytest_command(k=k, fast=fast, extra=extra)
    console.step(" ".join(cmd))
    code = subprocess.run(cmd, cwd=settings.project_root).returncode
    if code == 5:
        raise TestsFailed("pytest collected no tests: that is a failure, not a pass",
                          fix="check the -k/-m selection and that tests/ is present")
    if code != 0:
        raise TestsFailed(f"the test suite failed (pytest exit {code})",
                          fix="read the failures above; rerun one with "
                              "`inv test -k NAME --debug`")
