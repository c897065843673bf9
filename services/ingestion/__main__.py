"""Ingestion service: protege.requests -> protege.ingested | protege.requests.dlq.

python -m protege_services.ingestion          (or: protege run ingestion)
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection

import structlog
from protege_services.ingestion.handler import SERVICE, Ingestion, SeenIds

from protege.events import Request
from protege.kafka import Processor
from protege.service import run_service
from protege.settings import IngestionSettings
from protege.state import read_all
from protege.task import load_tasks


def processor(settings: IngestionSettings, tasks: Collection[str], handler: Ingestion) -> Processor:
    """The loop as the service runs it: requests in, bad ones to protege.requests.dlq."""
    return Processor(
        settings,
        SERVICE,
        {settings.topics.requests: Request},
        handler.handle,
        tasks=tasks,
        on_commit=handler.committed,
        dead_letters=settings.topics.requests_dlq,
    )


async def ingestion(settings: IngestionSettings, service: str = SERVICE) -> Ingestion:
    """The handler, its duplicate filter rebuilt from what was already accepted (committed
    records only). The one-hop scorer ingests with it too."""
    seen = SeenIds(settings.dedupe_window)
    seen.extend(r.key.decode() for r in await read_all(settings, settings.topics.ingested) if r.key)
    structlog.get_logger().info("dedupe_rebuilt", ids=len(seen), service=service)
    return Ingestion(settings.topics, max_text_chars=settings.max_text_chars, seen=seen, service=service)


async def serve(settings: IngestionSettings, stop: asyncio.Event) -> None:
    await processor(settings, load_tasks(settings.tasks_dir), await ingestion(settings)).run(stop)


if __name__ == "__main__":
    run_service(SERVICE, IngestionSettings, serve)
