"""Teacher worker: protege.teacher.requests -> protege.teacher.results + protege.responses.

    python -m services.teacher            (or: protege run teacher)

With ANTHROPIC_API_KEY (or PROTEGE_ANTHROPIC_API_KEY_FILE) set it calls Claude through the
anthropic SDK; without one it runs the offline stand-in on PROTEGE_STANDIN_LABELS and says
so on every event and log line.
"""

from __future__ import annotations

import asyncio

import structlog

from protege.errors import ConfigError
from protege.kafka import Processor
from protege.service import run_service
from protege.settings import TeacherSettings
from protege.task import load_tasks
from protege.teacher import AnthropicTeacher, StandinTeacher, Teacher
from services.teacher.handler import TeacherWorker


def build_teacher(settings: TeacherSettings) -> Teacher:
    log = structlog.get_logger()
    key = settings.api_key()
    if key:
        import anthropic

        client = anthropic.AsyncAnthropic(api_key=key, base_url=settings.anthropic_base_url,
                                          max_retries=settings.max_retries, timeout=settings.timeout_s)
        log.info("teacher", kind="anthropic", model=settings.teacher_model or "per task")
        return AnthropicTeacher(client, settings.teacher_model)
    if settings.standin_labels is None:
        raise ConfigError("no ANTHROPIC_API_KEY and no PROTEGE_STANDIN_LABELS: the teacher has nothing to answer from")
    log.warning("teacher", kind="STAND-IN (offline, answers from labelled data)", labels=str(settings.standin_labels),
                noise=settings.standin_noise)
    return StandinTeacher.from_jsonl(settings.standin_labels, noise=settings.standin_noise,
                                     latency_ms=settings.standin_latency_ms,
                                     priced_as=settings.teacher_model or "claude-sonnet-4-6")


async def serve(settings: TeacherSettings, stop: asyncio.Event) -> None:
    worker = TeacherWorker(load_tasks(settings.tasks_dir), settings.topics, build_teacher(settings),
                           settings.concurrency)
    await Processor(settings, "teacher", [settings.topics.teacher_requests], worker.handle,
                    max_records=settings.concurrency * 4, transaction_timeout_ms=300_000).run(stop)


if __name__ == "__main__":
    run_service("teacher", TeacherSettings, serve)
