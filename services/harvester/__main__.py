"""Failure harvester: protege.teacher.results + protege.feedback -> protege.harvest (+ protege.review).

python -m protege_services.harvester          (or: protege run harvester)
"""

from __future__ import annotations

import asyncio

from protege_services.harvester.handler import Harvester

from protege.events import Feedback, TeacherResult
from protege.kafka import Processor
from protege.service import run_service
from protege.settings import HarvesterSettings
from protege.task import load_tasks


def processor(settings: HarvesterSettings, harvester: Harvester) -> Processor:
    t = settings.topics
    return Processor(
        settings,
        "harvester",
        {t.teacher_results: TeacherResult, t.feedback: Feedback},
        harvester.handle,
        tasks=harvester.tasks,
    )


async def serve(settings: HarvesterSettings, stop: asyncio.Event) -> None:
    tasks = load_tasks(settings.tasks_dir)
    await processor(settings, Harvester(tasks, settings.topics, redact_pii=settings.redact_pii)).run(stop)


if __name__ == "__main__":
    run_service("harvester", HarvesterSettings, serve)
