"""The sources file: validation messages name file and key; lock writes are minimal diffs."""

from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path

import pytest

from askbuild.errors import ConfigError, UnsafeInputError
from askbuild.settings import Settings
from askbuild.sources import load_sources, select, write_lock

ROOT = Path(__file__).resolve().parent.parent


def project(tmp_path: Path, text: str) -> Settings:
    (tmp_path / "recipes").mkdir(parents=True, exist_ok=True)
    (tmp_path / "recipes" / "sources.toml").write_text(text)
    return Settings(project_root=tmp_path, work_dir=tmp_path / "w", cache_dir=tmp_path / "c")


def test_shipped_sources_file_declares_every_upstream():
    s = Settings(project_root=ROOT)
    sources = load_sources(s)
    assert list(sources) == ["ask", "linux", "fmlib", "fmc", "libnfnetlink",
                             "libnetfilter_conntrack"]
    assert sources["ask"].url == "https://github.com/we-are-mono/ASK.git"
    assert sources["ask"].ref == "mt-6.12.49-2.2.0"
    assert sources["linux"].ref == "lf-6.18.20-2.0.0"
    assert sources["fmc"].url == "https://github.com/nxp-qoriq/fmc.git"
    assert sources["libnfnetlink"].kind == "tarball"
    assert sources["libnfnetlink"].url.endswith("/libnfnetlink/files/libnfnetlink-1.0.2.tar.bz2")
    assert sources["libnetfilter_conntrack"].filename == "libnetfilter_conntrack-1.1.0.tar.xz"


GIT = '[a]\nkind = "git"\nurl = "https://x/y"\nref = "v1"\n'
TAR = '[a]\nkind = "tarball"\nurl = "https://x/a.tar.gz"\nref = "1"\n'
SHA = "0" * 64


@pytest.mark.parametrize("body, expected", [
    ('[a]\nkind = "svn"\nurl = "https://x/y"\nref = "v1"\n',
     "[a] kind: must be \"git\" or \"tarball\" (got 'svn')"),
    ('[a]\nkind = 3\nurl = "https://x/y"\nref = "v1"\n', "[a] kind: must be"),
    (GIT + 'branch = "x"\n', "[a]: unknown key(s) branch"),
    ('[a]\nkind = "git"\nurl = "https://x/y"\n', "[a] ref: missing"),
    (GIT.replace('ref = "v1"', "ref = []"), "[a] ref: must be a non-empty string (got an array)"),
    (GIT.replace('url = "https://x/y"', "url = 5"), "[a] url: must be a non-empty string (got 5)"),
    (GIT + 'commit = "abc"\n', "[a] commit: must be 40 lower-case hex digits (got 'abc')"),
    (GIT + f'commit = "{"A" * 40}"\n', "[a] commit: must be 40 lower-case hex digits"),
    (GIT + f'commit = "{"a" * 40}\\n"\n', "[a] commit: must be 40 lower-case hex digits"),
    (GIT + "commit = 7\n", "[a] commit: must be 40 lower-case hex digits (got 7)"),
    (TAR.replace('ref = "1"', 'ref = "1\\n"'), "[a] ref: control characters (newline, tab, "
     "NUL...) are not allowed (got '1\\n')"),
    (GIT + "description = 5\n", "[a] description: must be a string (got 5)"),
    (TAR + f'sha256 = "{SHA}"\n', "[a]: sha256 and size are locked together"),
    (TAR + f'sha256 = "{SHA}"\nsize = true\n', "[a] size: must be a whole number at least 1 "
     "(got true)"),
    (TAR + f'sha256 = "{SHA}"\nsize = 0\n', "[a] size: must be a whole number at least 1 (got 0)"),
    (TAR + f'sha256 = "{SHA}"\nsize = "12"\n', "[a] size: must be a whole number"),
    (TAR + f'sha256 = "{SHA}"\nsize = 1.5\n', "[a] size: must be a whole number"),
    (TAR + f'sha256 = "{SHA}\\n"\nsize = 1\n', "[a] sha256: must be 64 lower-case hex digits"),
    (TAR + 'sha256 = true\nsize = 1\n', "[a] sha256: must be 64 lower-case hex digits (got true)"),
    (TAR + "strip_components = true\n", "[a] strip_components: must be a whole number 0..16 "
     "(got true)"),
    (TAR + "strip_components = 99\n", "[a] strip_components: must be a whole number 0..16"),
    ('a = 3\n', "[a]: must be a table"),
    ('[A]\nkind = "git"\nurl = "https://x/y"\nref = "v1"\n', "[A]: invalid source name (got 'A')"),
    (GIT.replace("[a]", '["a/b"]'), "invalid source name (got 'a/b')"),
    (GIT.replace("[a]", '["a..b"]'), "invalid source name (got 'a..b')"),
    (GIT.replace("[a]", '[".a"]'), "invalid source name (got '.a')"),
    (GIT.replace("[a]", '["-a"]'), "invalid source name (got '-a')"),
    (GIT.replace("[a]", '["a\\n"]'), "invalid source name"),
    (GIT.replace("[a]", f'["{"a" * 101}"]'), "invalid source name"),
    ('[profile]\npublish_examples = "yes"\n' + GIT,
     "[profile] publish_examples: must be true or false (got 'yes')"),
    ('[profile]\ncolour = 1\n' + GIT, "[profile]: allows only description, publish_examples"),
])
def test_validation_names_file_source_and_key(tmp_path, body, expected):
    s = project(tmp_path, body)
    with pytest.raises(ConfigError) as e:
        load_sources(s)
    assert str(s.sources_file) in str(e.value)
    assert expected in str(e.value)
    assert e.value.fix or "unknown key" in str(e.value) or "locked together" in str(e.value)


def test_valid_lock_entries_load(tmp_path):
    s = project(tmp_path, GIT + f'commit = "{"a" * 40}"\n\n'
                + TAR.replace("[a]", "[b]") + f'sha256 = "{SHA}"\nsize = 1\nstrip_components = 0\n')
    src = load_sources(s)
    assert src["a"].commit == "a" * 40 and src["b"].size == 1 and src["b"].strip_components == 0


def test_invalid_utf8_sources_file_names_the_file(tmp_path):
    s = project(tmp_path, GIT)
    s.sources_file.write_bytes(b'[a]\ndescription = "caf\xe9"\n')
    with pytest.raises(ConfigError) as e:
        load_sources(s)
    assert f"{s.sources_file}: not valid UTF-8 (line 2" in str(e.value)


@pytest.mark.parametrize("url", ["ext::sh -c touch% /tmp/pwned", "fd::17", "ftp://x/y.git",
                                 "-uhttps://x", "file://relative/path"])
def test_hostile_urls_are_refused(tmp_path, url):
    s = project(tmp_path, f'[a]\nkind = "git"\nurl = "{url}"\nref = "v1"\n')
    with pytest.raises(UnsafeInputError) as e:
        load_sources(s)
    assert "[a] url" in str(e.value)


@pytest.mark.parametrize("ref", ["--upload-pack=touch /tmp/x", "a..b", "v1 x", "@{-1}"])
def test_option_looking_refs_are_refused(tmp_path, ref):
    s = project(tmp_path, f'[a]\nkind = "git"\nurl = "https://x/y.git"\nref = "{ref}"\n')
    with pytest.raises(UnsafeInputError):
        load_sources(s)


def test_select_unknown_name(tmp_path):
    s = project(tmp_path, '[a]\nkind = "git"\nurl = "https://x/y"\nref = "v1"\n')
    with pytest.raises(ConfigError) as e:
        select(load_sources(s), ["b"], s)
    assert "unknown source(s) b" in str(e.value) and "known sources: a" in str(e.value)


def test_write_lock_is_a_minimal_diff_keeping_comments(tmp_path):
    text = ("# top comment\n[a]\nkind = \"git\"  # trailing\nurl = \"https://x/y\"\n"
            "ref = \"v1\"\n\n# between\n[b]\nkind = \"tarball\"\nurl = \"https://x/b.tar.gz\"\n"
            "ref = \"1\"\n")
    s = project(tmp_path, text)
    write_lock(s, "a", commit="a" * 40)
    write_lock(s, "b", sha256="b" * 64, size=12)
    after = s.sources_file.read_text()
    added = [ln for ln in difflib.ndiff(text.splitlines(), after.splitlines())
             if ln.startswith(("+", "-"))]
    assert added == [f'+ commit = "{"a" * 40}"', f'+ sha256 = "{"b" * 64}"', "+ size = 12"]
    src = load_sources(s)
    assert src["a"].locked and src["a"].commit == "a" * 40
    assert src["b"].locked and src["b"].size == 12


@pytest.mark.parametrize("fields, expected", [
    ({"size": True, "sha256": "b" * 64}, "[b] size: must be a whole number at least 1 (got true)"),
    ({"commit": "HEAD"}, "[b] commit: must be 40 lower-case hex digits (got 'HEAD')"),
    ({"url": "ext::sh"}, "cannot set 'url'"),
])
def test_write_lock_refuses_values_the_loader_would_refuse(tmp_path, fields, expected):
    text = '[b]\nkind = "tarball"\nurl = "https://x/b.tar.gz"\nref = "1"\n'
    s = project(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        write_lock(s, "b", **fields)
    assert expected in str(e.value)
    assert s.sources_file.read_text() == text


def test_concurrent_lock_writers_lose_no_update(tmp_path):
    """Processes recording locks of different sources into one file at the same time (two
    work directories of one project): every lock is in the file afterwards."""
    names = [f"s{i}" for i in range(8)]
    s = project(tmp_path, "".join(f'[{n}]\nkind = "git"\nurl = "https://x/{n}"\nref = "v1"\n\n'
                                  for n in names))
    code = ("import sys; from pathlib import Path; from askbuild.settings import Settings; "
            "from askbuild.sources import write_lock; "
            "s = Settings(project_root=Path(sys.argv[1])); "
            "[write_lock(s, sys.argv[2], commit=c * 40) for c in '0123456789abcdef']")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), n], cwd=ROOT)
             for n in names]
    assert [p.wait(timeout=120) for p in procs] == [0] * len(names)
    src = load_sources(s)
    assert {n: src[n].commit for n in names} == {n: "f" * 40 for n in names}
