"""Fetching git sources: real repositories served as file:// URLs, no mocks."""

from __future__ import annotations

import pytest

from askbuild import fetching, gitutil, refs
from askbuild.errors import (
    DirtyTreeError,
    NetworkError,
    OfflineError,
    SourceError,
    UnlockedSourceError,
    UnsafeInputError,
    VerificationError,
)
from askbuild.sources import load_sources


def _git(tree, *args):
    return gitutil.out(list(args), cwd=tree)


@pytest.fixture
def upstream(git_upstream):
    up = git_upstream("widget")
    up.commit({"README": "widget\n"}, "initial")
    up.release("v1.0", {"src/main.c": "int main(void) { return 0; }\n"})
    return up


def test_fetch_checks_out_the_locked_commit_shallow(project, upstream):
    sha = upstream.rev("v1.0")
    project.add_git("widget", upstream.url, "v1.0", sha)
    s = project.settings()

    trees = fetching.fetch(s, ["widget"])

    tree = trees["widget"]
    assert tree == s.src_dir / "widget"
    assert (tree / "src" / "main.c").read_text().startswith("int main")
    assert _git(tree, "rev-parse", "HEAD") == sha
    assert _git(tree, "rev-parse", "askbuild/base^{commit}") == sha
    assert _git(tree, "status", "--porcelain") == ""
    cache = fetching.cache_repo(s, load_sources(s)["widget"])
    assert fetching.has_commit(cache, sha)
    # Only the pinned commit was fetched (depth 1): its parent is not in the cache.
    assert not fetching.has_commit(cache, upstream.rev("v1.0~1"))
    # The work tree borrows the cache's objects instead of copying them.
    assert (tree / ".git/objects/info/alternates").read_text().strip() == str(cache / "objects")


def test_refetch_of_same_pin_uses_no_network(project, upstream):
    sha = upstream.rev("v1.0")
    project.add_git("widget", upstream.url, "v1.0", sha)
    s = project.settings()
    fetching.fetch(s, ["widget"])

    upstream.remove()            # any network access would now fail
    fetching.fetch(s, ["widget"])

    # Even a lost work tree is rebuilt from the cache alone.
    import shutil
    shutil.rmtree(s.src_dir / "widget")
    tree = fetching.fetch(s, ["widget"])["widget"]
    assert _git(tree, "rev-parse", "HEAD") == sha


def test_unlocked_source_is_resolved_and_recorded(project, upstream, capsys):
    project.write_sources(f"""
        # my comment survives
        [widget]
        kind = "git"
        url = "{upstream.url}"
        ref = "v1.0"   # trailing comment
    """)
    s = project.settings()

    tree = fetching.fetch(s, [])["widget"]

    sha = upstream.rev("v1.0")      # the annotated tag, peeled to its commit
    assert _git(tree, "rev-parse", "HEAD") == sha
    assert load_sources(s)["widget"].commit == sha
    text = project.sources_file.read_text()
    assert "# my comment survives" in text and "# trailing comment" in text
    err = capsys.readouterr().err
    assert "not locked" in err and sha in err and "recorded" in err


def test_locked_mode_refuses_an_unlocked_source(project, upstream):
    project.add_git("widget", upstream.url, "v1.0")
    s = project.settings(locked=True)
    with pytest.raises(UnlockedSourceError) as e:
        fetching.fetch(s, ["widget"])
    assert "widget" in str(e.value) and "inv lock" in str(e.value)
    assert "commit" not in project.sources_file.read_text()
    assert not (s.src_dir / "widget").exists()


def test_pin_bump_moves_the_base_and_keeps_branches(project, upstream):
    v1 = upstream.rev("v1.0")
    project.add_git("widget", upstream.url, "v1.0", v1)
    s = project.settings()
    tree = fetching.fetch(s, ["widget"])["widget"]
    # the patch step's branch on top of the base
    _git(tree, "checkout", "-q", "-b", "askbuild/patched")
    (tree / "patched.txt").write_text("local\n")
    _git(tree, "add", "patched.txt")
    gitutil.git(["commit", "-q", "-m", "patch"], cwd=tree, env=gitutil.FIXED_IDENTITY)
    patched = _git(tree, "rev-parse", "HEAD")

    # Same pin: nothing is disturbed (HEAD stays on the patched branch).
    fetching.fetch(s, ["widget"])
    assert _git(tree, "rev-parse", "HEAD") == patched
    assert _git(tree, "symbolic-ref", "HEAD") == "refs/heads/askbuild/patched"

    v2 = upstream.release("v2.0", {"src/main.c": "int main(void) { return 2; }\n"})
    project.sources_file.write_text(project.sources_file.read_text().replace(v1, v2))
    fetching.fetch(s, ["widget"])
    assert _git(tree, "rev-parse", "HEAD") == v2
    assert _git(tree, "rev-parse", "askbuild/base^{commit}") == v2
    assert "return 2" in (tree / "src/main.c").read_text()
    assert _git(tree, "rev-parse", "askbuild/patched") == patched   # nothing lost
    cache = fetching.cache_repo(s, load_sources(s)["widget"])
    # The bump fetched the new commit only, not the older history.
    assert not fetching.has_commit(cache, upstream.rev("v1.0~1"))


def test_base_move_on_a_dirty_tree_is_refused(project, upstream):
    v1 = upstream.rev("v1.0")
    project.add_git("widget", upstream.url, "v1.0", v1)
    s = project.settings()
    tree = fetching.fetch(s, ["widget"])["widget"]
    (tree / "src/main.c").write_text("my precious edit\n")
    v2 = upstream.release("v2.0", {"other.c": "x\n"})
    project.sources_file.write_text(project.sources_file.read_text().replace(v1, v2))

    with pytest.raises(DirtyTreeError) as e:
        fetching.fetch(s, ["widget"])
    msg = str(e.value)
    assert str(tree) in msg and "src/main.c" in msg and "git -C" in msg and "stash" in msg
    assert (tree / "src/main.c").read_text() == "my precious edit\n"
    assert _git(tree, "rev-parse", "HEAD") == v1


def test_tag_moved_upstream_is_refused_not_followed(project, upstream):
    v1 = upstream.rev("v1.0")
    project.add_git("widget", upstream.url, "v1.0", v1)
    moved = upstream.rewrite("v1.0", {"evil.c": "replaced\n"})   # v1 commit is gone
    s = project.settings()

    with pytest.raises(VerificationError) as e:
        fetching.fetch(s, ["widget"])
    msg = str(e.value)
    assert v1 in msg and moved in msg and "moved" in msg and "inv lock --update" in msg
    assert not (s.src_dir / "widget").exists()
    assert load_sources(s)["widget"].commit == v1


def test_moved_tag_with_old_commit_still_upstream_fetches_the_lock(project, upstream):
    v1 = upstream.rev("v1.0")
    project.add_git("widget", upstream.url, "v1.0", v1)
    upstream.commit({"later.c": "later\n"}, "later work")
    moved = upstream.tag("v1.0", force=True)
    assert moved != v1
    s = project.settings()
    tree = fetching.fetch(s, ["widget"])["widget"]
    assert _git(tree, "rev-parse", "HEAD") == v1
    assert not (tree / "later.c").exists()


def test_offline_without_cache_names_the_source(project, upstream):
    project.add_git("widget", upstream.url, "v1.0", upstream.rev("v1.0"))
    s = project.settings(offline=True)
    with pytest.raises(OfflineError) as e:
        fetching.fetch(s, ["widget"])
    assert "widget" in str(e.value) and "--offline" in str(e.value)
    assert "inv fetch" in e.value.fix


def test_offline_with_cache_works(project, upstream):
    sha = upstream.rev("v1.0")
    project.add_git("widget", upstream.url, "v1.0", sha)
    fetching.fetch(project.settings(), ["widget"])
    upstream.remove()
    import shutil
    shutil.rmtree(project.work)
    tree = fetching.fetch(project.settings(offline=True), ["widget"])["widget"]
    assert _git(tree, "rev-parse", "HEAD") == sha


def test_offline_cannot_resolve_an_unlocked_source(project, upstream):
    project.add_git("widget", upstream.url, "v1.0")
    with pytest.raises(OfflineError) as e:
        fetching.fetch(project.settings(offline=True), ["widget"])
    assert "widget" in str(e.value)


def test_unreachable_upstream_is_a_network_error_with_fixes(project, tmp_path):
    url = f"file://{tmp_path}/nowhere/widget.git"
    project.add_git("widget", url, "v1.0", "1" * 40)
    with pytest.raises(NetworkError) as e:
        fetching.fetch(project.settings(), ["widget"])
    msg = str(e.value)
    assert "widget" in msg and url in msg
    assert "ASKBUILD_MIRRORS" in msg and "--offline" in msg and "--profile example" in msg


def test_mirror_from_environment(project, upstream, monkeypatch):
    sha = upstream.rev("v1.0")
    project.add_git("widget", "https://git.example.invalid/widget.git", "v1.0", sha)
    monkeypatch.setenv("ASKBUILD_MIRRORS",
                       f"https://git.example.invalid/=file://{upstream.bare.parent}/")
    tree = fetching.fetch(project.settings(), ["widget"])["widget"]
    assert _git(tree, "rev-parse", "HEAD") == sha


def test_mirror_from_config_file(project, upstream):
    sha = upstream.rev("v1.0")
    project.add_git("widget", "https://git.example.invalid/widget.git", "v1.0", sha)
    (project.root / "askbuild.toml").write_text(
        f'[mirrors]\n"https://git.example.invalid/" = "file://{upstream.bare.parent}/"\n')
    tree = fetching.fetch(project.settings(), ["widget"])["widget"]
    assert _git(tree, "rev-parse", "HEAD") == sha


def test_mirror_must_still_match_the_lock(project, upstream, git_upstream, monkeypatch):
    sha = upstream.rev("v1.0")
    impostor = git_upstream("impostor")
    impostor.release("v1.0", {"src/main.c": "evil\n"})
    project.add_git("widget", "https://git.example.invalid/widget.git", "v1.0", sha)
    monkeypatch.setenv("ASKBUILD_MIRRORS",
                       f"https://git.example.invalid/widget.git={impostor.url}")
    with pytest.raises(VerificationError) as e:
        fetching.fetch(project.settings(), ["widget"])
    assert sha in str(e.value) and impostor.url in str(e.value)
    assert not (project.work / "src" / "widget").exists()


def test_mirror_to_a_remote_helper_is_refused(project, upstream, monkeypatch, tmp_path):
    project.add_git("widget", "https://git.example.invalid/widget.git", "v1.0", "1" * 40)
    marker = tmp_path / "pwned"
    monkeypatch.setenv("ASKBUILD_MIRRORS",
                       f"https://git.example.invalid/=ext::sh%20-c%20touch%20{marker}%20")
    with pytest.raises(UnsafeInputError) as e:
        fetching.fetch(project.settings(), ["widget"])
    assert "ext::" in str(e.value)
    assert not marker.exists()


def test_option_looking_refs_never_reach_git(project, upstream, tmp_path):
    project.add_git("widget", upstream.url, "v1.0", upstream.rev("v1.0"))
    s = project.settings()
    source = load_sources(s)["widget"]
    marker = tmp_path / "pwned"
    for ref in (f"--upload-pack=touch {marker}", "-c", "--output=/tmp/x", "v1..v2"):
        with pytest.raises(UnsafeInputError):
            fetching.fetch_ref(s, source, ref)
    assert not marker.exists()


def test_fetch_ref_peels_tags_and_fills_the_cache(project, upstream):
    upstream.tag("light", "v1.0", annotated=False)
    project.add_git("widget", upstream.url, "v1.0")
    s = project.settings()
    source = load_sources(s)["widget"]
    assert fetching.fetch_ref(s, source, "v1.0") == upstream.rev("v1.0")
    assert fetching.fetch_ref(s, source, "light") == upstream.rev("v1.0")
    assert fetching.fetch_ref(s, source, "main") == upstream.rev("main")
    assert fetching.has_commit(fetching.cache_repo(s, source), upstream.rev("v1.0"))


def test_lost_cache_is_refilled_for_an_existing_tree(project, upstream):
    import shutil
    sha = upstream.rev("v1.0")
    project.add_git("widget", upstream.url, "v1.0", sha)
    s = project.settings()
    tree = fetching.fetch(s, ["widget"])["widget"]
    shutil.rmtree(s.cache_dir)
    fetching.fetch(s, ["widget"])
    assert gitutil.out(["log", "--format=%H"], cwd=tree) == sha
    gitutil.git(["fsck", "--no-progress"], cwd=tree)


def test_unknown_ref_is_a_clear_error(project, upstream):
    project.add_git("widget", upstream.url, "v9.9")
    with pytest.raises(SourceError) as e:
        fetching.fetch(project.settings(), ["widget"])
    assert "v9.9" in str(e.value) and upstream.url in str(e.value)
    assert not isinstance(e.value, NetworkError)


def test_foreign_directory_in_the_way_is_not_touched(project, upstream):
    project.add_git("widget", upstream.url, "v1.0", upstream.rev("v1.0"))
    s = project.settings()
    (s.src_dir / "widget").mkdir(parents=True)
    (s.src_dir / "widget" / "notes.txt").write_text("mine\n")
    with pytest.raises(DirtyTreeError) as e:
        fetching.fetch(s, ["widget"])
    assert "not an askbuild work tree" in str(e.value)
    assert (s.src_dir / "widget" / "notes.txt").read_text() == "mine\n"


# -- crash safety (issue #8): a commit counts only when complete; trees are never half-done ----

def _loose(repo, sha):
    return repo / "objects" / sha[:2] / sha[2:]


def _blob(up, rev, path):
    return gitutil.out(["rev-parse", f"{rev}:{path}"], cwd=up.bare)


def test_commit_whose_files_never_arrived_is_fetched_again(project, upstream, capsys):
    """What a kill -9 (or a full disk) in the middle of `git fetch` leaves: the commit object
    is in the cache, some of its files are not, and no keep ref was written."""
    sha = upstream.rev("v1.0")
    project.add_git("widget", upstream.url, "v1.0", sha)
    s = project.settings()
    fetching.fetch(s, ["widget"])
    cache = fetching.cache_repo(s, load_sources(s)["widget"])
    _loose(cache, _blob(upstream, sha, "src/main.c")).unlink()
    gitutil.git(["update-ref", "-d", f"{refs.KEEP_PREFIX}{sha}"], cwd=cache)
    import shutil
    shutil.rmtree(s.src_dir)
    assert not fetching.has_commit(cache, sha)          # the commit object alone is not enough
    capsys.readouterr()

    tree = fetching.fetch(s, ["widget"])["widget"]

    assert (tree / "src/main.c").read_text().startswith("int main")
    assert _git(tree, "status", "--porcelain") == ""
    assert fetching.has_commit(cache, sha)
    assert "incomplete" in capsys.readouterr().err


def test_damaged_cache_behind_a_keep_ref_heals(project, upstream, capsys):
    """A cache damaged by an older askbuild (keep ref on a commit whose tree is gone: the
    `unable to read tree` forever of issue #8) is repaired by the next fetch."""
    sha = upstream.rev("v1.0")
    project.add_git("widget", upstream.url, "v1.0", sha)
    s = project.settings()
    fetching.fetch(s, ["widget"])
    cache = fetching.cache_repo(s, load_sources(s)["widget"])
    tree_id = gitutil.out(["rev-parse", f"{sha}^{{tree}}"], cwd=upstream.bare)
    _loose(cache, tree_id).unlink()
    import shutil
    shutil.rmtree(s.src_dir)

    tree = fetching.fetch(s, ["widget"])["widget"]

    assert _git(tree, "rev-parse", "HEAD^{tree}") == tree_id
    assert _git(tree, "status", "--porcelain") == ""
    assert (tree / "README").read_text() == "widget\n"


def test_corrupt_object_in_the_cache_rebuilds_it(project, upstream, capsys):
    sha = upstream.rev("v1.0")
    project.add_git("widget", upstream.url, "v1.0", sha)
    s = project.settings()
    fetching.fetch(s, ["widget"])
    cache = fetching.cache_repo(s, load_sources(s)["widget"])
    obj = _loose(cache, sha)
    obj.chmod(0o644)
    obj.write_bytes(b"garbage, not zlib")
    import shutil
    shutil.rmtree(s.src_dir)
    capsys.readouterr()

    tree = fetching.fetch(s, ["widget"])["widget"]

    assert _git(tree, "rev-parse", "HEAD") == sha
    assert _git(tree, "status", "--porcelain") == ""
    gitutil.git(["fsck", "--no-progress"], cwd=cache)
    assert "rebuilding it" in capsys.readouterr().err


def _bump(project, old, new):
    project.sources_file.write_text(project.sources_file.read_text().replace(old, new))


def _half_moved(project, upstream):
    """A tree whose move from v1.0 to v2.0 was killed in the middle of `git checkout`: one
    file already has its new content, one new file is there untracked, index.lock is left,
    and the move marker says what was going on."""
    v1 = upstream.rev("v1.0")
    project.add_git("widget", upstream.url, "v1.0", v1)
    s = project.settings()
    tree = fetching.fetch(s, ["widget"])["widget"]
    v2 = upstream.release("v2.0", {"src/main.c": "int main(void) { return 2; }\n",
                                   "NEWS": "2.0\n"})
    _bump(project, v1, v2)
    fetching.fetch_commit(s, load_sources(s)["widget"], v2)
    (tree / "src/main.c").write_text("int main(void) { return 2; }\n")
    (tree / "NEWS").write_text("2.0\n")
    (tree / ".git/index.lock").write_text("")
    (tree / ".git" / fetching.MOVE_MARKER).write_text(f'{{"from": "{v1}", "to": "{v2}"}}')
    return s, tree, v1, v2


def test_interrupted_base_move_is_finished_by_the_next_run(project, upstream, capsys):
    s, tree, v1, v2 = _half_moved(project, upstream)
    capsys.readouterr()

    fetching.fetch(s, ["widget"])

    assert _git(tree, "rev-parse", "HEAD") == v2
    assert _git(tree, "rev-parse", "askbuild/base^{commit}") == v2
    assert _git(tree, "status", "--porcelain", "--untracked-files=all") == ""
    assert (tree / "NEWS").read_text() == "2.0\n"
    assert not (tree / ".git" / fetching.MOVE_MARKER).exists()
    assert "finishing the interrupted base move" in capsys.readouterr().err


def test_interrupted_base_move_never_overwrites_a_later_user_edit(project, upstream):
    s, tree, v1, v2 = _half_moved(project, upstream)
    (tree / "README").write_text("my edit after the crash\n")

    with pytest.raises(DirtyTreeError) as e:
        fetching.fetch(s, ["widget"])

    assert "README" in str(e.value) and "interrupted" in str(e.value)
    assert "src/main.c" not in str(e.value) and "NEWS" not in str(e.value)
    assert (tree / "README").read_text() == "my edit after the crash\n"
    (tree / "README").write_text("widget\n")      # the user puts it back: the move finishes
    fetching.fetch(s, ["widget"])
    assert _git(tree, "rev-parse", "HEAD") == v2


def test_leftovers_of_killed_runs_are_removed(project, upstream):
    v1 = upstream.rev("v1.0")
    project.add_git("widget", upstream.url, "v1.0", v1)
    s = project.settings()
    fetching.fetch(s, ["widget"])
    cache = fetching.cache_repo(s, load_sources(s)["widget"])
    v2 = upstream.release("v2.0", {"other.c": "x\n"})
    _bump(project, v1, v2)
    dead = [s.src_dir / ".widget.tmp-4242-0badcafe", s.src_dir / ".widget.import-qwertyui",
            s.git_cache / ".widget.git.abcd_123", s.git_cache / ".widget.git.old-1-ff"]
    for d in dead:
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "file").write_text("half written\n")
    stale = [cache / "shallow.lock", cache / "objects" / "pack" / "tmp_pack_XyZ",
             cache / "objects" / "ab" / "tmp_obj_123"]
    for f in stale:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("")
    kept = s.src_dir / ".widget-notes"                # not ours: never touched
    kept.write_text("mine\n")

    tree = fetching.fetch(s, ["widget"])["widget"]     # needs a fetch: shallow.lock in the way

    assert _git(tree, "rev-parse", "HEAD") == v2
    assert [p for p in dead + stale if p.exists()] == []
    assert kept.read_text() == "mine\n"


def test_git_failure_in_a_work_tree_names_the_source_and_url(project, upstream):
    v1 = upstream.rev("v1.0")
    project.add_git("widget", upstream.url, "v1.0", v1)
    s = project.settings()
    tree = fetching.fetch(s, ["widget"])["widget"]
    (tree / ".git" / "index").write_bytes(b"DIRC garbage")
    _bump(project, v1, upstream.release("v2.0", {"other.c": "x\n"}))

    with pytest.raises(SourceError) as e:
        fetching.fetch(s, ["widget"])

    msg = str(e.value)
    assert "source widget" in msg and upstream.url in msg and "index" in msg


def test_deleted_cache_under_a_tree_whose_base_moves(project, upstream):
    """The old base's files lived in the cache only: they are fetched again to tell user
    edits from a clean tree (`bad tree object HEAD` before)."""
    import shutil
    v1 = upstream.rev("v1.0")
    project.add_git("widget", upstream.url, "v1.0", v1)
    s = project.settings()
    tree = fetching.fetch(s, ["widget"])["widget"]
    shutil.rmtree(s.cache_dir)
    v2 = upstream.release("v2.0", {"other.c": "x\n"})
    _bump(project, v1, v2)

    fetching.fetch(s, ["widget"])

    assert _git(tree, "rev-parse", "HEAD") == v2
    assert _git(tree, "status", "--porcelain") == ""


def test_cache_repository_that_is_not_a_repository_is_rebuilt(project, upstream, capsys):
    sha = upstream.rev("v1.0")
    project.add_git("widget", upstream.url, "v1.0", sha)
    s = project.settings()
    cache = fetching.cache_repo(s, load_sources(s)["widget"])
    (cache / "objects").mkdir(parents=True)            # e.g. an init cut short by a full disk
    (cache / "objects" / "junk").write_text("x")

    tree = fetching.fetch(s, ["widget"])["widget"]

    assert _git(tree, "rev-parse", "HEAD") == sha
    assert fetching.has_commit(cache, sha)
    assert "not a valid git repository" in capsys.readouterr().err
