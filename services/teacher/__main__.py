"""Teacher worker: protege.teacher.requests (+ protege.teacher.retry) ->
protege.teacher.results + protege.responses | protege.corrections | protege.teacher.retry.

    python -m protege_services.teacher            (or: protege run teacher)

With ANTHROPIC_API_KEY (or PROTEGE_ANTHROPIC_API_KEY_FILE) set it calls Claude through the
anthropic SDK; without one it runs the offline stand-in on PROTEGE_STANDIN_LABELS and says
so on every event and log line. Held requests are consumed by a second processor (its own
consumer group) from protege.teacher.retry; both share one circuit breaker and one spend
tracker, which is rebuilt at start from the last hour of protege.teacher.results. Each
request is answered as soon as its own call returns (services/teacher/loop.py). Paid
answers go to protege.teacher.journal until their answer commits, so a restarted worker
does not pay for them again, and an answer committed beyond its partition's committed
offset leaves a mark there, so it is not given twice (services/teacher/journal.py).
"""

from __future__ import annotations

import asyncio
import json
import time

import structlog
from protege_services.teacher.handler import CircuitBreaker, SpendTracker, TeacherWorker
from protege_services.teacher.journal import AnswerJournal
from protege_services.teacher.loop import AnswerLoop

from protege.costs import price_table
from protege.errors import ConfigError
from protege.events import TeacherResult
from protege.service import run_service
from protege.settings import TeacherSettings
from protege.state import read_all
from protege.task import load_tasks
from protege.teacher import AnthropicTeacher, StandinTeacher, Teacher


def build_teacher(settings: TeacherSettings) -> tuple[Teacher, tuple[type[BaseException], ...]]:
    """The teacher, and the exceptions of its client that mean "unavailable, try later"."""
    log = structlog.get_logger()
    prices = price_table(settings.prices)  # loaded once for the process
    key = settings.api_key()
    if key:
        import anthropic

        client = anthropic.AsyncAnthropic(
            api_key=key,
            base_url=settings.anthropic_base_url,
            max_retries=settings.max_retries,
            timeout=settings.timeout_s,
        )
        log.info(
            "teacher",
            kind="anthropic",
            model=settings.teacher_model or "per task",
            base_url=settings.anthropic_base_url or "default",
        )
        return AnthropicTeacher(client, settings.teacher_model, prices), (anthropic.APIError,)
    if settings.standin_labels is None:
        raise ConfigError("no ANTHROPIC_API_KEY and no PROTEGE_STANDIN_LABELS: the teacher has nothing to answer from")
    log.warning(
        "teacher",
        kind="STAND-IN (offline, answers from labelled data)",
        labels=str(settings.standin_labels),
        noise=settings.standin_noise,
        noise_model="confusable" if settings.standin_confusions else "uniform",
    )
    confused = json.loads(settings.standin_confusions.read_text()) if settings.standin_confusions else None
    standin = StandinTeacher.from_jsonl(
        settings.standin_labels,
        noise=settings.standin_noise,
        confused={k: [(o, float(w)) for o, w in v] for k, v in confused.items()} if confused else None,
        latency_ms=settings.standin_latency_ms,
        priced_as=settings.teacher_model or "claude-sonnet-4-6",
        prices=prices,
    )
    return standin, ()


async def serve(settings: TeacherSettings, stop: asyncio.Event) -> None:
    teacher, unavailable = build_teacher(settings)
    spend = SpendTracker()
    hour_ago = int((time.time() - spend.window_s) * 1000)
    for r in await read_all(settings, settings.topics.teacher_results, since_ms=hour_ago):
        result = TeacherResult.model_validate_json(r.value)
        spend.add(f"{result.tenant}/{result.task}", result.cost_usd, at=result.answered_at_ms / 1000)
    journal = AnswerJournal(settings)
    reading = asyncio.create_task(journal.run(stop))
    await journal.view.ready(reading)
    for paid in journal.answers.values():  # paid for before a crash: counts against the cap too
        spend.add(f"{paid.tenant}/{paid.task}", paid.cost_usd, at=paid.answered_at_ms / 1000)
    tasks = load_tasks(settings.tasks_dir)
    worker = TeacherWorker(
        tasks,
        settings.topics,
        teacher,
        settings.concurrency,
        breaker=CircuitBreaker(settings.breaker_threshold, settings.breaker_cooldown_s),
        spend=spend,
        unavailable=unavailable,
        journal=journal,
    )
    try:
        await asyncio.gather(*(p.run(stop) for p in processors(settings, worker)), reading)
    finally:
        if isinstance(teacher, AnthropicTeacher):
            await teacher.client.close()  # its keep-alive connections to the API, at shutdown


def processors(settings: TeacherSettings, worker: TeacherWorker) -> list[AnswerLoop]:
    """Requests, and (a second consumer group) those held for later; each request answered
    as soon as its own call returns (services/teacher/loop.py)."""
    t = settings.topics
    return [
        AnswerLoop(settings, name, topic, worker, capacity=settings.concurrency * 4)
        for name, topic in (("teacher", t.teacher_requests), ("teacher-retry", t.teacher_retry))
    ]


if __name__ == "__main__":
    run_service("teacher", TeacherSettings, serve)
