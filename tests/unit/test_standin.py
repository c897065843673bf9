from __future__ import annotations

import asyncio
from pathlib import Path

from protege.generator import generate, triage_task, write_jsonl
from protege.task import OOS
from protege.teacher import StandinTeacher
from protege.text import normalize

TASK = triage_task()


def test_standin_answers_from_labels_and_says_so(tmp_path: Path) -> None:
    rows = generate(50, seed=1)
    write_jsonl(rows, tmp_path / "l.jsonl")
    t = StandinTeacher.from_jsonl(tmp_path / "l.jsonl")
    for row in rows:
        # ingestion normalises text; the stand-in must find it all the same
        a = asyncio.run(t.label(TASK, normalize("  " + row["text"] + "\t"), "r"))
        assert a.label == row["label"]
        assert a.standin and a.model.startswith("standin:") and a.usage.estimated and a.cost_usd > 0


def test_unknown_text_is_out_of_scope() -> None:
    a = asyncio.run(StandinTeacher({}).label(TASK, "something never seen", "r"))
    assert a.label == OOS


def test_noise_rate_is_honoured_and_deterministic() -> None:
    rows = generate(2000, seed=2)
    t = StandinTeacher({normalize(r["text"]): r["label"] for r in rows}, noise=0.2)
    answers = [asyncio.run(t.label(TASK, r["text"], f"id{i}")).label for i, r in enumerate(rows)]
    wrong = sum(a != r["label"] for a, r in zip(answers, rows, strict=True)) / len(rows)
    assert 0.16 < wrong < 0.24
    again = [asyncio.run(t.label(TASK, r["text"], f"id{i}")).label for i, r in enumerate(rows[:100])]
    assert again == answers[:100]
