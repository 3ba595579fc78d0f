"""The sources file: validation messages name file and key; lock writes are minimal diffs."""

from __future__ import annotations

import difflib
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


@pytest.mark.parametrize("body, expected", [
    ('[a]\nkind = "svn"\nurl = "https://x/y"\nref = "v1"\n', "kind must be"),
    ('[a]\nkind = "git"\nurl = "https://x/y"\nref = "v1"\nbranch = "x"\n',
     "unknown key(s) branch"),
    ('[a]\nkind = "git"\nurl = "https://x/y"\n', "missing or empty 'ref'"),
    ('[a]\nkind = "git"\nurl = "https://x/y"\nref = "v1"\ncommit = "abc"\n',
     "commit must be a full 40-hex SHA"),
    ('[a]\nkind = "tarball"\nurl = "https://x/a.tar.gz"\nref = "1"\nsha256 = "' + "0" * 64
     + '"\n', "sha256 and size are locked together"),
    ('[A]\nkind = "git"\nurl = "https://x/y"\nref = "v1"\n', "invalid source name"),
])
def test_validation_names_file_and_key(tmp_path, body, expected):
    s = project(tmp_path, body)
    with pytest.raises(ConfigError) as e:
        load_sources(s)
    assert str(s.sources_file) in str(e.value)
    assert expected in str(e.value)


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
