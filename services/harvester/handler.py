"""Failure harvester: keep the cases the student missed, doubted or got wrong, per tenant.

- teacher.results: every escalated request, labelled by the teacher (reason
  ``disagreement`` when the student had answered differently, else ``escalated``), and every
  audited one (reason ``audit``: the unbiased sample of accepted traffic, kept agreeing or not).
- feedback: a person's correction (reason ``feedback``).

It does not read ``protege.decisions`` (the busiest topic after the requests): every case
it keeps arrives labelled on the two topics above.

Texts are redacted (protege.redact: e-mails, phones, cards, IBANs) before they are kept.

Cases are keyed ``tenant/task`` so one tenant's cases stay in one partition, in order.
"""

from __future__ import annotations

from collections.abc import Sequence

from protege.events import Feedback, HarvestCase, TeacherResult, now_ms
from protege.kafka import Out, Received
from protege.redact import redact
from protege.topics import Topics


class Harvester:
    def __init__(self, topics: Topics, *, redact_pii: bool = True) -> None:
        self.topics = topics
        self.clean = redact if redact_pii else str

    def harvest(self, r: Received[TeacherResult | Feedback]) -> list[Out]:
        event = r.event
        if isinstance(event, TeacherResult):
            disagree = event.student_label is not None and event.student_label != event.label
            case = HarvestCase(
                request_id=event.request_id,
                tenant=event.tenant,
                task=event.task,
                text=self.clean(event.text),
                label=event.label,
                label_source="standin" if event.standin else "teacher",
                student_label=event.student_label,
                model_version=event.model_version,
                reason="audit" if event.mode == "audit" else "disagreement" if disagree else "escalated",
                harvested_at_ms=now_ms(),
            )
        else:
            case = HarvestCase(
                request_id=event.request_id,
                tenant=event.tenant,
                task=event.task,
                text=self.clean(event.text),
                label=event.label,
                label_source="feedback",
                reason="feedback",
                harvested_at_ms=now_ms(),
            )
        return [Out.of(self.topics.harvest, case)]

    async def handle(self, received: Sequence[Received[TeacherResult | Feedback]]) -> list[Out]:
        return [out for r in received for out in self.harvest(r)]
