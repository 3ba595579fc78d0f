"""Settings as the one owner of the cross toolchain and of the commands messages print."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from askbuild.errors import ConfigError
from askbuild.settings import DEFAULT_CROSS_COMPILE, Settings

ROOT = Path(__file__).resolve().parent.parent


def _load(tmp_path, monkeypatch, config: str | None = None, **kw) -> Settings:
    monkeypatch.delenv("CROSS_COMPILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    if config is not None:
        (tmp_path / "cfg.toml").write_text(config)
        monkeypatch.setenv("ASKBUILD_CONFIG", str(tmp_path / "cfg.toml"))
    else:
        monkeypatch.delenv("ASKBUILD_CONFIG", raising=False)
    return Settings.load(project_root=ROOT, work_dir=tmp_path / "w", cache_dir=tmp_path / "c",
                         **kw)


def test_cross_compile_option_beats_environment_beats_config(tmp_path, monkeypatch):
    assert _load(tmp_path, monkeypatch).cross_compile == DEFAULT_CROSS_COMPILE
    s = _load(tmp_path, monkeypatch,
              config='cross_compile = "/opt/tc/bin/aarch64-none-linux-gnu-"\n')
    assert s.cross_compile == "/opt/tc/bin/aarch64-none-linux-gnu-"
    assert s.host_triplet == "aarch64-none-linux-gnu"
    assert s.cross_gcc == "/opt/tc/bin/aarch64-none-linux-gnu-gcc"
    assert s.multiarch == "aarch64-linux-gnu"      # Debian's, whatever the toolchain
    monkeypatch.setenv("CROSS_COMPILE", "aarch64-linux-musl-")
    monkeypatch.setenv("ASKBUILD_CONFIG", str(tmp_path / "cfg.toml"))
    s = Settings.load(project_root=ROOT, work_dir=tmp_path / "w", cache_dir=tmp_path / "c")
    assert s.host_triplet == "aarch64-linux-musl"
    s = Settings.load(project_root=ROOT, work_dir=tmp_path / "w", cache_dir=tmp_path / "c",
                      cross_compile="aarch64-unknown-linux-gnu-")
    assert s.cross_gcc == "aarch64-unknown-linux-gnu-gcc"


@pytest.mark.parametrize("bad", ["-aarch64-", "aarch64 linux-", "aarch64;rm-", "aarch64-gcc", ""])
def test_a_bad_prefix_is_named_with_where_it_came_from(tmp_path, monkeypatch, bad):
    if bad == "":
        # an empty config value is not a prefix either (an empty option means "not given")
        with pytest.raises(ConfigError, match=r"cfg.toml: cross_compile: not a cross toolchain"):
            _load(tmp_path, monkeypatch, config='cross_compile = ""\n')
        return
    with pytest.raises(ConfigError, match=r"--cross-compile: not a cross toolchain prefix"):
        _load(tmp_path, monkeypatch, cross_compile=bad)
    monkeypatch.setenv("CROSS_COMPILE", bad)
    with pytest.raises(ConfigError, match=r"^CROSS_COMPILE: not a cross toolchain prefix"):
        Settings.load(project_root=ROOT, work_dir=tmp_path / "w", cache_dir=tmp_path / "c")


def test_printed_commands_repeat_the_options_of_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CROSS_COMPILE", raising=False)
    s = Settings.load(project_root=ROOT, work_dir="my work", cache_dir="c", profile="example",
                      offline=True)
    words = shlex.split(s.command("rebase", "ask", "--continue"))
    assert words == ["inv", "rebase", "ask", "--continue", "--work-dir", str(tmp_path / "my work"),
                     "--cache-dir", str(tmp_path / "c"), "--profile", "example", "--offline"]
    assert "--offline" not in s.command("fetch", without=("--offline",))
    assert "--profile example" in s.command("fetch", without=("--offline",))
    assert s.command("setup") == "inv setup"          # verbs that take none of the options
    assert s.command("rehearse", "--mirrors", "m") == shlex.join(
        ["inv", "rehearse", "--mirrors", "m", "--cache-dir", str(tmp_path / "c")])
    plain = Settings.load(project_root=ROOT)
    assert plain.command("patch", "--source", "ask") == "inv patch --source ask"


def test_the_cli_takes_cross_compile_and_refuses_a_bad_one(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "invoke", "fetch", "--cross-compile", "x y-",
                           "--work-dir", str(tmp_path / "w"), "--cache-dir", str(tmp_path / "c")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "--cross-compile: not a cross toolchain prefix (got 'x y-')" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_printed_commands_only_carry_options_their_verb_accepts(tmp_path, monkeypatch):
    """Settings.command's idea of which verb takes which option agrees with tasks.py."""
    import inspect

    sys.path.insert(0, str(ROOT))
    import tasks
    monkeypatch.chdir(tmp_path)
    s = Settings.load(project_root=ROOT, work_dir="w", cache_dir="c", profile="example",
                      cross_compile="aarch64-linux-gnu-", offline=True, locked=True)
    flags = {"--work-dir", "--cache-dir", "--profile", "--cross-compile", "--offline",
             "--locked"}
    verbs = {**tasks.ns.tasks, **{f"{c}.{n}": t for c, coll in tasks.ns.collections.items()
                                  for n, t in coll.tasks.items()}}
    for verb, t in verbs.items():
        params = {f"--{p.replace('_', '-')}" for p in inspect.signature(t.body).parameters}
        words = set(shlex.split(s.command(verb))) & flags
        accepted = flags & params
        if verb == "rehearse":
            accepted -= {"--work-dir"}       # its own --work-dir is the rehearsal's
        assert words == accepted, verb


# -- the user's homes and the settings as values -----------------------------------------------

def test_the_user_homes_follow_the_xdg_rules(tmp_path, monkeypatch):
    """The config file and the default cache under ``$XDG_CONFIG_HOME`` / ``$XDG_CACHE_HOME``
    when absolute; a relative (or empty) one is ignored, as the XDG rules say: ``~/.config``,
    ``~/.cache``."""
    from askbuild.settings import config_files
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("ASKBUILD_CACHE_DIR", raising=False)
    monkeypatch.delenv("ASKBUILD_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert config_files(ROOT)[0] == tmp_path / "cfg" / "askbuild" / "config.toml"
    assert Settings.load(project_root=ROOT).cache_dir == tmp_path / "cache" / "askbuild"
    assert Settings().cache_dir == tmp_path / "cache" / "askbuild"
    for value in ("relative/dir", ""):
        monkeypatch.setenv("XDG_CONFIG_HOME", value)
        monkeypatch.setenv("XDG_CACHE_HOME", value)
        assert config_files(ROOT)[0] == home / ".config" / "askbuild" / "config.toml"
        assert Settings.load(project_root=ROOT).cache_dir == home / ".cache" / "askbuild"


def test_settings_compare_and_copy_by_value(tmp_path):
    a = Settings(project_root=ROOT, work_dir=tmp_path / "w", cache_dir=tmp_path / "c", jobs=3)
    b = Settings(project_root=ROOT, work_dir=tmp_path / "w", cache_dir=tmp_path / "c", jobs=3)
    assert a == b and a is not b
    c = a.replace(work_dir="rel", offline=True)
    assert c.work_dir == Path.cwd() / "rel"          # made absolute, as the constructor does
    assert (c.offline, c.jobs, c.cache_dir) == (True, 3, tmp_path / "c")
    assert c != a and a.work_dir == tmp_path / "w"  # the original unchanged
    assert "jobs=3" in repr(a)
    with pytest.raises(TypeError, match="not a setting: nope"):
        a.replace(nope=1)
    with pytest.raises(TypeError):
        hash(a)
