"""The teacher's journal of paid answers on the real broker: an answer paid for by a worker
that died before its transaction committed is reused by the next worker (no second call);
once the batch commits, the entry is gone for every later reader."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from protege_services.teacher.handler import TeacherWorker
from protege_services.teacher.journal import AnswerJournal, key_of

from protege.events import DeadLetter, Response, TeacherResult
from protege.settings import Settings
from tests.unit.test_teacher_worker import ScriptedTeacher, T, ask, paid_invalid, task

pytestmark = pytest.mark.kafka


async def started(settings: Settings) -> tuple[AnswerJournal, asyncio.Event, asyncio.Task[None]]:
    journal, stop = AnswerJournal(settings), asyncio.Event()
    running = asyncio.create_task(journal.run(stop))
    await asyncio.wait_for(journal.caught_up.wait(), timeout=30)
    return journal, stop, running


async def stopped(stop: asyncio.Event, running: asyncio.Task[None]) -> None:
    stop.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(running, timeout=10)


def test_a_paid_answer_is_not_paid_again_after_a_crash(settings: Settings) -> None:
    async def scenario() -> tuple[int, int, list[TeacherResult], list[TeacherResult], int]:
        # First worker: pays for r1 and r2, then "dies" before its transaction commits.
        journal, stop, running = await started(settings)
        first = ScriptedTeacher("shipping", cost=0.02)
        records = [ask(rid="r1"), dataclasses.replace(ask(rid="r2", student_label=None), offset=1)]
        dying = TeacherWorker({"ticket-triage": task()}, T, first, 4, journal=journal)
        await dying.handle(records)
        await stopped(stop, running)
        # Second worker, a fresh process: reads the journal, answers both without a call.
        journal2, stop2, running2 = await started(settings)
        second = ScriptedTeacher("refund")  # would answer differently if it were asked
        worker = TeacherWorker({"ticket-triage": task()}, T, second, 4, journal=journal2)
        outs = await worker.handle(records)
        results = [TeacherResult.model_validate_json(o.value) for o in outs if o.topic == T.teacher_results]
        await worker.committed(records)  # its transaction committed: the entries are settled
        await stopped(stop2, running2)
        # A third reader finds nothing left to reuse.
        journal3, stop3, running3 = await started(settings)
        left = [journal3.get(key_of("acme", r)) for r in ("r1", "r2")]
        third = ScriptedTeacher("billing")
        await TeacherWorker({"ticket-triage": task()}, T, third, 4, journal=journal3).handle([ask(rid="r1")])
        await stopped(stop3, running3)
        return first.calls, second.calls, results, [x for x in left if x], third.calls

    first_calls, second_calls, results, left, third_calls = asyncio.run(scenario())
    assert first_calls == 2
    assert second_calls == 0
    assert sorted(r.request_id for r in results) == ["r1", "r2"]
    assert {r.label for r in results} == {"shipping"} and all(r.cost_usd == 0.02 for r in results)
    assert left == []
    assert third_calls == 1  # settled: a later request with the same id is a new call


def test_an_invalid_answer_is_not_paid_again_after_a_crash(settings: Settings) -> None:
    """Two calls answered outside the label set were paid for: the worker after a crash
    dead-letters and answers the request from the journal, without calling."""

    async def scenario() -> tuple[int, int, list[str], list[Response], bool]:
        journal, stop, running = await started(settings)
        first = ScriptedTeacher(failures=[paid_invalid(0.03)])
        records = [ask(rid="bad-1")]
        await TeacherWorker({"ticket-triage": task()}, T, first, 4, journal=journal).handle(records)
        await stopped(stop, running)
        journal2, stop2, running2 = await started(settings)
        second = ScriptedTeacher("refund")
        worker = TeacherWorker({"ticket-triage": task()}, T, second, 4, journal=journal2)
        outs = await worker.handle(records)
        await worker.committed(records)
        await stopped(stop2, running2)
        journal3, stop3, running3 = await started(settings)
        left = journal3.get_invalid(key_of("acme", "bad-1")) is not None
        await stopped(stop3, running3)
        reasons = [DeadLetter.model_validate_json(o.value).reason for o in outs if o.topic == T.dlq]
        answers = [Response.model_validate_json(o.value) for o in outs if o.topic == T.responses]
        return first.calls, second.calls, reasons, answers, left

    first_calls, second_calls, reasons, answers, left = asyncio.run(scenario())
    assert (first_calls, second_calls) == (1, 0)
    assert reasons == ["teacher_invalid_answer"]
    assert [(a.status, a.label) for a in answers] == [("degraded", "refund")]
    assert "invalid_label" in (answers[0].error or "")
    assert not left  # settled with its batch


def test_journal_topic_is_compacted(settings: Settings) -> None:
    async def policy() -> tuple[str, str]:
        admin = AIOKafkaAdminClient(**settings.kafka_kwargs())
        await admin.start()
        try:
            [resp] = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, settings.topics.teacher_journal)]
            )
            entries = {e[0]: e[1] for e in resp.resources[0][4]}
            return entries["cleanup.policy"], entries["retention.ms"]
        finally:
            await admin.close()

    assert asyncio.run(policy()) == ("compact,delete", str(7 * 24 * 3600 * 1000))
