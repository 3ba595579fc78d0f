"""The report model shared by patch, rebase and build reports: JSON schema, plain text, table."""

from __future__ import annotations

import io
import json

from rich.console import Console

from askbuild.report import SCHEMA, Report


def sample() -> Report:
    rep = Report("rebase", "rebase up onto v2", ["layer", "patch", "status", "commit", "detail"],
                 subject={"source": "up"})
    rep.add(layer="patches/up", patch="0001-a.patch", status="clean", commit="a" * 40, detail="")
    rep.add(layer="patches/up", patch="0002-b.patch", status="conflict", commit=None,
            detail="conflict in [lib]/x.c", files=["lib/x.c"])
    rep.ok = False
    rep.messages.append("a note")
    return rep


def test_json_document():
    data = json.loads(sample().to_json())
    assert data["schema"] == SCHEMA == "askbuild.report/1"
    assert data["ok"] is False and data["summary"] == {"clean": 1, "conflict": 1}
    assert data["rows"][0]["commit"] == "a" * 40          # full ids in JSON
    assert data["rows"][1]["files"] == ["lib/x.c"]        # extra keys kept
    assert data["messages"] == ["a note"]


def test_plain_text_is_aligned_and_shortens_commits():
    text = sample().plain()
    lines = text.splitlines()
    assert lines[0] == "rebase up onto v2"
    assert lines[1].split() == ["layer", "patch", "status", "commit", "detail"]
    assert lines[2].index("clean") == lines[1].index("status") == lines[3].index("conflict")
    assert lines[2].endswith(" " + "a" * 12)
    assert lines[-2] == "summary: 1 clean, 1 conflict" and lines[-1] == "a note"


def test_rich_table_keeps_brackets_literal():
    buf = io.StringIO()
    Console(file=buf, width=160, force_terminal=False, color_system=None).print(sample().table())
    out = buf.getvalue()
    assert "conflict in [lib]/x.c" in out and "0002-b.patch" in out


def test_emit_json_goes_to_stdout(capsys):
    sample().emit(as_json=True)
    cap = capsys.readouterr()
    assert json.loads(cap.out)["kind"] == "rebase" and cap.err == ""
