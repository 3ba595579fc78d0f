"""Rewriting a ``series`` file keeps its comments (issue 10, point 6): the rule of
:func:`askbuild.series.rewrite`, as properties over generated files and as examples."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from askbuild.series import SeriesEntry, parse, rewrite

comment = st.text(alphabet="abc =:#()", max_size=12).map(lambda s: "# " + s)
blank = st.sampled_from(["", " ", "\t"])
pad = st.sampled_from(["", " ", "   ", "\t"])


@st.composite
def series_files(draw) -> str:
    """A series file with comments everywhere: blocks, headers, comments above entries,
    inline comments, blank lines, optionally CRLF and no final newline."""
    lines: list[str] = []
    for n in range(draw(st.integers(0, 8))):
        for _ in range(draw(st.integers(0, 2))):
            lines.append(draw(st.one_of(comment, blank)))
        inline = draw(st.one_of(st.just(""), comment.map(lambda c: " " + c)))
        strip = draw(st.sampled_from(["", " -p0", " -p2"]))
        lines.append(f"{draw(pad)}p{n}.patch{strip}{draw(pad) if inline else ''}{inline}")
    lines += draw(st.lists(st.one_of(comment, blank), max_size=3))
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    text = eol.join(lines)
    return text + (eol if lines and draw(st.booleans()) else "")


@given(series_files())
@settings(max_examples=300, deadline=None)
def test_rewriting_with_the_same_entries_changes_no_byte(text):
    assert rewrite(text, parse(text)) == text


@given(series_files(), st.data())
@settings(max_examples=300, deadline=None)
def test_dropping_an_entry_removes_only_it_and_its_own_comments(text, data):
    entries = parse(text)
    if not entries:
        return
    gone = data.draw(st.sampled_from(entries))
    after = rewrite(text, [e for e in entries if e != gone])
    assert [(e.name, e.strip) for e in parse(after)] == \
        [(e.name, e.strip) for e in entries if e != gone]
    lines = [ln.removesuffix("\n") for ln in re.findall(r"[^\n]*\n|[^\n]+$", text)]
    kept = [ln.removesuffix("\n") for ln in re.findall(r"[^\n]*\n|[^\n]+$", after)]
    # the result is the old text with lines taken out (never changed, never reordered)
    it = iter(lines)
    assert all(any(line == old for old in it) for line in kept), (text, after)
    # every comment line that was not directly above the dropped entry (in its paragraph) is
    # still there, unless its whole paragraph lost its last entry
    para = _paragraph_of(lines, gone.line - 1)
    others = [e for e in entries if e != gone and para[0] <= e.line - 1 <= para[1]]
    own_start = gone.line - 1
    while own_start > para[0] and lines[own_start - 1].lstrip().startswith("#") and any(
            e.line - 1 < own_start for e in others):
        own_start -= 1
    removed = set(range(own_start, gone.line)) if others else set(range(para[0], para[1] + 1))
    for i, line in enumerate(lines):
        if i not in removed and line.lstrip().startswith("#"):
            assert line in kept, (line, text, after)


def _paragraph_of(lines: list[str], i: int) -> tuple[int, int]:
    blank = [not ln.strip() for ln in lines]
    lo = i
    while lo > 0 and not blank[lo - 1]:
        lo -= 1
    hi = i
    while hi + 1 < len(lines) and not blank[hi + 1]:
        hi += 1
    return lo, hi


TEXT = """\
# Local patches.

# == cdx ==
# the first patch
a.patch   # inline a
# about b
b.patch -p0 # inline b

# == cmm ==
c.patch
# trailing note of the section

# end
"""


def test_a_dropped_entry_takes_its_comment_above_and_inline():
    assert rewrite(TEXT, [SeriesEntry("a.patch"), SeriesEntry("c.patch")]) == \
        TEXT.replace("# about b\nb.patch -p0 # inline b\n", "")


def test_a_section_goes_when_its_last_entry_goes():
    got = rewrite(TEXT, [SeriesEntry("a.patch"), SeriesEntry("b.patch", 0)])
    assert got == TEXT.replace("\n# == cmm ==\nc.patch\n# trailing note of the section\n", "")


def test_a_changed_strip_keeps_indent_and_inline_comment():
    got = rewrite(TEXT, [SeriesEntry("a.patch"), SeriesEntry("b.patch"),
                         SeriesEntry("c.patch", 3)])
    assert "b.patch # inline b\n" in got and "\nc.patch -p3\n" in got
    assert got.count("\n") == TEXT.count("\n")


def test_new_entries_go_after_the_entry_before_them():
    got = rewrite(TEXT, [SeriesEntry("new0.patch"), SeriesEntry("a.patch"),
                         SeriesEntry("b.patch", 0), SeriesEntry("new1.patch"),
                         SeriesEntry("c.patch"), SeriesEntry("new2.patch")])
    # (the comments above a.patch are its section's header: new0 comes after them)
    assert got == (TEXT.replace("# the first patch\n", "# the first patch\nnew0.patch\n")
                   .replace("# inline b\n", "# inline b\nnew1.patch\n")
                   .replace("c.patch\n", "c.patch\nnew2.patch\n"))


def test_crlf_and_a_missing_final_newline_are_kept():
    text = "# h\r\n\r\na.patch # x\r\nb.patch"
    assert rewrite(text, parse(text)) == text
    assert rewrite(text, [SeriesEntry("b.patch")]) == "# h\r\n\r\nb.patch"
    assert rewrite(text, [SeriesEntry("b.patch"), SeriesEntry("n.patch")]) == \
        "# h\r\n\r\na.patch # x\r\nb.patch\nn.patch\n".replace("a.patch # x\r\n", "")
