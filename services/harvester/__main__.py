"""Failure harvester: protege.teacher.results + protege.feedback -> protege.harvest.

    python -m services.harvester          (or: protege run harvester)
"""

from __future__ import annotations

import asyncio

from protege.kafka import Processor
from protege.service import run_service
from protege.settings import HarvesterSettings
from services.harvester.handler import Harvester


async def serve(settings: HarvesterSettings, stop: asyncio.Event) -> None:
    t = settings.topics
    harvester = Harvester(t, redact_pii=settings.redact_pii)
    await Processor(settings, "harvester", [t.teacher_results, t.feedback], harvester.handle).run(stop)


if __name__ == "__main__":
    run_service("harvester", HarvesterSettings, serve)
