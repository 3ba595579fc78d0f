"""``inv lock``: resolving, updating and reporting pins, with real upstreams."""

from __future__ import annotations

import difflib
import hashlib

import pytest
from upstreams import release_tarball

from askbuild import fetching, gitutil
from askbuild.errors import ConfigError, OfflineError
from askbuild.locking import lock
from askbuild.sources import load_sources

HEADER = "# sources of the test project\n# (comments must survive a lock update)\n"


@pytest.fixture
def two(git_upstream, project):
    a = git_upstream("alpha")
    a.commit({"a.c": "a0\n"}, "alpha: start")
    a.release("v1", {"a.c": "a1\n"})
    b = git_upstream("beta")
    b.release("v1", {"b.c": "b1\n"})
    project.sources_file.write_text(HEADER)
    project.add_git("alpha", a.url, "v1", a.rev("v1"))
    project.add_git("beta", b.url, "v1")
    return a, b


def test_lock_resolves_only_unlocked_sources(project, two, capsys):
    a, b = two
    a.release("v2", {"a.c": "a2\n"})
    a.tag("v1", force=True)          # alpha's tag moved upstream: must be reported, not followed
    before_alpha = a.rev("v1~1")     # the locked commit (v1's old position)

    result = lock(project.settings(), [])

    src = load_sources(project.settings())
    assert src["beta"].commit == b.rev("v1") == result["beta"]
    assert src["alpha"].commit == before_alpha          # untouched
    err = capsys.readouterr().err
    assert "alpha" in err and "now points at" in err and "pin kept" in err


def test_an_annotated_tag_that_did_not_move_is_reported_unchanged(project, two, capsys):
    """``ls-remote`` lists an annotated tag as the tag object and, peeled, the commit: the
    commit is what the pin is compared with."""
    a, b = two
    assert a._git("cat-file", "-t", "refs/tags/v1") == "tag"
    lock(project.settings(), [])
    capsys.readouterr()
    lock(project.settings(), [])
    err = capsys.readouterr().err
    assert f"alpha: locked at {a.rev('v1')} = v1 (unchanged)" in err
    assert f"beta: locked at {b.rev('v1')} = v1 (unchanged)" in err
    assert "now points at" not in err


def test_update_moves_only_named_pins_and_prints_the_log(project, two, capsys):
    a, b = two
    old = a.rev("v1")
    project.add_git("gamma", a.url, "v1", old)           # same upstream, not named
    a.commit({"a.c": "fix one\n"}, "alpha: fix the first bug")
    a.commit({"a.c": "fix two\n"}, "alpha: fix the second bug")
    a.tag("v1", force=True)          # v1 follows the branch here (like a branch ref would)
    new = a.rev("v1")
    text_before = project.sources_file.read_text()

    lock(project.settings(), ["alpha"], update=True)

    src = load_sources(project.settings())
    assert src["alpha"].commit == new
    assert src["gamma"].commit == old                    # not named: never moved
    assert src["beta"].commit is None                    # not named: not even resolved
    err = capsys.readouterr().err
    assert f"alpha: {old} -> {new}" in err
    assert "alpha: fix the first bug" in err and "alpha: fix the second bug" in err
    assert "alpha: start" not in err                     # only the log between the two
    # minimal diff: exactly one line changed, comments kept
    after = project.sources_file.read_text()
    diff = [line for line in difflib.ndiff(text_before.splitlines(), after.splitlines())
            if line[:2] in ("- ", "+ ")]
    assert diff == [f'- commit = "{old}"', f'+ commit = "{new}"']
    assert after.startswith(HEADER)


def test_update_all_when_none_named(project, two):
    a, b = two
    a.release("v1-next", {"a.c": "next\n"})
    a.tag("v1", force=True)
    lock(project.settings(), [], update=True)
    src = load_sources(project.settings())
    assert src["alpha"].commit == a.rev("v1")
    assert src["beta"].commit == b.rev("v1")


def test_same_commit_under_a_new_tag_is_no_change(project, two, capsys):
    a, _ = two
    pinned = a.rev("v1")
    a.tag("v1-renamed", "v1")        # a new (annotated) tag on the same commit
    text = project.sources_file.read_text()
    project.sources_file.write_text(
        text.replace('ref = "v1"\ncommit', 'ref = "v1-renamed"\ncommit', 1))
    before = project.sources_file.read_bytes()
    assert load_sources(project.settings())["alpha"].ref == "v1-renamed"
    lock(project.settings(), ["alpha"], update=True)
    assert project.sources_file.read_bytes() == before
    assert "alpha: no change" in capsys.readouterr().err
    assert load_sources(project.settings())["alpha"].commit == pinned


def test_update_to_a_rewritten_tag_warns(project, two, capsys):
    a, _ = two
    old = a.rev("v1")
    new = a.rewrite("v1", {"other.c": "rewritten\n"})
    lock(project.settings(), ["alpha"], update=True)
    err = capsys.readouterr().err
    assert f"{old} -> {new}" in err and "does not contain the old pin" in err


def test_locked_fetch_after_lock_uses_the_recorded_commit(project, two):
    a, b = two
    lock(project.settings(), ["beta"])
    b.release("v2", {"b.c": "b2\n"})
    b.tag("v1", force=True)
    tree = fetching.fetch(project.settings(locked=True), ["beta"])["beta"]
    assert gitutil.out(["rev-parse", "HEAD"], cwd=tree) == b.rev("v1~1")


def test_lock_records_tarball_hash_and_size(project, http_server, capsys):
    data = release_tarball("libbar-2.0", {"README": "bar\n"}, compression="xz")
    url = http_server.add("libbar-2.0.tar.xz", data)
    project.add_tarball("libbar", url, ref="2.0")
    lock(project.settings(), ["libbar"])
    src = load_sources(project.settings())["libbar"]
    assert (src.sha256, src.size) == (hashlib.sha256(data).hexdigest(), len(data))
    # --update with the same bytes: no change
    lock(project.settings(), ["libbar"], update=True)
    assert "libbar: no change" in capsys.readouterr().err
    # upstream re-released different bytes: the update moves and says old -> new
    data2 = release_tarball("libbar-2.0", {"README": "bar, re-rolled\n"}, compression="xz")
    http_server.add("libbar-2.0.tar.xz", data2)
    lock(project.settings(), ["libbar"], update=True)
    assert load_sources(project.settings())["libbar"].sha256 == hashlib.sha256(data2).hexdigest()
    assert f"{src.sha256} ({len(data)} bytes) -> " in capsys.readouterr().err


def test_lock_with_locked_flag_is_refused(project, two):
    with pytest.raises(ConfigError):
        lock(project.settings(locked=True), ["beta"])


def test_lock_offline_is_refused_when_something_must_be_resolved(project, two):
    with pytest.raises(OfflineError) as e:
        lock(project.settings(offline=True), ["beta"])
    assert "beta" in str(e.value)
    lock(project.settings(offline=True), ["alpha"])      # nothing to resolve: fine


def test_unknown_source_name_is_a_config_error(project, two):
    with pytest.raises(ConfigError) as e:
        lock(project.settings(), ["nope"])
    assert "nope" in str(e.value) and "alpha" in e.value.fix
