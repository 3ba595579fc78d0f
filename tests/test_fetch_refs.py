"""Refs beyond the pin (issue 10, points 3 and 4): tags and branches remembered for --offline,
``inv fetch --source S --ref REF``, abbreviated commit SHAs.  Real git, file:// upstreams."""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from askbuild import fetching, gitutil, locking
from askbuild.errors import ConfigError, OfflineError, SourceError
from askbuild.sources import load_sources

REPO = Path(__file__).resolve().parent.parent
INV = Path(sys.executable).parent / "inv"


def _git(tree: Path, *args: str) -> str:
    return gitutil.out(list(args), cwd=tree)


@pytest.fixture
def upstream(git_upstream):
    """widget: v1.0, two commits, v2.0 (annotated), a branch ``next`` one commit further."""
    up = git_upstream("widget")
    up.release("v1.0", {"main.c": "int v1;\n"})
    up.commit({"main.c": "int between;\n"}, "between the releases")
    up.release("v2.0", {"main.c": "int v2;\n"})
    up._git("update-ref", "refs/heads/next", up.commit({"main.c": "int next;\n"}, "on next"))
    up._git("update-ref", "refs/heads/main", up.rev("v2.0"))      # main stays at v2.0
    return up


@pytest.fixture
def widget(project, upstream):
    """The project with widget locked at v1.0 and fetched (online)."""
    project.add_git("widget", upstream.url, "v1.0", upstream.rev("v1.0"))
    settings = project.settings()
    fetching.fetch(settings, ["widget"])
    return settings


def _source(settings):
    return load_sources(settings)["widget"]


def _base(settings) -> str:
    return _git(settings.source_tree("widget"), "rev-parse", "askbuild/base")


def _failure(fn, *args, **kw):
    with pytest.raises((SourceError, ConfigError)) as info:
        fn(*args, **kw)
    return info.value, str(info.value)


def run_inv(project, *args: str) -> subprocess.CompletedProcess:
    """The CLI as a user runs it; decoy default dirs, so advice that drops --work-dir or
    --cache-dir acts on an empty place and fails."""
    decoy = project.root.parent / "decoy"
    env = {**os.environ, "ASKBUILD_PROJECT_ROOT": str(project.root), "CI": "true",
           "ASKBUILD_WORK_DIR": str(decoy / "work"), "ASKBUILD_CACHE_DIR": str(decoy / "cache")}
    return subprocess.run([str(INV), "--search-root", str(REPO), *args], env=env,
                          capture_output=True, text=True, timeout=120)


def _opts(project) -> list[str]:
    return ["--work-dir", str(project.work), "--cache-dir", str(project.cache)]


# -- 3. refs remembered for --offline ---------------------------------------------------------

def test_offline_resolves_a_tag_and_a_branch_resolved_online_before(project, upstream, widget):
    v2, nxt = upstream.rev("v2.0"), upstream.rev("next")
    assert fetching.fetch_ref(widget, _source(widget), "v2.0") == v2
    assert fetching.fetch_ref(widget, _source(widget), "next") == nxt
    upstream.remove()
    offline = project.settings(offline=True)
    assert fetching.fetch_ref(offline, _source(offline), "v2.0") == v2
    assert fetching.fetch_ref(offline, _source(offline), "next") == nxt
    # what offline answers is complete: a work tree can check it out
    tree = offline.source_tree("widget")
    _git(tree, "checkout", "-q", "--detach", v2)
    assert (tree / "main.c").read_text() == "int v2;\n"


def test_offline_follows_what_upstream_had_on_the_last_online_contact(project, upstream,
                                                                      widget):
    fetching.fetch_ref(widget, _source(widget), "next")
    moved = upstream.commit({"main.c": "int later;\n"}, "later")    # main moves on...
    upstream._git("update-ref", "refs/heads/next", moved)          # ...and so does next
    assert fetching.fetch_ref(widget, _source(widget), "next") == moved
    upstream.remove()
    offline = project.settings(offline=True)
    assert fetching.fetch_ref(offline, _source(offline), "next") == moved


def test_offline_never_seen_ref_says_which_fetch_to_run_online(project, upstream, widget):
    offline = project.settings(offline=True)
    with pytest.raises(OfflineError) as info:
        fetching.fetch_ref(offline, _source(offline), "v2.0")
    text = str(info.value)
    cmd = shlex.join(["inv", "fetch", "--source", "widget", "--ref", "v2.0", *_opts(project)])
    assert f"`{cmd}`" in text, text                      # no --offline in the advice
    assert "v2.0" in text.split("fix:")[0]


def test_fetch_ref_brings_a_ref_without_moving_the_pin(project, upstream, widget):
    v1, v2 = upstream.rev("v1.0"), upstream.rev("v2.0")
    sources_before = project.sources_file.read_bytes()
    got = fetching.fetch(widget, ["widget"], ref="v2.0")
    assert got == {"widget": fetching.cache_repo(widget, _source(widget))}
    assert project.sources_file.read_bytes() == sources_before
    assert _base(widget) == v1
    assert _git(widget.source_tree("widget"), "rev-parse", "HEAD") == v1
    upstream.remove()
    offline = project.settings(offline=True)
    assert fetching.fetch_ref(offline, _source(offline), "v2.0") == v2
    fetching.fetch(offline, ["widget"])                  # the pin still fetches offline
    assert _base(offline) == v1


def test_a_ref_upstream_did_not_move_is_checked_by_ls_remote_not_fetched_again(
        project, upstream, widget, tmp_path, monkeypatch):
    """Once fetched, a tag (annotated: peeled) or branch that still names the same commit
    upstream costs one ``git ls-remote``, no fetch; a branch that moved is fetched; so is a
    remembered commit the cache no longer holds complete."""
    from patchfixtures import git_calls, git_logger
    src = _source(widget)
    v2 = upstream.rev("v2.0")
    assert fetching.fetch_ref(widget, src, "v2.0") == v2
    assert fetching.fetch_ref(widget, src, "next") == upstream.rev("next")
    log = git_logger(tmp_path, monkeypatch)
    assert fetching.fetch_ref(widget, src, "v2.0") == v2
    assert fetching.fetch_ref(widget, src, "next") == upstream.rev("next")
    assert git_calls(log, "fetch") == 0 and git_calls(log, "ls-remote") == 2
    moved = upstream.commit({"main.c": "int later;\n"}, "next moves on")
    upstream._git("update-ref", "refs/heads/next", moved)
    assert fetching.fetch_ref(widget, src, "next") == moved
    assert git_calls(log, "fetch") == 1
    repo = fetching.cache_repo(widget, src)
    blob = _git(repo, "rev-parse", f"{moved}:main.c")
    (repo / "objects" / blob[:2] / blob[2:]).unlink()     # the cache lost a blob of it
    assert fetching.fetch_ref(widget, src, "next") == moved
    assert git_calls(log, "fetch") > 1              # (the damaged cache is rebuilt, as ever)
    assert fetching.has_commit(repo, moved)


def test_fetch_ref_needs_exactly_one_git_source(project, upstream, widget, http_server):
    project.add_git("gadget", upstream.url, "v1.0", upstream.rev("v1.0"))
    project.add_tarball("blob", http_server.url("blob-1.0.tar.gz"))
    settings = project.settings()
    for names, needle in ((None, "named: none"), (["widget", "gadget"], "widget, gadget"),
                          (["blob"], "tarball")):
        e, text = _failure(fetching.fetch, settings, names, ref="v2.0")
        assert isinstance(e, ConfigError)
        assert "--ref v2.0 needs exactly one git source" in text and needle in text, text
        assert "inv fetch --source NAME --ref v2.0" in text, text


def test_cli_offline_advice_pasted_brings_the_ref_in(project, upstream, widget):
    """`inv rebase`'s ref resolution offline, through the CLI: the printed command works."""
    failed = run_inv(project, "fetch", "--source", "widget", "--ref", "v2.0", "--offline",
                     *_opts(project))
    assert failed.returncode == 1, failed.stderr
    assert "Traceback" not in failed.stderr
    advice = [c for c in failed.stderr.split("`")[1::2] if c.startswith("inv fetch")]
    assert advice, failed.stderr
    words = shlex.split(advice[0])
    assert "--offline" not in words and words[-4:] == _opts(project), words
    v2 = upstream.rev("v2.0")
    done = subprocess.run([str(INV), "--search-root", str(REPO), *words[1:]],
                          env={**os.environ, "ASKBUILD_PROJECT_ROOT": str(project.root),
                               "CI": "true"}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "the pin stays at" in done.stderr
    upstream.remove()
    again = run_inv(project, "fetch", "--source", "widget", "--ref", "v2.0", "--offline",
                    *_opts(project))
    assert again.returncode == 0, again.stderr
    assert v2 in again.stderr


# -- 4. abbreviated commits -------------------------------------------------------------------

def test_abbreviations_resolve_to_the_full_sha(project, upstream, widget):
    source = _source(widget)
    v2 = upstream.rev("v2.0")
    between = upstream.rev("v2.0~1")                      # an interior commit: no tag, no branch
    assert fetching.fetch_ref(widget, source, v2[:7]) == v2
    assert fetching.fetch_ref(widget, source, between[:4]) == between
    repo = fetching.cache_repo(widget, source)
    assert fetching.has_commit(repo, between) and fetching.has_commit(repo, v2)
    upstream.remove()                                    # offline: the cache answers
    offline = project.settings(offline=True)
    assert fetching.fetch_ref(offline, _source(offline), between[:6]) == between
    assert fetching.fetch_ref(offline, _source(offline), "v2.0") == v2  # every tag was seen


def test_a_tag_with_a_hex_name_wins_over_an_abbreviation(project, upstream, widget):
    v1 = upstream.rev("v1.0")
    upstream.tag("beef", "v1.0")
    assert fetching.fetch_ref(widget, _source(widget), "beef") == v1


def _colliding_commits(upstream, digits: int = 4) -> tuple[str, str, str]:
    """Two commits (tags ``probe-a``/``probe-b``, children of v1.0) sharing their first
    ``digits`` hex digits: (prefix, sha_a, sha_b)."""
    parent = upstream.rev("v1.0")
    tree = _git(upstream.bare, "rev-parse", f"{parent}^{{tree}}")
    seen: dict[str, bytes] = {}
    for i in range(1_000_000):
        body = (f"tree {tree}\nparent {parent}\nauthor P <p@x> 1704067200 +0000\n"
                f"committer P <p@x> 1704067200 +0000\n\nprobe {i}\n").encode()
        sha = hashlib.sha1(b"commit %d\0" % len(body) + body).hexdigest()
        if sha[:digits] in seen:
            shas = [gitutil.git(["hash-object", "-t", "commit", "-w", "--stdin"],
                                cwd=upstream.bare, input=b, text=False).stdout.decode().strip()
                    for b in (seen[sha[:digits]], body)]
            _git(upstream.bare, "tag", "probe-a", shas[0])
            _git(upstream.bare, "tag", "probe-b", shas[1])
            return sha[:digits], shas[0], shas[1]
        seen[sha[:digits]] = body
    raise AssertionError("no collision")


def test_ambiguous_abbreviation_lists_the_candidates(project, upstream, widget):
    prefix, a, b = _colliding_commits(upstream)
    e, text = _failure(fetching.fetch_ref, widget, _source(widget), prefix)
    assert f"abbreviated commit {prefix!r} is ambiguous" in text, text
    assert a in text and b in text and "probe-a" in text and "probe-b" in text, text
    assert "more hex digits" in text
    # offline, once both are in the cache, the cache says the same
    fetching.fetch_ref(widget, _source(widget), "probe-a")
    fetching.fetch_ref(widget, _source(widget), "probe-b")
    upstream.remove()
    offline = project.settings(offline=True)
    _, text = _failure(fetching.fetch_ref, offline, _source(offline), prefix)
    assert "ambiguous" in text and a in text and b in text, text


def test_unknown_abbreviation_says_a_full_sha_or_a_name_is_needed(project, upstream, widget):
    e, text = _failure(fetching.fetch_ref, widget, _source(widget), "0badc0d")
    assert isinstance(e, SourceError)
    assert "no tag, branch or commit matches '0badc0d'" in text, text
    assert "full 40-hex commit SHA" in text and "tag/branch name" not in text, text
    _, text = _failure(fetching.fetch_ref, widget, _source(widget), "no-such-tag")
    assert "no tag or branch 'no-such-tag'" in text and "full 40-hex commit SHA" in text, text


def test_lock_records_the_full_sha_of_an_abbreviated_ref(project, upstream):
    v2 = upstream.rev("v2.0")
    project.add_git("widget", upstream.url, v2[:7])
    settings = project.settings()
    assert locking.lock(settings, ["widget"]) == {"widget": v2}
    entry = tomllib.loads(project.sources_file.read_text())["widget"]
    assert entry["commit"] == v2 and entry["ref"] == v2, entry
    upstream.remove()                     # checking a SHA ref needs no network, warns nothing
    assert locking.lock(settings, ["widget"]) == {"widget": v2}


def test_first_fetch_of_an_unlocked_abbreviated_ref_records_the_full_sha(project, upstream):
    between = upstream.rev("v2.0~1")
    project.add_git("widget", upstream.url, between[:8])
    settings = project.settings()
    tree = fetching.fetch(settings, ["widget"])["widget"]
    assert _git(tree, "rev-parse", "HEAD") == between
    entry = tomllib.loads(project.sources_file.read_text())["widget"]
    assert entry["commit"] == between and entry["ref"] == between, entry
