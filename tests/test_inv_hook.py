"""``inv VERB`` (Invoke's own binary) answers a no-op from its record and runs a verb as
``askbuild`` does, before Invoke is imported (askbuild/invhook.py: the ``askbuild-inv.pth``
line ``./run`` installs); another ``tasks.py`` found first, an Invoke configuration file or core
options leave the run to Invoke."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import patchfixtures as pf
import pytest
import test_noop_memo
from test_noop_memo import ASKBUILD, ROOT, _env, _memo_line, _output, _patch, _recorded, _settle

from askbuild import invhook

INV = str(Path(sys.executable).with_name("inv"))
project = test_noop_memo.project                # (the fixtures of test_noop_memo)
xdg = test_noop_memo.xdg


def _inv(project: pf.Project, env: dict, *argv: str, cwd: Path = ROOT, python: tuple = ()
         ) -> subprocess.CompletedProcess:
    """``inv patch`` (or ``inv ARGV``) on ``project``; ``python``: run the script through
    ``sys.executable`` with these interpreter options."""
    s = project.settings
    inv = [sys.executable, *python, INV] if python else [INV]
    return subprocess.run([*inv, *(argv or ("patch",)), "--work-dir", str(s.work_dir),
                           "--cache-dir", str(s.cache_dir)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _imported(proc: subprocess.CompletedProcess) -> set[str]:
    return {ln.rsplit("|", 1)[1].strip() for ln in proc.stderr.splitlines()
            if ln.startswith("import time:")}


def test_the_venv_runs_the_hook_line_and_other_programs_do_not_import_askbuild():
    pth = Path(invhook.site_dir()) / invhook.PTH
    assert pth.is_file(), f"{pth} missing: ./run installs it (python -m askbuild.invhook)"
    assert pth.read_text() == invhook.PTH_LINE
    plain = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"],
                           capture_output=True, text=True, check=True)
    assert not {m for m in _imported(plain) if m.startswith("askbuild")}
    # ./run installs askbuild as a path (setuptools' "compat" editable mode): the default
    # editable install runs an import hook at every start of the venv's Python (~25 ms)
    assert not {m for m in _imported(plain) if m.startswith("__editable__")}, \
        "the venv runs setuptools' editable finder at start-up: ./run installs in compat mode"


@pytest.mark.parametrize("options", [
    (), ("-B",), ("-O",), ("-OO",), ("-s",), ("-E",), ("-P",), ("-I",), ("-b",), ("-bb",),
    ("-d",), ("-q",), ("-v",), ("-S",), ("-X", "dev"), ("-W", "error::DeprecationWarning"),
    ("-X", "utf8"), ("-X", "importtime"), ("-B", "-X", "faulthandler", "-W", "ignore")])
def test_the_hand_over_keeps_the_interpreter_options(options):
    """What ``inv`` hands to ``python -m askbuild`` is what ``subprocess``'s own helper
    says of the interpreter's options, with or without any."""
    code = ("import subprocess, sys; from askbuild import invhook; "
            "print(invhook.interpreter_flags() == subprocess._args_from_interpreter_flags(), "
            "invhook.interpreter_flags())")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    if "-I" in options or "-E" in options:
        code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); " + code
    out = subprocess.run([sys.executable, *options, "-c", code], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split(maxsplit=1)
    assert out[0] == "True", out
    assert (out[1].strip() == "[]") == (options == ()), out


def test_inv_replays_the_record_of_askbuild_without_importing_invoke(project, xdg):
    env = _env(project, xdg)
    _patch(project, env)
    noop = _recorded(project, env)              # recorded through `askbuild patch`
    run = _inv(project, env, python=("-X", "importtime"))
    assert run.returncode == 0, run.stderr
    assert _memo_line(run).startswith("askbuild memo: replayed")
    imported = _imported(run)
    assert "askbuild.invhook" in imported
    assert not {m for m in imported if m == "invoke" or m.startswith("invoke.")}
    assert not imported & {"askbuild.cli", "askbuild.settings", "askbuild.patchqueue"}
    assert _output(_inv(project, env)) == _output(noop)


def test_inv_runs_a_verb_as_askbuild_and_records_its_noop(project, xdg):
    env = _env(project, xdg)
    first = _inv(project, env, python=("-X", "importtime"))
    assert first.returncode == 0 and "not recorded" in _memo_line(first)     # it applied
    imported = _imported(first)                    # (-X importtime reaches askbuild's process)
    assert "askbuild.patchqueue" in imported
    assert not {m for m in imported if m == "invoke" or m.startswith("invoke.")}
    for _ in range(4):
        _settle()
        noop = _inv(project, env)
        assert noop.returncode == 0, noop.stderr
        if "memo: recorded" in noop.stderr:
            break
    else:
        raise AssertionError(f"inv never recorded its no-op: {noop.stderr}")
    again = _inv(project, env)
    assert _memo_line(again).startswith("askbuild memo: replayed")
    assert _output(again) == _output(noop)
    # the record of `inv patch` is the one `askbuild patch` replays too: same command line
    assert _memo_line(_patch(project, env)).startswith("askbuild memo: replayed")
    patch = project.series_dir / "0002-near.patch"
    patch.write_text(patch.read_text().replace("\nSubject: ", "\nSubject: (edited) ", 1))
    edited = _inv(project, env)
    assert edited.returncode == 0
    assert "not replayed" in edited.stderr and "0002-near.patch" in edited.stderr
    assert "applied" in _output(edited)


def test_inv_with_core_options_is_invokes_and_not_recorded(project, xdg):
    env = _env(project, xdg)
    _patch(project, env)
    _recorded(project, env)
    s = project.settings
    run = subprocess.run([INV, "--echo", "patch", "--work-dir", str(s.work_dir), "--cache-dir",
                          str(s.cache_dir)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "memo:" not in run.stderr              # neither replayed nor recorded


def test_another_tasks_py_found_first_is_run_by_invoke(project, xdg, tmp_path):
    env = _env(project, xdg)
    other = tmp_path / "other"
    other.mkdir()
    (other / "tasks.py").write_text(
        "from invoke import task\n\n\n"
        "@task\ndef patch(c, work_dir='', cache_dir=''):\n    print('the other tasks.py')\n")
    s = project.settings
    argv = [*ASKBUILD, "patch", "--work-dir", str(s.work_dir), "--cache-dir", str(s.cache_dir)]
    for _ in range(4):           # askbuild runs this checkout's verb from there and records it
        _settle()
        mine = subprocess.run(argv, cwd=other, env=env, capture_output=True, text=True)
        assert mine.returncode == 0, mine.stderr
        if "memo: recorded" in mine.stderr:
            break
    assert "memo: replayed" in subprocess.run(argv, cwd=other, env=env,
                                              capture_output=True, text=True).stderr
    theirs = _inv(project, env, cwd=other)
    assert theirs.returncode == 0, theirs.stderr
    assert theirs.stdout == "the other tasks.py\n"
    assert "memo:" not in theirs.stderr


def test_an_invoke_config_file_leaves_the_run_to_invoke(project, xdg, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = _env(project, xdg, HOME=str(home))
    _patch(project, env)
    _recorded(project, env)
    assert _memo_line(_inv(project, env)).startswith("askbuild memo: replayed")
    (home / ".invoke.yaml").write_text("run:\n  echo: true\n")
    run = _inv(project, env)
    assert run.returncode == 0, run.stderr
    assert "memo: replayed" not in run.stderr and "memo: recorded" not in run.stderr


def test_list_through_inv_is_replayed_and_a_closed_pipe_ends_it(tmp_path):
    env = dict(os.environ, ASKBUILD_MEMO_DEBUG="1", XDG_CACHE_HOME=str(tmp_path / "xdg"))
    env.pop("ASKBUILD_NO_MEMO", None)
    plain = subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(ROOT),
                            "--list"], cwd=ROOT, capture_output=True, text=True)
    for _ in range(4):
        _settle()
        if "memo: recorded" in subprocess.run([*ASKBUILD, "--list"], cwd=ROOT, env=env,
                                              capture_output=True, text=True).stderr:
            break
    listed = subprocess.run([INV, "--list"], cwd=ROOT / "askbuild", env=env,
                            capture_output=True, text=True)
    assert listed.returncode == 0 and listed.stdout == plain.stdout
    assert "memo: replayed" not in listed.stderr      # another working directory: another key
    listed = subprocess.run([INV, "--list"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert listed.returncode == 0 and listed.stdout == plain.stdout
    assert "memo: replayed" in listed.stderr
    r, w = os.pipe()
    os.close(r)                                        # nobody reads: a write fails at once
    closed = subprocess.run([INV, "--list"], cwd=ROOT, env=env, stdout=w, stderr=subprocess.PIPE,
                            text=True)
    os.close(w)
    assert closed.returncode == 1
    assert "memo: replayed" in closed.stderr and closed.stderr.rstrip().endswith("Broken pipe")
    assert "Traceback" not in closed.stderr


@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "unbuffered"])
def test_a_closed_pipe_ends_what_invoke_answers_without_a_traceback(tmp_path, unbuffered):
    """Buffered (stdout is a pipe: the listing is written at the end) or not."""
    env = dict(os.environ, ASKBUILD_NO_MEMO="1", XDG_CACHE_HOME=str(tmp_path / "xdg"),
               PYTHONUNBUFFERED=unbuffered)
    if not unbuffered:
        env.pop("PYTHONUNBUFFERED")
    for argv in (["--list"], ["patch", "--help"]):
        r, w = os.pipe()
        os.close(r)                                    # nobody reads: a write fails at once
        closed = subprocess.run([*ASKBUILD, *argv], cwd=ROOT, env=env, stdout=w,
                                stderr=subprocess.PIPE, text=True)
        os.close(w)
        assert closed.returncode == 1, argv
        assert closed.stderr == "askbuild: Broken pipe\n", argv


def test_what_askbuild_does_not_parse_is_answered_by_invoke(project, xdg):
    env = _env(project, xdg)
    plain = [sys.executable, "-m", "invoke", "--search-root", str(ROOT)]
    for argv in (["patch", "--no-such-option"], ["patch", "--help"], ["no-such-verb"],
                 ["--list"]):
        ours = subprocess.run([INV, *argv], cwd=ROOT, env=env, capture_output=True, text=True)
        theirs = subprocess.run([*plain, *argv], cwd=ROOT, env={**env, "ASKBUILD_NO_MEMO": "1"},
                                capture_output=True, text=True)
        assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout), argv
        assert _output(ours) == _output(theirs), argv


def test_a_failed_hand_over_returns_so_invoke_runs_the_command_line(monkeypatch, tmp_path):
    """When ``exec`` of ``python -m askbuild`` fails (here: the interpreter cannot be run),
    the hook returns from start-up and Invoke's own program runs the command line."""
    monkeypatch.setattr(sys, "argv", [INV, "fetch", "--work-dir", str(tmp_path / "w")])
    argv = sys.argv[1:]
    monkeypatch.setattr(invhook, "_done", False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))      # no record to replay
    monkeypatch.chdir(ROOT)
    tried = []

    def execv(path, args):
        tried.append((path, args))
        raise OSError(8, "Exec format error")

    monkeypatch.setattr(os, "execv", execv)
    assert invhook.invoke_runs_this_checkout()
    assert invhook.main() is None
    (path, args), = tried
    assert path == args[0] == sys.executable
    assert args[-len(argv) - 3:] == ["-P", "-m", "askbuild", *argv]
