"""URL policy, mirror rewriting and ref validation: hostile values never reach git."""

from __future__ import annotations

import pytest

from askbuild.errors import ConfigError, UnsafeInputError
from askbuild.gitutil import check_ref
from askbuild.settings import parse_mirror_env
from askbuild.sources import load_sources
from askbuild.urls import apply_mirrors, check_url


@pytest.mark.parametrize("url", [
    "https://github.com/nxp-qoriq/linux.git",
    "http://example.org/x.git",
    "git://example.org/x.git",
    "ssh://git@example.org/x.git",
    "git@github.com:nxp-qoriq/fmc.git",
    "file:///srv/mirror/x.git",
])
def test_allowed_git_urls(url):
    assert check_url(url, kind="git", what="t") == url


@pytest.mark.parametrize("url", [
    "ext::sh -c touch% /tmp/pwned",
    "fd::3",
    "EXT::sh -c id",
    "transport::whatever",
    "ftp://example.org/x.git",
    "-oProxyCommand=touch /tmp/pwned",
    "--upload-pack=touch /tmp/pwned",
    "file://relative/path",
    "https://example.org/x\n--foo",
    "https://example.org/x\t",
    "https://example.org/\x7f",
    "https://[example.org/x.git",       # urlsplit: "Invalid IPv6 URL"
    "http://example.org:port/x.git",     # not a port number
    "https://example.org:99999/x.git",   # out of range
    "",
])
def test_refused_git_urls(url):
    with pytest.raises(UnsafeInputError):
        check_url(url, kind="git", what="t")


def test_unparsable_url_in_a_sources_file_is_a_clean_error(project):
    project.add_tarball("a", "https://[x.invalid/a.tar.gz")
    with pytest.raises(UnsafeInputError) as e:
        load_sources(project.settings())
    assert "[a] url: 'https://[x.invalid/a.tar.gz' is not a valid URL" in str(e.value)


def test_tarballs_take_no_git_or_ssh_urls():
    check_url("https://www.netfilter.org/x.tar.xz", kind="tarball", what="t")
    check_url("http://www.netfilter.org/x.tar.xz", kind="tarball", what="t")
    for url in ("git://example.org/x.tar.gz", "ssh://example.org/x.tar.gz"):
        with pytest.raises(UnsafeInputError):
            check_url(url, kind="tarball", what="t")


def test_mirrors_use_the_longest_prefix():
    mirrors = {"https://github.com/": "file:///m/github/",
               "https://github.com/nxp-qoriq/": "file:///m/nxp/"}
    assert apply_mirrors("https://github.com/nxp-qoriq/linux.git", mirrors) == \
        "file:///m/nxp/linux.git"
    assert apply_mirrors("https://github.com/we-are-mono/ASK.git", mirrors) == \
        "file:///m/github/we-are-mono/ASK.git"
    assert apply_mirrors("https://www.netfilter.org/x", mirrors) == "https://www.netfilter.org/x"


def test_mirror_env_syntax():
    assert parse_mirror_env("https://a/=file:///m/a/ https://b/=http://127.0.0.1:1/b/") == {
        "https://a/": "file:///m/a/", "https://b/": "http://127.0.0.1:1/b/"}
    with pytest.raises(ConfigError):
        parse_mirror_env("no-equals-sign")


@pytest.mark.parametrize("ref", ["--upload-pack=touch /tmp/pwned", "-c", "a..b", "x y",
                                 "HEAD@{1}", "tag^{commit}", "", "refs/heads/x.lock", "/abs"])
def test_option_looking_and_malformed_refs_are_refused(ref):
    with pytest.raises(UnsafeInputError):
        check_ref(ref, what="t")


@pytest.mark.parametrize("ref", ["lf-6.18.20-2.0.0", "mt-6.12.49-2.2.0", "main", "v1.0",
                                 "release/1.x", "0123456789abcdef0123456789abcdef01234567"])
def test_normal_refs_pass(ref):
    assert check_ref(ref, what="t") == ref


def test_sources_file_with_hostile_url_or_ref_is_refused(project):
    project.add_git("bad", "ext::sh -c touch% /tmp/pwned", "v1")
    with pytest.raises(UnsafeInputError) as e:
        load_sources(project.settings())
    assert "[bad]" in str(e.value) and "ext::" in str(e.value)
    project.write_sources('[bad]\nkind = "git"\nurl = "https://example.org/x.git"\n'
                          'ref = "--upload-pack=touch /tmp/pwned"\n')
    with pytest.raises(UnsafeInputError) as e:
        load_sources(project.settings())
    assert "[bad]" in str(e.value) and "ref" in str(e.value)
