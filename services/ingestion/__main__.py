"""Ingestion service: protege.requests -> protege.ingested | protege.requests.dlq.

    python -m services.ingestion          (or: protege run ingestion)
"""

from __future__ import annotations

import asyncio

import structlog

from protege.kafka import Processor, read_all
from protege.service import run_service
from protege.settings import IngestionSettings
from protege.task import load_tasks
from services.ingestion.handler import Ingestion, SeenIds


async def serve(settings: IngestionSettings, stop: asyncio.Event) -> None:
    seen = SeenIds(settings.dedupe_window)
    # Rebuild the duplicate filter from what was already accepted (committed records only).
    seen.extend(r.key.decode() for r in await read_all(settings, settings.topics.ingested) if r.key)
    structlog.get_logger().info("dedupe_rebuilt", ids=len(seen))
    handler = Ingestion(load_tasks(settings.tasks_dir), settings.topics,
                        max_text_chars=settings.max_text_chars, seen=seen)
    await Processor(settings, "ingestion", [settings.topics.requests], handler.handle, on_commit=handler.committed,
                    dead_letters=settings.topics.requests_dlq).run(stop)


if __name__ == "__main__":
    run_service("ingestion", IngestionSettings, serve)
