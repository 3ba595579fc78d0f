"""Bad input and a bad environment: configuration values, options and locations.

Every case is an error message naming the option / variable / file and key at fault, with the
value and a fix, and exit status 1 through the command line; never a traceback.  Relative
locations are made absolute once, when the settings load, so build output lands where the user
meant (``--work-dir build`` from ``/home/me/x`` is ``/home/me/x/build``, whatever directory a
later step runs a command in).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from faults import assert_clean_message, inv

from askbuild import gitutil
from askbuild.errors import ConfigError, UnsafeInputError
from askbuild.settings import Settings

# -- config files --------------------------------------------------------------------------------


def load_with_config(project, text: str | bytes, monkeypatch, **kw) -> Settings:
    cfg = project.root.parent / "cfg" / "config.toml"
    cfg.parent.mkdir(exist_ok=True)
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    monkeypatch.setenv("ASKBUILD_CONFIG", str(cfg))
    return Settings.load(project_root=project.root, **kw)


@pytest.fixture
def proj(project):
    project.write_sources('[a]\nkind = "git"\nurl = "https://x.invalid/a.git"\nref = "v1"\n')
    return project


@pytest.mark.parametrize("text, expected", [
    ("cache_dir = 5\n", "cache_dir: must be a directory path string (got 5)"),
    ('work_dir = ["a"]\n', "work_dir: must be a directory path string (got an array)"),
    ('work_dir = ""\n', "work_dir: must be a directory path string (got '')"),
    ("work_dir = 1979-05-27\n", "work_dir: must be a directory path string (got 1979-05-27)"),
    ("profile = 3\n", "profile: not a profile name (got 3)"),
    ('profile = "../../etc/x"\n', "profile: not a profile name (got '../../etc/x')"),
    ("mirrors = 3\n", "mirrors: must be a table of URL prefix"),
    ('[mirrors]\n"https://x/" = 3\n', "mirrors.'https://x/': must map a URL prefix to a "
     "replacement URL string (got 3)"),
    ('[mirrors]\n"https://x/" = true\n', "(got true)"),
    ('[mirrors]\n"https://x/" = { a = "b" }\n', "(got a table)"),
    ('colour = "red"\n', "unknown key(s) colour"),
])
def test_wrong_config_values_name_file_and_key(proj, monkeypatch, text, expected):
    with pytest.raises(ConfigError) as e:
        load_with_config(proj, text, monkeypatch)
    msg = str(e.value)
    assert str(proj.root.parent / "cfg" / "config.toml") in msg
    assert expected in msg
    assert e.value.fix


def test_a_mirror_to_a_refused_scheme_is_refused_when_loading(proj, monkeypatch):
    with pytest.raises(UnsafeInputError, match=r"mirrors.'https://x/'.*ext::"):
        load_with_config(proj, '[mirrors]\n"https://x/" = "ext::sh -c touch% /tmp/x"\n',
                         monkeypatch)
    monkeypatch.delenv("ASKBUILD_CONFIG")
    monkeypatch.setenv("ASKBUILD_MIRRORS", "https://x/=fd::3")
    with pytest.raises(UnsafeInputError, match="ASKBUILD_MIRRORS: 'https://x/'"):
        Settings.load(project_root=proj.root)


@pytest.mark.parametrize("where", ["ASKBUILD_CONFIG", "project", "user"])
def test_invalid_utf8_config_names_the_file(proj, monkeypatch, where):
    bad = b'work_dir = "caf\xe9"\n'
    if where == "ASKBUILD_CONFIG":
        path = proj.root.parent / "c.toml"
        monkeypatch.setenv("ASKBUILD_CONFIG", str(path))
    elif where == "project":
        path = proj.root / "askbuild.toml"
    else:
        path = Path(os.environ["XDG_CONFIG_HOME"]) / "askbuild" / "config.toml"
        path.parent.mkdir(parents=True)
    path.write_bytes(bad)
    with pytest.raises(ConfigError) as e:
        Settings.load(project_root=proj.root)
    assert f"{path}: not valid UTF-8 (line 1" in str(e.value)


def test_askbuild_config_naming_a_directory_a_missing_file_or_a_path_under_a_file(
        proj, monkeypatch, tmp_path):
    monkeypatch.setenv("ASKBUILD_CONFIG", str(tmp_path))
    with pytest.raises(ConfigError, match=f"ASKBUILD_CONFIG: {tmp_path}: is a directory"):
        Settings.load(project_root=proj.root)
    monkeypatch.setenv("ASKBUILD_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match=f"ASKBUILD_CONFIG: {tmp_path}/nope.toml: file not "):
        Settings.load(project_root=proj.root)
    (tmp_path / "f").write_text("")
    monkeypatch.setenv("ASKBUILD_CONFIG", str(tmp_path / "f" / "config.toml"))
    with pytest.raises(ConfigError, match=f"ASKBUILD_CONFIG: {tmp_path}/f/config.toml: cannot "
                                          "read: Not a directory"):
        Settings.load(project_root=proj.root)


def test_config_file_that_cannot_be_read_even_by_root(proj, monkeypatch):
    # /proc/self/mem exists and is a regular file, yet reading it from offset 0 fails (EIO)
    monkeypatch.setenv("ASKBUILD_CONFIG", "/proc/self/mem")
    with pytest.raises(ConfigError, match="ASKBUILD_CONFIG: /proc/self/mem: cannot read: "):
        Settings.load(project_root=proj.root)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_config_file(proj, monkeypatch, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('work_dir = "w"\n')
    cfg.chmod(0)
    monkeypatch.setenv("ASKBUILD_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match="cannot read: Permission denied"):
        Settings.load(project_root=proj.root)


# -- work and cache directories ------------------------------------------------------------------

@pytest.mark.parametrize("option", ["work_dir", "cache_dir"])
def test_a_directory_option_naming_a_file_or_a_path_under_a_file(proj, tmp_path, option):
    flag = "--" + option.replace("_", "-")
    f = tmp_path / "a-file"
    f.write_text("x")
    with pytest.raises(ConfigError) as e:
        Settings.load(project_root=proj.root, **{option: str(f)})
    assert f"{flag}: {f} is a file, not a directory" in str(e.value) and e.value.fix
    with pytest.raises(ConfigError) as e:
        Settings.load(project_root=proj.root, **{option: str(f / "sub" / "dir")})
    assert f"{flag}: {f} is a file, not a directory ({f}/sub/dir would be inside it)" \
        in str(e.value)
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(ConfigError, match=f"{flag}: {link} is a dangling symbolic link"):
        Settings.load(project_root=proj.root, **{option: str(link)})


def test_env_and_config_directories_naming_a_file_name_where_they_come_from(
        proj, monkeypatch, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    monkeypatch.setenv("ASKBUILD_WORK_DIR", str(f))
    with pytest.raises(ConfigError, match=f"ASKBUILD_WORK_DIR: {f} is a file"):
        Settings.load(project_root=proj.root)
    monkeypatch.delenv("ASKBUILD_WORK_DIR")
    with pytest.raises(ConfigError, match=r"config.toml: cache_dir: .*a-file is a file"):
        load_with_config(proj, f'cache_dir = "{f}"\n', monkeypatch)


@pytest.mark.parametrize("value", ["abc", "-2", "0", "1.5", "", True, 2.0, "٣"])
def test_jobs_must_be_a_positive_whole_number(proj, value):
    if value == "":
        assert Settings.load(project_root=proj.root, jobs=value).jobs == (os.cpu_count() or 1)
        return
    with pytest.raises(ConfigError) as e:
        Settings.load(project_root=proj.root, jobs=value)
    assert str(e.value).startswith("--jobs: must be a whole number of jobs, at least 1 (got ")
    assert e.value.fix


def test_jobs_from_the_command_line_as_text(proj):
    assert Settings.load(project_root=proj.root, jobs="3").jobs == 3
    assert Settings.load(project_root=proj.root, jobs=" 4 ").jobs == 4
    assert Settings.load(project_root=proj.root, jobs=5).jobs == 5


@pytest.mark.parametrize("profile", ["../sources", "a/b", ".hidden", "-x"])
def test_profile_option_is_a_name_not_a_path(proj, profile):
    with pytest.raises(ConfigError, match=f"--profile: not a profile name \\(got '{profile}"):
        Settings.load(project_root=proj.root, profile=profile)


def test_project_root_variable_naming_no_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("ASKBUILD_PROJECT_ROOT", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="ASKBUILD_PROJECT_ROOT: .*nope is not a directory"):
        Settings.load()


# -- relative paths ------------------------------------------------------------------------------

def test_relative_locations_are_made_absolute_once(proj, monkeypatch, tmp_path):
    cwd = tmp_path / "here"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    s = Settings.load(project_root=proj.root, work_dir="out/../build", cache_dir="c")
    assert s.work_dir == cwd / "build" and s.cache_dir == cwd / "c"
    assert s.src_dir.is_absolute() and s.state_dir.is_absolute()
    monkeypatch.setenv("ASKBUILD_WORK_DIR", "w-env")
    monkeypatch.setenv("ASKBUILD_CACHE_DIR", "c-env")
    s = Settings.load(project_root=proj.root)
    assert (s.work_dir, s.cache_dir) == (cwd / "w-env", cwd / "c-env")
    monkeypatch.delenv("ASKBUILD_WORK_DIR")
    monkeypatch.delenv("ASKBUILD_CACHE_DIR")
    # config-file values are relative to the config file's directory, not to the cwd
    s = load_with_config(proj, 'work_dir = "w-cfg"\ncache_dir = "~/c-cfg"\n', monkeypatch)
    assert s.work_dir == proj.root.parent / "cfg" / "w-cfg"
    assert s.cache_dir == Path.home() / "c-cfg"
    monkeypatch.delenv("ASKBUILD_CONFIG")
    (proj.root / "askbuild.toml").write_text('work_dir = "build-here"\n')
    assert Settings.load(project_root=proj.root).work_dir == proj.root / "build-here"
    # a relative project root too; and Settings built directly
    monkeypatch.chdir(proj.root.parent)
    assert Settings.load(project_root=Path(proj.root.name)).project_root == proj.root
    direct = Settings(project_root=Path("p"), work_dir=Path("w"), cache_dir=Path("c"))
    assert direct.work_dir == proj.root.parent / "w" and direct.project_root.is_absolute()


TINY_RECIPE = """
source = "tiny"
steps = [["sh", "-c", "mkdir -p \\"$1\\" && cp hello.txt \\"$1\\"/", "sh", "{install}/share"]]
[[artifacts]]
path = "{install}/share/hello.txt"
stage = "usr/share/hello.txt"
"""


def test_relative_work_dir_on_the_command_line_puts_output_under_the_cwd(
        project, git_upstream, tmp_path):
    """`inv build --work-dir rel/build` from some directory: fetch, patch and build put
    everything under <cwd>/rel/build; the build step (run inside the component's build tree)
    gets absolute paths, so its install output is not re-rooted under that tree."""
    up = git_upstream("tiny")
    sha = up.release("v1", {"hello.txt": "hello\n"})
    project.add_git("tiny", up.url, "v1")
    (project.root / "recipes" / "components").mkdir()
    (project.root / "recipes" / "components" / "tiny.toml").write_text(TINY_RECIPE)
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    proc = inv("build", "--work-dir", "rel/build", "--cache-dir", "rel-cache", cwd=cwd,
               env={"ASKBUILD_PROJECT_ROOT": str(project.root)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    work = cwd / "rel" / "build"
    assert gitutil.out(["rev-parse", "askbuild/base^{commit}"], cwd=work / "src" / "tiny") == sha
    assert (work / "out" / "tiny" / "install" / "share" / "hello.txt").read_text() == "hello\n"
    assert (work / "staging" / "usr" / "share" / "hello.txt").read_text() == "hello\n"
    assert (cwd / "rel-cache" / "git").is_dir()
    assert str(work) in proc.stderr          # messages name the absolute place
    stray = [str(p) for p in work.rglob("rel")] + [str(p) for p in project.root.rglob("rel")]
    assert stray == []


# -- through the command line ----------------------------------------------------------------------

def test_cli_bad_config_and_bad_locations_are_one_message_exit_1(proj, tmp_path):
    env = {"ASKBUILD_PROJECT_ROOT": str(proj.root)}
    cfg = tmp_path / "bad.toml"
    cfg.write_bytes(b"cache_dir = 5\n")
    proc = inv("fetch", env={**env, "ASKBUILD_CONFIG": str(cfg)}, timeout=120)
    assert proc.returncode == 1
    assert_clean_message(proc, f"{cfg}: cache_dir: must be a directory path string (got 5)")
    proc = inv("fetch", env={**env, "ASKBUILD_CONFIG": str(tmp_path)}, timeout=120)
    assert proc.returncode == 1
    assert_clean_message(proc, f"ASKBUILD_CONFIG: {tmp_path}: is a directory")
    cfg.write_bytes(b'work_dir = "\xff"\n')
    proc = inv("fetch", env={**env, "ASKBUILD_CONFIG": str(cfg)}, timeout=120)
    assert proc.returncode == 1
    assert_clean_message(proc, f"{cfg}: not valid UTF-8")
    proc = inv("fetch", "--work-dir", str(cfg), env=env, timeout=120)
    assert proc.returncode == 1
    assert_clean_message(proc, f"--work-dir: {cfg} is a file, not a directory")
    proc = inv("fetch", "--cache-dir", str(cfg / "x"), env=env, timeout=120)
    assert proc.returncode == 1
    assert_clean_message(proc, f"--cache-dir: {cfg} is a file, not a directory")


def test_cli_lock_entry_of_the_wrong_type(project, tmp_path):
    project.add_tarball("libfoo", "https://x.invalid/libfoo-1.0.tar.gz", sha256="0" * 64,
                        size="true")
    proc = inv("fetch", "--work-dir", str(project.work), "--cache-dir", str(project.cache),
               env={"ASKBUILD_PROJECT_ROOT": str(project.root)}, timeout=120)
    assert proc.returncode == 1
    assert_clean_message(proc, f"{project.sources_file}: [libfoo] size: must be a whole number "
                               "at least 1 (got true)")


def test_cli_jobs_that_is_not_a_number(proj):
    proc = inv("build", "--jobs", "abc", env={"ASKBUILD_PROJECT_ROOT": str(proj.root)},
               timeout=120)
    assert proc.returncode == 1
    assert_clean_message(proc, "--jobs: must be a whole number of jobs, at least 1 (got 'abc')")


# -- a damaged record must not act outside its place ----------------------------------------------

def test_rebase_abort_with_a_tampered_state_touches_nothing_outside(proj, tmp_path):
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "file.txt").write_text("precious\n")
    settings = proj.settings()
    state = settings.rebase_state("a")
    backup = settings.rebase_backup("a")
    (backup / "series" / "0").mkdir(parents=True)         # an empty saved series
    (backup / "sources.toml").write_bytes(proj.sources_file.read_bytes())
    rel = os.path.relpath(victim, proj.root)
    state.write_text('{"schema": 1, "source": "a", "old_base": "x", "old_head": "y", '
                     '"queue": [], "pos": 0, '
                     f'"recovery": {{"series": {{"{rel}": "0"}}, '
                     f'"sources_file": "{proj.sources_file}"}}}}\n')
    proc = inv("rebase", "a", "--abort", "--work-dir", str(proj.work), "--cache-dir",
               str(proj.cache), env={"ASKBUILD_PROJECT_ROOT": str(proj.root)}, timeout=120)
    survived = (victim / "sub" / "file.txt").exists()
    shutil.rmtree(victim, ignore_errors=True)
    assert survived, proc.stderr
    assert proc.returncode == 1
    assert_clean_message(proc, str(state))
