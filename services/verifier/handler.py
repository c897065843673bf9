"""Verifier: one decision per scored request, and where the request goes next.

accept   -> decisions + responses (the student's answer; provisional under ensemble, whose
            teacher check also goes to teacher.requests; an audited one also goes there, mode
            ``audit``: the teacher's answer measures the student's and changes nothing)
            + harvest, for ``student.learn_accepted`` of them (by a hash of the request id) that
            no teacher sees: the answer as a case for the next version (label source
            ``student``, reason ``accepted``, the text redacted as the harvester redacts)
escalate -> decisions + teacher.requests
shadow   -> decisions + teacher.requests (the teacher answers; the student is recorded)

A request in the task's review sample (``Decision.review``) is marked so on its teacher
request: the harvester sends it to people (protege.review) instead of to training.

A scored request the verifier cannot handle at all is quarantined by the loop and sent to
the teacher (reason ``quarantined``), with a decision that says so: the fail-safe is the
teacher, the request is still answered once, and reports and replays count it.

In the fused layout (``PROTEGE_FUSED``) the scorer runs this same ``decide`` in its own
transaction and marks the scored event ``decided``; a verifier that sees one passes it by,
so the two layouts never answer a request twice, even side by side.

The drift alarm over the decisions is the monitor's (``services/monitor``): it sees every
verifier replica's decisions of a task, this one sees only its partitions.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from protege import metrics
from protege.events import Decision, HarvestCase, Response, Scored, TeacherRequest, now_ms
from protege.kafka import Out, Received
from protege.policy import in_review, in_share, router_for
from protege.redact import redact
from protege.task import Task
from protege.topics import Topics

LEARN_SALT = "learn:"  # the sample of accepted answers the trainer learns from, apart from the audits'


class Verifier:
    def __init__(self, tasks: dict[str, Task], topics: Topics, *, redact_pii: bool = True) -> None:
        self.tasks = tasks
        self.topics = topics
        self.clean = redact if redact_pii else str
        self.routers = {name: router_for(task) for name, task in tasks.items()}
        self.log = structlog.get_logger().bind(service="verifier")

    def verify(self, r: Received[Scored]) -> list[Out]:
        return self.decide(r.event)

    def decide(self, scored: Scored) -> list[Out]:
        """The decision on one scored request and what follows from it (the fused scorer calls
        this in its own transaction)."""
        req = scored.request
        at = now_ms()
        decision: Decision = self.routers[req.task].decide(scored, at)
        metrics.observe_hop("ingested_to_scored", req.received_at_ms, scored.scored_at_ms)
        metrics.observe_hop("scored_to_decided", scored.scored_at_ms, at)
        outs = [Out.of(self.topics.decisions, decision)]
        student = scored.student
        if decision.verdict == "accept" and student is not None:
            response = Response(
                request_id=req.request_id,
                tenant=req.tenant,
                task=req.task,
                label=student.label,
                route="student",
                provisional=decision.teacher_check,
                answered_by=student.model_version,
                confidence=student.confidence,
                sent_at_ms=req.sent_at_ms,
                received_at_ms=req.received_at_ms,
                answered_at_ms=at,
            )
            outs.append(Out.of(self.topics.responses, response))
            metrics.observe_answer(req.task, "student", response.status, req.received_at_ms, at)
            checked = decision.teacher_check or decision.audit  # its teacher label reaches the harvest itself
            if not checked and in_share(req.request_id, self.tasks[req.task].student.learn_accepted, salt=LEARN_SALT):
                case = HarvestCase(
                    request_id=req.request_id,
                    tenant=req.tenant,
                    task=req.task,
                    text=self.clean(req.text),
                    label=student.label,
                    label_source="student",
                    student_label=student.label,
                    model_version=student.model_version,
                    reason="accepted",
                    harvested_at_ms=at,
                )
                outs.append(Out.of(self.topics.harvest, case))
        if decision.verdict != "accept" or decision.teacher_check or decision.audit:
            ask = TeacherRequest(
                request=req,
                reasons=decision.reasons or (["audit"] if decision.audit else []),
                mode="check" if decision.teacher_check else "audit" if decision.audit else "answer",
                student_label=decision.student_label,
                student_confidence=student.confidence if student else None,
                model_version=decision.model_version,
                review=decision.review,
                requested_at_ms=at,
            )
            outs.append(Out.of(self.topics.teacher_requests, ask))
        metrics.DECISIONS.labels(req.task, decision.policy, decision.verdict).inc()
        self.log.debug(
            "decided",
            request_id=req.request_id,
            tenant=req.tenant,
            task=req.task,
            verdict=decision.verdict,
            route=decision.route,
            reasons=decision.reasons,
            model_version=decision.model_version,
        )
        for reason in decision.reasons:
            metrics.ESCALATIONS.labels(req.task, reason.split(":")[0]).inc()
        return outs

    def quarantined(self, r: Received[Scored], why: str) -> list[Out]:
        """The loop gave up on this scored request: the teacher answers it."""
        return self.to_teacher(r.event)

    def to_teacher(self, scored: Scored) -> list[Out]:
        """The fail-safe: the teacher answers (reason ``quarantined``), and a decision says so,
        so a report or a replay of the recorded traffic counts the request and its teacher call.
        It records no signals: a replay decides it again only under another policy."""
        req, student = scored.request, scored.student
        at = now_ms()
        review = in_review(req.request_id, self.tasks[req.task].review_rate) if req.task in self.tasks else False
        ask = TeacherRequest(
            request=req,
            reasons=["quarantined"],
            student_label=student.label if student else None,
            student_confidence=student.confidence if student else None,
            model_version=student.model_version if student else None,
            review=review,
            requested_at_ms=at,
        )
        outs = [Out.of(self.topics.teacher_requests, ask)]
        router = self.routers.get(req.task)
        if router is None:  # no task, no policy to name (the loop's task check refuses these first)
            return outs
        rules = ["quarantined"]  # a rule, so the decision's own record implies its verdict
        decision = Decision(
            request_id=req.request_id,
            tenant=req.tenant,
            task=req.task,
            verdict=router.verdict(False, rules),
            route="teacher",
            policy=router.name,
            policy_version=router.policy_version,
            model_version=student.model_version if student else None,
            student_label=student.label if student else None,
            signals={},
            thresholds={},
            rules=rules,
            reasons=rules,
            review=review,
            decided_at_ms=at,
        )
        metrics.DECISIONS.labels(req.task, decision.policy, decision.verdict).inc()
        metrics.ESCALATIONS.labels(req.task, "quarantined").inc()
        return [Out.of(self.topics.decisions, decision), *outs]

    async def handle(self, received: Sequence[Received[Scored]]) -> list[Out]:
        # A request the scorer decided itself (the fused layout) was answered in its transaction.
        return [out for r in received if not r.event.decided for out in self.verify(r)]
