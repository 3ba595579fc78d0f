"""The settings of the machines beyond this one: [cache], [ccache], [registry] in askbuild.toml,
their options and environment variables, checked when loaded."""

import pytest

from askbuild.errors import ConfigError
from askbuild.settings import Settings


def _load(tmp_path, monkeypatch, toml: str = "", **kw):
    cfg = tmp_path / "askbuild.toml"
    cfg.write_text(toml)
    monkeypatch.setenv("ASKBUILD_CONFIG", str(cfg))
    for var in ("ASKBUILD_CACHE_REMOTE", "ASKBUILD_CCACHE_REMOTE"):
        monkeypatch.delenv(var, raising=False)
    return Settings.load(cache_dir=tmp_path / "c", work_dir=tmp_path / "w", **kw)


def test_config_tables_give_the_remote_settings(tmp_path, monkeypatch):
    s = _load(tmp_path, monkeypatch, '[cache]\nremote = "oci://127.0.0.1:5000/askbuild/cache"\n'
              'push = true\n[ccache]\nremote = "redis://127.0.0.1:6379"\n'
              '[registry]\ninsecure = ["reg.lan:5000"]\n')
    assert s.cache_remote == "oci://127.0.0.1:5000/askbuild/cache"
    assert s.cache_push is True
    assert s.ccache_remote == "redis://127.0.0.1:6379"
    assert s.insecure_registries == ("reg.lan:5000",)


def test_defaults_are_this_machine_only(tmp_path, monkeypatch):
    s = _load(tmp_path, monkeypatch)
    assert (s.cache_remote, s.cache_push, s.ccache_remote, s.insecure_registries) == \
        ("", False, "", ())


def test_option_beats_environment_beats_config(tmp_path, monkeypatch):
    toml = '[cache]\nremote = "oci://a.lan/x"\n'
    monkeypatch.setenv("ASKBUILD_CACHE_REMOTE", "oci://b.lan/y")
    cfg = tmp_path / "askbuild.toml"
    cfg.write_text(toml)
    monkeypatch.setenv("ASKBUILD_CONFIG", str(cfg))
    s = Settings.load(cache_dir=tmp_path / "c", work_dir=tmp_path / "w")
    assert s.cache_remote == "oci://b.lan/y"
    s = Settings.load(cache_dir=tmp_path / "c", work_dir=tmp_path / "w",
                      cache_remote="oci://c.lan/z", insecure="c.lan,d.lan:80")
    assert s.cache_remote == "oci://c.lan/z"
    assert s.insecure_registries == ("c.lan", "d.lan:80")


@pytest.mark.parametrize("toml, needle", [
    ('[cache]\nremote = "https://reg/x"\n', "cache.remote: not an OCI cache location"),
    ('[cache]\nremote = "oci://reg"\n', "cache.remote: not an OCI cache location"),
    ('[cache]\npush = "yes"\n', "cache.push: must be a bool"),
    ('[cache]\nremot = "oci://r/x"\n', "cache.remot: unknown key"),
    ('cache = "oci://r/x"\n', "cache: must be a table"),
    ('[ccache]\nremote = "ftp://r"\n', "ccache.remote: not a ccache remote storage URL"),
    ('[registry]\ninsecure = ["-x"]\n', "registry.insecure[0]: not a registry HOST[:PORT]"),
])
def test_bad_remote_config_names_file_and_key(tmp_path, monkeypatch, toml, needle):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, monkeypatch, toml)
    assert needle in e.value.message
    assert "askbuild.toml" in e.value.message


def test_bad_option_names_the_option(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="--ccache-remote"):
        _load(tmp_path, monkeypatch, ccache_remote="redis://a b")
    with pytest.raises(ConfigError, match="--insecure"):
        _load(tmp_path, monkeypatch, insecure="bad host")


def test_a_bad_ccache_url_never_shows_its_password(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, monkeypatch, ccache_remote="redis://:s3cret@host:6379 x")
    assert "s3cret" not in str(e.value) and "***" in str(e.value)
