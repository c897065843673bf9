"""Routing policies: given a scored request, one ``Decision``.

A router is a small class bound to one task, with one method, chosen from ``ROUTERS`` by
the policy name in the task file. Whatever the policy, a request the student could not
answer (cold start, a model error) goes to the teacher: the fail-safe is the teacher.

- ``cascade``: accept the student when its signals pass their thresholds and no rule fires.
- ``distill_verify``: accept the student when the task's checks pass on its answer and no
  rule fires (signals are recorded, not judged).
- ``ensemble``: the student answers at once; the teacher checks behind it and a
  disagreement goes out as a correction (rules still send a request to the teacher first).
- ``shadow``: the teacher answers; the student's answer is recorded beside it.

Under any policy but ensemble (which checks every accepted answer already), ``audit_rate``
of the accepted answers, chosen by a stable hash of the request id (``audited``), are also
sent to the teacher behind the response: the only unbiased sample of accepted traffic.

The task's ``review_rate`` of all requests, drawn by another hash (``in_review``), is the
review sample: people label them for the golden set (``Decision.review``); its
``review_overlap`` share, by a third hash, is labelled by two people (``reviewers_wanted``).
An accepted one is audited too, so the teacher's answer on every reviewed request is on
record; the union of the two hash draws is still a uniform sample of accepted traffic.
Under a target, while no certified rule lets the student answer (no version yet, or one whose
rule the rows could not certify), the sample is drawn at ``review_surge_rate`` instead, by the
same hash, so the ``review_rate`` sample is the part of it below that rate
(``Decision.review_surge`` marks the rest): more trusted rows of today's traffic while every
request is a teacher call anyway, until they certify a rule.
"""

from __future__ import annotations

import hashlib
import re
from typing import ClassVar

from protege.events import Decision, Feedback, Scored, StudentOutput, Verdict
from protege.task import OOS, Task


def audited(request_id: str, rate: float) -> bool:
    """Whether a request falls in the audited share: a stable hash of its id, so a replay,
    another replica or a retry picks the same requests."""
    return in_share(request_id, rate)


REVIEW_SALT = "review:"  # the review sample, independent of the audits' and the learnt answers'


def in_review(request_id: str, rate: float) -> bool:
    """Whether a request falls in the review sample (``Task.review_rate``)."""
    return in_share(request_id, rate, salt=REVIEW_SALT)


OVERLAP_SALT = "overlap:"  # which sampled requests a second person labels (Task.review_overlap)


def reviewers_wanted(request_id: str, task: Task) -> int:
    """How many people label a request: none outside the review sample, two in its
    ``review_overlap`` share (a second opinion), else one."""
    if not in_review(request_id, task.review_ceiling):
        return 0
    return 2 if in_share(request_id, task.review_overlap, salt=OVERLAP_SALT) else 1


def refused(feedback: Feedback, task: Task) -> tuple[str, str] | None:
    """Why a person's label cannot be used, as (reason code, detail), or None: a label that is not
    one of the task's answers (the student would learn to give it), or a review of a request
    outside the review sample (the golden set must stay a sample of traffic). The harvester
    dead-letters on it; ``protege review submit`` checks each line with it before sending."""
    if feedback.label not in task.answers:
        return "unknown_label", f"{feedback.label!r} is not one of {task.name}'s answers: {task.answers}"
    if feedback.kind == "review" and not in_review(feedback.request_id, task.review_ceiling):
        return "not_in_review_sample", (
            f"request {feedback.request_id!r} is not in {task.name}'s review sample (at most "
            f"{task.review_ceiling:g} of requests): only sampled requests make a golden set that is a sample of traffic; "
            "send a fix as kind correction"
        )
    return None


def in_share(request_id: str, rate: float, *, salt: str = "") -> bool:
    """Whether a request falls in a ``rate`` share of requests drawn by a stable hash of its id;
    another ``salt`` draws another share, independent of the audits' (no salt)."""
    if rate <= 0:
        return False
    if rate >= 1:
        return True
    point = int.from_bytes(hashlib.sha256((salt + request_id).encode()).digest()[:8], "big") / 2**64
    return point < rate


class Rules:
    """Declarative rules from the task file that force the teacher, whatever the signals."""

    def __init__(self, task: Task) -> None:
        self.policy = task.policy
        self.patterns = [re.compile(p, re.IGNORECASE) for p in task.policy.escalate_patterns]

    def __call__(self, scored: Scored) -> list[str]:
        req, fired = scored.request, []
        if req.tenant in self.policy.vip_tenants:
            fired.append("vip_tenant")
        fired += [f"pattern:{p.pattern}" for p in self.patterns if p.search(req.text)]
        if scored.student is not None and scored.student.label in self.policy.always_escalate_labels:
            fired.append(f"sensitive_label:{scored.student.label}")
        if scored.student is not None and scored.student.label in self.policy.fields_required_for:
            fired.append(f"fields_required:{scored.student.label}")
        return fired


class Checks:
    """distill_verify's cheap checks on the student's answer: a label's required pattern."""

    def __init__(self, task: Task) -> None:
        self.checks = [(c.label, re.compile(c.require_pattern, re.IGNORECASE), c.reason) for c in task.policy.checks]

    def __call__(self, scored: Scored) -> list[str]:
        if scored.student is None:
            return []
        label, text = scored.student.label, scored.request.text
        return [
            f"check:{reason}"
            for want, pattern, reason in self.checks
            if want in ("*", label) and not pattern.search(text)
        ]


def signals_of(student: StudentOutput) -> dict[str, float]:
    """What the verifier judges an answer by; the probability of ``oos`` only behind an answer in
    scope from a version whose rule has a ceiling on it (a decision recorded before the ceiling
    existed replays to the same signals)."""
    signals = {"confidence": student.confidence, "margin": student.margin, "ood": student.ood}
    rule = student.rule
    if (
        student.oos_probability is not None
        and student.label != OOS
        and rule is not None
        and rule.max_oos_probability is not None
    ):
        signals["oos_probability"] = student.oos_probability
    return signals


def signal_checks(signals: dict[str, float], thresholds: dict[str, float]) -> list[str]:
    """Which signals fail their thresholds (pure; replay recomputes verdicts with it). Without
    ``max_ood`` the answer is not held to the OOD gate (an ``oos`` answer under a rule that lets
    it past: ``AcceptRule.oos_past_ood_gate``)."""
    failed = []
    if signals["confidence"] < thresholds["min_confidence"]:
        failed.append("low_confidence")
    if signals["margin"] < thresholds["min_margin"]:
        failed.append("low_margin")
    if "max_ood" in thresholds and signals["ood"] > thresholds["max_ood"]:
        failed.append("out_of_distribution")
    if "oos_probability" in signals and signals["oos_probability"] > thresholds.get("max_oos_probability", 1.0):
        failed.append("maybe_out_of_scope")
    return failed


class Router:
    """Bound to one task's policy; ``decide`` is pure in its arguments."""

    name: ClassVar[str]
    judges_signals: ClassVar[bool] = False
    checks_behind: ClassVar[bool] = False  # the teacher also checks accepted answers (ensemble)

    def __init__(self, task: Task) -> None:
        self.task = task
        self.thresholds = task.policy.thresholds.model_dump()
        self.policy_version = task.policy.version
        self.audit_rate = task.policy.audit_rate
        self.review_rate = task.review_rate
        self.surge_rate = task.surge_rate  # while no certified rule lets the student answer
        self.trial_audit_rate = task.student.canary.audit_rate  # both arms of a canary
        self.rules = Rules(task)
        self.checks = Checks(task)

    def thresholds_for(self, student: StudentOutput) -> dict[str, float] | None:
        """The task's thresholds, or with a target (absolute or relative to the teacher) the
        version's certified rule for that target (None: the version has no rule for it)."""
        policy = self.task.policy
        if not policy.targeted:
            return self.thresholds
        rule = student.rule
        if rule is None or not policy.certified_by(rule):
            return None
        found = {"min_confidence": rule.min_confidence, "min_margin": 0.0, "max_ood": rule.max_ood}
        if rule.oos_past_ood_gate and student.label == OOS:  # the OOD gate holds back answers in scope only
            del found["max_ood"]
        if rule.max_oos_probability is not None:
            found["max_oos_probability"] = rule.max_oos_probability
        return found

    def decide(self, scored: Scored, now_ms: int) -> Decision:
        student = scored.student
        rules = self.rules(scored) + self.checks(scored)
        signals = {} if student is None else signals_of(student)
        thresholds = self.thresholds
        shut_out = student is None  # no certified rule lets it answer (the review sample surges)
        if student is None:
            failed = ["student_error" if scored.student_error else "no_student"]
        elif not self.judges_signals:
            failed = []
        else:
            found = self.thresholds_for(student)
            failed = []
            if found is None:  # recorded as a rule, so a replay of the decision reaches the same verdict
                rules = [*rules, "no_certified_rule"]
                shut_out = True
            else:
                thresholds = found
                failed = signal_checks(signals, thresholds)
        verdict = self.verdict(student is not None, failed + rules)
        req = scored.request
        review = in_review(req.request_id, self.surge_rate if shut_out else self.review_rate)
        rate = self.trial_audit_rate if student and student.arm else self.audit_rate
        return Decision(
            request_id=req.request_id,
            tenant=req.tenant,
            task=req.task,
            verdict=verdict,
            route="student" if verdict == "accept" else "teacher",
            policy=self.name,
            policy_version=self.policy_version,
            model_version=student.model_version if student else None,
            student_label=student.label if student else None,
            signals=signals,
            thresholds=thresholds,
            rules=rules,
            reasons=failed + rules,
            teacher_check=self.checks_behind and verdict == "accept",
            audit=verdict == "accept" and not self.checks_behind and (review or audited(req.request_id, rate)),
            review=review,
            review_surge=review and not in_review(req.request_id, self.review_rate),
            decided_at_ms=now_ms,
        )

    @classmethod
    def verdict(cls, has_student: bool, reasons: list[str]) -> Verdict:
        """The student answers when there is one and nothing speaks against it."""
        return "accept" if has_student and not reasons else "escalate"


class Cascade(Router):
    name = "cascade"
    judges_signals = True


class DistillVerify(Router):
    name = "distill_verify"


class Ensemble(Router):
    name = "ensemble"
    checks_behind = True  # the teacher checks every accepted answer behind the response


class Shadow(Router):
    name = "shadow"

    @classmethod
    def verdict(cls, has_student: bool, reasons: list[str]) -> Verdict:
        return "shadow"


ROUTERS: dict[str, type[Router]] = {r.name: r for r in (Cascade, DistillVerify, Ensemble, Shadow)}


def router_for(task: Task) -> Router:
    return ROUTERS[task.policy.name](task)


def recompute_verdict(decision: Decision) -> Verdict:
    """The verdict a decision's own recorded signals, thresholds, rules and policy imply."""
    router = ROUTERS[decision.policy]
    has_student = decision.model_version is not None and bool(decision.signals)
    failed = signal_checks(decision.signals, decision.thresholds) if router.judges_signals and has_student else []
    return router.verdict(has_student, failed + decision.rules)
