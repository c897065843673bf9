"""Verifier: one decision per scored request, and where the request goes next.

accept   -> protege.decisions + protege.responses (the student's answer)
escalate -> protege.decisions + protege.teacher.requests
"""

from __future__ import annotations

from collections.abc import Sequence

from protege.errors import InvalidEvent
from protege.events import Decision, Response, Scored, TeacherRequest, now_ms
from protege.kafka import Out, Record, dead_letter
from protege.policy import router_for
from protege.serde import decode
from protege.task import Task
from protege.topics import Topics


class Verifier:
    def __init__(self, tasks: dict[str, Task], topics: Topics) -> None:
        self.tasks = tasks
        self.topics = topics
        self.routers = {name: router_for(task) for name, task in tasks.items()}

    def verify(self, record: Record) -> list[Out]:
        try:
            scored = decode(Scored, record.value)
        except InvalidEvent as e:
            return [dead_letter(record, e.reason, e.detail, "verifier", self.topics.dlq)]
        req = scored.request
        if req.task not in self.routers:
            return [dead_letter(record, "unknown_task", f"verifier has no task {req.task!r}", "verifier",
                                self.topics.dlq, request_id=req.request_id, tenant=req.tenant)]
        at = now_ms()
        decision: Decision = self.routers[req.task].decide(scored, at)
        outs = [Out.of(self.topics.decisions, decision, req.request_id)]
        if decision.verdict == "accept" and scored.student is not None:
            response = Response(
                request_id=req.request_id, tenant=req.tenant, task=req.task, label=scored.student.label,
                route="student", answered_by=scored.student.model_version, confidence=scored.student.confidence,
                sent_at_ms=req.sent_at_ms, received_at_ms=req.received_at_ms, answered_at_ms=at,
            )
            outs.append(Out.of(self.topics.responses, response, req.request_id))
        else:
            ask = TeacherRequest(request=req, reasons=decision.reasons, requested_at_ms=at,
                                 student_label=decision.student_label, model_version=decision.model_version)
            outs.append(Out.of(self.topics.teacher_requests, ask, req.request_id))
        return outs

    async def handle(self, records: Sequence[Record]) -> list[Out]:
        return [out for r in records for out in self.verify(r)]
