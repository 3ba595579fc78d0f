"""Every external program askbuild runs is installed by `inv setup` and checked by `inv doctor`.

The programs are collected from the code itself (every ``subprocess``/``procs`` call, every
``shutil.which``, every command list literal), from the recipes' steps and from the tests, so a
new call to a program that no setup package provides fails here, not on a fresh machine.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import faults
import pytest

from askbuild import hostdeps
from askbuild.settings import DEFAULT_CROSS_COMPILE, Settings

ROOT = Path(__file__).resolve().parent.parent
CALLS = {"run", "Popen", "popen", "check_output", "check_call", "call", "which",
         "_tool_version", "program_path", "_which"}
CMD_NAMES = {"cmd", "cmds", "command", "argv"}
# Not programs: the running interpreter and askbuild's own `inv` (both from the venv, not from
# a Debian package).
NOT_PROGRAMS = {"python", "python3", "inv"}


def _first_word(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
        return _first_word(node.elts[0])
    return None


def _func_name(node: ast.Call) -> str:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")


def programs_in_python(path: Path) -> dict[str, str]:
    """``{program: "file:line"}`` for every command the file runs with a literal name."""
    found: dict[str, str] = {}
    tree = ast.parse(path.read_text(), str(path))

    def add(word: str | None, node: ast.AST) -> None:
        if not word or word.startswith(("-", "/", ".", "{")) or " " in word or "=" in word:
            return
        if not all(c.isalnum() or c in "-_.+" for c in word):
            return
        found.setdefault(word, f"{path.relative_to(ROOT)}:{node.lineno}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _func_name(node) in CALLS and node.args:
            arg = node.args[0]
            if isinstance(arg, (ast.List, ast.Tuple)) or (
                    _func_name(node) in {"which", "program_path", "_which"}):
                add(_first_word(arg), node)
        elif isinstance(node, ast.Assign) and isinstance(node.value, (ast.List, ast.Tuple)):
            names = {t.id for t in node.targets if isinstance(t, ast.Name)}
            if names & CMD_NAMES:
                add(_first_word(node.value), node)
        elif isinstance(node, ast.Call) and _func_name(node) == "append" and node.args and (
                isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
                and node.func.value.id in CMD_NAMES):
            add(_first_word(node.args[0]), node)
        elif isinstance(node, ast.Return) and isinstance(node.value, (ast.List, ast.Tuple)):
            fn = next((f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
                       and node in ast.walk(f)), None)
            if fn is not None and ("cmd" in fn.name or "make" in fn.name):
                add(_first_word(node.value), node)
    return found


def programs_in_recipes() -> dict[str, str]:
    found: dict[str, str] = {}
    for f in sorted((ROOT / "recipes" / "components").glob("*.toml")):
        data = tomllib.loads(f.read_text())
        for step in data.get("steps", []):
            word = step[0].replace("{cross}", DEFAULT_CROSS_COMPILE)
            if not word.startswith(("./", "{")):
                found.setdefault(word, str(f.relative_to(ROOT)))
    return found


def all_programs() -> dict[str, str]:
    found: dict[str, str] = {}
    for d in ("askbuild", "tests"):
        for f in sorted((ROOT / d).rglob("*.py")):
            for prog, where in programs_in_python(f).items():
                found.setdefault(prog, where)
    for prog, where in programs_in_recipes().items():
        found.setdefault(prog, where)
    for prog in NOT_PROGRAMS:
        found.pop(prog, None)
    return found


def test_the_collector_sees_the_calls_it_must_see():
    found = all_programs()
    # Known calls in the code today: if the collector misses these it misses new ones too.
    for prog in ("git", "make", "depmod", "ccache", "mmdebstrap", "dpkg-query", "apt-get",
                 "update-binfmts", "mount", "dockerd"):
        assert prog in found, f"collector no longer finds {prog}"


def test_every_program_the_code_runs_is_provided_by_setup():
    missing = {p: w for p, w in all_programs().items() if p not in hostdeps.PROGRAMS}
    assert not missing, (
        "programs run by askbuild or its tests that no `inv setup` package provides "
        "(add them to askbuild.hostdeps.PROGRAMS): "
        + ", ".join(f"{p} ({w})" for p, w in sorted(missing.items())))


def _owner(path: str) -> set[str]:
    owners: set[str] = set()
    cands = {path, os.path.realpath(path)}
    for c in list(cands):
        name = Path(c).name
        cands |= {f"/bin/{name}", f"/sbin/{name}", f"/usr/bin/{name}", f"/usr/sbin/{name}"}
    for c in cands:
        proc = subprocess.run(["dpkg-query", "-S", "--", c], capture_output=True, text=True)
        if proc.returncode == 0:
            for line in proc.stdout.splitlines():
                owners |= {p.strip().split(":")[0] for p in line.split(": ", 1)[0].split(",")}
    return owners


@pytest.mark.skipif(not shutil.which("dpkg-query"), reason="needs dpkg")
def test_the_package_table_tells_the_truth():
    """After `inv setup`, each required program is on this machine and comes from the package
    the table names (so setup installs the right thing on a fresh machine)."""
    wrong = []
    for prog, (pkg, _purpose, required) in hostdeps.PROGRAMS.items():
        path = hostdeps.program_path(prog)
        if path is None:
            if required:
                wrong.append(f"{prog}: not installed (setup should have installed {pkg})")
            continue
        owners = _owner(path)
        if pkg not in owners:
            wrong.append(f"{prog}: {path} belongs to {sorted(owners) or 'no package'}, "
                         f"table says {pkg}")
    assert not wrong, "\n".join(wrong)


def test_doctor_checks_every_required_program():
    checked = " ".join(f"{c.name} {c.purpose} {' '.join(c.packages)}"
                       for c in hostdeps.checks(Settings()))
    for prog, (pkg, _purpose, required) in hostdeps.PROGRAMS.items():
        if required:
            assert prog in checked or pkg in checked, prog


def test_doctor_reports_a_missing_program_with_its_package(tmp_path):
    """A PATH without ccache: `inv doctor` fails, names ccache and the package to install."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for prog in hostdeps.PROGRAMS:
        path = shutil.which(prog)
        if path and prog != "ccache":
            os.symlink(path, bindir / prog)
    proc = faults.inv("doctor", env={"PATH": str(bindir)})
    assert proc.returncode == 1, proc.stderr
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("ccache"))
    assert "MISSING" in line and "not found: ccache" in line
    assert "apt-get install ccache" in proc.stderr
    assert "missing host prerequisites: ccache" in proc.stderr
    faults.assert_clean_message(proc)
