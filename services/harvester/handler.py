"""Failure harvester: keep the cases the student missed, doubted or got wrong, per tenant.

- teacher.results: every escalated request, labelled by the teacher (reason
  ``disagreement`` when the student had answered differently, else ``escalated``), and every
  audited one (reason ``audit``: the unbiased sample of accepted traffic, kept agreeing or not).
- feedback: a person's correction (reason ``feedback``).

The review sample (``Task.review_rate``) is kept apart from training: a teacher result of a
request in it goes to people as a ``ReviewItem`` on protege.review (blind: the text alone),
and to the trainer as the teacher's half of a golden row (reason ``review``); a person's
review (``Feedback.kind`` review) is the other half. Feedback is bytes from outside: a label
that is not one of the task's answers, or a review of a request outside the review sample,
is dead-lettered with its reason rather than taught to the student or trusted as truth.

It does not read ``protege.decisions`` (the busiest topic after the requests): every case
it keeps arrives labelled on the two topics above.

Texts are redacted (protege.redact: e-mails, phones, cards, IBANs) before they are kept.

Cases are keyed ``tenant/task`` so one tenant's cases stay in one partition, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from protege import metrics
from protege.events import Feedback, HarvestCase, ReviewItem, TeacherResult, now_ms
from protege.kafka import Out, Received, dead_letter
from protege.policy import refused
from protege.redact import redact
from protege.task import Task
from protege.topics import Topics

Reason = Literal["escalated", "disagreement", "audit", "review"]


class Harvester:
    def __init__(self, tasks: dict[str, Task], topics: Topics, *, redact_pii: bool = True) -> None:
        self.tasks = tasks
        self.topics = topics
        self.clean = redact if redact_pii else str

    def harvest(self, r: Received[TeacherResult | Feedback]) -> list[Out]:
        event = r.event
        if isinstance(event, TeacherResult):
            return self.taught(event)
        why = refused(event, self.tasks[event.task])  # the loop dead-letters an unknown task
        if why is not None:
            return [self.refuse(r, *why)]
        review = event.kind == "review"
        if review:
            metrics.REVIEWS.labels(event.task).inc()
        case = HarvestCase(
            request_id=event.request_id,
            tenant=event.tenant,
            task=event.task,
            text=self.clean(event.text),
            label=event.label,
            label_source="feedback",
            reason="review" if review else "feedback",
            labelled_by=event.source if review else None,
            harvested_at_ms=now_ms(),
        )
        return [Out.of(self.topics.harvest, case)]

    def taught(self, event: TeacherResult) -> list[Out]:
        at = now_ms()
        text = self.clean(event.text)
        case = HarvestCase(
            request_id=event.request_id,
            tenant=event.tenant,
            task=event.task,
            text=text,
            label=event.label,
            label_source="standin" if event.standin else "teacher",
            student_label=event.student_label,
            model_version=event.model_version,
            reason=reason_of(event),
            harvested_at_ms=at,
        )
        outs = [Out.of(self.topics.harvest, case)]
        if event.review:
            item = ReviewItem(
                request_id=event.request_id, tenant=event.tenant, task=event.task, text=text, sampled_at_ms=at
            )
            outs.append(Out.of(self.topics.review, item))
            metrics.REVIEW_SAMPLED.labels(event.task).inc()
        return outs

    def refuse(self, r: Received[TeacherResult | Feedback], reason: str, detail: str) -> Out:
        return dead_letter(r, reason, detail, "harvester", self.topics.dlq, **r.event.ids())

    async def handle(self, received: Sequence[Received[TeacherResult | Feedback]]) -> list[Out]:
        return [out for r in received for out in self.harvest(r)]


def reason_of(event: TeacherResult) -> Reason:
    """Why a teacher result is harvested: half a golden row (the review sample), an audit, or
    an escalation where the student had answered otherwise (disagreement) or not (escalated)."""
    if event.review:
        return "review"
    if event.mode == "audit":
        return "audit"
    disagree = event.student_label is not None and event.student_label != event.label
    return "disagreement" if disagree else "escalated"
