"""The teacher worker's failure policy with a teacher passed in: circuit breaker, spend
cap, hold in the retry topic, degraded answers, ensemble corrections, invalid answers."""

from __future__ import annotations

import asyncio

import pytest
from protege_services.teacher.handler import CircuitBreaker, SpendTracker, TeacherWorker, backoff_ms

from protege import metrics
from protege.errors import TeacherError
from protege.events import Correction, DeadLetter, Ingested, Response, TeacherRequest, TeacherResult, Usage, now_ms
from protege.generator import triage_task
from protege.kafka import Received
from protege.task import Task
from protege.teacher import InvalidAnswer, TeacherAnswer
from protege.topics import Topics

T = Topics("x.")


class Down(Exception):
    pass


class ScriptedTeacher:
    """Answers ``label`` at ``cost``; raises the queued exceptions first."""

    def __init__(self, label: str = "shipping", cost: float = 0.01, failures: list[Exception] | None = None):
        self.label_, self.cost, self.failures, self.calls = label, cost, list(failures or []), 0

    def estimate_usd(self, task: Task, text: str) -> float:
        return self.cost * 1.2  # an upper estimate

    async def label(self, task: Task, text: str, request_id: str) -> TeacherAnswer:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return TeacherAnswer(
            self.label_, "r", "claude-test", False, Usage(input_tokens=1, output_tokens=1), self.cost, 1.0, 1
        )


def task(**teacher_or_policy) -> Task:
    base = triage_task()
    policy = {k: v for k, v in teacher_or_policy.items() if k != "spend_cap_usd_per_hour"}
    teacher = {k: v for k, v in teacher_or_policy.items() if k == "spend_cap_usd_per_hour"}
    return base.model_copy(
        update={"policy": base.policy.model_copy(update=policy), "teacher": base.teacher.model_copy(update=teacher)}
    )


def ask(mode="answer", student_label: str | None = "refund", rid="r1", **kw) -> Received[TeacherRequest]:
    req = Ingested(request_id=rid, tenant="acme", task="ticket-triage", text="where is my order", received_at_ms=1)
    event = TeacherRequest(
        request=req,
        reasons=["low_confidence"],
        mode=mode,
        student_label=student_label,
        student_confidence=0.4 if student_label else None,
        model_version="v1" if student_label else None,
        requested_at_ms=2,
        **kw,
    )
    return Received(event, T.teacher_requests, key=rid.encode())


def run(worker: TeacherWorker, *records: Received[TeacherRequest]):
    return asyncio.run(worker.handle(list(records)))


def worker(teacher, t: Task | None = None, **kw) -> TeacherWorker:
    return TeacherWorker({"ticket-triage": t or task()}, T, teacher, 4, unavailable=(Down,), **kw)


def test_answer_mode_gives_result_and_response() -> None:
    outs = run(worker(ScriptedTeacher()), ask())
    assert [o.topic for o in outs] == [T.teacher_results, T.responses]
    result = TeacherResult.model_validate_json(outs[0].value)
    assert (result.label, result.agrees, result.mode) == ("shipping", False, "answer")
    assert Response.model_validate_json(outs[1].value).route == "teacher"


def test_check_mode_corrects_only_a_disagreement() -> None:
    outs = run(worker(ScriptedTeacher("shipping")), ask(mode="check", student_label="refund"))
    assert [o.topic for o in outs] == [T.teacher_results, T.corrections]
    c = Correction.model_validate_json(outs[1].value)
    assert (c.label, c.replaces) == ("shipping", "refund")
    same = run(worker(ScriptedTeacher("refund")), ask(mode="check", student_label="refund"))
    assert [o.topic for o in same] == [T.teacher_results]


def test_unavailable_teacher_holds_the_request_with_backoff() -> None:
    w = worker(ScriptedTeacher(failures=[Down()]))
    [out] = run(w, ask())
    assert out.topic == T.teacher_retry
    held = TeacherRequest.model_validate_json(out.value)
    assert held.attempt == 1 and held.held_because == "teacher_unavailable" and held.not_before_ms > now_ms()


def test_degrade_policy_answers_from_the_student_or_holds_without_one() -> None:
    w = worker(ScriptedTeacher(failures=[Down(), Down()]), task(on_teacher_unavailable="degrade"))
    [out] = run(w, ask(student_label="refund"))
    r = Response.model_validate_json(out.value)
    assert (out.topic, r.status, r.label, r.route) == (T.responses, "degraded", "refund", "student")
    [cold] = run(w, ask(student_label=None, rid="r2"))
    assert cold.topic == T.teacher_retry


def test_circuit_opens_after_failures_and_stops_calling() -> None:
    clock = [0.0]
    teacher = ScriptedTeacher(failures=[Down()] * 3)
    w = worker(teacher, breaker=CircuitBreaker(threshold=3, cooldown_s=10, clock=lambda: clock[0]))
    for i in range(3):
        run(w, ask(rid=f"a{i}"))
    assert w.breaker.state == "open" and teacher.calls == 3
    [out] = run(w, ask(rid="b"))
    assert out.topic == T.teacher_retry and teacher.calls == 3  # not called while open
    clock[0] = 11  # half open: one trial call, which succeeds and closes the circuit
    assert [o.topic for o in run(w, ask(rid="c"))] == [T.teacher_results, T.responses]
    assert w.breaker.state == "closed"


def test_spend_cap_per_tenant_per_hour() -> None:
    now = [1000.0]
    spend = SpendTracker(clock=lambda: now[0])
    teacher = ScriptedTeacher(cost=0.4)
    w = worker(teacher, task(spend_cap_usd_per_hour=1.0), spend=spend)
    topics = [run(w, ask(rid=f"r{i}"))[0].topic for i in range(4)]
    assert topics == [T.teacher_results, T.teacher_results, T.teacher_retry, T.teacher_retry]
    assert teacher.calls == 2 and spend.spent("acme/ticket-triage") == pytest.approx(0.8)
    assert spend.reserved["acme/ticket-triage"] == pytest.approx(0)
    held = TeacherRequest.model_validate_json(run(w, ask(rid="r9"))[0].value)
    assert held.held_because == "over_budget"
    now[0] += 3601  # the hour slides on
    assert run(w, ask(rid="r10"))[0].topic == T.teacher_results


def test_concurrent_calls_cannot_overshoot_the_cap_together() -> None:
    teacher = ScriptedTeacher(cost=0.4)
    w = worker(teacher, task(spend_cap_usd_per_hour=1.0))
    outs = run(w, *[ask(rid=f"c{i}") for i in range(10)])  # one batch, answered concurrently
    assert teacher.calls == 2 and sum(o.topic == T.teacher_retry for o in outs) == 8


def test_invalid_answer_is_dead_lettered_and_the_request_still_answered() -> None:
    w = worker(ScriptedTeacher(failures=[TeacherError("invalid_label: 'x' twice")]))
    dlq, resp = run(w, ask(student_label=None))
    assert DeadLetter.model_validate_json(dlq.value).reason == "teacher_invalid_answer"
    r = Response.model_validate_json(resp.value)
    assert (r.status, r.label) == ("failed", None) and "invalid_label" in (r.error or "")


def paid_invalid(cost: float) -> InvalidAnswer:
    paid = TeacherAnswer("billing-ish", "r", "claude-test", False, Usage(input_tokens=2, output_tokens=2), cost, 1.0, 2)
    return InvalidAnswer("invalid_label: 'billing-ish' twice", paid)


def test_an_invalid_answer_was_paid_for_and_counts_against_the_cap() -> None:
    spend = SpendTracker()
    w = worker(ScriptedTeacher(cost=0.4, failures=[paid_invalid(0.6)]), task(spend_cap_usd_per_hour=1.0), spend=spend)
    before = metrics.TEACHER_COST.labels("acme", "ticket-triage", "answer")._value.get()
    dlq, resp = run(w, ask(rid="bad"))
    assert DeadLetter.model_validate_json(dlq.value).reason == "teacher_invalid_answer"
    assert Response.model_validate_json(resp.value).status == "degraded"
    assert spend.spent("acme/ticket-triage") == pytest.approx(0.6)
    assert metrics.TEACHER_COST.labels("acme", "ticket-triage", "answer")._value.get() - before == pytest.approx(0.6)
    # 0.6 paid + 0.4 * 1.2 reserved for the next call passes the 1.0 cap: it is held
    assert TeacherRequest.model_validate_json(run(w, ask(rid="next"))[0].value).held_because == "over_budget"


def test_held_request_waits_for_its_turn() -> None:
    w = worker(ScriptedTeacher(), max_hold_sleep_s=5)
    far = ask(not_before_ms=now_ms() + 60_000, attempt=2)
    [out] = run(w, far)
    assert out.topic == T.teacher_retry  # too far ahead: put back, not slept on
    soon = ask(not_before_ms=now_ms() + 300, attempt=2)
    start = now_ms()
    assert run(w, soon)[0].topic == T.teacher_results and now_ms() - start >= 250


def test_backoff_grows_with_jitter_and_a_cap() -> None:
    import random

    rng = random.Random(1)
    assert 1600 <= backoff_ms(0, rng=rng) <= 2400
    assert 12_800 <= backoff_ms(3, rng=rng) <= 19_200
    assert backoff_ms(20, rng=rng) <= 72_000


def test_audit_mode_measures_and_changes_nothing() -> None:
    """An audited accepted answer: a teacher result marked audit, no response (the student's
    stands), no correction even when the teacher disagrees; its cost counted apart."""
    before = metrics.TEACHER_COST.labels("acme", "ticket-triage", "audit")._value.get()
    outs = run(worker(ScriptedTeacher("shipping")), ask(mode="audit", student_label="refund"))
    assert [o.topic for o in outs] == [T.teacher_results]
    result = TeacherResult.model_validate_json(outs[0].value)
    assert (result.mode, result.agrees) == ("audit", False)
    assert metrics.TEACHER_COST.labels("acme", "ticket-triage", "audit")._value.get() > before
    assert metrics.AUDITS.labels("acme", "ticket-triage", "v1")._value.get() >= 1
