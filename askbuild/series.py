"""Quilt-style ``series`` files: which patches of a directory apply, in which order.

Format (one entry per line)::

    # comment lines and blank lines are ignored
    0001-cmm-run-in-foreground.patch
    fix-build.diff -p0          # optional -pN (strip N leading path components; default 1)

A patch name is a path relative to the series directory (no absolute paths, no ``..``, no
leading ``-``).  A symbolic link (the patch file, the ``series`` file or a subdirectory) may
point only inside the series directory: one pointing outside is refused, naming the link and
its target.  Every error names the file and the line.

Vendor patch directories may have no ``series`` file: then every ``*.patch`` file of the
directory applies, in sorted order (see :func:`load_dir`).

Rewriting a series (:func:`rewrite`, used by ``inv patches.export`` and ``inv rebase``) keeps
its comments byte for byte by this rule.  The file is read as *paragraphs*: runs of non-blank
lines, separated by runs of blank lines (white space only).

* An *entry line* keeps its own inline comment (``name -pN  # ...``) and its line ending.
* The comment lines directly above an entry, back to the previous entry of the same paragraph,
  are that entry's *own comments*: they stay, move and go with it.
* The comment lines of a paragraph before its first entry (and those after its last entry)
  are the paragraph's *section header*: kept while at least one entry of the paragraph is
  kept.
* A paragraph without entries (the leading block, a trailing block, a header followed by a
  blank line) belongs to no entry: it is always kept, as are the blank lines between kept
  paragraphs.
* A paragraph that loses all its entries disappears with its header and the blank-line run
  before it (the one after it when it is the first paragraph).
* An entry whose ``-pN`` changed has its name and option rewritten; its indentation and inline
  comment stay.  When the kept entries come in a new order, the k-th kept entry slot takes the
  k-th kept entry with its own comments.  A new entry is written on its own line right after the
  entry before it in the new list (before the first kept entry when it comes first; in place
  of the first dropped paragraph, or at the end, when no entry is kept).

So ``rewrite(text, parse(text)) == text``, and dropping an entry removes exactly its line and
its own comments (and its section, when that was its last entry).
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from .errors import ConfigError

SERIES_FILE = "series"
_STRIP_RE = re.compile(r"^-p([0-9]+)$")


class SeriesEntry(NamedTuple):
    """One patch of a series: its file name (relative to the directory) and -pN."""

    name: str
    strip: int = 1
    line: int = 0      # 1-based line in the series file; 0 when not from a file

    def format(self) -> str:
        return self.name if self.strip == 1 else f"{self.name} -p{self.strip}"


class SeriesError(ConfigError):
    """A series file (or a patch it names) is invalid: names the file and line."""


def check_name(name: str, where: str) -> str:
    p = PurePosixPath(name)
    if (not name or name.startswith("-") or p.is_absolute() or ".." in p.parts
            or "\\" in name or any(ord(c) < 0x20 for c in name)):
        raise SeriesError(
            f"{where}: invalid patch name {name!r}",
            fix="name a file inside the series directory (relative path, no '..', "
                "no leading '-')",
        )
    if name == SERIES_FILE:
        raise SeriesError(f"{where}: the series file cannot list itself")
    return name


def parse(text: str, *, path: str | Path = "series") -> list[SeriesEntry]:
    """Parse series text.  ``path`` is only used in error messages."""
    entries: list[SeriesEntry] = []
    seen: dict[str, int] = {}
    # Only "\n" ends a line (str.splitlines would also split on NEL, U+2028, ... inside a
    # comment); a trailing "\r" (CRLF series file) is not part of the line.
    for lineno, raw in enumerate(text.split("\n"), start=1):
        where = f"{path}:{lineno}"
        line = raw.removesuffix("\r")
        # '#' starts a comment at the start of a line or after white space
        m = re.search(r"(^|\s)#", line)
        if m:
            line = line[:m.start()]
        words = line.split()
        if not words:
            continue
        name = check_name(words[0], where)
        strip = 1
        for opt in words[1:]:
            sm = _STRIP_RE.match(opt)
            if sm:
                strip = int(sm.group(1))
                if strip > 16:
                    raise SeriesError(f"{where}: -p{strip} is out of range (0..16)")
            else:
                raise SeriesError(
                    f"{where}: unsupported option {opt!r} for patch {name!r}",
                    fix="only -pN is supported (e.g. 'fix.patch -p0'); '#' starts a comment",
                )
        if name in seen:
            raise SeriesError(
                f"{where}: patch {name!r} is listed twice (first on line {seen[name]})",
                fix="remove one of the lines",
            )
        seen[name] = lineno
        entries.append(SeriesEntry(name, strip, lineno))
    return entries


def header(text: str) -> str:
    """The leading comment / blank lines of a series file (kept when it is rewritten)."""
    out = []
    for raw in re.findall(r"[^\n]*\n|[^\n]+$", text):
        if raw.strip() == "" or raw.lstrip().startswith("#"):
            out.append(raw)
        else:
            break
    return "".join(out)


def render(entries: list[SeriesEntry], *, head: str = "") -> str:
    """Series text for ``entries`` (after the optional comment ``head``)."""
    if head and not head.endswith("\n"):
        head += "\n"
    return head + "".join(e.format() + "\n" for e in entries)


_COMMENT_RE = re.compile(r"(^|\s)#")


def _split_lines(text: str) -> list[str]:
    """The lines of ``text`` with their ``\n`` (only ``\n`` ends a line, as in :func:`parse`)."""
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


def _kind(raw: str) -> str:
    """``"blank"``, ``"comment"`` (a line that is only a comment) or ``"entry"``."""
    line = raw.rstrip("\n").removesuffix("\r")
    m = _COMMENT_RE.search(line)
    words = (line[:m.start()] if m else line).split()
    if words:
        return "entry"
    return "comment" if m else "blank"


class _Unit(NamedTuple):
    """An entry line with the comment lines it owns (directly above it in its paragraph)."""

    name: str
    comments: list[str]
    line: str


def _entry_line(old: str, entry: SeriesEntry) -> str:
    """``old`` (an entry line) naming ``entry``: indentation, inline comment and line ending
    kept; the name and ``-pN`` rewritten only when they differ."""
    end = old[len(old.rstrip("\r\n")):]
    body = old[:len(old) - len(end)]
    m = _COMMENT_RE.search(body)
    words_part, comment = (body[:m.start()], body[m.start():]) if m else (body, "")
    words = words_part.split()
    if words and parse(" ".join(words) + "\n")[0] == SeriesEntry(entry.name, entry.strip, 1):
        return old
    indent = words_part[:len(words_part) - len(words_part.lstrip())]
    gap = words_part[len(words_part.rstrip()):]         # the comment starts with a blank
    return f"{indent}{entry.format()}{gap if comment else ''}{comment}{end}"


def _paragraphs(text: str) -> list[tuple[list[str], list]]:
    """``text`` as (blank lines before, items) paragraphs; items are header comment lines
    (``str``) and :class:`_Unit` entries.  A final element may have only blank lines."""
    out: list[tuple[list[str], list]] = []
    blanks: list[str] = []
    items: list = []
    pending: list[str] = []          # comment lines not yet given to an entry
    for raw in _split_lines(text):
        kind = _kind(raw)
        if kind == "blank":
            if items or pending:
                out.append((blanks, items + pending))
                blanks, items, pending = [], [], []
            blanks.append(raw)
        elif kind == "comment":
            pending.append(raw)
        else:
            name = parse(raw.rstrip("\n").removesuffix("\r") + "\n")[0].name
            if not any(isinstance(i, _Unit) for i in items):
                items, pending = items + pending, []      # the section header
            items.append(_Unit(name, pending, raw))
            pending = []
    if items or pending or blanks:
        out.append((blanks, items + pending))
    return out


def rewrite(text: str, entries: list[SeriesEntry]) -> str:
    """The series file ``text`` listing ``entries`` instead, every comment and blank line of
    a kept entry or section kept byte for byte (the rule is in the module docstring)."""
    parse(text)                                       # refuse an invalid file with its line
    wanted = {e.name: e for e in entries}
    paras = _paragraphs(text)
    units = [i for _, items in paras for i in items if isinstance(i, _Unit)]
    by_name = {u.name: u for u in units}
    kept_old = [u for u in units if u.name in wanted]
    kept_new = [by_name[e.name] for e in entries if e.name in by_name]
    slot = {id(u): n for u, n in zip(kept_old, kept_new, strict=True)}
    new_after: dict[str | None, list[SeriesEntry]] = {}
    prev: str | None = None
    for e in entries:
        if e.name in by_name:
            prev = e.name
        else:
            new_after.setdefault(prev, []).append(e)

    def unit_pieces(u: _Unit) -> list[str]:
        line = _entry_line(u.line, wanted[u.name])
        return [*u.comments, line, *(e.format() + _eol(u.line)
                                     for e in new_after.get(u.name, []))]

    pieces: list[str] = []
    lead: list[str] | None = None       # blank lines before a dropped first paragraph
    placed_first = not new_after.get(None)
    for blanks, items in paras:
        body: list[str] = []
        had = alive = False
        for item in items:
            if not isinstance(item, _Unit):
                body.append(item)
                continue
            had = True
            if id(item) in slot:
                if not placed_first:
                    body += [e.format() + "\n" for e in new_after[None]]
                    placed_first = True
                body += unit_pieces(slot[id(item)])
                alive = True
        if had and not alive:
            if not kept_old and not placed_first:   # every entry new: they take its place
                pieces += [*blanks, *(e.format() + "\n" for e in new_after[None])]
                placed_first = True
            elif not pieces and lead is None:
                lead = blanks
            continue
        if lead is not None:
            blanks, lead = lead, None
        pieces += [*blanks, *body]
    if not placed_first:
        pieces += [e.format() + "\n" for e in new_after[None]]
    return "".join(_ensure_nl(p) for p in pieces[:-1]) + "".join(pieces[-1:])


def _eol(line: str) -> str:
    return "\r\n" if line.endswith("\r\n") else "\n"


def _ensure_nl(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.relative_to(directory)
    except ValueError:
        return False
    return True


def check_contained(directory: Path, name: str, where: str, top: Path | None = None) -> None:
    """Refuse (SeriesError naming the link and its target) when ``directory/name`` or a
    directory on the way to it is a symbolic link leading outside ``directory``.  ``top``:
    ``directory.resolve()``, when the caller has it already."""
    top = top or directory.resolve()
    cur = directory
    parts = PurePosixPath(name).parts
    linked = ".." in parts or PurePosixPath(name).is_absolute()
    for part in parts:
        cur = cur / part
        if not cur.is_symlink():
            continue
        linked = True
        target = os.readlink(cur)
        try:
            real = cur.resolve()
        except (OSError, RuntimeError) as e:     # a loop of links
            raise SeriesError(f"{where}: {cur} is a symbolic link to {target} that cannot be "
                              f"resolved ({e})", fix="replace the link with the file") from None
        if not _inside(real, top):
            raise SeriesError(
                f"{where}: {cur} is a symbolic link to {target}"
                + (f" ({real})" if str(real) != target else "")
                + f", outside the series directory {directory}; askbuild does not follow it",
                fix="copy the file into the series directory (or make the link point inside "
                    "it)")
    # no link and no "..": directory/name is top/name, inside by construction
    if linked and not _inside((directory / name).resolve(), top):
        raise SeriesError(f"{where}: {directory / name} leads outside the series directory "
                          f"{directory} ({(directory / name).resolve()})",
                          fix="copy the file into the series directory")


def load(directory: Path) -> list[SeriesEntry]:
    """The entries of ``directory/series``; each named patch must exist as a file inside the
    directory (see :func:`check_contained`)."""
    path = directory / SERIES_FILE
    if path.is_symlink():
        check_contained(directory, SERIES_FILE, str(path))
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError as e:
        raise SeriesError(f"{path}: series file not found",
                          fix="create it (an empty file means: no patches)") from e
    except IsADirectoryError as e:
        raise SeriesError(f"{path}: is a directory, not a series file") from e
    except UnicodeDecodeError as e:
        raise SeriesError(f"{path}: not UTF-8 text ({e})") from e
    except OSError as e:
        raise SeriesError(f"{path}: cannot read: {e.strerror or e}") from e
    entries = parse(text, path=path)
    top = directory.resolve()
    for e in entries:
        where = f"{path}:{e.line}: patch {e.name!r}"
        check_contained(directory, e.name, where, top)
        f = directory / e.name
        if not f.is_file():
            raise SeriesError(f"{path}:{e.line}: patch file {e.name!r} does not exist in "
                              f"{directory}",
                              fix="add the file or remove the line from the series")
    return entries


def load_dir(directory: Path) -> list[SeriesEntry]:
    """Entries of a directory: its ``series`` file, or else every ``*.patch`` sorted."""
    if (directory / SERIES_FILE).exists():
        return load(directory)
    return [SeriesEntry(p.name, 1, 0) for p in sorted(directory.glob("*.patch")) if p.is_file()]


def from_listing(directory_label: str, files: dict[str, bytes]) -> list[SeriesEntry]:
    """Entries of a directory given as ``{relative name: bytes}`` (read from a git tree).

    Same rules as :func:`load_dir`: the ``series`` file if present, else ``*.patch`` sorted.
    """
    if SERIES_FILE in files:
        path = f"{directory_label}/{SERIES_FILE}"
        try:
            text = files[SERIES_FILE].decode("utf-8")
        except UnicodeDecodeError as e:
            raise SeriesError(f"{path}: not UTF-8 text ({e})") from e
        entries = parse(text, path=path)
        for e in entries:
            if e.name not in files:
                raise SeriesError(f"{path}:{e.line}: patch file {e.name!r} does not exist in "
                                  f"{directory_label}")
        return entries
    return [SeriesEntry(n, 1, 0) for n in sorted(files) if n.endswith(".patch") and "/" not in n]
