"""A record that a service's handler cannot survive is quarantined, not retried forever.

Each service runs its real handler in the processing loop its ``__main__`` builds (its
inputs, dead-letter topic, fallback, task check) on the real broker. The handler is
wrapped so that one record (marked ``POISON``) raises ``RecursionError`` every time, as the 10 KB
nested request once did in ingestion (that input itself is now refused by the decoder;
see test_serde): the poison is dead-lettered with the service, the exception and its
original bytes, the fallback still answers it where the service answers requests, the
records around it are handled exactly once, and the partition moves on. (The teacher's
own loop, which answers each request on its own: tests/integration/test_teacher_loop.py.)
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import protege_services.harvester.__main__
import protege_services.ingestion.__main__
import protege_services.scorer.__main__
import protege_services.teacher.__main__
import protege_services.trainer.__main__
import protege_services.verifier.__main__
import pytest
from protege_services.harvester.handler import Harvester
from protege_services.ingestion.handler import Ingestion, SeenIds
from protege_services.scorer.handler import Scorer
from protege_services.trainer.handler import CaseStore, Trainer
from protege_services.verifier.handler import Verifier

from protege.events import (
    DeadLetter,
    Decision,
    Event,
    HarvestCase,
    Ingested,
    Request,
    Scored,
    TeacherRequest,
    TeacherResult,
    Usage,
    now_ms,
)
from protege.generator import triage_task
from protege.harness import group_lag
from protege.kafka import Out, Processor, Received, producer
from protege.settings import (
    HarvesterSettings,
    IngestionSettings,
    ScorerSettings,
    Settings,
    TrainerSettings,
    VerifierSettings,
)
from protege.state import read_all
from protege.student.runtime import Student
from protege.student.train import TrainResult
from protege.topics import Topics

pytestmark = pytest.mark.kafka
TASK = triage_task()
TASKS = {TASK.name: TASK}
LABEL = next(iter(TASK.labels))
TEXTS = ["where is my parcel", "POISON please", "refund my order"]


def ingested(i: int) -> Ingested:
    return Ingested(request_id=f"r-{i}", tenant="acme", task=TASK.name, text=TEXTS[i], received_at_ms=now_ms())


def request(i: int) -> Request:
    return Request(request_id=f"r-{i}", tenant="acme", task=TASK.name, text=TEXTS[i])


def scored(i: int) -> Scored:
    return Scored(request=ingested(i), scored_at_ms=now_ms(), batch_size=1)


def result(i: int) -> TeacherResult:
    return TeacherResult(
        request_id=f"r-{i}",
        tenant="acme",
        task=TASK.name,
        text=TEXTS[i],
        label=LABEL,
        rationale="",
        teacher="standin:x",
        standin=True,
        usage=Usage(input_tokens=1, output_tokens=1),
        cost_usd=0.0,
        latency_ms=1.0,
        attempts=1,
        mode="answer",
        answered_at_ms=now_ms(),
    )


def case(i: int) -> HarvestCase:
    return HarvestCase(
        request_id=f"r-{i}",
        tenant="acme",
        task=TASK.name,
        text=TEXTS[i],
        label=LABEL,
        label_source="standin",
        reason="escalated",
        harvested_at_ms=now_ms(),
    )


@dataclass
class Wiring:
    """One service: its input topic, an event for it, its loop as __main__ builds it, where
    a good record's result goes, where the fallback answers the poison (None: no fallback)."""

    input: Callable[[Topics], str]
    event: Callable[[int], Event]
    build: Callable[[Settings], Processor]
    output: Callable[[Topics], str]
    answers: Callable[[Topics], str | None]


def ingestion(s: Settings) -> Processor:
    return protege_services.ingestion.__main__.processor(
        IngestionSettings(**dict(s)), TASKS, Ingestion(s.topics, max_text_chars=4000, seen=SeenIds(100))
    )


def scorer(s: Settings) -> Processor:
    return protege_services.scorer.__main__.processor(ScorerSettings(**dict(s)), Scorer(s.topics, load=no_model))


def one_hop(s: Settings) -> Processor:
    ingests = Ingestion(s.topics, max_text_chars=4000, seen=SeenIds(100))
    return protege_services.scorer.__main__.processor(
        ScorerSettings(**dict(s), one_hop=True),
        Scorer(s.topics, load=no_model, verifier=Verifier(TASKS, s.topics), ingestion=ingests),
    )


def verifier(s: Settings) -> Processor:
    return protege_services.verifier.__main__.processor(VerifierSettings(**dict(s)), Verifier(TASKS, s.topics))


def harvester(s: Settings) -> Processor:
    return protege_services.harvester.__main__.processor(HarvesterSettings(**dict(s)), Harvester(TASKS, s.topics))


def trainer(s: Settings) -> Processor:
    t = Trainer(TASKS, s.topics, CaseStore(s.home / "harvest"), not_due, min_cases=1000, retrain_every=1000)
    return protege_services.trainer.__main__.processor(TrainerSettings(**dict(s)), t)


def no_model(path: Path) -> Student:
    raise AssertionError("no model is announced here")


def not_due(*args: object) -> TrainResult:
    raise AssertionError("no retrain is due here")


SERVICES = {
    "ingestion": Wiring(lambda t: t.requests, request, ingestion, lambda t: t.ingested, lambda t: None),
    "scorer": Wiring(lambda t: t.ingested, ingested, scorer, lambda t: t.scored, lambda t: t.scored),
    # one hop: the poison is recorded on protege.dlq, not requests.dlq, as the teacher still answers it
    "scorer, one hop": Wiring(lambda t: t.requests, request, one_hop, lambda t: t.scored, lambda t: t.teacher_requests),
    "verifier": Wiring(
        lambda t: t.scored, scored, verifier, lambda t: t.teacher_requests, lambda t: t.teacher_requests
    ),
    "harvester": Wiring(lambda t: t.teacher_results, result, harvester, lambda t: t.harvest, lambda t: None),
    "trainer": Wiring(lambda t: t.harvest, case, trainer, lambda t: t.models, lambda t: None),
}


def poisoned(loop: Processor, calls: list[int]) -> Processor:
    """The same loop, with a handler that cannot survive the record marked POISON."""
    handle = loop.handle

    async def h(received: Sequence[Received[Any]]) -> list[Out]:
        calls.append(len(received))
        if any(b"POISON" in r.value for r in received):
            raise RecursionError("maximum recursion depth exceeded while decoding a JSON array")
        return await handle(received)

    loop.handle = h
    loop.retry_backoff_s = 0.05
    return loop


@pytest.mark.parametrize("name", list(SERVICES))
def test_a_record_the_handler_cannot_survive_is_quarantined(settings: Settings, tmp_path: Path, name: str) -> None:
    w, t = SERVICES[name], settings.topics
    calls: list[int] = []
    loop = poisoned(w.build(settings), calls)
    values = [w.event(i).dumps() for i in range(3)]

    async def go() -> None:
        prod = producer(settings)
        await prod.start()
        try:
            for v in values:  # one key: one partition, in this order
                await prod.send_and_wait(w.input(t), v, key=b"same-partition")
        finally:
            await prod.stop()
        stop = asyncio.Event()
        running = asyncio.create_task(loop.run(stop))
        for _ in range(300):
            if loop.processed == 3 or running.done():
                break
            await asyncio.sleep(0.05)
        stop.set()
        await running

    asyncio.run(go())
    assert loop.processed == 3 and loop.quarantined == 1
    assert calls[-3:] == [1, 1, 1], "the poison was tried alone, max_attempts times"
    letters = [DeadLetter.model_validate_json(r.value) for r in asyncio.run(read_all(settings, t.dlq))]
    letters += [DeadLetter.model_validate_json(r.value) for r in asyncio.run(read_all(settings, t.requests_dlq))]
    [letter] = letters
    assert loop.quarantine_letters == (t.requests_dlq if name == "ingestion" else t.dlq)
    assert (letter.reason, letter.service, letter.topic) == ("quarantined", name.split(",")[0], w.input(t))
    assert "RecursionError" in letter.detail and "3 attempts" in letter.detail
    assert base64.b64decode(letter.value_b64) == values[1]
    outs = [r for r in asyncio.run(read_all(settings, w.output(t)))]
    good = [r for r in outs if b"POISON" not in r.value and r.key != b"r-1"]
    expected = 0 if name == "trainer" else 2  # the trainer only writes its case store until a retrain is due
    assert len(good) == expected, [r.value[:200] for r in outs]
    answered = w.answers(t)
    if answered is not None:
        [fallback] = [r for r in asyncio.run(read_all(settings, answered)) if b"r-1" in (r.key or b"")]
        if name == "scorer":  # separate: passed on unscored; one hop decides it, to the teacher
            passed_on = Scored.model_validate_json(fallback.value)
            assert passed_on.student is None
            assert "RecursionError" in (passed_on.student_error or "")
        else:
            assert TeacherRequest.model_validate_json(fallback.value).reasons == ["quarantined"]
            # the teacher answers it, and a decision on record says why (reports count it)
            decisions = [Decision.model_validate_json(r.value) for r in asyncio.run(read_all(settings, t.decisions))]
            [decision] = [d for d in decisions if d.request_id == "r-1"]
            assert (decision.verdict, decision.route, decision.reasons) == ("escalate", "teacher", ["quarantined"])
    assert asyncio.run(group_lag(settings, loop.group, [w.input(t)])) == 0, "the partition moved on"
