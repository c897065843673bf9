"""Failure harvester: keep the cases the student missed, doubted or got wrong, per tenant.

- teacher.results: every escalated request, labelled by the teacher (reason
  ``disagreement`` when the student had answered differently, else ``escalated``).
- feedback: a person's correction (reason ``feedback``).

It does not read ``protege.decisions`` (the busiest topic after the requests): every case
it keeps arrives labelled on the two topics above.

Texts are redacted (protege.redact: e-mails, phones, cards, IBANs) before they are kept.

Cases are keyed ``tenant/task`` so one tenant's cases stay in one partition, in order.
"""

from __future__ import annotations

from collections.abc import Sequence

from protege.errors import InvalidEvent
from protege.events import Feedback, HarvestCase, TeacherResult, now_ms
from protege.kafka import Out, Record, dead_letter
from protege.redact import redact
from protege.serde import decode
from protege.topics import Topics


class Harvester:
    def __init__(self, topics: Topics, *, redact_pii: bool = True) -> None:
        self.topics = topics
        self.clean = redact if redact_pii else str

    def harvest(self, record: Record) -> list[Out]:
        try:
            if record.topic == self.topics.teacher_results:
                res = decode(TeacherResult, record.value)
                disagree = res.student_label is not None and res.student_label != res.label
                case = HarvestCase(
                    request_id=res.request_id, tenant=res.tenant, task=res.task, text=self.clean(res.text), label=res.label,
                    label_source="standin" if res.standin else "teacher", student_label=res.student_label,
                    model_version=res.model_version, reason="disagreement" if disagree else "escalated",
                    harvested_at_ms=now_ms(),
                )
            else:
                fb = decode(Feedback, record.value)
                case = HarvestCase(
                    request_id=fb.request_id, tenant=fb.tenant, task=fb.task, text=self.clean(fb.text), label=fb.label,
                    label_source="feedback", reason="feedback", harvested_at_ms=now_ms(),
                )
        except InvalidEvent as e:
            return [dead_letter(record, e.reason, e.detail, "harvester", self.topics.dlq)]
        return [Out.of(self.topics.harvest, case, f"{case.tenant}/{case.task}")]

    async def handle(self, records: Sequence[Record]) -> list[Out]:
        return [out for r in records for out in self.harvest(r)]
