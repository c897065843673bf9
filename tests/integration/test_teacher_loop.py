"""The teacher's loop (services/teacher/loop.py) on the real broker, with the real SDK
against the local Messages API server: each request is answered as soon as its own call
returns — a slow call holds back no other answer, only its partition's committed offset;
a request answered beyond that offset is marked on the journal, and a worker that reads it
again passes it over (answered once, paid once); a request the worker cannot survive is
quarantined and answered."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import anthropic
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from protege_services.teacher.handler import TeacherWorker
from protege_services.teacher.journal import AnswerJournal
from protege_services.teacher.loop import AnswerLoop

from protege.events import DeadLetter, Ingested, Response, TeacherRequest, now_ms
from protege.kafka import Received, producer
from protege.settings import Settings
from protege.state import read_all
from protege.teacher import AnthropicTeacher
from tests.helpers import uid
from tests.messages_api import MessagesAPI, serve
from tests.unit.test_teacher_worker import task

pytestmark = pytest.mark.kafka
N = 10


def text(i: int) -> str:
    return f"ticket {i}: my parcel never arrived"


def request(i: int) -> TeacherRequest:
    req = Ingested(request_id=f"r{i}", tenant="acme", task="ticket-triage", text=text(i), received_at_ms=now_ms())
    return TeacherRequest(request=req, reasons=["low_confidence"], student_label="refund", requested_at_ms=now_ms())


async def publish(settings: Settings, n: int = N) -> None:
    prod = producer(settings)
    await prod.start()
    try:
        for i in range(n):  # one key: one partition, r0 first
            await prod.send_and_wait(settings.topics.teacher_requests, request(i).dumps(), key=b"one")
    finally:
        await prod.stop()


async def committed(settings: Settings, group: str) -> int:
    """The group's committed offset on the requests' partition (one key: the partition holding them)."""
    admin = AIOKafkaAdminClient(**settings.kafka_kwargs())
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    tps = [tp for tp in offsets if tp.topic == settings.topics.teacher_requests and offsets[tp].offset > 0]
    return max((offsets[tp].offset for tp in tps), default=0)


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60) -> None:
    for _ in range(int(timeout / 0.2)):
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"waited {timeout} s for {what}")


def at(settings: Settings, offset: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await committed(settings, f"{settings.topic_prefix}protege-teacher") == offset

    return check


def answered(settings: Settings, ids: set[str]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return {r.request_id for r in await responses(settings)} >= ids

    return check


def emptied(journal: AnswerJournal) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not journal.handled

    return check


async def responses(settings: Settings) -> list[Response]:
    return [Response.model_validate_json(r.value) for r in await read_all(settings, settings.topics.responses)]


class Running:
    """A journal and a loop over teacher.requests, started and stopped together."""

    def __init__(self, settings: Settings, api: MessagesAPI, *, drain_s: float = 30.0) -> None:
        self.settings = settings
        self.journal = AnswerJournal(settings)
        self.client = anthropic.AsyncAnthropic(api_key="sk-test", base_url=api.url, max_retries=0, timeout=60)
        self.worker = TeacherWorker(
            {"ticket-triage": task()},
            settings.topics,
            AnthropicTeacher(self.client),
            8,
            unavailable=(anthropic.APIError,),
            journal=self.journal,
        )
        self.loop = AnswerLoop(settings, "teacher", settings.topics.teacher_requests, self.worker, capacity=32)
        self.loop.drain_s = drain_s
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []

    async def __aenter__(self) -> Running:
        reading = asyncio.create_task(self.journal.run(self.stop))
        await self.journal.view.ready(reading)
        self.tasks = [reading, asyncio.create_task(self.loop.run(self.stop))]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(t, timeout=60)
        # Its connections to the API close here, in this loop: left to the garbage collector, an
        # open one warned (ResourceWarning, an error under pyproject's filterwarnings) in whatever
        # test was running when it was collected (seen in CI).
        await self.client.close()


def test_a_slow_call_holds_back_no_other_answer(settings: Settings) -> None:
    api = MessagesAPI({text(i): "shipping" for i in range(N)})
    api.delays[text(0)] = 8.0  # the first request's call is slow; the nine after it are not
    group = f"{settings.topic_prefix}protege-teacher"

    async def scenario() -> None:
        await publish(settings)
        async with Running(settings, api) as running:
            await until(answered(settings, {f"r{i}" for i in range(1, N)}), "the nine fast requests' answers")
            # r0's call is still running: the nine did not wait for it, and the partition's
            # committed offset waits below it, the nine answers each marked on the journal.
            assert "r0" not in {r.request_id for r in await responses(settings)}
            assert api.calls_in_flight() == [uid("r0")]
            assert await committed(settings, group) == 0
            assert len(running.journal.handled) == N - 1
            await until(at(settings, N), "the offset to move past all ten", 30)
            await until(emptied(running.journal), "the marks to be deleted", 30)
        final = await responses(settings)
        assert sorted(r.request_id for r in final) == sorted(f"r{i}" for i in range(N))  # each once
        assert all(r.label == "shipping" and r.route == "teacher" for r in final)
        assert all(api.answered[uid(f"r{i}")] == 1 for i in range(N))

    with serve(api):
        asyncio.run(scenario())


def test_a_request_read_again_after_its_answer_is_passed_over(settings: Settings) -> None:
    """The first worker answers r1..r9 and lets go while r0's call still runs (its drain gives
    up): the committed offset stays at r0. The next worker reads all ten again: it answers r0
    and passes the nine over by their marks — no second answer, no second call."""
    api = MessagesAPI({text(i): "shipping" for i in range(N)})
    api.delays[text(0)] = 30.0
    group = f"{settings.topic_prefix}protege-teacher"

    async def scenario() -> None:
        await publish(settings)
        async with Running(settings, api, drain_s=0.5) as first:
            await until(answered(settings, {f"r{i}" for i in range(1, N)}), "the nine fast requests' answers")
        assert await committed(settings, group) == 0
        assert len(first.journal.handled) == N - 1
        del api.delays[text(0)]
        async with Running(settings, api) as second:
            await until(at(settings, N), "the offset to move past all ten", 60)
            await until(emptied(second.journal), "the marks to be deleted", 30)
            assert second.loop.answered == 1  # r0; the nine were passed over
        final = await responses(settings)
        assert sorted(r.request_id for r in final) == sorted(f"r{i}" for i in range(N))
        assert all(api.answered[uid(f"r{i}")] == 1 for i in range(1, N))

    with serve(api):
        asyncio.run(scenario())


def test_a_request_the_worker_cannot_survive_is_quarantined(settings: Settings) -> None:
    api = MessagesAPI({text(i): "shipping" for i in range(3)})
    calls: list[str] = []

    async def scenario() -> None:
        await publish(settings, 3)
        async with Running(settings, api) as running:
            answer = running.worker.answer

            async def poisoned(r: Received[TeacherRequest]) -> Any:
                calls.append(r.event.request.request_id)
                if r.event.request.request_id == "r1":
                    raise RecursionError("maximum recursion depth exceeded while decoding a JSON array")
                return await answer(r)

            running.worker.answer = poisoned  # type: ignore[method-assign]
            running.loop.retry_backoff_s = 0.05
            await until(at(settings, 3), "the offset to move past all three", 60)
            assert running.loop.quarantined == 1
        assert calls.count("r1") == 3, "tried max_attempts times"
        [letter] = [DeadLetter.model_validate_json(r.value) for r in await read_all(settings, settings.topics.dlq)]
        assert (letter.reason, letter.service, letter.topic) == (
            "quarantined",
            "teacher",
            settings.topics.teacher_requests,
        )
        assert "RecursionError" in letter.detail and "3 attempts" in letter.detail
        final = {r.request_id: r for r in await responses(settings)}
        assert sorted(final) == ["r0", "r1", "r2"]
        assert final["r1"].status == "degraded" and final["r0"].status == "answered"  # r1 from the student's label

    with serve(api):
        asyncio.run(scenario())
