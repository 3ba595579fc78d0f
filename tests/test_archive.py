"""Safe extraction: every hostile member kind is refused before it is written, and nothing is
left behind."""

from __future__ import annotations

import hashlib
import os

import pytest
from upstreams import tar_bytes

from askbuild import fetching
from askbuild.archive import safe_extract
from askbuild.errors import SourceError, UnsafeInputError

GOOD = [("dir", "pkg-1.0"), ("file", "pkg-1.0/ok.txt", "fine\n")]


def _extract(tmp_path, entries, *, strip=1):
    archive = tmp_path / "x.tar.gz"
    archive.write_bytes(tar_bytes(entries))
    dest = tmp_path / "area" / "out"
    return archive, dest, lambda: safe_extract(archive, dest, strip_components=strip, what="t")


def _assert_refused(tmp_path, entries, words):
    _, dest, run = _extract(tmp_path, entries)
    with pytest.raises(UnsafeInputError) as e:
        run()
    msg = str(e.value)
    for w in words:
        assert w in msg
    assert not dest.exists()
    # nothing at all was left behind (no temp directory either)
    assert list((tmp_path / "area").iterdir()) == []
    return msg


def test_good_archive_is_stripped_and_extracted(tmp_path):
    entries = [*GOOD, ("dir", "pkg-1.0/sub"), ("file", "pkg-1.0/sub/run", "#!/bin/sh\n", 0o4755),
               ("symlink", "pkg-1.0/link", "sub/run"),
               ("hardlink", "pkg-1.0/hard", "pkg-1.0/ok.txt"),
               ("symlink", "pkg-1.0/sub/up", "../ok.txt")]
    _, dest, run = _extract(tmp_path, entries)
    run()
    assert (dest / "ok.txt").read_text() == "fine\n"
    assert os.readlink(dest / "link") == "sub/run"
    assert (dest / "hard").read_text() == "fine\n"
    assert (dest / "sub/up").read_text() == "fine\n"
    mode = os.stat(dest / "sub/run").st_mode
    assert not mode & 0o4000                      # setuid bit dropped by the data filter
    st = os.stat(dest / "ok.txt")
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


def test_absolute_path_is_refused(tmp_path):
    _assert_refused(tmp_path, [*GOOD, ("file", "/tmp/askbuild-evil", "x")], ["absolute"])
    assert not os.path.exists("/tmp/askbuild-evil")


def test_dotdot_is_refused(tmp_path):
    _assert_refused(tmp_path, [*GOOD, ("file", "pkg-1.0/../../escaped", "x")], ["'..'"])
    assert not (tmp_path / "escaped").exists()


def test_symlink_to_absolute_path_is_refused(tmp_path):
    _assert_refused(tmp_path, [*GOOD, ("symlink", "pkg-1.0/etc", "/etc")], ["symlink", "/etc"])


def test_symlink_escaping_upwards_is_refused(tmp_path):
    _assert_refused(tmp_path, [*GOOD, ("symlink", "pkg-1.0/sub/esc", "../../outside")],
                    ["symlink", "outside the tree"])


def test_symlink_escaping_through_another_symlink_is_refused(tmp_path):
    entries = [*GOOD, ("dir", "pkg-1.0/d"), ("symlink", "pkg-1.0/d/root", ".."),
               ("symlink", "pkg-1.0/esc", "d/root/..")]
    _assert_refused(tmp_path, entries, ["pkg-1.0/esc", "outside the tree"])


def test_hardlink_escaping_is_refused(tmp_path):
    _assert_refused(tmp_path, [*GOOD, ("hardlink", "pkg-1.0/passwd", "/etc/passwd")],
                    ["hard link", "/etc/passwd"])


def test_hardlink_with_dotdot_is_refused(tmp_path):
    _assert_refused(tmp_path, [*GOOD, ("hardlink", "pkg-1.0/h", "pkg-1.0/../../secret")],
                    ["hard link", "outside"])


def test_hardlink_through_an_inside_symlink_is_kept(tmp_path):
    entries = [*GOOD, ("symlink", "pkg-1.0/up", "."),
               ("hardlink", "pkg-1.0/h", "pkg-1.0/up/ok.txt")]
    _, dest, run = _extract(tmp_path, entries)
    run()   # inside the tree through an inside link: fine
    assert (dest / "h").read_text() == "fine\n"


def test_character_device_is_refused(tmp_path):
    _assert_refused(tmp_path, [*GOOD, ("chr", "pkg-1.0/null")], ["device"])


def test_block_device_is_refused(tmp_path):
    _assert_refused(tmp_path, [*GOOD, ("blk", "pkg-1.0/sda")], ["device"])


def test_fifo_is_refused(tmp_path):
    _assert_refused(tmp_path, [*GOOD, ("fifo", "pkg-1.0/pipe")], ["FIFO"])


def test_git_directory_is_refused(tmp_path):
    _assert_refused(tmp_path, [*GOOD, ("file", "pkg-1.0/.git/config", "[core]\n")], [".git"])


def test_member_outside_the_stripped_directory_is_an_error(tmp_path):
    _, dest, run = _extract(tmp_path, [*GOOD, ("file", "toplevel.txt", "x")])
    with pytest.raises(SourceError) as e:
        run()
    assert "strip_components" in str(e.value)
    assert not dest.exists()


def test_strip_zero_keeps_the_top_directory(tmp_path):
    _, dest, run = _extract(tmp_path, GOOD, strip=0)
    run()
    assert (dest / "pkg-1.0" / "ok.txt").exists()


def test_not_a_tarball_is_a_clear_error(tmp_path):
    archive = tmp_path / "x.tar.gz"
    archive.write_bytes(b"<html>not found</html>")
    with pytest.raises(SourceError) as e:
        safe_extract(archive, tmp_path / "out", what="t")
    assert "cannot extract" in str(e.value)


def test_fetch_refuses_a_hostile_tarball_and_leaves_no_tree(project, http_server):
    data = tar_bytes([*GOOD, ("symlink", "pkg-1.0/esc", "../../../../etc")])
    url = http_server.add("evil-1.0.tar.gz", data)
    project.add_tarball("evil", url, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    s = project.settings()
    with pytest.raises(UnsafeInputError) as e:
        fetching.fetch(s, ["evil"])
    assert "evil" in str(e.value) and "pkg-1.0/esc" in str(e.value)
    assert not (s.src_dir / "evil").exists()
    assert [p.name for p in s.src_dir.iterdir()] == []


# -- links that escape only together, whatever their order (issue #8) --------------------------

def test_symlink_escaping_through_a_later_symlink_is_refused(tmp_path):
    # x -> y/.. looks like the root while y does not exist yet; then y -> . makes it ../
    entries = [*GOOD, ("symlink", "pkg-1.0/x", "y/.."), ("symlink", "pkg-1.0/y", ".")]
    _assert_refused(tmp_path, entries, ["'x'", "outside the tree"])


def test_chain_of_later_links_escaping_is_refused(tmp_path):
    entries = [*GOOD, ("symlink", "pkg-1.0/a", "b/c/../.."), ("dir", "pkg-1.0/b"),
               ("symlink", "pkg-1.0/b/c", "..")]
    _assert_refused(tmp_path, entries, ["outside the tree"])


def test_dot_then_dotdot_link_is_refused(tmp_path):
    _assert_refused(tmp_path, [*GOOD, ("symlink", "pkg-1.0/x", "./..")], ["outside the tree"])


def test_member_written_through_an_inside_symlink_is_refused(tmp_path):
    entries = [*GOOD, ("dir", "pkg-1.0/d"), ("symlink", "pkg-1.0/l", "d"),
               ("file", "pkg-1.0/l/f", "x")]
    _assert_refused(tmp_path, entries, ["pkg-1.0/l/f", "through the symbolic link"])


def test_file_written_over_a_symlink_is_refused(tmp_path):
    entries = [*GOOD, ("symlink", "pkg-1.0/l", "ok.txt"), ("file", "pkg-1.0/l", "new\n")]
    _assert_refused(tmp_path, entries, ["through the symbolic link"])


def test_symlink_replacing_a_directory_after_its_members_is_refused(tmp_path):
    entries = [*GOOD, ("dir", "pkg-1.0/sub"), ("file", "pkg-1.0/d/f", "x"),
               ("symlink", "pkg-1.0/d", "sub")]
    _assert_refused(tmp_path, entries, ["pkg-1.0/d", "replacing"])


def test_links_pointing_at_later_inside_links_are_kept(tmp_path):
    entries = [*GOOD, ("symlink", "pkg-1.0/a", "b/ok.txt"), ("symlink", "pkg-1.0/b", ".")]
    _, dest, run = _extract(tmp_path, entries)
    run()
    assert (dest / "a").read_text() == "fine\n"
