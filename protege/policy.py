"""Routing policies: given a scored request and its task, one ``Decision``.

A router is a small class with one method, chosen from ``ROUTERS`` by the name in the
task file. Whatever the policy, a request the student could not answer (cold start, a
model error) goes to the teacher: the fail-safe is the teacher.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import ClassVar

from protege.events import Decision, Scored
from protege.task import Task


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
        return fired


def signal_checks(signals: dict[str, float], thresholds: dict[str, float]) -> list[str]:
    """Which signals fail their thresholds (pure; replay recomputes verdicts with it)."""
    failed = []
    if signals["confidence"] < thresholds["min_confidence"]:
        failed.append("low_confidence")
    if signals["margin"] < thresholds["min_margin"]:
        failed.append("low_margin")
    if signals["ood"] > thresholds["max_ood"]:
        failed.append("out_of_distribution")
    return failed


class Router(ABC):
    """Bound to one task's policy; ``decide`` is pure in its arguments."""

    name: ClassVar[str]

    def __init__(self, task: Task) -> None:
        self.task = task
        self.thresholds = task.policy.thresholds.model_dump()
        self.policy_version = task.policy.version
        self.rules = Rules(task)

    @abstractmethod
    def decide(self, scored: Scored, now_ms: int) -> Decision: ...


class Cascade(Router):
    """Student first; accept when every signal passes and no rule fires, else the teacher."""

    name = "cascade"

    def decide(self, scored: Scored, now_ms: int) -> Decision:
        req, student = scored.request, scored.student
        thresholds = self.thresholds
        rules = self.rules(scored)
        if student is None:
            signals: dict[str, float] = {}
            reasons = ["student_error" if scored.student_error else "no_student"]
        else:
            signals = {"confidence": student.confidence, "margin": student.margin, "ood": student.ood}
            reasons = signal_checks(signals, thresholds)
        reasons += rules
        accept = not reasons
        return Decision(
            request_id=req.request_id, tenant=req.tenant, task=req.task,
            verdict="accept" if accept else "escalate", route="student" if accept else "teacher",
            policy=self.name, policy_version=self.policy_version,
            model_version=student.model_version if student else None,
            student_label=student.label if student else None,
            signals=signals, thresholds=thresholds, rules=rules, reasons=reasons, decided_at_ms=now_ms,
        )


ROUTERS: dict[str, type[Router]] = {Cascade.name: Cascade}


def router_for(task: Task) -> Router:
    return ROUTERS[task.policy.name](task)


def recompute_verdict(decision: Decision) -> str:
    """The verdict a decision's own recorded signals, thresholds and rules imply."""
    if decision.model_version is None or not decision.signals:
        return "escalate"
    failed = signal_checks(decision.signals, decision.thresholds)
    return "escalate" if failed or decision.rules else "accept"
