from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from protege.errors import ConfigError
from protege.generator import CATEGORIES, generate, template_task, triage_task
from protege.task import load_task, load_tasks, write_task

REPO = Path(__file__).resolve().parents[2]


def test_shipped_task_file_is_the_generator_s() -> None:
    assert load_task(REPO / "tasks" / "ticket-triage.yaml") == template_task()
    assert load_task(REPO / "tests" / "tasks" / "ticket-triage.yaml") == triage_task()


def test_the_shipped_template_ships_versions_gradually_and_up_without_a_monitor_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from protege.cli.services import warn_trials_wait

    assert template_task().student.canary.share == 0.1 and triage_task().student.canary.share == 0
    warn_trials_wait(REPO / "tasks")
    out = " ".join(capsys.readouterr().err.split())
    assert "ticket-triage puts each new version on trial for 10% of requests" in out and "promote" in out
    warn_trials_wait(REPO / "tests" / "tasks")  # no canary: nothing to say
    (tmp_path / "bad.yaml").write_text("name: [\n")
    warn_trials_wait(tmp_path)  # broken task files: the services say what is wrong
    assert capsys.readouterr().err == ""


def test_task_round_trips_and_rejects_bad_files(tmp_path: Path) -> None:
    write_task(triage_task(), tmp_path / "a.yaml")
    assert load_tasks(tmp_path)["ticket-triage"] == triage_task()
    (tmp_path / "b.yaml").write_text("name: x\nlabels: {a: b}\ninstructions: hi\n")
    with pytest.raises(ConfigError, match="labels"):
        load_tasks(tmp_path)
    (tmp_path / "b.yaml").write_text(
        "name: x\nlabels: {a: b, c: d}\ninstructions: hi\npolicy: {escalate_patterns: ['(']}\n"
    )
    with pytest.raises(ConfigError, match="does not compile"):
        load_tasks(tmp_path)


def test_generator_is_deterministic_and_varied() -> None:
    rows = generate(3000, seed=11)
    assert rows == generate(3000, seed=11) and rows != generate(3000, seed=12)
    labels = Counter(r["label"] for r in rows)
    assert set(labels) == {*CATEGORIES, "oos"} and len(CATEGORIES) == 12
    assert 0.03 < labels["oos"] / len(rows) < 0.09
    texts = [r["text"] for r in rows]
    assert any("!!" in t for t in texts) and any(" and also " in t for t in texts)
    assert any(len(t.split()) <= 4 for t in texts)
    assert len(set(texts)) > 0.8 * len(texts)
