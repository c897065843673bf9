"""Scorer service: protege.ingested (+ protege.models) -> protege.scored.

    python -m services.scorer             (or: protege run scorer)

Every replica reads ``protege.models`` from the beginning without a consumer group, so
each one serves the newest announced version of each tenant's task; it catches up on
announcements before it scores anything.
"""

from __future__ import annotations

import asyncio
from functools import partial

from aiokafka import TopicPartition

from protege.events import Ingested
from protege.kafka import Processor, consumer
from protege.service import run_service
from protege.settings import ScorerSettings
from protege.student.runtime import Student
from services.scorer.handler import Scorer


async def watch_models(settings: ScorerSettings, scorer: Scorer, caught_up: asyncio.Event, stop: asyncio.Event) -> None:
    cons = consumer(settings, group=None)
    await cons.start()
    try:
        tp = TopicPartition(settings.topics.models, 0)
        cons.assign([tp])
        await cons.seek_to_beginning(tp)
        end = (await cons.end_offsets([tp]))[tp]
        while not stop.is_set():
            batch = await cons.getmany(tp, timeout_ms=200)
            for record in batch.get(tp, []):
                await scorer.announce(record)
            if not caught_up.is_set() and await cons.position(tp) >= end:
                caught_up.set()
    finally:
        await cons.stop()


async def serve(settings: ScorerSettings, stop: asyncio.Event) -> None:
    scorer = Scorer(settings.topics, partial(Student, providers=settings.providers, threads=settings.threads,
                                      sub_batch=settings.sub_batch),
                    redact_pii=settings.redact_pii)
    caught_up = asyncio.Event()
    watcher = asyncio.create_task(watch_models(settings, scorer, caught_up, stop))
    await asyncio.wait([watcher, asyncio.create_task(caught_up.wait())], return_when=asyncio.FIRST_COMPLETED)
    if watcher.done():
        watcher.result()  # raise what stopped it
    await asyncio.gather(processor(settings, scorer).run(stop), watcher)


def processor(settings: ScorerSettings, scorer: Scorer) -> Processor:
    """Micro-batches from the fetch; a request it cannot survive goes on unscored."""
    return Processor(settings, "scorer", {settings.topics.ingested: Ingested}, scorer.handle,
                     max_records=settings.max_batch, max_wait_ms=settings.max_wait_ms, fallback=scorer.quarantined)


if __name__ == "__main__":
    run_service("scorer", ScorerSettings, serve)
