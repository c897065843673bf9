"""The trainer's schedule: first student at min_cases, then every retrain_every new cases;
after a candidate held back by its gates, sooner (every min_cases)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from protege_services.trainer.handler import CaseStore, Trainer

from protege.events import HarvestCase
from protege.generator import triage_task
from protege.kafka import Received
from protege.student.train import Case, TrainResult
from protege.task import Task
from protege.topics import Topics

T = Topics("u.")


def records(start: int, n: int) -> list[Received[HarvestCase]]:
    out = []
    for i in range(start, start + n):
        case = HarvestCase(
            request_id=f"r{i}",
            tenant="acme",
            task="ticket-triage",
            text=f"text {i}",
            label="billing" if i % 2 else "refund",
            label_source="teacher",
            reason="escalated",
            harvested_at_ms=1,
        )
        out.append(Received(case, T.harvest, offset=i))
    return out


def test_schedule_retries_sooner_after_a_held_back_candidate(tmp_path: Path) -> None:
    verdicts = [False, True, True]  # the first candidate fails its gates
    trained: list[int] = []

    def train(cases: list[Case], tenant: str, task: Task, serving: Path | None) -> TrainResult:
        promoted = verdicts[len(trained)]
        trained.append(len(cases))
        return TrainResult(
            f"v{len(trained)}",
            tmp_path / f"v{len(trained)}",
            {"golden_accuracy": 0.9},
            ["a", "b"],
            promoted,
            "passed gates" if promoted else "golden accuracy 0.4 < floor 0.5",
        )

    trainer = Trainer(
        {"ticket-triage": triage_task()}, T, CaseStore(tmp_path / "store"), train, min_cases=40, retrain_every=1000
    )
    outs = asyncio.run(trainer.handle(records(0, 40)))
    assert trained == [40] and outs == []  # held back: nothing announced
    asyncio.run(trainer.handle(records(40, 39)))
    assert trained == [40]
    outs = asyncio.run(trainer.handle(records(79, 1)))  # min_cases more, not retrain_every
    assert trained == [40, 80] and [o.topic for o in outs] == [T.models]
    asyncio.run(trainer.handle(records(80, 100)))
    assert trained == [40, 80]  # promoted: back to every retrain_every
    # a case seen again (a re-read after a crash) adds nothing
    asyncio.run(trainer.handle(records(0, 40)))
    assert len(trainer.store.load("acme", "ticket-triage")) == 180
