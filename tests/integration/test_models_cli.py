"""`protege models` against the real broker: list, pin, rollback, unpin are announcements
on protege.models that a scorer replays."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from protege.cli import app
from protege.events import TeacherResult, Usage
from protege.kafka import Out, publish
from protege.registry import Registry
from protege.serving import read_serving
from protege.settings import Settings
from protege.student.manifest import Calibration, Data, GateReport, Ood, Target
from tests.helpers import manifest_only

pytestmark = pytest.mark.kafka


def fake_version(registry: Path, name: str, acc: float, failed: tuple[str, ...] = ()) -> None:
    """A registry folder with a complete manifest (no model: these commands only announce)."""
    manifest_only(
        Registry(registry).folder("acme", "triage") / name,
        task="triage",
        labels=["a", "b"],
        calibration=Calibration(temperature=1.2),
        ood=Ood(k=5, bank=80),
        acceptance_target=Target(target_accuracy=0.97, confidence_level=0.95),
        metrics={"golden_accuracy": acc, "golden_macro_f1": acc, "golden_ece": 0.02, "golden_coverage": 0.5},
        golden={"accuracy": acc},
        gates=GateReport(config={}, failed=list(failed), passed=not failed),
        data=Data(
            cases=100,
            request_ids_sha256="0" * 64,
            split={"fit": 75, "calib": 15, "golden": 10},
            label_counts={"a": 50, "b": 50},
        ),
        created_at="2026-11-23T10:00:00Z",
    )


def audit(i: int, agreed: bool) -> TeacherResult:
    return TeacherResult(
        request_id=f"audit-{i}",
        tenant="acme",
        task="triage",
        text="t",
        label="a",
        teacher="standin:claude-sonnet-4-6",
        standin=True,
        usage=Usage(input_tokens=10, output_tokens=5, estimated=True),
        cost_usd=0.001,
        latency_ms=1,
        attempts=1,
        mode="audit",
        student_label="a" if agreed else "b",
        model_version="v0003-cccc",
        answered_at_ms=1,
    )


def test_pin_rollback_unpin(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, acc in (("v0001-aaaa", 0.81), ("v0002-bbbb", 0.86), ("v0003-cccc", 0.9)):
        fake_version(settings.home / "registry", name, acc)
    fake_version(settings.home / "registry", "v0004-dddd", 0.4, failed=("golden accuracy 0.400 < floor 0.500",))
    for key, value in {
        "PROTEGE_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "PROTEGE_TOPIC_PREFIX": settings.topic_prefix,
        "PROTEGE_HOME": str(settings.home),
    }.items():
        monkeypatch.setenv(key, value)
    run = CliRunner().invoke
    args = ["--tenant", "acme", "--task", "triage"]
    for name in ("v0001", "v0002", "v0003"):
        assert run(app, ["models", "promote", name, *args]).exit_code == 0
    refused = run(app, ["models", "promote", "v0004", *args])  # failed its gates: not without --force
    said = " ".join(re.sub(r"[│╭╮╰╯─]", " ", refused.output).split())
    assert refused.exit_code == 2 and "failed its release gates: golden accuracy 0.400 < floor 0.500" in said
    rolled = run(app, ["models", "rollback", *args])
    assert rolled.exit_code == 0, rolled.output

    def history() -> tuple[list[str], bool]:
        serving = asyncio.run(read_serving(settings))
        return serving.history("acme", "triage"), serving.is_pinned("acme", "triage")

    assert history() == (["v0001-aaaa", "v0002-bbbb", "v0003-cccc", "v0002-bbbb"], True)
    # two audits of v0003's answers on record, one the teacher agreed with
    asyncio.run(publish(settings, [Out.of(settings.topics.teacher_results, audit(i, agreed=i == 0)) for i in range(2)]))
    listed = run(app, ["models", "list", *args])
    assert listed.exit_code == 0 and "pinned" in listed.output and "v0003-cccc" in listed.output
    assert "held back" in listed.output
    rows = {line.split("│")[1].strip(): line for line in listed.output.splitlines() if "│ v000" in line}
    assert "0.970 @ 95%" in rows["v0003-cccc"] and "none certified" in rows["v0003-cccc"]
    assert "0.500 (2)" in rows["v0003-cccc"] and "0.500 (2)" not in rows["v0002-bbbb"]
    assert run(app, ["models", "unpin", *args]).exit_code == 0
    assert history()[1] is False
    shown = run(app, ["models", "show", "v0002", *args])
    assert json.loads(shown.output)["version"] == "v0002-bbbb"
    assert run(app, ["models", "show", "v0009", *args]).exit_code != 0


def test_train_announce_waits_for_a_trial_to_end(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, backbone: Path
) -> None:
    """`protege train --announce` (the scheduled fine-tune) trains no candidate while one is on
    trial, as the trainer keeps it: one trial at a time; exit 3, the version not written."""
    from protege.events import ModelAnnouncement

    tasks = Path(__file__).resolve().parents[1] / "tasks"
    for key, value in {
        "PROTEGE_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "PROTEGE_TOPIC_PREFIX": settings.topic_prefix,
        "PROTEGE_HOME": str(settings.home),
        "PROTEGE_TASKS_DIR": str(tasks),
    }.items():
        monkeypatch.setenv(key, value)
    steps = [("v0001-aaaa", "serve", None), ("v0002-bbbb", "canary", 0.25)]
    anns = [
        ModelAnnouncement(
            tenant="acme",
            task="ticket-triage",
            version=v,
            path=f"/reg/{v}",
            labels=["a"],
            metrics={},
            trained_on=1,
            action=action,  # type: ignore[arg-type]
            share=share,
            announced_at_ms=i,
        )
        for i, (v, action, share) in enumerate(steps)
    ]
    asyncio.run(publish(settings, [Out.of(settings.topics.models, a) for a in anns]))
    cases = tmp_path / "cases.jsonl"
    cases.write_text("".join(json.dumps({"id": f"c{i}", "text": f"text {i}", "label": "a"}) + "\n" for i in range(9)))
    args = ["train", "--tenant", "acme", "--task", "ticket-triage", "--input", str(cases), "--announce"]
    held = CliRunner().invoke(app, args)
    assert held.exit_code == 3 and "v0002-bbbb is on trial for acme/ticket-triage" in held.output, held.output
    assert not (settings.home / "registry" / "acme" / "ticket-triage").exists()  # nothing trained
