"""Append-only JSON Lines state: a torn last line (a process killed mid-append) is cut off, and a
restarted trainer reads its cases and review rows back instead of crashing on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protege.events import HarvestCase
from protege.jsonl import DamagedFile, append, read_appended
from protege.review import ReviewStore
from services.trainer.handler import CaseStore
from tests.helpers import harvest_case


def test_a_missing_file_has_no_rows(tmp_path: Path) -> None:
    assert read_appended(tmp_path / "none.jsonl") == []


def test_a_torn_last_line_is_cut_off_and_the_next_append_starts_a_line(tmp_path: Path) -> None:
    path = tmp_path / "a" / "t.jsonl"
    append(path, {"n": 1})
    append(path, {"n": 2})
    whole = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b'{"n": 3, "text": "cut he')  # killed in the middle of the third append
    torn = path.read_bytes()
    assert read_appended(path) == [{"n": 1}, {"n": 2}]  # a reader: perhaps a write in progress
    assert path.read_bytes() == torn  # left alone
    assert read_appended(path, repair=True) == [{"n": 1}, {"n": 2}]  # the writer, at start
    assert path.read_bytes() == whole  # cut back to the last whole line
    append(path, {"n": 3})
    assert read_appended(path) == [{"n": 1}, {"n": 2}, {"n": 3}]


def test_a_torn_multibyte_character_is_cut_off_too(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    append(path, {"n": 1})
    with open(path, "ab") as f:
        f.write('{"text": "caf\u00e9'.encode()[:-1])  # half of the é
    assert read_appended(path, repair=True) == [{"n": 1}]
    assert path.read_text().endswith('{"n": 1}\n')


def test_a_whole_record_without_its_newline_is_kept_and_given_one(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"n": 1}\n\n{"n": 2}')  # a blank line, and the newline never written
    assert read_appended(path) == [{"n": 1}, {"n": 2}]
    assert path.read_bytes().endswith(b"}")  # a reader leaves it: the newline may be on its way
    assert read_appended(path, repair=True) == [{"n": 1}, {"n": 2}]
    append(path, {"n": 3})
    assert read_appended(path) == [{"n": 1}, {"n": 2}, {"n": 3}]


def test_a_damaged_line_before_the_last_says_where(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"n": 1}\n{"n": \n{"n": 3}\n')
    with pytest.raises(DamagedFile, match=r"t\.jsonl:2: not a JSON line"):
        read_appended(path)
    assert path.read_bytes() == b'{"n": 1}\n{"n": \n{"n": 3}\n'  # left as it was, for a person to look at
    path.write_bytes(b'{"n": 1}\n[1, 2]\n')
    with pytest.raises(DamagedFile, match=r"t\.jsonl:2: a JSON list, not an object"):
        read_appended(path)


def case(rid: str, label: str, source: str = "teacher", reason: str = "escalated") -> HarvestCase:
    return harvest_case(rid, label, source, reason=reason, task="triage")


def test_a_restarted_trainer_reads_its_cases_back_past_a_torn_append(tmp_path: Path) -> None:
    store = CaseStore(tmp_path)
    assert store.add(case("r1", "billing")) and store.add(case("r2", "shipping"))
    path = tmp_path / "acme" / "triage.jsonl"
    with open(path, "ab") as f:
        f.write(json.dumps({"request_id": "r3", "text": "x", "label": "billing"}).encode()[:20])
    again = CaseStore(tmp_path)  # the trainer after kill -9
    assert set(again.load("acme", "triage")) == {"r1", "r2"}
    assert again.add(case("r3", "billing"))  # redelivered from the harvest topic
    assert set(CaseStore(tmp_path).load("acme", "triage")) == {"r1", "r2", "r3"}


def test_a_restarted_trainer_reads_its_review_rows_back_past_a_torn_append(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path)
    store.add(case("r1", "billing", reason="review"))
    store.add(case("r1", "billing", source="feedback", reason="review"))
    store.mark_shift("acme", "triage", 1, "a test")
    path = tmp_path / "acme" / "triage.jsonl"
    with open(path, "ab") as f:
        f.write(b'{"request_id": "r2", "te')
    torn = path.read_bytes()
    reader = ReviewStore(tmp_path, writer=False)  # protege review status while the trainer runs
    assert reader.done("acme", "triage") == 1 and path.read_bytes() == torn
    again = ReviewStore(tmp_path)
    assert again.done("acme", "triage") == 1 and again.shift("acme", "triage") == 1
    again.add(case("r2", "shipping", reason="review"))
    assert set(ReviewStore(tmp_path).load("acme", "triage")) == {"r1", "r2"}
