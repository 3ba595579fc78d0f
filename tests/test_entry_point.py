"""Issue 9 (start-up): ``askbuild VERB`` / ``python -m askbuild`` / ``./run`` take the same
command lines as ``inv`` and do the same thing, without importing Invoke for one known verb.

The fast parser (askbuild/__main__.py) is checked against Invoke's own parser: for each argv
either it gives the same verb and the same keyword arguments Invoke would call the task with,
or it declines and the argv goes to Invoke unchanged.  Which of the two happens is part of
the table, so a parser that declines everything (slow again) fails as well as one that
parses a command line differently."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from faults import inv

from askbuild import __main__ as entry

ROOT = Path(__file__).resolve().parent.parent
FAST = "fast"        # the fast path parses it, to exactly what Invoke gives
INVOKE = "invoke"    # the fast path declines: Invoke handles it


def _env(**extra: str) -> dict:
    env = dict(os.environ, CI="true", ASKBUILD_PLAIN="1")
    env.pop("ASKBUILD_DEBUG", None)
    env.update(extra)
    return env


def askbuild(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "askbuild", *args], cwd=cwd, env=env or _env(),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def verbs():
    return entry.load_tasks().VERBS


def invoke_parse(argv: list[str]) -> list[tuple[str, dict]] | None:
    """What Invoke's program (as ``inv`` runs it) would execute for ``argv``: ``[(task name,
    kwargs)]``, or None when it prints help/a list/an error instead of running a task."""
    import invoke

    class Recorder(invoke.Program):
        calls: list | None = None

        def execute(self) -> None:
            self.calls = [(ctx.name, ctx.as_kwargs) for ctx in self.tasks]

    prog = entry.program(Recorder)
    try:
        prog.run(["inv", *argv], exit=False)
    except (ValueError, SystemExit):
        return None
    return prog.calls


TABLE = [
    # (argv, expected path)
    (["fetch"], FAST),
    (["fetch", "--source", "a", "--source", "b,c", "--keep-going", "--ref", "v2"], FAST),
    (["fetch", "--source=a", "--ref=", "--offline", "--locked", "--profile=example"], FAST),
    (["fetch", "--work-dir", "w", "--cache-dir=c", "--cross-compile", "aarch64-x-", "--debug"],
     FAST),
    (["patch", "--check", "--json", "--source", "ask"], FAST),
    (["build", "--component", "cmm", "--component=fci", "--jobs", "3", "--ccache",
      "--cache-remote", "oci://h:5000/r", "--cache-push", "--ccache-remote=redis://h:1",
      "--insecure", "h:5000"], FAST),
    (["image", "--no-load"], FAST),
    (["image", "--no-load", "--tag", "t1", "--output=o.tar", "--board", "gw", "--partial",
      "--push", "reg/repo:x"], FAST),
    (["image.build", "--no-load"], FAST),
    (["image.test", "--tag", "t2"], FAST),
    (["image.push", "127.0.0.1:5000/cmm", "--tag", "t", "--archive", "a.tar", "--insecure=h"],
     FAST),
    (["rebase", "ask", "--onto", "v2", "--dry-run", "--json"], FAST),
    (["rebase", "--onto", "v2", "ask"], FAST),
    (["rebase", "ask", "--continue"], FAST),
    (["rebase", "fetch", "--abort"], FAST),          # a source named like a verb
    (["patches.edit", "patches/ask/cmm"], FAST),
    (["patches.export", "ask"], FAST),
    (["manifests", "--max-connections", "12", "--no-namespace", "--by-label", "x/y"], FAST),
    (["manifests.write", "--max-connections=7", "--check", "--dpa-configs", "d"], FAST),
    (["manifests.rehearse", "--tag", "t"], FAST),
    (["mirror", "out", "--source", "a"], FAST),
    (["all", "--tag", "x", "--no-load", "--retest", "--jobs=2"], FAST),
    (["rehearse", "--mirrors", "m", "--work-dir", "w", "--json"], FAST),
    (["lock", "--update", "--source", "ask"], FAST),
    (["setup", "--check"], FAST),
    (["doctor", "--cross-compile", "aarch64-linux-gnu-"], FAST),
    (["test", "--fast", "--pytest-args", "x y"], FAST),
    # everything else goes to Invoke as it is
    ([], INVOKE),
    (["--list"], INVOKE),
    (["-l"], INVOKE),
    (["--help"], INVOKE),
    (["--help", "fetch"], INVOKE),
    (["fetch", "--help"], INVOKE),
    (["rebase", "--help"], INVOKE),
    (["fetch", "-h"], INVOKE),
    (["fetch", "-s", "a"], INVOKE),                  # short flags
    (["fetch", "-ko"], INVOKE),
    (["test", "-k", "expr"], INVOKE),
    (["fetch", "patch"], INVOKE),                    # several verbs
    (["fetch", "--bogus"], INVOKE),                  # unknown option
    (["fetch", "--work_dir", "w"], INVOKE),          # Invoke knows only --work-dir
    (["fetch", "stray"], INVOKE),
    (["nosuchverb"], INVOKE),
    (["fetch", "--ref"], INVOKE),                    # value missing
    (["fetch", "--ref", "a", "--ref", "b"], INVOKE),  # given twice
    (["fetch", "--offline=yes"], INVOKE),
    (["fetch", "--ref", "-x"], INVOKE),              # a value that looks like an option
    (["fetch", "--", "x"], INVOKE),
    (["rebase"], INVOKE),                            # positional missing
    (["rebase", "--source", "ask"], INVOKE),         # a positional given as an option
    (["rebase", "ask", "extra"], INVOKE),
    (["manifests", "--max-connections", "many"], INVOKE),
    (["--echo", "fetch"], INVOKE),                   # core options
    (["fetch", "--echo"], INVOKE),
    (["-r", str(ROOT), "fetch"], INVOKE),
]


@pytest.mark.parametrize("argv,path", TABLE, ids=[" ".join(a) or "(none)" for a, _ in TABLE])
def test_fast_parser_agrees_with_invoke_or_declines(verbs, argv, path, capsys):
    fast = entry.parse(verbs.names(), argv)
    assert (fast is not None) == (path == FAST), f"{argv}: expected the {path} path"
    if fast is None:
        return
    spec, kwargs = fast
    assert invoke_parse(argv) == [(spec.name, kwargs)]
    capsys.readouterr()


def _every_option(verbs):
    """For every verb and option: the argv giving it as ``--opt VALUE``, ``--opt=VALUE`` (or
    the bare flag), with the positionals filled."""
    for name, spec in verbs.names().items():
        pos = [f"p-{p}" for p in spec.positional]
        yield [name, *pos]
        for opt, default in spec.parameters.items():
            if opt in spec.positional or len(opt.strip("_")) == 1:
                continue
            flag = entry._flag(opt)
            if isinstance(default, bool):
                yield [name, flag, *pos]
                continue
            value = "5" if isinstance(default, int) else f"v-{opt}"
            yield [name, *pos, flag, value]
            yield [name, f"{flag}={value}", *pos]


def test_every_option_of_every_verb_parses_as_invoke_parses_it(verbs, capsys):
    checked = 0
    for argv in _every_option(verbs):
        fast = entry.parse(verbs.names(), argv)
        assert fast is not None, argv
        spec, kwargs = fast
        assert invoke_parse(argv) == [(spec.name, kwargs)], argv
        checked += 1
    capsys.readouterr()
    assert checked > 150, checked


def test_the_verb_table_is_invokes_collection(verbs):
    """Every name the fast path knows is a task name or alias Invoke knows, and back."""
    contexts = verbs.collection().to_contexts()
    invoke_names = {n for c in contexts for n in (c.name, *c.aliases)}
    assert set(verbs.names()) == invoke_names


def test_list_and_help_are_invokes(tmp_path):
    want = inv("--list")
    assert want.returncode == 0 and "image.build (image)" in want.stdout, want.stderr
    for proc in (askbuild("--list"), askbuild("--list", cwd=tmp_path),
                 subprocess.run([str(ROOT / "run"), "--list"], capture_output=True, text=True,
                                env=_env(), timeout=600)):
        assert (proc.returncode, proc.stdout) == (0, want.stdout), proc.stderr
    for args in (["--help", "rebase"], ["rebase", "--help"], ["--help", "image.push"]):
        want, got = inv(*args), askbuild(*args)
        assert (got.returncode, got.stdout) == (0, want.stdout), args
        assert "--tag=STRING" in got.stdout or "--onto=STRING" in got.stdout


def test_a_user_error_is_the_same_message_and_exit_code(tmp_path):
    args = ["fetch", "--profile", "nosuch", "--work-dir", str(tmp_path / "w")]
    want, got = inv(*args), askbuild(*args)
    assert want.returncode == 1 and "profile 'nosuch'" in want.stderr
    assert (got.returncode, got.stdout, got.stderr) == (want.returncode, want.stdout, want.stderr)
    want, got = inv("fetch", "--bogus"), askbuild("fetch", "--bogus")
    assert want.returncode == 1 and "No idea what '--bogus' is!" in want.stderr
    assert (got.returncode, got.stderr) == (want.returncode, want.stderr)


PROBE = """
import json, sys
from askbuild.__main__ import main
main(sys.argv[1:])
heavy = ["invoke", "docker", "rich", "requests", "tomlkit", "elftools", "yaml", "tarfile"]
if sys.argv[1:2] == ["patch"]:
    heavy += ["dataclasses", "inspect", "platformdirs"]
print(json.dumps(sorted(m for m in heavy if m in sys.modules)), file=sys.stderr)
"""


def test_a_noop_fetch_imports_no_heavy_module(project, git_upstream):
    up = git_upstream("g")
    up.release("v1", {"a.c": "int a;\n"})
    project.add_git("g", up.url, "v1", up.rev("v1"))
    args = ["fetch", "--work-dir", str(project.work), "--cache-dir", str(project.cache)]
    env = _env(ASKBUILD_PROJECT_ROOT=str(project.root))
    first = askbuild(*args, env=env)
    assert first.returncode == 0, first.stderr
    assert (project.work / "src" / "g" / "a.c").read_text() == "int a;\n"
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
    assert "source g:" in proc.stdout + proc.stderr


def test_a_verbs_parameters_are_what_inspect_says(verbs):
    """The parameters read from each verb body's code object: inspect's, in order, with the
    same defaults (``inspect`` is not imported on the way to a verb)."""
    import inspect

    from askbuild.verbs import EMPTY, own_parameters
    for name, spec in verbs.names().items():
        params = list(inspect.signature(spec.body).parameters.values())[1:]
        want = {p.name: EMPTY if p.default is inspect.Parameter.empty else p.default
                for p in params}
        assert list(own_parameters(spec.body).items()) == list(want.items()), name

    def odd(c, a, b=1, *, k, m="x"):
        pass
    assert own_parameters(odd) == {"a": EMPTY, "b": 1, "k": EMPTY, "m": "x"}
    for bad in (lambda c, *args: None, lambda c, **kw: None):
        with pytest.raises(TypeError, match="no \\*args"):
            own_parameters(bad)
    with pytest.raises(TypeError, match="a plain function"):
        own_parameters(print)


def test_a_patch_run_imports_no_heavy_module_nor_inspect(tmp_path):
    """``askbuild patch`` applying a series imports none of the heavy modules, nor
    ``dataclasses`` / ``inspect`` (some 10 ms of every start: the verb table reads a verb's
    parameters from its code, the settings and reports are plain classes) nor
    ``platformdirs`` (the XDG homes are read directly)."""
    from patchfixtures import make_long_project
    project = make_long_project(tmp_path / "p", 3)
    args = ["patch", "--source", "up", "--work-dir", str(project.settings.work_dir),
            "--cache-dir", str(project.settings.cache_dir)]
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True,
                          env=_env(ASKBUILD_PROJECT_ROOT=str(project.root)), text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "summary: 3 applied" in proc.stdout + proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
