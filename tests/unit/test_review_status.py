"""``protege review status``: what the review sample has grown, read from the trainer's store,
with every shift the trainer marked and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from protege.cli import app
from protege.events import HarvestCase
from protege.review import ReviewStore
from protege.task import load_task
from tests.helpers import harvest_case

REPO = Path(__file__).resolve().parents[2]


def half(rid: str, label: str, *, by: str | None = None) -> HarvestCase:
    return harvest_case(rid, label, "teacher" if by is None else "feedback", by)


def test_status_counts_rows_splits_and_shifts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROTEGE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PROTEGE_TASKS_DIR", str(REPO / "tests" / "tasks"))
    task = load_task(REPO / "tests" / "tasks" / "ticket-triage.yaml")
    store = ReviewStore(tmp_path / "home" / "review")
    for i in range(4):  # four rows complete, one person each (and r6 below, then split)
        store.add(half(f"r{i}", "billing"))
        store.add(half(f"r{i}", "billing", by="ann"))
    store.add(half("r4", "refund"))  # the teacher answered; no person yet
    store.add(half("r5", "login", by="ann"))  # a person labelled; the teacher's answer not in yet
    store.add(half("r6", "shipping"))
    store.add(half("r6", "shipping", by="ann"))
    store.add(half("r6", "refund", by="bob"))  # split: no majority
    store.mark_shift("acme", "ticket-triage", 2, "v0007: the out-of-scope share rose from 1.0% to 9.0%")

    got = ReviewStore(tmp_path / "home" / "review").status("acme", task)  # as a restarted reader sees it
    assert got["completed"] == 5 and got["counting_from"] == 2 and got["counting"] == 2
    assert got["waiting_for_a_label"] == 1 and got["waiting_for_the_teacher"] == 1 and got["disputed"] == 1
    assert [m["shift"] for m in got["shifts"]] == [2] and got["shifts"][0]["at_ms"] > 0

    shown = CliRunner().invoke(app, ["review", "status", "--tenant", "acme", "--task", "ticket-triage"])
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "5 rows completed" in text and "2 count now (from row 2)" in text
    assert "1 for a person's label, 1 for the teacher's answer; 1 disputed" in text
    assert "rows from 2 on count; v0007: the out-of-scope share rose from 1.0% to 9.0%" in text
    as_json = CliRunner().invoke(app, ["review", "status", "--tenant", "acme", "--task", "ticket-triage", "--json"])
    assert json.loads(as_json.stdout)["counting"] == 2


def test_status_says_which_line_of_a_damaged_store_is_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROTEGE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PROTEGE_TASKS_DIR", str(REPO / "tests" / "tasks"))
    path = tmp_path / "home" / "review" / "acme" / "ticket-triage.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text('{"request_id": "r1", "teacher": "billing", "text": "t"}\nnot json\n{"shift": 1}\n')
    shown = CliRunner().invoke(app, ["review", "status", "--tenant", "acme", "--task", "ticket-triage"])
    # the console wraps the long path wherever its width falls (mid-word with some tmp paths)
    assert shown.exit_code == 1 and "ticket-triage.jsonl:2:notaJSONline" in "".join(shown.output.split())
