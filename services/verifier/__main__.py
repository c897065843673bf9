"""Verifier service: protege.scored -> protege.decisions + (protege.responses [+ protege.harvest] |
protege.teacher.requests).

python -m protege_services.verifier           (or: protege run verifier)
"""

from __future__ import annotations

import asyncio

from protege_services.verifier.handler import Verifier

from protege.events import Scored
from protege.kafka import Processor
from protege.service import run_service
from protege.settings import VerifierSettings
from protege.task import load_tasks


def processor(settings: VerifierSettings, verifier: Verifier) -> Processor:
    """The loop as the service runs it: a scored request it cannot survive goes to the teacher."""
    return Processor(
        settings,
        "verifier",
        {settings.topics.scored: Scored},
        verifier.handle,
        tasks=verifier.tasks,
        fallback=verifier.quarantined,
    )


async def serve(settings: VerifierSettings, stop: asyncio.Event) -> None:
    verifier = Verifier(load_tasks(settings.tasks_dir), settings.topics, redact_pii=settings.redact_pii)
    await processor(settings, verifier).run(stop)


if __name__ == "__main__":
    run_service("verifier", VerifierSettings, serve)
