"""Reports: one model for patch, rebase and (later) build results.

A :class:`Report` is a title, a list of rows (dicts with the same keys) and a summary.  It is
shown as a rich table on a terminal, as plain aligned text otherwise (CI, pipes), and as JSON
with ``--json`` (on stdout; the schema is documented in ``docs/reports.md``).
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from . import console

if TYPE_CHECKING:
    from rich.table import Table

SCHEMA = "askbuild.report/1"

# status -> rich style, for the table
STYLES = {
    "applied": "green", "clean": "green", "unchanged": "dim", "ok": "green",
    "3way": "yellow", "resolved": "yellow", "upstream": "cyan", "skipped": "magenta",
    "conflict": "bold red", "failed": "bold red", "pending": "dim",
}


class Report:
    """``kind``: "patch", "patch-check", "rebase", "build"; ``rows``: dicts, ``columns``: the
    keys shown in the table (JSON carries every key of every row).  (A plain class: see
    :class:`askbuild.settings.Settings` on ``dataclasses``.)"""

    def __init__(self, kind: str, title: str, columns: list[str], *,
                 rows: list[dict[str, Any]] | None = None,
                 subject: dict[str, Any] | None = None, ok: bool = True,
                 messages: list[str] | None = None) -> None:
        self.kind, self.title, self.columns = kind, title, columns
        self.rows: list[dict[str, Any]] = [] if rows is None else rows
        self.subject: dict[str, Any] = {} if subject is None else subject
        self.ok = ok
        self.messages: list[str] = [] if messages is None else messages

    def __repr__(self) -> str:
        return (f"Report({self.kind!r}, {self.title!r}, {len(self.rows)} rows, "
                f"ok={self.ok!r})")

    def add(self, **row: Any) -> dict[str, Any]:
        self.rows.append(row)
        return row

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.rows:
            s = str(r.get("status", ""))
            counts[s] = counts.get(s, 0) + 1
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "kind": self.kind,
            "title": self.title,
            "ok": self.ok,
            "subject": self.subject,
            "columns": self.columns,
            "rows": self.rows,
            "summary": self.summary(),
            "messages": self.messages,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    # -- rendering ------------------------------------------------------------------------
    def _cell(self, row: dict, col: str) -> str:
        v = row.get(col)
        if v is None:
            return ""
        if isinstance(v, list | tuple):
            return ", ".join(str(x) for x in v)
        if col == "commit" and isinstance(v, str) and len(v) == 40:
            return v[:12]
        return str(v)

    def plain(self) -> str:
        """Aligned plain text (no colour): CI logs and pipes."""
        lines = [self.title]
        if self.rows:
            cells = [[self._cell(r, c) for c in self.columns] for r in self.rows]
            widths = [max(len(c), *(len(row[i]) for row in cells))
                      for i, c in enumerate(self.columns)]
            for row in [self.columns, *cells]:
                pairs = zip(row, widths, strict=True)
                lines.append("  ".join(v.ljust(w) for v, w in pairs).rstrip())
        else:
            lines.append("(nothing to report)")
        summ = ", ".join(f"{n} {s}" for s, n in self.summary().items())
        if summ:
            lines.append(f"summary: {summ}")
        lines.extend(self.messages)
        return "\n".join(lines) + "\n"

    def table(self) -> Table:
        from rich.table import Table  # (only for a terminal)
        t = Table(title=self.title, title_justify="left")
        for c in self.columns:
            t.add_column(c)
        for r in self.rows:
            cells = []
            for c in self.columns:
                text = self._cell(r, c)
                if c == "status" and text in STYLES:
                    text = f"[{STYLES[text]}]{text}[/]"
                else:
                    text = text.replace("[", r"\[")
                cells.append(text)
            t.add_row(*cells)
        return t

    def emit(self, *, as_json: bool = False) -> None:
        """JSON on stdout with ``as_json``; else a table (terminal) or plain text on stderr."""
        if as_json:
            sys.stdout.write(self.to_json())
            sys.stdout.flush()
            return
        con = console.get_console()
        if console.is_interactive():
            con.print(self.table())
            summ = ", ".join(f"{n} {s}" for s, n in self.summary().items())
            if summ:
                con.print(f"summary: {summ}", markup=False, highlight=False)
            for m in self.messages:
                con.print(m, markup=False, highlight=False)
        else:
            con.print(self.plain(), markup=False, highlight=False, end="")
