"""The quilt-style series parser: entries, comments, -pN, and errors naming file and line."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from askbuild import series
from askbuild.errors import ConfigError
from askbuild.series import SeriesEntry, SeriesError


def test_entries_comments_blank_lines_and_strip():
    text = ("# our series\n\n0001-a.patch\n  sub/0002-b.patch   # inline comment\n"
            "fix.diff -p0\n#disabled.patch\n")
    assert [(e.name, e.strip, e.line) for e in series.parse(text, path="s")] == [
        ("0001-a.patch", 1, 3), ("sub/0002-b.patch", 1, 4), ("fix.diff", 0, 5)]


def test_hash_inside_a_name_is_not_a_comment():
    assert series.parse("a#b.patch\n")[0].name == "a#b.patch"


def test_empty_series_means_no_patches():
    assert series.parse("") == []
    assert series.parse("# nothing yet\n\n") == []


@pytest.mark.parametrize("text, message", [
    ("a.patch -R\n", "s:1: unsupported option '-R' for patch 'a.patch'"),
    ("a.patch\nb.patch\na.patch\n", "s:3: patch 'a.patch' is listed twice (first on line 1)"),
    ("../etc/passwd\n", "s:1: invalid patch name '../etc/passwd'"),
    ("/abs.patch\n", "s:1: invalid patch name '/abs.patch'"),
    ("\n-p1\n", "s:2: invalid patch name '-p1'"),
    ("a.patch -p99\n", "s:1: -p99 is out of range"),
    ("series\n", "s:1: the series file cannot list itself"),
])
def test_errors_name_file_and_line(text, message):
    with pytest.raises(SeriesError) as e:
        series.parse(text, path="s")
    assert message in str(e.value)
    assert isinstance(e.value, ConfigError)        # a user error: exit code 1


def test_load_checks_that_patches_exist(tmp_path):
    (tmp_path / "series").write_text("# x\nthere.patch\nmissing.patch\n")
    (tmp_path / "there.patch").write_text("")
    with pytest.raises(SeriesError) as e:
        series.load(tmp_path)
    assert f"{tmp_path / 'series'}:3: patch file 'missing.patch' does not exist" in str(e.value)


def _series_dir(tmp_path):
    d = tmp_path / "patches" / "up"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "b.patch").write_text("b\n")
    (d / "a.patch").write_text("a\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.patch").write_text("not ours\n")
    return d, outside


def test_a_symlinked_patch_pointing_outside_the_series_is_refused(tmp_path):
    d, outside = _series_dir(tmp_path)
    (d / "evil.patch").symlink_to(outside / "secret.patch")
    (d / "series").write_text("a.patch\nevil.patch\n")
    with pytest.raises(SeriesError) as e:
        series.load(d)
    msg = str(e.value)
    assert f"{d / 'series'}:2: patch 'evil.patch': {d / 'evil.patch'} is a symbolic link to " \
           f"{outside / 'secret.patch'}, outside the series directory {d}" in msg
    assert "copy the file into the series directory" in msg


def test_a_symlinked_subdirectory_pointing_outside_is_refused(tmp_path):
    d, outside = _series_dir(tmp_path)
    (d / "linked").symlink_to("../../elsewhere")            # relative target, shown as is
    (d / "series").write_text("linked/secret.patch\n")
    with pytest.raises(SeriesError) as e:
        series.load(d)
    assert f"{d / 'linked'} is a symbolic link to ../../elsewhere ({outside})" in str(e.value)


def test_a_symlinked_series_file_pointing_outside_is_refused(tmp_path):
    d, outside = _series_dir(tmp_path)
    (outside / "series").write_text("a.patch\n")
    (d / "series").symlink_to(outside / "series")
    with pytest.raises(SeriesError, match="series is a symbolic link to .*outside the series"):
        series.load(d)


def test_links_inside_the_series_directory_are_fine(tmp_path):
    d, _ = _series_dir(tmp_path)
    (d / "alias.patch").symlink_to("sub/b.patch")
    (d / "same").symlink_to("sub")
    (d / "series").write_text("a.patch\nalias.patch\nsame/b.patch -p0\n")
    assert [(e.name, e.strip) for e in series.load(d)] == [
        ("a.patch", 1), ("alias.patch", 1), ("same/b.patch", 0)]


def test_a_link_loop_is_refused_with_a_message(tmp_path):
    d, _ = _series_dir(tmp_path)
    (d / "loop.patch").symlink_to("loop.patch")
    (d / "series").write_text("loop.patch\n")
    with pytest.raises(SeriesError, match="loop.patch is a symbolic link to loop.patch"):
        series.load(d)


def test_load_missing_series_file(tmp_path):
    with pytest.raises(SeriesError, match="series file not found"):
        series.load(tmp_path)


def test_load_dir_without_series_takes_sorted_patch_files(tmp_path):
    for n in ("02-b.patch", "01-a.patch", "notes.txt", "10-c.patch"):
        (tmp_path / n).write_text("")
    assert [e.name for e in series.load_dir(tmp_path)] == ["01-a.patch", "02-b.patch",
                                                           "10-c.patch"]
    assert [e.name for e in series.from_listing("x", {"b.patch": b"", "a.patch": b"",
                                                      "sub/c.patch": b""})] == ["a.patch",
                                                                                 "b.patch"]


def test_from_listing_uses_the_series_file():
    files = {"series": b"b.patch\n", "a.patch": b"", "b.patch": b""}
    assert [e.name for e in series.from_listing("ask:patches/x", files)] == ["b.patch"]
    with pytest.raises(SeriesError, match="ask:patches/x/series:1: patch file 'c.patch'"):
        series.from_listing("ask:patches/x", {"series": b"c.patch\n"})


def test_render_keeps_header_and_strip():
    text = "# header\n# two\n\na.patch\nb.patch -p0\n"
    entries = series.parse(text)
    assert series.render(entries, head=series.header(text)) == text


names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}\.patch", fullmatch=True)


@given(st.lists(st.tuples(names, st.integers(min_value=0, max_value=5)), unique_by=lambda x: x[0],
                max_size=8))
def test_render_parse_round_trip(items):
    entries = [SeriesEntry(n, p) for n, p in items]
    parsed = series.parse(series.render(entries, head="# h\n"))
    assert [(e.name, e.strip) for e in parsed] == items


def test_a_dotdot_name_leading_outside_is_refused(tmp_path):
    d, outside = _series_dir(tmp_path)
    (d / "series").write_text("../elsewhere/secret.patch\n")
    with pytest.raises(SeriesError) as e:
        series.load(d)
    assert "invalid patch name '../elsewhere/secret.patch'" in str(e.value)
