"""Teacher worker: ask the teacher for each escalated request; answer it and record the result.

teacher.requests -> teacher.results + responses, or protege.dlq when the teacher's answer
stays outside the label set after one repair. Calls run concurrently up to a limit.
Transient API failures are retried by the SDK; when retries are exhausted the worker
crashes without committing, and the request is asked again after the restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from protege.errors import InvalidEvent, TeacherError
from protege.events import Response, TeacherRequest, TeacherResult, now_ms
from protege.kafka import Out, Record, dead_letter
from protege.serde import decode
from protege.task import Task
from protege.teacher import Teacher
from protege.topics import Topics


class TeacherWorker:
    def __init__(self, tasks: dict[str, Task], topics: Topics, teacher: Teacher, concurrency: int) -> None:
        self.tasks = tasks
        self.topics = topics
        self.teacher = teacher
        self.limit = asyncio.Semaphore(concurrency)
        self.log = structlog.get_logger().bind(service="teacher")

    async def answer(self, record: Record) -> list[Out]:
        try:
            ask = decode(TeacherRequest, record.value)
        except InvalidEvent as e:
            return [dead_letter(record, e.reason, e.detail, "teacher", self.topics.dlq)]
        req = ask.request
        ids = {"request_id": req.request_id, "tenant": req.tenant}
        task = self.tasks.get(req.task)
        if task is None:
            return [dead_letter(record, "unknown_task", f"teacher has no task {req.task!r}", "teacher",
                                self.topics.dlq, **ids)]
        async with self.limit:
            try:
                answer = await self.teacher.label(task, req.text, req.request_id)
            except TeacherError as e:
                self.log.warning("teacher_invalid", request_id=req.request_id, error=str(e))
                return [dead_letter(record, "teacher_invalid_answer", str(e), "teacher", self.topics.dlq, **ids)]
        at = now_ms()
        result = TeacherResult(
            request_id=req.request_id, tenant=req.tenant, task=req.task, text=req.text, label=answer.label,
            rationale=answer.rationale, teacher=answer.model, standin=answer.standin, usage=answer.usage,
            cost_usd=answer.cost_usd, latency_ms=answer.latency_ms, attempts=answer.attempts,
            student_label=ask.student_label, model_version=ask.model_version, answered_at_ms=at,
        )
        response = Response(
            request_id=req.request_id, tenant=req.tenant, task=req.task, label=answer.label, route="teacher",
            answered_by=answer.model, standin=answer.standin, sent_at_ms=req.sent_at_ms,
            received_at_ms=req.received_at_ms, answered_at_ms=at,
        )
        self.log.info("answered", request_id=req.request_id, teacher=answer.model, cost_usd=round(answer.cost_usd, 6),
                      standin=answer.standin)
        return [Out.of(self.topics.teacher_results, result, req.request_id),
                Out.of(self.topics.responses, response, req.request_id)]

    async def handle(self, records: Sequence[Record]) -> list[Out]:
        answered = await asyncio.gather(*(self.answer(r) for r in records))
        return [out for outs in answered for out in outs]
