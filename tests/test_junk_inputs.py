"""Junk at every file askbuild reads: a clean AskbuildError (or success), never another exception.

For each reader, hypothesis writes the file with one of:

* random bytes, or a TOML/JSON document followed by bytes that are not UTF-8;
* a valid TOML (JSON) document whose keys are the ones the reader knows (plus some it does not)
  and whose values are of random types (strings, integers, floats, booleans, dates, arrays,
  tables);
* a valid file of the reader with a few of its values replaced by random-typed values or
  deleted (this reaches the checks behind the first ones).

The reader (and, where the data is consumed right after reading, its consumers) must then either
succeed or raise an :class:`~askbuild.errors.AskbuildError`: any other exception is a traceback
for the user.  Deeply nested documents are explicit tests at the end.

The search is derandomized and bounded (a few seconds per reader) so CI is stable.  Readers of
modules outside this test's area that still crash carry ``xfail(strict=True)`` naming the bug
and an ``@example`` that reproduces it: fixing the bug turns the mark red, then remove it.
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import pytest
import tomlkit
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from askbuild import fsutil, imaging, manifest, patchqueue, rebasing, recipes, series
from askbuild.errors import AskbuildError
from askbuild.settings import Settings
from askbuild.sources import load_sources

EXAMPLES = 60
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.filter_too_much])

# -- strategies ----------------------------------------------------------------------------------

NASTY_STRINGS = ["", " ", "..", "../../etc", "/etc/passwd", "/", "-rf", "--upload-pack=x",
                 "a" * 40, "0" * 64, "A" * 40, "ext::sh -c x", "https://x/y.git",
                 "file:///nonexistent/x", "http://[::1", "{cross}", "{nope}", "{src:zz}",
                 "{{", "}", "CONFIG_X=y", "a\nb", "a\x00b", "\u202e", "ask:x", "ask@base:../x",
                 "default", "git", "tarball", "kernel", "make", "0755", "9999"]

scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(NASTY_STRINGS),
    st.dates(),
    st.datetimes(),
)
toml_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.sampled_from(NASTY_STRINGS), inner, max_size=4),
    max_leaves=12,
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.text(max_size=20), st.sampled_from(NASTY_STRINGS))


def json_values(keys: list[str]) -> st.SearchStrategy:
    return st.recursive(
        json_scalars,
        lambda inner: st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), inner, max_size=5),
        max_leaves=16,
    )


def _paths(obj: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path (dict keys and list indexes) of a nested document."""
    out = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) \
        else []
    for k, v in items:
        out.append((*prefix, k))
        out.extend(_paths(v, (*prefix, k)))
    return out


@st.composite
def mutated(draw, base: dict, values: st.SearchStrategy = toml_values) -> dict:
    """``base`` with up to four values replaced by random values or deleted."""
    doc = copy.deepcopy(base)
    for path in draw(st.lists(st.sampled_from(_paths(base)), max_size=4, unique=True)):
        parent = doc
        try:
            for k in path[:-1]:
                parent = parent[k]
            last = path[-1]
            if isinstance(parent, dict) != isinstance(last, str):
                continue    # an earlier change replaced this array by a table or vice versa
            if isinstance(parent, dict) and draw(st.booleans()) and draw(st.booleans()):
                del parent[last]
            else:
                parent[last] = draw(values)
        except (KeyError, IndexError, TypeError):
            continue        # an earlier change removed or replaced this path
    return doc


def dump_toml(doc: dict) -> bytes:
    return tomlkit.dumps(doc).encode("utf-8")


def toml_files(base: dict, keys: list[str]) -> st.SearchStrategy:
    """File contents (bytes) for a TOML reader whose valid document looks like ``base``."""
    known = st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), toml_values, max_size=6)
    return st.one_of(
        st.binary(max_size=200),
        st.builds(lambda d, junk: dump_toml(d) + b"\n# " + junk + b"\n",
                  mutated(base), st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\x80"])),
        known.map(dump_toml),
        mutated(base).map(dump_toml),
        mutated(base).map(dump_toml),
    )


def json_files(base: dict, keys: list[str]) -> st.SearchStrategy:
    values = json_values(keys)
    return st.one_of(
        st.binary(max_size=120),
        st.builds(lambda d: json.dumps(d).encode() + b"\xff", mutated(base, values)),
        values.map(lambda v: json.dumps(v).encode()),
        mutated(base, values).map(lambda d: json.dumps(d).encode()),
        mutated(base, values).map(lambda d: json.dumps(d).encode()),
    )


@contextlib.contextmanager
def clean_failure():
    """Success, or an AskbuildError (whose message is non-empty): nothing else escapes."""
    try:
        yield
    except AskbuildError as e:
        assert str(e).strip()


# -- a fixture project ---------------------------------------------------------------------------

SHA1 = "1" * 40
SOURCES = {
    "profile": {"description": "fuzz", "publish_examples": False},
    "a": {"kind": "git", "url": "https://x.invalid/a.git", "ref": "v1", "commit": SHA1,
          "description": "a"},
    "b": {"kind": "tarball", "url": "https://x.invalid/b-1.tar.gz", "ref": "1",
          "sha256": "2" * 64, "size": 10, "strip_components": 1},
}
RECIPE = {
    "description": "a", "kind": "make", "source": "a", "inputs": ["lib"],
    "uses": {"b": ["include"]}, "depends": ["k"], "parallel": True,
    "env": {"CFLAGS": "{flags}"},
    "steps": [["make", "-C", "lib", "CC={cross}gcc", "KDIR={kernel_dir}", "{flags}"]],
    "host_libs": ["libxml2"],
    "artifacts": [{"path": "lib/liba.a", "stage": "usr/lib/liba.a", "mode": "0644"}],
}
KERNEL = {
    "kind": "kernel", "source": "a", "defconfig": "defconfig", "fragments": ["x.config"],
    "require": ["CONFIG_X=y"], "targets": ["Image"], "dtbs": ["x.dtb"],
    "steps": [["true"]], "artifacts": [{"path": "arch/arm64/boot/Image"}],
}
SHARED = {"vars": {"flags": ["-DA", "-DB"], "prefix": "{sysroot}/x"}}
LAYERS = {"a": {"vendor": [{"from": "b", "dir": "patches/{ref}", "optional": True}],
                "local": ["patches/a"]},
          "b": {"local": ["patches/b"]}}
CONFIG = {"cache_dir": "cache", "work_dir": "work", "profile": "default",
          "mirrors": {"https://x.invalid/": "file:///srv/mirror/"}}
PATCH_RECORD = {"schema": 1, "source": "a", "base": SHA1, "head": "3" * 40,
                "layers": [{"id": "patches/a", "kind": "local", "dir": "patches/a",
                            "provider": None, "start": SHA1, "end": "3" * 40}],
                "patches": [{"layer": "patches/a", "kind": "local", "file": "x.patch",
                             "strip": 1, "sha256": "4" * 64, "commits": ["3" * 40]}]}
BUILD_RECORD = {"key": "k", "artifacts": [{"file": "/nonexistent/liba.a", "size": 3,
                                           "staged": "usr/lib/liba.a", "mode": 420}],
                "staged_tree": {"from": "/nonexistent/tree", "dest": "usr/share/x"}}
MANIFEST = {"schema": 1, "status": "success", "kernel_release": "6.1.0",
            "kernel": {"release": "6.1.0"},
            "sources": {"ask": {"commit": SHA1, "ref": "v1",
                                "patches": [{"layer": "l", "file": "f", "sha256": "s"}]}},
            "patches": [{"source": "ask", "layer": "l", "file": "f"}]}
REBASE_STATE = {"schema": 1, "source": "a", "onto": "v2", "new_base": SHA1, "old_base": SHA1,
                "old_head": SHA1, "pos": 0, "queue": [], "vendor": [],
                "recovery": {"series": {}, "sources_file": "/nonexistent/sources.toml"}}
JSON_KEYS = sorted({k for d in (PATCH_RECORD, BUILD_RECORD, MANIFEST, REBASE_STATE)
                    for path in _paths(d) for k in path if isinstance(k, str)})


def make_project(base: Path) -> Settings:
    root = base / "project"
    comp = root / "recipes" / "components"
    comp.mkdir(parents=True, exist_ok=True)
    (root / "recipes" / "sources.toml").write_bytes(dump_toml(SOURCES))
    (comp / "a.toml").write_bytes(dump_toml(RECIPE))
    (comp / "k.toml").write_bytes(dump_toml(KERNEL))
    (comp / "_shared.toml").write_bytes(dump_toml(SHARED))
    (root / "recipes" / "patches.toml").write_bytes(dump_toml(LAYERS))
    img = root / "images" / "cmm"
    img.mkdir(parents=True, exist_ok=True)
    real = Path(__file__).resolve().parent.parent / "images" / "cmm"
    for f in real.iterdir():
        (img / f.name).write_bytes(f.read_bytes())
    s = Settings(project_root=root, work_dir=base / "work", cache_dir=base / "cache")
    (s.staging_dir / "lib" / "modules" / "6.1.0").mkdir(parents=True, exist_ok=True)
    s.state_dir.mkdir(parents=True, exist_ok=True)
    return s


@pytest.fixture
def proj(tmp_path) -> Settings:
    return make_project(tmp_path)


def test_the_fixture_project_is_valid(proj):
    """The bases the strategies mutate load cleanly (else the mutations test nothing)."""
    assert set(load_sources(proj)) == {"a", "b"}
    rs = recipes.load(proj)
    assert rs.order() == ["k", "a"]
    assert set(patchqueue.load_layers(proj, load_sources(proj))) == {"a", "b"}
    assert imaging.load_image_toml(proj)["repository"] == "localhost/monok8s/cmm"
    for path in (proj.state_dir / "patch-a.json", proj.work_dir / "build-manifest.json"):
        path.write_text(json.dumps(PATCH_RECORD))
        assert fsutil.read_json(path) == PATCH_RECORD


# -- TOML readers in the settings / sources / recipes area ---------------------------------------

@FUZZ
@given(data=toml_files(CONFIG, sorted(CONFIG)))
def test_config_file_junk(proj, monkeypatch, data):
    cfg = proj.project_root.parent / "config.toml"
    cfg.write_bytes(data)
    monkeypatch.setenv("ASKBUILD_CONFIG", str(cfg))
    with clean_failure():
        s = Settings.load(project_root=proj.project_root)
        assert s.work_dir.is_absolute() and s.cache_dir.is_absolute()
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in s.mirrors.items())


@FUZZ
@given(data=toml_files(SOURCES, sorted({"profile", "a", "b", *SOURCES["a"], *SOURCES["b"],
                                        "description", "publish_examples"})))
def test_sources_file_junk(proj, data):
    # publishing the example upstreams (a valid [profile] asking for it) is not this test's
    # business: it would build git repositories under the work directory
    if b"publish_examples = true" in data:
        data = data.replace(b"publish_examples = true", b"publish_examples = false")
    for profile, path in (("default", proj.sources_file),
                          ("fuzz", proj.recipes_dir / "profiles" / "fuzz.toml")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        s = Settings(project_root=proj.project_root, work_dir=proj.work_dir,
                     cache_dir=proj.cache_dir, profile=profile)
        with clean_failure():
            for src in load_sources(s).values():
                assert isinstance(src.url, str) and isinstance(src.ref, str)
                assert src.locked in (True, False) and isinstance(src.identity, str)
                assert src.size is None or (type(src.size) is int and src.size > 0)
                assert src.filename


@FUZZ
@given(recipe=toml_files(RECIPE, sorted(recipes.COMMON_KEYS)),
       kernel=toml_files(KERNEL, sorted(recipes.COMMON_KEYS | recipes.KERNEL_KEYS)),
       shared=toml_files(SHARED, ["vars", "flags", "prefix"]))
def test_recipe_files_junk(proj, recipe, kernel, shared):
    comp = proj.recipes_dir / "components"
    (comp / "a.toml").write_bytes(recipe)
    (comp / "k.toml").write_bytes(kernel)
    (comp / "_shared.toml").write_bytes(shared)
    with clean_failure():
        rs = recipes.load(proj)
        # what the build does with a loaded recipe set works on it
        for name in rs.order():
            r = rs.recipes[name]
            assert len(r.digest(rs.vars)) == 64
            for step in r.steps:
                assert all(isinstance(a, str) for a in step)


# -- TOML readers of other modules ---------------------------------------------------------------

@FUZZ
@given(data=toml_files(LAYERS, ["a", "b", "vendor", "local", "from", "dir", "optional"]))
@example(data=b"\xff")
@example(data=b"[a]\nvendor = false\n")
@example(data=b"[a]\nlocal = 3\n")
def test_patches_toml_junk(proj, data):
    sources = load_sources(proj)
    patchqueue.layers_file(proj).write_bytes(data)
    with clean_failure():
        for layers in patchqueue.load_layers(proj, sources).values():
            for ly in layers:
                assert isinstance(ly.dir, str) and ly.kind in ("vendor", "local")


IMAGE_BASE = {
    "repository": "localhost/monok8s/cmm",
    "base": {"suite": "bookworm", "sources": ["deb http://deb.debian.org/debian bookworm main"],
             "snapshot": "", "packages": ["busybox", "libc6"]},
    "layers": {"compression": "gzip"},
    "config": {"entrypoint": ["/usr/share/monok8s/cmm-entrypoint.sh"], "env": ["PATH=/bin"]},
    "labels": {"org.opencontainers.image.title": "cmm"},
    "files": {"cmm-entrypoint.sh": {"path": "/usr/share/monok8s/cmm-entrypoint.sh",
                                    "mode": "0755"},
              "fastforward": {"path": "/etc/config/fastforward", "optional": True}},
    "vendor": {"/etc/config/fastforward": "ask:config/fastforward"},
    "boards": {"gateway-dk": {"/etc/cdx_cfg.xml": "ask:config/gateway-dk/cdx_cfg.xml"}},
}


@FUZZ
@given(data=toml_files(IMAGE_BASE, sorted(IMAGE_BASE)))
@example(data=b"\xff")
@example(data=b'[base]\n[config]\n[files]\n[vendor]\n"/x" = 1\n')
@example(data=b"[base]\n[config]\n[files]\n[vendor]\n[boards]\nx = 1\n")
def test_image_toml_junk(proj, data):
    (imaging.image_inputs_dir(proj) / "image.toml").write_bytes(data)
    with clean_failure():
        conf = imaging.load_image_toml(proj)
        imaging.app_entries(proj, conf, release="6.1.0", board=None, epoch=0)


# -- series files -------------------------------------------------------------------------------

series_texts = st.one_of(
    st.binary(max_size=200),
    st.lists(st.one_of(st.sampled_from(["a.patch", "b.patch -p0", "# c", "a.patch -p1",
                                        "x.patch -p99", "-p1", "../x.patch", "/abs.patch",
                                        "series", "a.patch -R", "\r", ""]),
                       st.text(max_size=20)), max_size=8)
    .map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")),
)


@FUZZ
@given(data=series_texts)
def test_series_file_junk(tmp_path, data):
    d = tmp_path / "series-dir"
    d.mkdir(exist_ok=True)
    (d / "a.patch").write_text("x\n")
    (d / "b.patch").write_text("x\n")
    (d / series.SERIES_FILE).write_bytes(data)
    with clean_failure():
        for e in series.load(d):
            assert (d / e.name).is_file() and 0 <= e.strip <= 16
    with clean_failure():
        series.from_listing("vendor/dir", {"series": data, "a.patch": b"x", "b.patch": b"x"})


# -- JSON records --------------------------------------------------------------------------------

@FUZZ
@given(data=json_files(PATCH_RECORD, JSON_KEYS))
def test_read_json_junk(proj, data):
    path = proj.state_dir / "any.json"
    path.write_bytes(data)
    rec = fsutil.read_json(path)
    assert rec is None or isinstance(rec, dict)
    assert manifest.read(proj) is None or isinstance(manifest.read(proj), dict)


@FUZZ
@given(data=json_files(PATCH_RECORD, JSON_KEYS))
@example(data=b'{"schema": 1, "base": "' + SHA1.encode() + b'", "patches": [1]}')
@example(data=b'{"schema": 1, "base": "' + SHA1.encode() + b'", "patches": [{}]}')
@example(data=b'{"schema": 1, "base": "' + SHA1.encode() + b'", "patches": 5}')
def test_patch_record_junk(proj, data):
    proj.patch_record("a").write_bytes(data)
    with clean_failure():
        rec = patchqueue.tree_state(proj, "a")
        assert patchqueue.record.record_matches(rec, SHA1, []) in (True, False)


@FUZZ
@given(data=json_files(REBASE_STATE, JSON_KEYS))
@example(data=b"{")
@example(data=b"[]")
@example(data=b'{"source": "a", "queue": [], "recovery": 3}')
def test_rebase_state_junk(proj, data):
    proj.rebase_state("a").write_bytes(data)
    with clean_failure():
        st_ = rebasing._load_state(proj, "a")
        assert isinstance(st_, dict)
        assert isinstance(st_.get("queue"), list) and isinstance(st_.get("recovery"), dict)


@FUZZ
@given(data=json_files(BUILD_RECORD, JSON_KEYS))
def test_build_record_junk(proj, data):
    from askbuild import building
    proj.build_record("a").parent.mkdir(parents=True, exist_ok=True)
    proj.build_record("a").write_bytes(data)
    with clean_failure():
        rec = building.trusted_record(proj, "a")
        assert building.records.up_to_date(rec, "k") in (True, False)


@FUZZ
@given(data=json_files(MANIFEST, JSON_KEYS), patch_state=json_files(PATCH_RECORD, JSON_KEYS))
@example(data=b"\xff", patch_state=b"{}")
@example(data=b"{}", patch_state=b"\xff")
def test_manifest_and_patch_state_for_the_image_junk(proj, data, patch_state):
    proj.build_manifest.write_bytes(data)
    proj.patch_record("ask").write_bytes(patch_state)
    with clean_failure():
        m = imaging.read_manifest(proj)
        assert imaging.kernel_release(proj.staging_dir, m) == "6.1.0"
        assert isinstance(imaging.patch_series_hash(proj, m), str)
        assert isinstance(imaging.ask_commit(proj, m), str)
        assert isinstance(imaging.ask_version(proj, m), str)


# -- deep nesting --------------------------------------------------------------------------------

DEPTH = 2000
DEEP_TOML = ("x = " + "[" * DEPTH + "]" * DEPTH + "\n").encode()
DEEP_JSON = ("[" * 100_000 + "]" * 100_000).encode()

@pytest.mark.parametrize("target", ["config", "sources", "recipe", "shared"])
def test_deeply_nested_toml_in_my_area_is_a_clean_error(proj, monkeypatch, target):
    comp = proj.recipes_dir / "components"
    path = {"config": proj.project_root / "askbuild.toml", "sources": proj.sources_file,
            "recipe": comp / "a.toml", "shared": comp / "_shared.toml"}[target]
    path.write_bytes(DEEP_TOML)
    load = {"config": lambda: Settings.load(project_root=proj.project_root),
            "sources": lambda: load_sources(proj), "recipe": lambda: recipes.load(proj),
            "shared": lambda: recipes.load(proj)}[target]
    with pytest.raises(AskbuildError, match=str(path)):
        load()


@pytest.mark.parametrize("depth", [50, 150])
def test_moderately_nested_values_are_type_errors(proj, depth):
    """Nesting tomllib accepts reaches the validators, which refuse it by type (no recursion
    of their own that could overflow)."""
    nested = "[" * depth + '"x"' + "]" * depth
    comp = proj.recipes_dir / "components"
    (comp / "a.toml").write_text(f"steps = {nested}\n" + tomlkit.dumps(
        {k: v for k, v in RECIPE.items() if k != "steps"}))
    with pytest.raises(AskbuildError, match=r"a.toml: steps\[0\]: must be a list"):
        recipes.load(proj)
    proj.sources_file.write_text(f"[a]\nkind = 'git'\nurl = {nested}\nref = 'v1'\n")
    with pytest.raises(AskbuildError, match=r"\[a\] url: must be a non-empty string"):
        load_sources(proj)


def test_deeply_nested_json_record_is_ignored(proj):
    path = proj.state_dir / "patch-a.json"
    path.write_bytes(DEEP_JSON)
    assert fsutil.read_json(path) is None
