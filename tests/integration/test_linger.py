"""``PROTEGE_LINGER_MS``: a service that fetched fewer records than its micro-batch holds waits
that long and handles what arrived meanwhile in the same transaction, each record once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import protege_services.verifier.__main__
import pytest
from protege_services.verifier.handler import Verifier

from protege.events import Ingested, Scored, TeacherRequest, now_ms
from protege.generator import triage_task
from protege.kafka import Out, Received, producer
from protege.settings import Settings, VerifierSettings
from protege.state import read_all

pytestmark = pytest.mark.kafka
TASK = triage_task()


def scored(i: int) -> bytes:
    req = Ingested(request_id=f"l-{i}", tenant="acme", task=TASK.name, text=f"ticket {i}", received_at_ms=now_ms())
    return Scored(request=req, scored_at_ms=now_ms(), batch_size=1).dumps()


def test_a_record_arriving_while_a_batch_lingers_joins_it(settings: Settings) -> None:
    lingering = VerifierSettings(**(dict(settings) | {"linger_ms": 1000}))
    loop = protege_services.verifier.__main__.processor(lingering, Verifier({TASK.name: TASK}, settings.topics))
    sizes: list[int] = []
    handle = loop.handle

    async def counted(received: Sequence[Received[Any]]) -> list[Out]:
        sizes.append(len(received))
        return await handle(received)

    loop.handle = counted

    async def go() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(loop.run(stop))
        for _ in range(600):  # its partitions assigned, its consumer fetching
            if getattr(loop, "producers", None):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        prod = producer(settings)
        await prod.start()
        try:
            await prod.send_and_wait(settings.topics.scored, scored(0), key=b"same-partition")
            await asyncio.sleep(0.1)  # the first is fetched alone; the second arrives while it lingers
            await prod.send_and_wait(settings.topics.scored, scored(1), key=b"same-partition")
        finally:
            await prod.stop()
        for _ in range(300):
            if loop.processed == 2 or running.done():
                break
            await asyncio.sleep(0.05)
        stop.set()
        await running

    asyncio.run(go())
    assert loop.processed == 2 and sizes == [2], sizes
    asked = [
        TeacherRequest.model_validate_json(r.value)
        for r in asyncio.run(read_all(settings, settings.topics.teacher_requests))
    ]
    assert sorted(a.request.request_id for a in asked) == ["l-0", "l-1"]  # each once (no student: the teacher)
