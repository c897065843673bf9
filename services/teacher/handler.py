"""Teacher worker: ask the teacher for each escalated request, within a budget, and never
lose one.

teacher.requests (and teacher.retry) ->
- the teacher answered: teacher.results + responses (mode ``answer``), or teacher.results
  and, if it disagrees with the student's provisional answer, corrections (mode ``check``),
  or teacher.results alone (mode ``audit``: it measures the student's answer, which stands);
- the teacher is unavailable (retries exhausted, circuit open) or the tenant is over its
  hourly spend cap: the task's ``on_teacher_unavailable`` decides: ``hold`` puts the
  request on teacher.retry with a later ``not_before_ms`` (exponential backoff with
  jitter), ``degrade`` answers with the student's label flagged ``degraded`` (held when
  there is no student label);
- the teacher's label stays outside the label set after one repair: protege.dlq with the
  reason, and the request is answered ``degraded`` from the student or ``failed``. Those
  calls were paid for: they count against the spend cap and in the cost metrics, and the
  outcome is journaled like an answer, so a restart does not pay for them again.

A request the worker cannot handle at all is quarantined by the loop and answered like an
invalid teacher answer: ``degraded`` from the student, or ``failed``.

Transient API errors (429 with retry-after, 5xx, 529, timeouts) are first retried by the
SDK with backoff; only what survives those retries reaches the circuit breaker.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog
from protege_services.teacher.journal import AnswerJournal, PaidInvalid, answer_of, invalid_key, key_of

from protege import metrics
from protege.errors import TeacherError
from protege.events import Correction, Response, TeacherRequest, TeacherResult, now_ms
from protege.kafka import Out, Received, dead_letter
from protege.task import Task
from protege.teacher import InvalidAnswer, Teacher, TeacherAnswer
from protege.topics import Topics


@dataclass
class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; lets one trial call through after
    ``cooldown_s``; closes on a success."""

    threshold: int = 5
    cooldown_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    opened_at: float | None = None
    trial: bool = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.clock() - self.opened_at >= self.cooldown_s else "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self.trial:
            self.trial = True
            return True
        return False

    def success(self) -> None:
        self.failures, self.opened_at, self.trial = 0, None, False

    def failure(self) -> None:
        self.failures += 1
        self.trial = False
        if self.failures >= self.threshold or self.opened_at is not None:
            self.opened_at = self.clock()


@dataclass
class SpendTracker:
    """Teacher spend per budget key (``tenant/task``) over a sliding window (an hour).

    A call reserves its upper cost estimate before it starts and settles to the real
    cost after, so concurrent calls cannot overshoot a cap together.
    """

    window_s: float = 3600.0
    clock: Callable[[], float] = time.time
    spends: dict[str, deque[tuple[float, float]]] = field(default_factory=lambda: defaultdict(deque))
    reserved: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, key: str, cost: float, at: float | None = None) -> None:
        self.spends[key].append((self.clock() if at is None else at, cost))

    def spent(self, key: str) -> float:
        q, horizon = self.spends[key], self.clock() - self.window_s
        while q and q[0][0] < horizon:
            q.popleft()
        return sum(c for _, c in q)

    def reserve(self, key: str, estimate: float, cap: float | None) -> bool:
        """Reserve ``estimate`` unless that would pass ``cap``; no await between check and reserve."""
        if cap is not None and self.spent(key) + self.reserved[key] + estimate > cap:
            return False
        self.reserved[key] += estimate
        return True

    def settle(self, key: str, estimate: float, cost: float | None) -> None:
        self.reserved[key] -= estimate
        if cost is not None:
            self.add(key, cost)


def backoff_ms(attempt: int, base_s: float = 2.0, cap_s: float = 60.0, rng: random.Random | None = None) -> int:
    delay = min(cap_s, base_s * 2**attempt)
    return int(delay * (0.8 + 0.4 * (rng or random).random()) * 1000)


HELD_REASONS = ("teacher_unavailable", "over_budget")


class TeacherWorker:
    def __init__(
        self,
        tasks: dict[str, Task],
        topics: Topics,
        teacher: Teacher,
        concurrency: int,
        *,
        breaker: CircuitBreaker | None = None,
        spend: SpendTracker | None = None,
        unavailable: tuple[type[BaseException], ...] = (),
        max_hold_sleep_s: float = 30.0,
        journal: AnswerJournal | None = None,
    ) -> None:
        self.tasks = tasks
        self.topics = topics
        self.teacher = teacher
        self.limit = asyncio.Semaphore(concurrency)
        self.breaker = breaker or CircuitBreaker()
        self.spend = spend or SpendTracker()
        self.unavailable = unavailable  # the client's errors that mean "try later", e.g. anthropic.APIError
        self.max_hold_sleep_s = max_hold_sleep_s
        self.journal = journal
        self.journaled: dict[tuple[str, int, int], str] = {}  # record -> journal key, until its batch commits
        self.log = structlog.get_logger().bind(service="teacher")
        # Every task's held counters exist from the start (at 0): a dashboard's rate() over them
        # shows "none held" rather than no data.
        for name in tasks:
            for why in HELD_REASONS:
                metrics.TEACHER_HELD.labels(name, why)

    async def answer(self, r: Received[TeacherRequest]) -> list[Out]:
        ask = r.event
        req = ask.request
        task = self.tasks[req.task]  # the loop dead-letters other tasks
        if ask.not_before_ms is not None:  # held: wait its turn (bounded; a later pass waits the rest)
            wait_s = (ask.not_before_ms - now_ms()) / 1000
            if wait_s > self.max_hold_sleep_s:
                return [Out.of(self.topics.teacher_retry, ask)]
            if wait_s > 0:
                await asyncio.sleep(wait_s)
        key = key_of(req.tenant, req.request_id)
        paid = self.journal.get(key) if self.journal is not None else None
        if paid is not None:  # answered before a crash, not yet committed: do not pay again
            self.journaled[r.coordinates] = key
            self.log.info("answer_from_journal", request_id=req.request_id, teacher=paid.teacher)
            return self.result_outs(ask, answer_of(paid))
        refused = self.journal.get_invalid(key) if self.journal is not None else None
        if refused is not None:  # the same, for an answer outside the label set
            self.journaled[r.coordinates] = invalid_key(key)
            self.log.info("invalid_answer_from_journal", request_id=req.request_id, teacher=refused.teacher)
            return self.invalid_outs(r, refused.error)
        budget = f"{req.tenant}/{req.task}"  # the cap is the task's, counted per tenant
        estimate = self.teacher.estimate_usd(task, req.text)
        if not self.spend.reserve(budget, estimate, task.teacher.spend_cap_usd_per_hour):
            return self.unavailable_outs(ask, task, "over_budget")
        cost = None
        try:
            async with self.limit:
                if not self.breaker.allow():
                    return self.unavailable_outs(ask, task, "teacher_unavailable")
                try:
                    answer = await self.teacher.label(task, req.text, req.request_id)
                except TeacherError as e:
                    self.breaker.success()  # the API answered; the answer was bad
                    self.log.warning("teacher_invalid", request_id=req.request_id, error=str(e))
                    if not isinstance(e, InvalidAnswer):
                        return self.invalid_outs(r, str(e))
                    cost = e.paid.cost_usd
                    self.count_paid(ask, e.paid)
                    if self.journal is not None:
                        journal_key = await self.journal.put_invalid(key, PaidInvalid.of(str(e), e.paid))
                        self.journaled[r.coordinates] = journal_key
                    return self.invalid_outs(r, str(e))
                except self.unavailable as e:
                    self.breaker.failure()
                    metrics.BREAKER_OPEN.set(int(self.breaker.state == "open"))
                    self.log.warning(
                        "teacher_unavailable",
                        request_id=req.request_id,
                        error=f"{type(e).__name__}: {e}",
                        breaker=self.breaker.state,
                        attempt=ask.attempt,
                    )
                    return self.unavailable_outs(ask, task, "teacher_unavailable")
            self.breaker.success()
            metrics.BREAKER_OPEN.set(0)
            cost = answer.cost_usd
        finally:
            self.spend.settle(budget, estimate, cost)
        if self.journal is not None:
            await self.journal.put(key, self.result_of(ask, answer, now_ms()))
            self.journaled[r.coordinates] = key
        return self.result_outs(ask, answer)

    def invalid_outs(self, r: Received[TeacherRequest], error: str) -> list[Out]:
        """The teacher's answer stayed outside the label set: a dead letter with the reason, and
        the request answered from the student (degraded) or as failed."""
        req = r.event.request
        ids = {"request_id": req.request_id, "tenant": req.tenant}
        return [
            dead_letter(r, "teacher_invalid_answer", error, "teacher", self.topics.dlq, **ids),
            *self.fallback_response(r.event, error),
        ]

    async def committed(self, received: Sequence[Received[TeacherRequest]]) -> None:
        """A batch's transaction committed: its journal entries are settled."""
        keys = [k for r in received if (k := self.journaled.pop(r.coordinates, None))]
        if keys and self.journal is not None:
            await self.journal.settle(keys)

    @staticmethod
    def result_of(ask: TeacherRequest, answer: TeacherAnswer, at: int) -> TeacherResult:
        req = ask.request
        agrees = None if ask.student_label is None else ask.student_label == answer.label
        return TeacherResult(
            request_id=req.request_id,
            tenant=req.tenant,
            task=req.task,
            text=req.text,
            label=answer.label,
            rationale=answer.rationale,
            teacher=answer.model,
            standin=answer.standin,
            usage=answer.usage,
            cost_usd=answer.cost_usd,
            latency_ms=answer.latency_ms,
            attempts=answer.attempts,
            mode=ask.mode,
            fields=answer.fields,
            student_label=ask.student_label,
            agrees=agrees,
            model_version=ask.model_version,
            review=ask.review,
            answered_at_ms=at,
        )

    def result_outs(self, ask: TeacherRequest, answer: TeacherAnswer) -> list[Out]:
        req, at = ask.request, now_ms()
        result = self.result_of(ask, answer, at)
        agrees = result.agrees
        outs = [Out.of(self.topics.teacher_results, result)]
        self.observe(ask, answer, at)
        if ask.mode == "answer":
            outs.append(
                Out.of(
                    self.topics.responses,
                    Response(
                        request_id=req.request_id,
                        tenant=req.tenant,
                        task=req.task,
                        label=answer.label,
                        route="teacher",
                        fields=answer.fields,
                        answered_by=answer.model,
                        standin=answer.standin,
                        sent_at_ms=req.sent_at_ms,
                        received_at_ms=req.received_at_ms,
                        answered_at_ms=at,
                    ),
                )
            )
        elif ask.mode == "check" and agrees is False and ask.student_label is not None:
            outs.append(
                Out.of(
                    self.topics.corrections,
                    Correction(
                        request_id=req.request_id,
                        tenant=req.tenant,
                        task=req.task,
                        label=answer.label,
                        replaces=ask.student_label,
                        answered_by=answer.model,
                        standin=answer.standin,
                        corrected_at_ms=at,
                    ),
                )
            )
        self.log.info(
            "answered",
            request_id=req.request_id,
            teacher=answer.model,
            mode=ask.mode,
            cost_usd=round(answer.cost_usd, 6),
            standin=answer.standin,
            agrees=agrees,
        )
        return outs

    def observe(self, ask: TeacherRequest, answer: TeacherAnswer, at: int) -> None:
        req = ask.request
        self.count_paid(ask, answer)
        if ask.mode == "audit":
            version = ask.model_version or "none"
            metrics.AUDITS.labels(req.tenant, req.task, version).inc()
            if ask.student_label == answer.label:
                metrics.AUDITS_AGREED.labels(req.tenant, req.task, version).inc()
        metrics.TEACHER_SECONDS.labels(req.task).observe(answer.latency_ms / 1000)
        metrics.observe_hop("decided_to_teacher_answer", ask.requested_at_ms, at)
        if ask.mode == "answer":
            metrics.observe_answer(req.task, "teacher", "answered", req.received_at_ms, at)

    @staticmethod
    def count_paid(ask: TeacherRequest, answer: TeacherAnswer) -> None:
        """What a call cost, valid answer or not: calls, tokens, dollars."""
        req, u = ask.request, answer.usage
        metrics.TEACHER_CALLS.labels(req.task, answer.model, ask.mode).inc()
        for kind, n in (
            ("input", u.input_tokens),
            ("output", u.output_tokens),
            ("cache_write", u.cache_creation_input_tokens),
            ("cache_read", u.cache_read_input_tokens),
        ):
            if n:
                metrics.TEACHER_TOKENS.labels(req.task, answer.model, kind).inc(n)
        metrics.TEACHER_COST.labels(req.tenant, req.task, ask.mode).inc(answer.cost_usd)

    def fallback_response(self, ask: TeacherRequest, error: str) -> list[Out]:
        """Answer from the student (degraded) or, with no student label, as failed. Check and
        audit modes need none: the student's answer already went out."""
        if ask.mode != "answer":
            return []
        req = ask.request
        degraded = ask.student_label is not None
        at = now_ms()
        metrics.observe_answer(
            req.task, "student" if degraded else "teacher", "degraded" if degraded else "failed", req.received_at_ms, at
        )
        return [
            Out.of(
                self.topics.responses,
                Response(
                    request_id=req.request_id,
                    tenant=req.tenant,
                    task=req.task,
                    label=ask.student_label,
                    route="student" if degraded else "teacher",
                    status="degraded" if degraded else "failed",
                    error=error,
                    answered_by=ask.model_version or "none",
                    confidence=ask.student_confidence,
                    sent_at_ms=req.sent_at_ms,
                    received_at_ms=req.received_at_ms,
                    answered_at_ms=at,
                ),
            )
        ]

    def unavailable_outs(self, ask: TeacherRequest, task: Task, why: str) -> list[Out]:
        req = ask.request
        if task.policy.on_teacher_unavailable == "degrade" and ask.mode == "answer" and ask.student_label is not None:
            self.log.info("degraded", request_id=req.request_id, why=why)
            return self.fallback_response(ask, why)
        delay = 60_000 if why == "over_budget" else backoff_ms(ask.attempt)
        held = ask.model_copy(
            update={"attempt": ask.attempt + 1, "not_before_ms": now_ms() + delay, "held_because": why}
        )
        self.log.info("held", request_id=req.request_id, why=why, attempt=held.attempt, delay_ms=delay)
        metrics.TEACHER_HELD.labels(req.task, why).inc()
        metrics.BREAKER_OPEN.set(int(self.breaker.state == "open"))
        return [Out.of(self.topics.teacher_retry, held)]

    def quarantined(self, r: Received[TeacherRequest], why: str) -> list[Out]:
        """The loop gave up on this request: answer it from the student (degraded) or as failed."""
        return self.fallback_response(r.event, why)

    async def handle(self, received: Sequence[Received[TeacherRequest]]) -> list[Out]:
        # Every call finishes (and is journaled) before a failure is raised, so the loop's
        # retry of the batch's records finds the paid answers instead of paying again.
        answered = await asyncio.gather(*(self.answer(r) for r in received), return_exceptions=True)
        for result in answered:
            if isinstance(result, BaseException):
                raise result
        return [out for outs in answered if not isinstance(outs, BaseException) for out in outs]
