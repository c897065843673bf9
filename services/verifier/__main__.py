"""Verifier service: protege.scored -> protege.decisions + (protege.responses | protege.teacher.requests).

    python -m services.verifier           (or: protege run verifier)
"""

from __future__ import annotations

import asyncio

from protege.kafka import Processor
from protege.service import run_service
from protege.settings import VerifierSettings
from protege.task import load_tasks
from services.verifier.handler import Verifier


async def serve(settings: VerifierSettings, stop: asyncio.Event) -> None:
    verifier = Verifier(load_tasks(settings.tasks_dir), settings.topics)
    await Processor(settings, "verifier", [settings.topics.scored], verifier.handle,
                    fallback=verifier.quarantined).run(stop)


if __name__ == "__main__":
    run_service("verifier", VerifierSettings, serve)
