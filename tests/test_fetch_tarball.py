"""Fetching tarball sources from a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest
from upstreams import release_tarball

from askbuild import download, fetching, gitutil
from askbuild.errors import NetworkError, OfflineError, UnlockedSourceError, VerificationError
from askbuild.sources import load_sources

FILES = {"configure": "#!/bin/sh\necho configured\n", "src/lib.c": "int lib;\n",
         ".gitignore": "*.o\nignored.o\n", "ignored.o": "shipped anyway\n"}


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    monkeypatch.setattr(download, "BACKOFF", 0.01)


@pytest.fixture
def tarball(http_server):
    data = release_tarball("libfoo-1.0", FILES)
    url = http_server.add("files/libfoo-1.0.tar.gz", data)
    return url, data, hashlib.sha256(data).hexdigest()


def _head(tree):
    return gitutil.out(["rev-parse", "HEAD"], cwd=tree)


def test_fetch_verifies_extracts_and_commits(project, tarball, http_server):
    url, data, sha = tarball
    project.add_tarball("libfoo", url, sha256=sha, size=len(data))
    s = project.settings()

    tree = fetching.fetch(s, ["libfoo"])["libfoo"]

    assert (tree / "configure").read_text() == FILES["configure"]
    assert (tree / "src/lib.c").read_text() == FILES["src/lib.c"]
    assert (tree / "ignored.o").exists()                 # ignored by .gitignore, still committed
    assert gitutil.out(["ls-files", "ignored.o"], cwd=tree) == "ignored.o"
    assert gitutil.out(["status", "--porcelain"], cwd=tree) == ""
    assert gitutil.out(["rev-parse", "askbuild/base^{commit}"], cwd=tree) == _head(tree)
    st = os.stat(tree / "src/lib.c")
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())    # no foreign owners
    assert (s.tarball_cache / sha / "libfoo-1.0.tar.gz").read_bytes() == data
    assert http_server.requests["files/libfoo-1.0.tar.gz"] == 1


def test_import_commit_is_deterministic(project, tarball, tmp_path):
    url, data, sha = tarball
    project.add_tarball("libfoo", url, sha256=sha, size=len(data))
    a = fetching.fetch(project.settings(), ["libfoo"])["libfoo"]
    b = fetching.fetch(project.settings(work_dir=tmp_path / "other-work"), ["libfoo"])["libfoo"]
    assert a != b and _head(a) == _head(b)


def test_cached_refetch_needs_no_server(project, tarball, http_server):
    url, data, sha = tarball
    project.add_tarball("libfoo", url, sha256=sha, size=len(data))
    s = project.settings()
    first = _head(fetching.fetch(s, ["libfoo"])["libfoo"])
    http_server.stop()
    shutil.rmtree(s.src_dir)
    tree = fetching.fetch(s, ["libfoo"])["libfoo"]
    assert _head(tree) == first
    assert http_server.requests["files/libfoo-1.0.tar.gz"] == 1


def test_unlocked_tarball_is_hashed_and_recorded(project, tarball, capsys):
    url, data, sha = tarball
    project.add_tarball("libfoo", url)
    s = project.settings()
    fetching.fetch(s, ["libfoo"])
    src = load_sources(s)["libfoo"]
    assert (src.sha256, src.size) == (sha, len(data))
    assert "not locked" in capsys.readouterr().err


def test_locked_mode_refuses_an_unlocked_tarball(project, tarball, http_server):
    url, _, _ = tarball
    project.add_tarball("libfoo", url)
    with pytest.raises(UnlockedSourceError) as e:
        fetching.fetch(project.settings(locked=True), ["libfoo"])
    assert "libfoo" in str(e.value)
    assert http_server.requests["files/libfoo-1.0.tar.gz"] == 0


def test_checksum_mismatch_is_quarantined_with_a_clear_error(project, tarball):
    url, data, sha = tarball
    wrong = hashlib.sha256(b"something else").hexdigest()
    project.add_tarball("libfoo", url, sha256=wrong, size=len(data))
    s = project.settings()
    with pytest.raises(VerificationError) as e:
        fetching.fetch(s, ["libfoo"])
    msg = str(e.value)
    assert "libfoo" in msg and url in msg and wrong in msg and sha in msg and "quarantine" in msg
    quarantined = list((s.tarball_cache / "quarantine").iterdir())
    assert len(quarantined) == 1 and quarantined[0].read_bytes() == data
    assert not (s.tarball_cache / wrong).exists()
    assert not (s.src_dir / "libfoo").exists()


def test_corrupted_cache_entry_is_quarantined_and_downloaded_again(project, tarball,
                                                                   http_server, capsys):
    url, data, sha = tarball
    project.add_tarball("libfoo", url, sha256=sha, size=len(data))
    s = project.settings()
    fetching.fetch(s, ["libfoo"])
    shutil.rmtree(s.src_dir)
    cached = s.tarball_cache / sha / "libfoo-1.0.tar.gz"
    cached.write_bytes(data[:-10] + b"x" * 10)
    capsys.readouterr()

    tree = fetching.fetch(s, ["libfoo"])["libfoo"]      # the cache heals itself

    assert (tree / "configure").read_text() == FILES["configure"]
    assert cached.read_bytes() == data
    quarantined = list((s.tarball_cache / "quarantine").iterdir())
    assert len(quarantined) == 1 and quarantined[0].read_bytes() == data[:-10] + b"x" * 10
    assert http_server.requests["files/libfoo-1.0.tar.gz"] == 2
    err = capsys.readouterr().err
    assert "does not match the lock" in err and "downloading it again" in err


def test_interrupted_download_never_counts_and_rerun_succeeds(project, tarball, http_server):
    url, data, sha = tarball
    project.add_tarball("libfoo", url, sha256=sha, size=len(data))
    s = project.settings()
    http_server.fail("files/libfoo-1.0.tar.gz", "truncate", times=download.ATTEMPTS)

    with pytest.raises(NetworkError) as e:
        fetching.fetch(s, ["libfoo"])
    assert "interrupted" in str(e.value) and url in str(e.value)
    assert http_server.requests["files/libfoo-1.0.tar.gz"] == download.ATTEMPTS
    leftovers = [p for p in s.tarball_cache.rglob("*") if p.is_file()]
    assert leftovers == []                     # no partial file left anywhere in the cache
    assert not (s.src_dir / "libfoo").exists()

    tree = fetching.fetch(s, ["libfoo"])["libfoo"]      # the rerun succeeds
    assert (tree / "configure").exists()


def test_one_interruption_is_retried_within_the_run(project, tarball, http_server):
    url, data, sha = tarball
    project.add_tarball("libfoo", url, sha256=sha, size=len(data))
    http_server.fail("files/libfoo-1.0.tar.gz", "truncate")
    http_server.fail("files/libfoo-1.0.tar.gz", "500")
    tree = fetching.fetch(project.settings(), ["libfoo"])["libfoo"]
    assert (tree / "configure").exists()
    assert http_server.requests["files/libfoo-1.0.tar.gz"] == 3


def test_server_down_is_a_network_error(project, tarball, http_server):
    url, data, sha = tarball
    project.add_tarball("libfoo", url, sha256=sha, size=len(data))
    http_server.stop()
    with pytest.raises(NetworkError) as e:
        fetching.fetch(project.settings(), ["libfoo"])
    assert "libfoo" in str(e.value) and url in str(e.value) and "ASKBUILD_MIRRORS" in str(e.value)
    assert "connection to 127.0.0.1 refused" in str(e.value)


def test_offline_tarball_with_and_without_cache(project, tarball, http_server):
    url, data, sha = tarball
    project.add_tarball("libfoo", url, sha256=sha, size=len(data))
    with pytest.raises(OfflineError) as e:
        fetching.fetch(project.settings(offline=True), ["libfoo"])
    assert "libfoo" in str(e.value)
    assert http_server.requests["files/libfoo-1.0.tar.gz"] == 0
    fetching.fetch(project.settings(), ["libfoo"])
    shutil.rmtree(project.work)
    tree = fetching.fetch(project.settings(offline=True), ["libfoo"])["libfoo"]
    assert (tree / "configure").exists()
    assert http_server.requests["files/libfoo-1.0.tar.gz"] == 1


def test_tarball_mirror_from_config_file_is_verified(project, tarball, http_server):
    url, data, sha = tarball
    project.add_tarball("libfoo", "https://www.example.invalid/files/libfoo-1.0.tar.gz",
                        sha256=sha, size=len(data))
    (project.root / "askbuild.toml").write_text(
        f'[mirrors]\n"https://www.example.invalid/" = "{http_server.url("")}"\n')
    tree = fetching.fetch(project.settings(), ["libfoo"])["libfoo"]
    assert (tree / "configure").exists()
    # a mirror serving other bytes is refused
    http_server.files["files/libfoo-1.0.tar.gz"] = release_tarball("libfoo-1.0", {"x": "evil"})
    shutil.rmtree(project.work)
    shutil.rmtree(project.cache)
    with pytest.raises(VerificationError):
        fetching.fetch(project.settings(), ["libfoo"])


def test_file_url_mirror_and_xz_and_bz2(project, tmp_path, monkeypatch):
    for comp in ("xz", "bz2"):
        data = release_tarball(f"lib{comp}-1.0", {"README": comp}, compression=comp)
        mirror = tmp_path / "mirror"
        mirror.mkdir(exist_ok=True)
        (mirror / f"lib{comp}-1.0.tar.{comp}").write_bytes(data)
        project.add_tarball(f"lib{comp}", f"https://dl.example.invalid/lib{comp}-1.0.tar.{comp}",
                            sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    monkeypatch.setenv("ASKBUILD_MIRRORS", f"https://dl.example.invalid/=file://{tmp_path}/mirror/")
    trees = fetching.fetch(project.settings(), [])
    assert (trees["libxz"] / "README").read_text() == "xz"
    assert (trees["libbz2"] / "README").read_text() == "bz2"


def test_new_tarball_release_moves_the_base_keeping_branches(project, tarball, http_server):
    url, data, sha = tarball
    project.add_tarball("libfoo", url, sha256=sha, size=len(data))
    s = project.settings()
    tree = fetching.fetch(s, ["libfoo"])["libfoo"]
    old = _head(tree)
    gitutil.git(["branch", "askbuild/patched"], cwd=tree)
    data2 = release_tarball("libfoo-1.1", {**FILES, "NEWS": "1.1\n"})
    http_server.add("files/libfoo-1.0.tar.gz", data2)
    sha2 = hashlib.sha256(data2).hexdigest()
    project.sources_file.write_text(project.sources_file.read_text().replace(sha, sha2)
                                    .replace(f"size = {len(data)}\n", f"size = {len(data2)}\n"))
    tree = fetching.fetch(s, ["libfoo"])["libfoo"]
    assert (tree / "NEWS").exists()
    assert gitutil.out(["rev-parse", "askbuild/base"], cwd=tree) == _head(tree) != old
    assert gitutil.out(["rev-parse", "askbuild/patched"], cwd=tree) == old


def test_dirty_tarball_tree_is_not_replaced(project, tarball, http_server):
    from askbuild.errors import DirtyTreeError
    url, data, sha = tarball
    project.add_tarball("libfoo", url, sha256=sha, size=len(data))
    s = project.settings()
    tree = fetching.fetch(s, ["libfoo"])["libfoo"]
    (tree / "mine.txt").write_text("new file of mine\n")
    data2 = release_tarball("libfoo-1.1", {"NEWS": "1.1\n"})
    http_server.add("files/libfoo-1.0.tar.gz", data2)
    project.sources_file.write_text(project.sources_file.read_text().replace(
        sha, hashlib.sha256(data2).hexdigest()).replace(f"size = {len(data)}\n",
                                                     f"size = {len(data2)}\n"))
    with pytest.raises(DirtyTreeError) as e:
        fetching.fetch(s, ["libfoo"])
    assert "mine.txt" in str(e.value)
    assert (tree / "mine.txt").exists() and (tree / "configure").exists()


def test_body_larger_than_the_lock_is_stopped(project, tarball, http_server):
    url, data, sha = tarball
    project.add_tarball("libfoo", url, sha256=sha, size=len(data))
    http_server.add("files/libfoo-1.0.tar.gz", data + b"\0" * 200_000)
    s = project.settings()
    with pytest.raises(VerificationError) as e:
        fetching.fetch(s, ["libfoo"])
    assert f"more than the {len(data)} bytes" in str(e.value)
    assert [p for p in s.tarball_cache.rglob("*") if p.is_file()] == []


def test_import_commit_ignores_the_users_git_config(project, http_server, tmp_path,
                                                     monkeypatch):
    data = release_tarball("libq-1.0", {".gitattributes": "*.c filter=shout\n",
                                        "q.c": "int q;\n"})
    url = http_server.add("libq-1.0.tar.gz", data)
    project.add_tarball("libq", url, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    plain = _head(fetching.fetch(project.settings(), ["libq"])["libq"])
    cfg = tmp_path / "gitconfig"
    cfg.write_text('[filter "shout"]\n\tclean = tr a-z A-Z\n')
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(cfg))
    tree = fetching.fetch(project.settings(work_dir=tmp_path / "w2"), ["libq"])["libq"]
    assert _head(tree) == plain
    assert gitutil.out(["show", "HEAD:q.c"], cwd=tree) == "int q;"


def test_truncated_download_without_length_says_truncated_never_lock_update(
        project, tarball, http_server):
    """No Content-Length: only the lock's size shows the body was cut short.  That is a
    truncated download to retry, not "a different file" to lock."""
    url, data, sha = tarball
    project.add_tarball("libfoo", url, sha256=sha, size=len(data))
    s = project.settings()
    http_server.fail("files/libfoo-1.0.tar.gz", "cut", times=download.ATTEMPTS)

    with pytest.raises(NetworkError) as e:
        fetching.fetch(s, ["libfoo"])

    msg = str(e.value)
    assert "truncated" in msg and f"got {len(data) // 2} of {len(data)} bytes" in msg
    assert "lock --update" not in msg and "run the same command again" in msg
    assert [p for p in s.tarball_cache.rglob("*") if p.is_file()] == []   # nothing kept
    assert not (s.src_dir / "libfoo").exists()
    tree = fetching.fetch(s, ["libfoo"])["libfoo"]                       # the rerun works
    assert (tree / "configure").read_text() == FILES["configure"]


def test_one_cut_body_is_retried_within_the_run(project, tarball, http_server):
    url, data, sha = tarball
    project.add_tarball("libfoo", url, sha256=sha, size=len(data))
    http_server.fail("files/libfoo-1.0.tar.gz", "cut")
    tree = fetching.fetch(project.settings(), ["libfoo"])["libfoo"]
    assert (tree / "configure").exists()
    assert http_server.requests["files/libfoo-1.0.tar.gz"] == 2


def test_shorter_file_with_a_length_is_not_locked_over(project, tarball, http_server):
    url, data, sha = tarball
    project.add_tarball("libfoo", url, sha256=sha, size=len(data))
    http_server.add("files/libfoo-1.0.tar.gz", data[:100])
    s = project.settings()
    with pytest.raises(VerificationError) as e:
        fetching.fetch(s, ["libfoo"])
    msg = str(e.value)
    assert f"gave 100 of the {len(data)} bytes" in msg and "truncated" in msg
    assert "lock --update" not in msg
    assert not (s.tarball_cache / sha).exists()


def test_leftovers_of_killed_downloads_and_imports_are_removed(project, tarball):
    url, data, sha = tarball
    project.add_tarball("libfoo", url, sha256=sha, size=len(data))
    s = project.settings()
    dead = [s.tarball_cache / ".incoming" / "libfoo" / ".libfoo-1.0.tar.gz.77-beef.part",
            s.tarball_cache / ".libfoo-1.0.tar.gz.k3j4h5g6.part",        # older askbuilds
            s.src_dir / ".libfoo.import-99-abcdef12" / "tree" / "configure",
            s.src_dir / ".libfoo.import-zzzzzzzz" / "tree" / ".tree.extract-x" / "f"]
    for f in dead:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data[:10])
    other = s.tarball_cache / ".other-2.0.tar.gz.k3j4h5g6.part"     # another source's
    other.write_bytes(b"x")

    fetching.fetch(s, ["libfoo"])

    assert [f for f in dead if f.exists()] == []
    assert [p.name for p in s.src_dir.iterdir()] == ["libfoo"]
    assert other.exists()
