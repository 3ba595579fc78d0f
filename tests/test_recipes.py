"""Recipe loading and validation: the real recipes, and a precise error for each kind of
mistake (file and key named)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from buildfixtures import REPO, make_project, settings_for
from hypothesis import given
from hypothesis import strategies as st

from askbuild import recipes
from askbuild.errors import ConfigError
from askbuild.settings import Settings

GOOD = '''
source = "ask"
inputs = ["lib"]
steps = [["make", "-C", "lib", "CC={cross}gcc"]]
[[artifacts]]
path = "lib/liba.a"
'''


def project(tmp_path: Path, files: dict[str, str]) -> Settings:
    root = Path(tempfile.mkdtemp(dir=tmp_path, prefix="proj"))
    comp = root / "recipes" / "components"
    comp.mkdir(parents=True)
    (root / "recipes" / "sources.toml").write_text("")
    for name, text in files.items():
        (comp / name).write_text(text)
    return Settings(project_root=root, work_dir=tmp_path / "work", cache_dir=tmp_path / "c")


def error_of(tmp_path: Path, files: dict[str, str]) -> str:
    s = project(tmp_path, files)
    with pytest.raises(ConfigError) as ei:
        recipes.load(s)
    return str(ei.value)


def test_real_recipes_load_and_cover_every_component():
    rs = recipes.load(Settings())
    assert set(rs.recipes) == {"libnfnetlink", "libnetfilter_conntrack", "fmlib", "fmc",
                               "libfci", "cmm", "dpa_app", "cdx", "fci", "auto_bridge",
                               "kernel"}
    order = rs.order()
    for r in rs.recipes.values():
        for d in r.depends:
            assert order.index(d) < order.index(r.name)
    assert rs.recipes["cmm"].parallel is False
    assert rs.recipes["fmlib"].uses == {"linux": ["include/uapi/linux/fmd"]}
    assert rs.recipes["kernel"].kind == "kernel"
    # One feature-flag set, used by cdx, dpa_app and cmm alike.
    for name in ("cdx", "dpa_app", "cmm"):
        assert recipes._references(rs.recipes[name].raw, "ask_features"), name
    assert rs.closure(["cmm"]) == {"cmm", "libfci", "libnetfilter_conntrack", "libnfnetlink"}
    assert rs.dependents("cdx") == {"fci"}
    assert rs.dependents("libnfnetlink") == {"libnetfilter_conntrack", "cmm"}


def test_the_build_order_is_the_same_in_every_process():
    """The order (which the build manifest records) does not follow the string hash seed:
    with it, every new process wrote another manifest, and the image, whose no-op answer
    watches the manifest, was made again after every no-op build."""
    code = ("from askbuild import recipes; from askbuild.settings import Settings; "
            "rs = recipes.load(Settings()); print(rs.order(), rs.order(['cmm']))")
    outs = {subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                           text=True, cwd=REPO, env={**os.environ, "PYTHONHASHSEED": seed}
                           ).stdout for seed in ("1", "2", "3", "4")}
    assert len(outs) == 1, outs


def test_recipe_digest_changes_only_with_the_recipe_and_used_vars():
    rs = recipes.load(Settings())
    cmm = rs.recipes["cmm"]
    d = cmm.digest(rs.vars)
    assert d == cmm.digest(dict(rs.vars))
    assert cmm.digest({**rs.vars, "ask_platform": "X"}) == d          # not used by cmm
    assert cmm.digest({**rs.vars, "ask_features": ["-DX"]}) != d      # used by cmm


def test_unknown_top_level_key(tmp_path):
    msg = error_of(tmp_path, {"a.toml": GOOD + 'colour = "red"\n'})
    assert "a.toml" in msg and "unknown key(s) colour" in msg


def test_unknown_artifact_key(tmp_path):
    msg = error_of(tmp_path, {"a.toml": GOOD.replace('path = "lib/liba.a"',
                                                     'path = "lib/liba.a"\nstagee = "x"')})
    assert "a.toml: artifacts[0]: unknown key(s) stagee" in msg


def test_kernel_keys_only_for_kernel_kind(tmp_path):
    msg = error_of(tmp_path, {"a.toml": GOOD + 'defconfig = "x"\n'})
    assert "unknown key(s) defconfig" in msg


def test_unknown_dependency(tmp_path):
    msg = error_of(tmp_path, {"a.toml": 'depends = ["nope"]\n' + GOOD})
    assert "a.toml: depends: unknown component 'nope'" in msg


def test_cycle(tmp_path):
    msg = error_of(tmp_path, {"a.toml": 'depends = ["b"]\n' + GOOD,
                              "b.toml": 'depends = ["c"]\n' + GOOD,
                              "c.toml": 'depends = ["a"]\n' + GOOD})
    assert "dependency cycle" in msg
    for n in ("a", "b", "c"):
        assert f"{n}.toml" in msg


def test_self_dependency(tmp_path):
    msg = error_of(tmp_path, {"a.toml": 'depends = ["a"]\n' + GOOD})
    assert "cannot depend on itself" in msg


def test_unknown_placeholder(tmp_path):
    msg = error_of(tmp_path, {"a.toml": GOOD.replace("{cross}gcc", "{crosss}gcc")})
    assert "a.toml: steps[0][3]: unknown placeholder {crosss}" in msg


def test_unknown_placeholder_in_env_and_artifacts(tmp_path):
    msg = error_of(tmp_path, {"a.toml": GOOD + '[env]\nCFLAGS = "{nope}"\n'})
    assert "env.CFLAGS: unknown placeholder {nope}" in msg
    msg = error_of(tmp_path, {"a.toml": GOOD.replace('path = "lib/liba.a"',
                                                     'path = "lib/liba.a"\nstage = "{x}/a"')})
    assert "artifacts[0].stage: unknown placeholder {x}" in msg


def test_dependency_placeholder_needs_the_dependency(tmp_path):
    msg = error_of(tmp_path, {"a.toml": GOOD, "b.toml": GOOD.replace("{cross}gcc",
                                                                     "{src:a}/x")})
    assert "b.toml: steps[0][3]: {src:a}: 'a' is not a dependency of b" in msg
    msg = error_of(tmp_path, {"a.toml": GOOD.replace("{cross}gcc", "{tree:linux}")})
    assert "source 'linux' is neither this recipe's source nor listed in [uses]" in msg


def test_kernel_placeholders_need_a_kernel_dependency(tmp_path):
    msg = error_of(tmp_path, {"a.toml": GOOD.replace("{cross}gcc", "{kernel_dir}")})
    assert "{kernel_dir} needs a dependency on a kind = \"kernel\" component" in msg


def test_missing_artifact_declaration(tmp_path):
    text = GOOD.split("[[artifacts]]")[0]
    msg = error_of(tmp_path, {"a.toml": text})
    assert "a.toml: no 'artifacts' declared" in msg


def test_missing_source_and_steps(tmp_path):
    assert "a.toml: source: required" in error_of(tmp_path,
                                                 {"a.toml": GOOD.replace('source = "ask"', "")})
    msg = error_of(tmp_path, {"a.toml": GOOD.replace(
        'steps = [["make", "-C", "lib", "CC={cross}gcc"]]', "")})
    assert "'steps' is required" in msg


def test_wrong_types(tmp_path):
    assert "a.toml: depends: must be a list of non-empty strings (got 'b')" in error_of(
        tmp_path, {"a.toml": 'depends = "b"\n' + GOOD})
    assert "a.toml: parallel: must be true or false (got 'no')" in error_of(
        tmp_path, {"a.toml": 'parallel = "no"\n' + GOOD})
    assert "must be a relative path" in error_of(
        tmp_path, {"a.toml": GOOD.replace('inputs = ["lib"]', 'inputs = ["../etc"]')})
    assert "mode" in error_of(tmp_path, {"a.toml": GOOD.replace(
        'path = "lib/liba.a"', 'path = "lib/liba.a"\nmode = "rwx"')})
    assert "host_libs: unknown library 'libfoo'" in error_of(
        tmp_path, {"a.toml": 'host_libs = ["libfoo"]\n' + GOOD})


KERNEL = '''
kind = "kernel"
source = "linux"
defconfig = "defconfig"
[[artifacts]]
path = "arch/arm64/boot/Image"
'''


@pytest.mark.parametrize("text, expected", [
    ('description = 5\n' + GOOD, "a.toml: description: must be a string (got 5)"),
    ('kind = 1\n' + GOOD, "a.toml: kind: must be one of make, kernel (got 1)"),
    (GOOD.replace('source = "ask"', "source = 1"), "a.toml: source: required"),
    (GOOD.replace('source = "ask"', 'source = "../x"'), "a.toml: source: required"),
    (GOOD.replace('inputs = ["lib"]', 'inputs = "lib"'),
     "a.toml: inputs: must be a list of non-empty strings (got 'lib')"),
    (GOOD.replace('inputs = ["lib"]', 'inputs = [1]'), "a.toml: inputs: must be a list"),
    (GOOD.replace('inputs = ["lib"]', 'inputs = ["-rf"]'), "a.toml: inputs: must be a relative"),
    ('uses = ["linux"]\n' + GOOD, "a.toml: uses: must be a table"),
    ('uses = { linux = "include" }\n' + GOOD, "a.toml: uses.linux: must be a list"),
    ('uses = { "../x" = ["a"] }\n' + GOOD, "a.toml: uses.../x: not a source name"),
    ('depends = ["a/b"]\n' + GOOD, "a.toml: depends: 'a/b' is not a component name"),
    ('parallel = 1\n' + GOOD, "a.toml: parallel: must be true or false (got 1)"),
    ('env = "X=1"\n' + GOOD, "a.toml: env: must be a table"),
    ('env = { X = 1 }\n' + GOOD, "a.toml: env.X: environment values are strings (got 1)"),
    ('env = { X = true }\n' + GOOD, "a.toml: env.X: environment values are strings (got true)"),
    ('env = { "A-B" = "1" }\n' + GOOD, "a.toml: env.A-B: not an environment variable name"),
    ('env = { "A\\n" = "1" }\n' + GOOD, "key with a control character"),
    (GOOD.replace('"CC={cross}gcc"', '"a\\u0000b"'), "a.toml: steps[0][3]: control characters"),
    (GOOD.replace('steps = [["make", "-C", "lib", "CC={cross}gcc"]]', 'steps = "make"'),
     "a.toml: steps: must be a list of argument lists (got 'make')"),
    (GOOD.replace('steps = [["make", "-C", "lib", "CC={cross}gcc"]]', 'steps = ["make"]'),
     "a.toml: steps[0]: must be a list of non-empty strings (got 'make')"),
    (GOOD.replace('steps = [["make", "-C", "lib", "CC={cross}gcc"]]', 'steps = [[true]]'),
     "a.toml: steps[0]: must be a list of non-empty strings (got an array)"),
    ('host_libs = "libxml2"\n' + GOOD, "a.toml: host_libs: must be a list"),
    (GOOD.split("[[artifacts]]")[0] + 'artifacts = "x"\n', "a.toml: artifacts: must be an array"),
    (GOOD.split("[[artifacts]]")[0] + 'artifacts = [1]\n', "a.toml: artifacts[0]: must be a table"),
    (GOOD.replace('path = "lib/liba.a"', "path = 1"), "a.toml: artifacts[0]: path: required"),
    (GOOD.replace('path = "lib/liba.a"', 'path = "a"\nstage = 1'),
     "a.toml: artifacts[0]: stage: must be a path inside the staging tree (got 1)"),
    (GOOD.replace('path = "lib/liba.a"', 'path = "a"\nstage = "/usr/bin/x"'),
     "a.toml: artifacts[0]: stage: must be a relative path"),
    (GOOD.replace('path = "lib/liba.a"', 'path = "a"\nmode = 493'),
     "a.toml: artifacts[0]: mode: must be an octal string like \"0755\" (got 493)"),
    (KERNEL.replace('defconfig = "defconfig"', "defconfig = true"),
     "a.toml: defconfig: required: the base configuration (a string) (got true)"),
    (KERNEL.replace('defconfig = "defconfig"', 'defconfig = "d"\nfragments = "x.config"'),
     "a.toml: fragments: must be a list"),
    (KERNEL.replace('defconfig = "defconfig"', 'defconfig = "d"\nrequire = [3]'),
     "a.toml: require: must be a list"),
    (KERNEL.replace('defconfig = "defconfig"', 'defconfig = "d"\nrequire = ["CONFIG_X\\n"]'),
     "a.toml: require[0]: control characters"),
    (KERNEL.replace('defconfig = "defconfig"', 'defconfig = "d"\nrequire = ["CONFIG_X=!"]'),
     "is not CONFIG_NAME, CONFIG_NAME=value or CONFIG_NAME=value!"),
    (KERNEL.replace('defconfig = "defconfig"', 'defconfig = "d"\ntargets = {}'),
     "a.toml: targets: must be a list"),
    (KERNEL.replace('defconfig = "defconfig"', 'defconfig = "d"\ndtbs = [""]'),
     "a.toml: dtbs: must be a list of non-empty strings"),
])
def test_every_field_is_type_checked(tmp_path, text, expected):
    msg = error_of(tmp_path, {"a.toml": text})
    assert expected in msg


def test_an_exact_kernel_requirement_loads(tmp_path):
    s = project(tmp_path, {"a.toml": KERNEL.replace(
        'defconfig = "defconfig"', 'defconfig = "d"\nrequire = ["CONFIG_NF_CONNTRACK=m!"]')})
    assert recipes.load(s).recipes["a"].require == ["CONFIG_NF_CONNTRACK=m!"]


@pytest.mark.parametrize("shared, expected", [
    ("vars = 3\n", "_shared.toml: vars: must be a table"),
    ("[vars]\nx = 3\n", "_shared.toml: vars.x: must be a list of non-empty strings (got 3)"),
    ("[vars]\nx = [1]\n", "_shared.toml: vars.x: must be a list"),
    ('[vars]\n"x\\n" = "a"\n', "key with a control character"),
    ('[vars]\nX = "a"\n', "vars.X: variable names are lower case"),
])
def test_shared_vars_are_type_checked(tmp_path, shared, expected):
    assert expected in error_of(tmp_path, {"_shared.toml": shared, "a.toml": GOOD})


@pytest.mark.parametrize("name", ["a.toml", "_shared.toml"])
def test_invalid_utf8_names_the_file(tmp_path, name):
    s = project(tmp_path, {"a.toml": GOOD})
    bad = recipes.recipes_dir(s) / name
    bad.write_bytes(b"# caf\xe9\n" + (GOOD.encode() if name == "a.toml" else b""))
    with pytest.raises(ConfigError) as ei:
        recipes.load(s)
    assert f"{bad}: not valid UTF-8 (line 1" in str(ei.value)


def test_a_directory_named_like_a_recipe_is_a_clean_error(tmp_path):
    s = project(tmp_path, {"a.toml": GOOD})
    (recipes.recipes_dir(s) / "b.toml").mkdir()
    with pytest.raises(ConfigError, match="b.toml: is a directory"):
        recipes.load(s)


def test_invalid_toml_names_the_file(tmp_path):
    msg = error_of(tmp_path, {"a.toml": "source = \n"})
    assert "a.toml: not valid TOML" in msg


def test_shared_vars(tmp_path):
    shared = '[vars]\nflags = ["-DA", "-DB"]\nprefix = "{sysroot}/x"\n'
    s = project(tmp_path, {"_shared.toml": shared,
                           "a.toml": GOOD.replace("CC={cross}gcc", "{flags}")})
    rs = recipes.load(s)
    assert rs.vars == {"flags": ["-DA", "-DB"], "prefix": "{sysroot}/x"}
    msg = error_of(tmp_path, {"_shared.toml": "[vars]\ncross = \"x\"\n", "a.toml": GOOD})
    assert "vars.cross: 'cross' is a built-in placeholder" in msg
    msg = error_of(tmp_path, {"_shared.toml": "[vars]\nx = \"{nope}\"\n", "a.toml": GOOD})
    assert "vars.x: unknown placeholder {nope}" in msg
    msg = error_of(tmp_path, {"_shared.toml": "[other]\n", "a.toml": GOOD})
    assert "_shared.toml: unknown key(s) other" in msg


def test_unknown_component_selection(tmp_path):
    rs = recipes.load(project(tmp_path, {"a.toml": GOOD}))
    with pytest.raises(ConfigError, match="unknown component"):
        rs.order(["zzz"])


def test_expand_args_per_argument_and_list_splicing():
    values = {"flags": ["-DA", "-DB"], "cross": "aarch64-linux-gnu-", "src": "/s p/ace"}
    args = recipes.expand_args(["{flags}", "CFLAGS={flags} -O2", "{cross}gcc", "{src}",
                                "{{literal}}"], values, where="t")
    assert args == ["-DA", "-DB", "CFLAGS=-DA -DB -O2", "aarch64-linux-gnu-gcc", "/s p/ace",
                    "{literal}"]


@given(st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=40))
def test_expand_leaves_text_without_placeholders_alone(text):
    assert recipes.expand(text, {}, where="t") == text
    assert recipes.expand_args([text], {}, where="t") == [text]


def test_profile_may_override_the_recipes_directory(tmp_path):
    root = make_project(tmp_path / "p")
    (root / "recipes" / "profiles" / "example" / "components").mkdir(parents=True)
    (root / "recipes" / "profiles" / "example.toml").write_text("")
    s = settings_for(tmp_path, root)
    assert recipes.recipes_dir(s) == root / "recipes" / "components"
    s.profile = "example"
    assert recipes.recipes_dir(s) == root / "recipes/profiles/example/components"
    assert REPO.is_dir()
