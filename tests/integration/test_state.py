"""The one way protege holds state read from a topic: a view that reads to the end it saw
at start ("caught up"), then follows, until stopped."""

from __future__ import annotations

import asyncio
import time

import pytest

from protege.kafka import ensure_topics, producer
from protege.settings import Settings
from protege.state import TopicView, read_all

pytestmark = pytest.mark.kafka


async def publish(settings: Settings, topic: str, values: list[bytes]) -> None:
    prod = producer(settings)
    await prod.start()
    try:
        for i, v in enumerate(values):
            await prod.send_and_wait(topic, v, key=str(i % 2).encode())  # both partitions
    finally:
        await prod.stop()


def test_a_view_catches_up_then_follows_until_stopped(settings: Settings) -> None:
    topic = f"{settings.topic_prefix}view"
    asyncio.run(ensure_topics(settings, [topic]))

    async def scenario() -> tuple[list[bytes], list[bytes], int]:
        await publish(settings, topic, [b"a", b"b", b"c"])
        seen: list[bytes] = []

        async def apply(record) -> None:  # an async apply works as well as a plain one
            seen.append(record.value)

        stop = asyncio.Event()
        view = TopicView(settings, topic, apply)
        running = asyncio.create_task(view.run(stop))
        await asyncio.wait_for(view.ready(running), timeout=30)
        at_ready = sorted(seen)
        await publish(settings, topic, [b"d", b"e"])
        deadline = time.monotonic() + 30
        while len(seen) < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(running, timeout=10)
        return at_ready, sorted(seen), view.applied

    at_ready, everything, applied = asyncio.run(scenario())
    assert at_ready == [b"a", b"b", b"c"]
    assert everything == [b"a", b"b", b"c", b"d", b"e"] and applied == 5


def test_read_all_from_a_time_and_on_an_empty_topic(settings: Settings) -> None:
    topic = f"{settings.topic_prefix}since"
    asyncio.run(ensure_topics(settings, [topic]))
    assert asyncio.run(read_all(settings, topic)) == []
    asyncio.run(publish(settings, topic, [b"old"]))
    time.sleep(0.05)
    cut = int(time.time() * 1000)
    time.sleep(0.05)
    asyncio.run(publish(settings, topic, [b"new-1", b"new-2"]))
    assert sorted(r.value for r in asyncio.run(read_all(settings, topic, since_ms=cut))) == [b"new-1", b"new-2"]
    assert len(asyncio.run(read_all(settings, topic))) == 3
