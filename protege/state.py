"""State that outlives a process is a view rebuilt from a topic, by one mechanism.

    view = TopicView(settings, topic, apply)        # apply(record) for every record, in order
    running = asyncio.create_task(view.run(stop))   # tails the topic until stop is set
    await view.ready(running)                       # read to the end as it was at the start

Which models serve (the scorer), the teacher's journal of paid answers, the duplicate
filter and the spend of the last hour are each such a view; each supplies only its
``apply``. ``read_all`` is the same reader stopped once it is caught up. Reads are
``read_committed`` and need no consumer group: every replica builds the whole view.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import TopicPartition

from protege.kafka import Record, consumer, partitions_of
from protege.settings import Settings

Apply = Callable[[Record], Awaitable[None] | None]


class TopicView:
    """Tail ``topic`` (from its beginning, or from the first record at or after ``since_ms``)
    into whatever ``apply`` keeps; ``caught_up`` is set once it has read to the end offsets
    the topic had when it started."""

    def __init__(
        self, settings: Settings, topic: str, apply: Apply, *, since_ms: int | None = None, poll_ms: int = 200
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.apply = apply
        self.since_ms = since_ms
        self.poll_ms = poll_ms
        self.caught_up = asyncio.Event()
        self.applied = 0
        self._syncs: list[asyncio.Future[None]] = []  # waiting for the end offsets as of their asking

    async def run(self, stop: asyncio.Event, *, until_caught_up: bool = False) -> None:
        cons = consumer(self.settings, group=None)
        target: dict[TopicPartition, int] | None = None
        waiting: list[asyncio.Future[None]] = []
        try:
            await cons.start()
            tps = [TopicPartition(self.topic, p) for p in sorted(await partitions_of(cons, self.topic))]
            cons.assign(tps)
            end = await cons.end_offsets(tps)
            if self.since_ms is None:
                await cons.seek_to_beginning(*tps)
            else:
                found = await cons.offsets_for_times({tp: self.since_ms for tp in tps})
                for tp in tps:
                    cons.seek(tp, found[tp].offset if found[tp] is not None else end[tp])
            while not stop.is_set():
                if not self.caught_up.is_set() and all([await cons.position(tp) >= end[tp] for tp in tps]):
                    self.caught_up.set()
                    if until_caught_up:
                        return
                if self._syncs and target is None:  # the end offsets now: what a sync waits for
                    waiting, self._syncs = self._syncs, []
                    target = await cons.end_offsets(tps)
                if target is not None and all([await cons.position(tp) >= target[tp] for tp in tps]):
                    for future in waiting:
                        if not future.done():
                            future.set_result(None)
                    target, waiting = None, []
                    continue
                for records in (await cons.getmany(*tps, timeout_ms=self.poll_ms)).values():
                    for record in records:
                        done = self.apply(record)
                        if inspect.isawaitable(done):
                            await done
                        self.applied += 1
        finally:
            for future in [*waiting, *self._syncs]:  # the view stopped: nobody waits on it for ever
                future.cancel()
            await cons.stop()

    async def synced(self) -> None:
        """Wait until the view has applied every record the topic held when this was asked
        (a record committed before the call is in the view after it). Needs ``run``."""
        future = asyncio.get_running_loop().create_future()
        self._syncs.append(future)
        await future

    async def ready(self, running: asyncio.Task[Any]) -> None:
        """Wait until caught up, or until ``running`` (the task reading it) ends: then raise
        what stopped it, if anything did (a stop before it caught up is not an error)."""
        waiting = asyncio.create_task(self.caught_up.wait())
        await asyncio.wait([running, waiting], return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():
            waiting.cancel()
            running.result()


async def read_all(settings: Settings, topic: str, *, since_ms: int | None = None) -> list[Record]:
    """Every committed record now on ``topic``, from the beginning or from the first one
    appended at or after ``since_ms`` (no consumer group)."""
    out: list[Record] = []
    await TopicView(settings, topic, out.append, since_ms=since_ms, poll_ms=100).run(
        asyncio.Event(), until_caught_up=True
    )
    return out
