"""Property-based tests of the series parser: round trip, and no crash on any input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from askbuild.series import SeriesEntry, SeriesError, parse, render

segment = st.text(alphabet=st.characters(whitelist_categories=("Ll", "Lu", "Nd"),
                                         whitelist_characters="._+-#"),
                  min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..") and not s.startswith(("-", "#")))
name = st.lists(segment, min_size=1, max_size=3).map("/".join).filter(lambda n: n != "series")
entries = st.lists(st.tuples(name, st.integers(min_value=0, max_value=16)), max_size=12,
                   unique_by=lambda t: t[0])


@given(entries)
@settings(max_examples=200, deadline=None)
def test_render_then_parse_round_trips(items):
    series = [SeriesEntry(n, p) for n, p in items]
    parsed = parse(render(series))
    assert [(e.name, e.strip) for e in parsed] == items


@given(entries, st.text(alphabet=" \t", max_size=3), st.text(max_size=20))
@settings(max_examples=200, deadline=None)
def test_comments_and_blank_lines_are_ignored(items, pad, comment):
    comment = comment.replace("\n", " ").replace("\r", " ")
    lines = ["# " + comment, ""]
    for n, p in items:
        lines.append(f"{pad}{n}{'' if p == 1 else f' -p{p}'} # {comment}")
        lines.append(pad)
    parsed = parse("\n".join(lines))
    assert [(e.name, e.strip) for e in parsed] == items


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_any_text_parses_or_fails_with_a_located_series_error(text):
    try:
        parsed = parse(text, path="patches/x/series")
    except SeriesError as e:
        assert str(e).startswith("patches/x/series:")
        return
    for e in parsed:
        assert e.name and not e.name.startswith("-") and ".." not in e.name.split("/")
