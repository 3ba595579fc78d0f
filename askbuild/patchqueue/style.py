"""A patch file's own format, so that a re-written patch looks like the one it replaces.

:func:`detect` reads an existing patch file: a ``git format-patch`` mail (its ``From <sha>``
line style, ``[PATCH n/m]`` subject prefix, extra headers, diffstat or not, the abbreviation of
its ``index`` lines, its signature block) or a plain diff (its text before the first diff, its
path prefixes, ``diff --git`` lines or not).  :func:`render` writes a commit in that format:

* mail whose author, date and message did not change: the old headers and message byte for
  byte (the ``From`` line names the new commit, or stays zero when it was zero), then the new
  diff written as the old one was (diffstat or not, index abbreviation), then the old
  signature block byte for byte;
* mail whose message changed: ``git format-patch``'s headers with the old subject prefix and
  the old extra headers (``Cc:``, ``X-...``) kept;
* plain diff: the old text before the first diff, then ``git diff-tree`` with the old path
  prefixes (so the series' ``-pN`` stays right), without ``diff --git``/``index`` lines when
  the old file had none and the change needs none.

:data:`DEFAULT` is the format of a new patch: a mail with a zero ``From`` line, ``[PATCH]``, no
diffstat, full ``index`` lines and no signature (stable whatever the user's git config is).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from .. import gitutil
from .apply import is_mail

#: Mail headers ``git format-patch`` writes itself (the others of an old mail are "extra").
_OWN_HEADERS = {"from", "date", "subject", "mime-version", "content-type",
                "content-transfer-encoding"}
_ZERO = "0" * 40
_ENV = {"GIT_CONFIG_GLOBAL": "/dev/null"}
_CONFIG = ["-c", "diff.noprefix=false", "-c", "diff.mnemonicPrefix=false", "-c",
           "diff.renames=true", "-c", "diff.algorithm=myers", "-c", "format.signature=",
           "-c", "diff.relative=false"]
_GIT_ONLY_HEADERS = re.compile(rb"^(diff --git |index [0-9a-f]+\.\.[0-9a-f]+( 100644)?$|"
                               rb"new file mode 100644$|deleted file mode 100644$)")


class Style(NamedTuple):
    """How a patch file is written (see the module docstring)."""

    mail: bool = True
    zero_from: bool = True              # ``From 000...`` (else the commit's SHA)
    subject_prefix: str = "PATCH"       # "" for a subject without ``[...]``
    stat: bool = False
    abbrev: int = 40                    # digits of the ``index`` lines (40: full)
    signature: bytes = b""              # the old ``-- \n...`` block, verbatim
    head: bytes = b""                   # old headers + message (mails), old preamble (diffs)
    git_headers: bool = True            # plain diffs: ``diff --git`` lines
    prefixes: tuple[str, str] = ("a/", "b/")


DEFAULT = Style()


def split_mail(mail: bytes) -> tuple[bytes, bytes]:
    """(headers and message, the rest: diffstat if any, the diff, the signature)."""
    stat = mail.find(b"\n---\n")
    diff = mail.find(b"\ndiff --git ")
    if diff < 0:
        diff = mail.find(b"\n--- ")
    cut = stat if 0 <= stat and (stat < diff or diff < 0) else diff
    if cut < 0:
        return mail, b""
    return mail[:cut + 1], mail[cut + 1:]


def _signature(tail: bytes) -> bytes:
    """The signature block (``-- \\n`` to the end) after the last diff of ``tail``, or b""."""
    at = tail.rfind(b"\n-- \n")
    if at < 0:
        return b""
    block = tail[at + 1:]
    if re.search(rb"^(diff --git |@@ )", block, re.M):
        return b""          # "-- " was a removed line of the diff, not a signature
    return block


def _abbrev(data: bytes) -> int:
    m = re.search(rb"^index ([0-9a-f]+)\.\.([0-9a-f]+)", data, re.M)
    return len(m.group(1)) if m else 40


def _prefixes(data: bytes, strip: int) -> tuple[str, str]:
    """The first ``strip`` path components of the first ``---``/``+++`` paths (what ``-pN``
    takes off), as the source and destination prefixes."""
    def first(marker: bytes) -> str | None:
        for m in re.finditer(rb"^" + re.escape(marker) + rb" ([^\t\n]+)", data, re.M):
            path = m.group(1).decode("utf-8", "replace").rstrip("\r")
            if path != "/dev/null":
                parts = path.split("/")
                return "".join(p + "/" for p in parts[:strip]) if len(parts) > strip else None
        return None
    src, dst = first(b"---"), first(b"+++")
    if src is None and dst is None:
        return ("a/", "b/") if strip == 1 else ("", "")
    return (src if src is not None else dst or ""), (dst if dst is not None else src or "")


def detect(data: bytes, strip: int = 1) -> Style:
    """The format of the patch file ``data`` (applied with ``-p{strip}``)."""
    prefixes = _prefixes(data, strip)
    if not is_mail(data):
        first = re.search(rb"^(diff --git |--- )", data, re.M)
        return Style(mail=False, head=data[:first.start()] if first else b"",
                     git_headers=re.search(rb"^diff --git ", data, re.M) is not None,
                     abbrev=_abbrev(data), prefixes=prefixes)
    head, tail = split_mail(data)
    m = re.match(rb"From ([0-9a-f]{40}) ", data)
    subj = re.search(rb"^Subject:[ \t]*\[([^\]]*)\]", head, re.M | re.I)
    return Style(zero_from=(m is None or m.group(1).decode() == _ZERO),
                 subject_prefix=subj.group(1).decode("utf-8", "replace") if subj else "",
                 stat=tail.startswith(b"---\n"), abbrev=_abbrev(tail),
                 signature=_signature(tail), head=head, prefixes=prefixes)


def _diff_options(style: Style) -> list[str]:
    abbrev = ["--full-index"] if style.abbrev >= 40 else [f"--abbrev={style.abbrev}"]
    src, dst = style.prefixes
    prefix = ([] if style.prefixes == ("a/", "b/")
              else [f"--src-prefix={src}", f"--dst-prefix={dst}"])
    return [*abbrev, *prefix, "--unified=3", "-M"]


def _format_patch(tree: Path, commit: str, style: Style) -> bytes:
    prefix = ([f"--subject-prefix={style.subject_prefix}"] if style.subject_prefix
              else ["--keep-subject"])
    return gitutil.git(
        [*_CONFIG, "format-patch", "-1", "--stdout", "--no-signature", "--no-numbered",
         "--no-cover-letter", "--no-thread", "--encoding=UTF-8",
         *(["--zero-commit"] if style.zero_from else []),
         "--stat" if style.stat else "--no-stat", *prefix, *_diff_options(style),
         commit, "--"], cwd=tree, env=_ENV, text=False).stdout


def _headers(block: bytes) -> list[tuple[str, bytes]]:
    """The header lines of a mail head (after the ``From`` line), continuation lines joined to
    theirs: (lower-case key, the raw lines)."""
    out: list[tuple[str, bytes]] = []
    for line in block.split(b"\n"):
        if line[:1] in (b" ", b"\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + b"\n" + line)
        elif b":" in line:
            out.append((line.split(b":", 1)[0].strip().lower().decode("ascii", "replace"), line))
    return out


def _with_extra_headers(fresh_head: bytes, old_head: bytes) -> bytes:
    """``fresh_head`` with the headers of ``old_head`` that format-patch does not write."""
    old_block = old_head.split(b"\n\n", 1)[0].split(b"\n", 1)[-1]
    extra = [raw for key, raw in _headers(old_block) if key not in _OWN_HEADERS]
    if not extra:
        return fresh_head
    block, sep, rest = fresh_head.partition(b"\n\n")
    return block + b"\n" + b"\n".join(extra) + sep + rest


def _mail(tree: Path, commit: str, style: Style, same_message: bool) -> bytes:
    fresh = _format_patch(tree, commit, style)
    fresh_head, tail = split_mail(fresh)
    if same_message and style.head:
        from_line = fresh_head.split(b"\n", 1)[0] + b"\n"
        old = style.head.split(b"\n", 1)
        head = (from_line + old[1]) if style.head.startswith(b"From ") and len(old) > 1 \
            else style.head
    else:
        head = _with_extra_headers(fresh_head, style.head) if style.head else fresh_head
    return head + tail + style.signature


def _plain(tree: Path, commit: str, style: Style) -> bytes:
    diff = gitutil.git([*_CONFIG, "diff-tree", "-p", "--no-color", *_diff_options(style),
                        f"{commit}^", commit, "--"], cwd=tree, env=_ENV, text=False).stdout
    if not style.git_headers:
        lines = diff.split(b"\n")
        meta = [ln for ln in lines if ln and not ln.startswith((b"--- ", b"+++ ", b"@@ ", b" ",
                                                                 b"+", b"-", b"\\"))]
        if all(_GIT_ONLY_HEADERS.match(ln) for ln in meta):
            diff = b"\n".join(ln for ln in lines if ln not in meta)
    return style.head + diff


def render(tree: Path, commit: str, style: Style = DEFAULT, *,
           same_message: bool = False) -> bytes:
    """``commit`` of ``tree`` as a patch file in ``style``; ``same_message``: its author, date
    and message are those the old file gave (so the old headers and message are kept)."""
    if not style.mail:
        return _plain(tree, commit, style)
    return _mail(tree, commit, style, same_message)
