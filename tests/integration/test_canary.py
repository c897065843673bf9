"""Canaries on the real broker, judged by the running monitor (faust-streaming) on the audits
and escalations it reads: a candidate trained on corrupted labels (every label shifted to the next: it passes its gates,
which are measured on the same corrupted labels) is rolled back by itself; a good one is
promoted by itself. During both every request is answered once and scored once, and a
request's arm (a hash of its id) decides which version meets it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from protege.broker.embedded import EmbeddedBroker
from protege.canary import arm
from protege.cli import app
from protege.events import ModelAnnouncement, Scored
from protege.generator import generate, write_jsonl
from protege.harness import drive, summarize
from protege.pipeline import LocalPipeline
from protege.settings import Settings
from protege.state import read_all
from protege.student.runtime import Encoder
from protege.student.train import Case, EmbeddingCache, FastRecipe, train_version
from protege.supervisor import SERVICES
from protege.task import Canary, load_task, write_task

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
SHARE = 0.25


def announcements(settings: Settings) -> list[ModelAnnouncement]:
    return [
        ModelAnnouncement.model_validate_json(r.value) for r in asyncio.run(read_all(settings, settings.topics.models))
    ]


def verdict(settings: Settings, version: str, timeout: float = 120) -> ModelAnnouncement:
    """The monitor's verdict on a canary: a serve (promoted) or an abort (rolled back) of it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [
            a
            for a in announcements(settings)
            if a.version == version and a.source == "monitor" and a.action in ("serve", "abort")
        ]
        if found:
            return found[0]
        time.sleep(1)
    raise AssertionError(f"no verdict on {version} within {timeout} s")


def test_a_corrupted_candidate_is_rolled_back_and_a_good_one_promoted(
    kafka: EmbeddedBroker, backbone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    rows = generate(1500, seed=47)
    write_jsonl(rows, home / "labels.jsonl")
    base = load_task(REPO / "tests" / "tasks" / "ticket-triage.yaml")
    canary = Canary(
        share=SHARE, audit_rate=1.0, min_audits=15, max_audits=300, margin=0.2, escalation_margin=0.15, confidence=0.9
    )
    task = base.model_copy(update={"student": base.student.model_copy(update={"canary": canary})})
    write_task(task, home / "tasks" / "ticket-triage.yaml")
    labels = sorted({r["label"] for r in rows})
    shifted = {a: labels[(i + 1) % len(labels)] for i, a in enumerate(labels)}
    recipe = FastRecipe(EmbeddingCache(Encoder(backbone / "model.onnx", backbone / "tokenizer.json")), backbone)
    cases = [Case(r["id"], r["text"], r["label"]) for r in rows[:700]]
    registry = home / "registry"
    serving = train_version(cases[:300], recipe=recipe, registry=registry, tenant="can", task=task)
    bad = train_version(
        [Case(c.request_id, c.text, shifted[c.label]) for c in cases[:300]],
        recipe=recipe,
        registry=registry,
        tenant="can",
        task=task,
    )
    good = train_version(cases, recipe=recipe, registry=registry, tenant="can", task=task)
    assert serving.promoted and bad.promoted and good.promoted  # the corrupted one passes its own gates
    env = {
        "PROTEGE_TASKS_DIR": str(home / "tasks"),
        "PROTEGE_STANDIN_LABELS": str(home / "labels.jsonl"),
        "PROTEGE_MIN_CASES": "100000",  # no version of the trainer's own here
        "PROTEGE_BACKBONE": str(backbone),
        "PROTEGE_THREADS": "1",
        "PROTEGE_TRAINER_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    prefix = f"can{int(time.time())}."
    services = [*SERVICES, "monitor"]
    with LocalPipeline(home, env=env, bootstrap=kafka.bootstrap, topic_prefix=prefix, services=services) as p:
        settings = p.settings
        for key, value in {
            "PROTEGE_BOOTSTRAP_SERVERS": kafka.bootstrap,
            "PROTEGE_TOPIC_PREFIX": prefix,
            "PROTEGE_HOME": str(home),
        }.items():
            monkeypatch.setenv(key, value)
        cli = CliRunner()
        args = ["--tenant", "can", "--task", task.name]
        assert cli.invoke(app, ["models", "promote", serving.version, *args]).exit_code == 0
        time.sleep(3)  # the scorer loads it

        def trial(version: str, stream: list[dict]) -> tuple[dict, ModelAnnouncement]:
            put = cli.invoke(app, ["models", "canary", version, "--share", str(SHARE), *args])
            assert put.exit_code == 0, put.output
            time.sleep(3)  # the scorer loads the candidate
            d = asyncio.run(drive(settings, stream, tenant="can", task=task.name, rate=40, timeout=180, linger=3.0))
            return summarize(d), verdict(settings, version)

        first, rolled = trial(bad.version, rows[700:1100])
        second, promoted = trial(good.version, rows[1100:1500])
        scored = [Scored.model_validate_json(r.value) for r in asyncio.run(read_all(settings, settings.topics.scored))]

    assert (first["answered"], first["duplicates"]) == (400, 0)
    assert (second["answered"], second["duplicates"]) == (400, 0)
    assert rolled.action == "abort" and rolled.reason.startswith("canary rolled back")
    assert rolled.evidence["canary_audits"] >= 15 and rolled.evidence["high"] < -0.2
    assert rolled.evidence["canary_decided"] >= rolled.evidence["canary_audits"]  # escalations weighed too
    assert promoted.action == "serve" and promoted.reason.startswith("canary promoted")
    assert promoted.evidence["low"] > -0.2 and promoted.evidence["escalation_high"] < canary.escalation_margin
    mine = [s for s in scored if s.request.tenant == "can" and s.student is not None]
    assert len({s.request.request_id for s in mine}) == len(mine)  # scored once each
    for s in mine:  # each request met the version its arm gave it
        student, rid = s.student, s.request.request_id
        assert student is not None
        if student.arm == "canary":
            assert arm(rid, SHARE) == "canary" and student.model_version in (bad.version, good.version)
        elif student.arm == "control":
            assert arm(rid, SHARE) == "control" and student.model_version == serving.version
        if student.model_version == bad.version:
            assert student.arm == "canary"
    on_trial = [s for s in mine if s.student is not None and s.student.model_version == bad.version]
    assert on_trial, "the corrupted candidate never answered"
