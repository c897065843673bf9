"""Replay: what would this student, threshold or policy have done to recorded traffic, and
what would it have cost?

    traffic = await recorded(settings, Selection("acme", "ticket-triage", since_ms, until_ms))
    result = replay(traffic, Candidate(task, student=students("v0003")), students)
    result.summary()      # recorded beside replayed: student share, teacher calls, cost, accuracy
    result.rows           # one per request: both decisions, the labels the record holds, the flip

It reads with no consumer group and writes nothing (``publish`` writes a finished replay to
a namespace of its own, never to the live topics). The candidate student re-scores the
recorded requests through the scorer's own batched path (``protege.scoring``); the
candidate policy re-decides through the verifier's own router (``protege.policy``). With no
candidate version, each request is re-scored by the version that scored it: replaying the
recorded version and policy reproduces the recorded decisions, which ``matched`` counts.

Labels come only from the record: the teacher's answers (escalations, ensemble checks,
shadow, audits), people's corrections, and people's reviews of the review sample (judged
apart: ``against_people``). An accepted answer with neither has no label, and the
summary says how many there are rather than guessing their accuracy. A label on a request
the re-scoring version learnt from (its ``trained_on.txt``) is left out of its accuracy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from protege.agreement import agreement, consensus
from protege.certify import paired_exact_bound
from protege.events import Decision, Scored
from protege.kafka import Out, ensure_topics
from protege.kafka import publish as publish_outs
from protege.policy import router_for
from protege.recorded import ReplayError, Selection, Traffic, recorded
from protege.redact import redact
from protege.scoring import score_batch
from protege.settings import Settings
from protege.state import read_all
from protege.student.manifest import TRAINED_ON
from protege.student.runtime import Student
from protege.task import Task

__all__ = ["Candidate", "ReplayError", "Result", "Row", "Selection", "Traffic", "publish", "recorded", "replay"]

# Signals are recorded to 6 decimals. The same version on the same text in a batch of another
# shape, or with another thread count, differs in float32 by up to ~1e-6 in a probability (its
# logits are float32), and a margin is the difference of two: 2e-6 apart was seen after
# rounding. The summary reports the largest deviation it saw.
SIGNAL_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Candidate:
    """What to replay: a policy (a task's) and a student, loaded by the caller (a registry
    version or a version folder, with the scorer's settings); with none, each request is
    re-scored by the version that scored it. ``rescore=False`` keeps the recorded student
    outputs and replays the policy alone (fast)."""

    task: Task
    student: Student | None = None
    rescore: bool = True

    def describe(self) -> str:
        if not self.rescore:
            student = "the recorded outputs (not re-scored)"
        elif self.student is not None:
            student = f"{self.student.version} ({self.student.folder})"
        else:
            student = "the version that scored each request"
        return f"student: {student}; policy: {self.task.policy.name} {self.task.policy.version}"


Students = Callable[[str], Student]  # a registry version name -> the loaded student


@dataclass
class Row:
    """One request: what was recorded, what the candidate decides, and the labels on record."""

    request_id: str
    received_at_ms: int
    recorded_verdict: str | None
    recorded_route: str | None
    recorded_version: str | None
    recorded_student_label: str | None
    recorded_label: str | None  # the answer given (the response), else what the decision implies
    recorded_reasons: str
    verdict: str
    route: str
    version: str | None
    student_label: str | None
    confidence: float | None
    margin: float | None
    ood: float | None
    reasons: str
    teacher_check: bool
    audit: bool  # the candidate would have the teacher audit this accepted answer
    audited: bool  # it was audited when recorded: its teacher label is a random sample's
    teacher_label: str | None
    teacher_cost_usd: float | None
    feedback_label: str | None
    review_label: str | None  # a person's review: the request is in the recorded review sample
    answer: str | None  # the candidate's answer: the student's if accepted, the recorded teacher's if escalated
    in_sample: bool | None  # the re-scoring version learnt from this request (None: not on record)
    sampled: bool  # in the recorded review sample (its decision said so; not the surge's), reviewed or not
    flip: str | None  # student->teacher, teacher->student, label (both student, labels differ)
    matched: bool  # the same decision as recorded: verdict, route, label, reasons; signals within 1e-5
    deviation: float | None  # the largest difference of a signal from the recorded one (same version only)


@dataclass
class Result:
    traffic: Traffic
    candidate: Candidate
    rows: list[Row]
    seconds: float
    scored: int  # requests re-scored by a student
    replayed: list[tuple[Scored, Decision]] = field(default_factory=list)  # what ``publish`` writes

    def summary(self) -> dict[str, Any]:
        t = self.traffic
        costs = [r.cost_usd for r in t.teacher.values()]
        per_call = sum(costs) / len(costs) if costs else None
        flips: dict[str, int] = {}
        for r in self.rows:
            if r.flip:
                flips[r.flip] = flips.get(r.flip, 0) + 1
        recorded_rows = [r for r in self.rows if r.recorded_verdict is not None]
        return {
            "selection": asdict(t.selection),
            "candidate": self.candidate.describe(),
            "requests": len(self.rows),
            "teacher_labels": {
                "count": len(t.teacher),
                "source": "OFFLINE STAND-IN (answers from labelled data)" if t.standin else "teacher",
            },
            "feedback_labels": len(t.feedback),
            "review_labels": len(t.reviews),
            "cost_per_teacher_call_usd": per_call,
            "recorded": _side(
                self.rows,
                recorded=True,
                per_call=per_call,
                labels=self.candidate.task.answers,
                opinions=t.uniform_opinions,
            ),
            "replay": _side(
                self.rows,
                recorded=False,
                per_call=per_call,
                labels=self.candidate.task.answers,
                opinions=t.uniform_opinions,
            ),
            "flips": flips,
            "matched": {
                "count": sum(r.matched for r in recorded_rows),
                "of": len(recorded_rows),
                "share": sum(r.matched for r in recorded_rows) / len(recorded_rows) if recorded_rows else None,
            },
            "max_signal_deviation": max(  # the same version's, over the decisions that came out the same
                (r.deviation for r in recorded_rows if r.matched and r.deviation is not None), default=None
            ),
            "rescored": self.scored,
            "seconds": round(self.seconds, 3),
            "decisions_per_s": round(len(self.rows) / self.seconds, 1) if self.seconds > 0 else None,
        }


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval (95%) for a proportion; None without observations."""
    if n == 0:
        return None
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # The interval holds p; at p = 0 or 1 rounding can leave its end a hair inside (seen: a page
    # whose teacher was right on every reviewed row could not draw its error bar).
    return (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))


def _accuracy(pairs: Sequence[tuple[str | None, str]]) -> dict[str, Any]:
    """Answers against labels: count, correct, accuracy and its 95% interval."""
    n = len(pairs)
    correct = sum(a == b for a, b in pairs)
    return {
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else None,
        "interval95": wilson(correct, n),
    }


@dataclass(frozen=True)
class Reviewed:
    """A request of the review sample that a person labelled, as one side answers it."""

    person: str  # the reviewer's label
    answer: str | None  # what was (or would be) served; None: no answer
    route: str | None  # student | teacher
    teacher: str | None  # the teacher's label on record (every sampled request is asked)
    student: str | None  # the student's label, served or not
    version: str | None


def against_people(
    reviewed: Sequence[Reviewed],
    sampled: int,
    labels: Collection[str] | None = None,
    opinions: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Any] | None:
    """The answers served, the teacher's and the student's, each against people's labels on the
    review sample (``Task.review_rate``): a uniform draw of all traffic by a hash of the request
    id, so — unlike feedback, which holds the requests someone found wrong — an unbiased
    estimate of what the task really serves. Each accuracy with its Wilson 95% interval; served
    minus teacher as a paired difference on the same requests, its 95% interval two one-sided
    97.5% bounds from ``certify.paired_exact_bound`` (the test a relative target is certified
    with). A review whose label is not one of ``labels`` is left out (the harvester refuses it).
    With ``opinions`` (request id -> reviewer -> label), how often people agree with each other
    where two or more labelled a request (``agreement``), and the requests they split on (no
    label yet: not in ``reviewed``). None when no request of the range is in the sample."""
    if not sampled:
        return None
    if labels is not None:
        reviewed = [r for r in reviewed if r.person in labels]
    both = [r for r in reviewed if r.teacher is not None]
    wins = sum(r.answer == r.person != r.teacher for r in both)
    losses = sum(r.teacher == r.person != r.answer for r in both)
    n = len(both)
    versions = sorted({r.version for r in reviewed if r.route == "student" and r.version})
    reviewers = agreement(opinions or {})
    disputed = sum(consensus(said) is None for said in (opinions or {}).values())
    return {
        "sampled": sampled,
        "reviewed": len(reviewed),
        "pending": sampled - len(reviewed) - disputed,
        "disputed": disputed,
        "reviewers": reviewers,
        "served": _accuracy([(r.answer, r.person) for r in reviewed]),
        "teacher": _accuracy([(r.teacher, r.person) for r in both]),
        "student": _accuracy([(r.student, r.person) for r in reviewed if r.student is not None]),
        "student_answered": _accuracy([(r.answer, r.person) for r in reviewed if r.route == "student"]),
        "teacher_answered": _accuracy([(r.answer, r.person) for r in reviewed if r.route != "student"]),
        "versions": {
            v: _accuracy([(r.answer, r.person) for r in reviewed if r.route == "student" and r.version == v])
            for v in versions
        },
        "served_minus_teacher": {
            "n": n,
            "wins": wins,
            "losses": losses,
            "difference": (wins - losses) / n,
            "interval95": (
                paired_exact_bound(wins, losses, n, 0.975),
                -paired_exact_bound(losses, wins, n, 0.975),
            ),
        }
        if n
        else None,
    }


def _estimate(judged: Sequence[tuple[str | None, Row]]) -> dict[str, Any] | None:
    """Accuracy of all accepted answers, the unlabelled ones included, from the audits.

    Two strata: answers labelled in full (a teacher answer to a recorded escalation, an
    ensemble check) count as they are; the rest — accepted when recorded, so only audits
    label them, a uniform sample by a hash of the id — are estimated from the audited ones
    (weight 1/rate each). The 95% interval is the audited stratum's Wilson interval carried
    through. None without audits. Assumes one audit rate over the range."""
    audited = [(a, r) for a, r in judged if r.audited]
    if not audited:
        return None
    full = [(a, r) for a, r in judged if r.teacher_label is not None and not r.audited]
    sampled = len(judged) - len(full)  # the stratum the audits sample
    correct = sum(a == r.teacher_label for a, r in audited)
    interval = wilson(correct, len(audited))
    assert interval is not None
    exact = sum(a == r.teacher_label for a, r in full)
    n = len(judged)
    return {
        "accuracy": (exact + sampled * correct / len(audited)) / n,
        "interval95": ((exact + sampled * interval[0]) / n, (exact + sampled * interval[1]) / n),
        "audits": len(audited),
        "labelled_in_full": len(full),
        "estimated_from_audits": sampled,
    }


def _side(
    rows: Sequence[Row],
    *,
    recorded: bool,
    per_call: float | None,
    labels: Collection[str],
    opinions: Mapping[str, Mapping[str, str]],
) -> dict[str, Any]:
    """The numbers of one side (the recorded decisions, or the replayed ones)."""
    if recorded:
        rows = [r for r in rows if r.recorded_verdict is not None]

    def route(r: Row) -> str | None:
        return r.recorded_route if recorded else r.route

    def answer(r: Row) -> str | None:
        return r.recorded_label if recorded else r.answer

    n = len(rows)
    accepted = [r for r in rows if route(r) == "student"]
    # A label the re-scoring version learnt from says nothing of its accuracy: left out.
    learnt = [r for r in accepted if not recorded and r.in_sample]
    unknown = 0 if recorded else sum(r.in_sample is None for r in rows)
    judged = [r for r in accepted if recorded or not r.in_sample]
    checks = 0 if recorded else sum(r.teacher_check for r in rows)
    audits = sum(r.audited for r in rows) if recorded else sum(r.audit for r in rows)
    calls = n - len(accepted) + checks + audits
    if recorded:  # what the teacher was really asked: its recorded results (answers, checks, audits)
        calls = sum(r.teacher_label is not None for r in rows)
    student_vs_teacher = [(answer(r), r.teacher_label) for r in judged if r.teacher_label is not None]
    student_vs_feedback = [(answer(r), r.feedback_label) for r in judged if r.feedback_label is not None]
    unlabelled = sum(r.teacher_label is None and r.feedback_label is None for r in judged)
    answered = [r for r in rows if answer(r) is not None and (recorded or not r.in_sample)]
    return {
        "requests": n,
        "student_share": len(accepted) / n if n else None,
        "escalated": n - len(accepted),
        "teacher_calls": calls,
        "teacher_cost_usd": None if per_call is None else calls * per_call,
        "audit_calls": audits,
        "audit_cost_usd": None if per_call is None else audits * per_call,
        "all_teacher_cost_usd": None if per_call is None else n * per_call,
        "accepted_vs_teacher": _accuracy(student_vs_teacher),
        "accepted_estimate": _estimate([(answer(r), r) for r in judged]),
        "accepted_vs_feedback": _accuracy(student_vs_feedback),
        "accepted_unlabelled": unlabelled,
        "answers_vs_feedback": _accuracy(
            [(answer(r), r.feedback_label) for r in answered if r.feedback_label is not None]
        ),
        "answers_vs_people": against_people(
            [
                Reviewed(
                    r.review_label,
                    answer(r),
                    route(r),
                    r.teacher_label,
                    r.recorded_student_label if recorded else r.student_label,
                    r.recorded_version if recorded else r.version,
                )
                for r in rows
                if r.review_label is not None and r.sampled and (recorded or not r.in_sample)
            ],
            sum(r.sampled for r in rows),
            labels,
            opinions,
        ),
        "unanswerable": sum(answer(r) is None for r in rows),  # escalated where the record holds no teacher answer
        "accepted_in_sample": len(learnt),  # left out of the accuracies above
        "training_cases_unknown": unknown,  # rows re-scored by a version that kept no list of them
    }


def replay(
    traffic: Traffic,
    candidate: Candidate,
    students: Students,
    *,
    batch: int = 64,
    redact_pii: bool = True,
    progress: Callable[[int], None] | None = None,
) -> Result:
    """Re-score (unless ``candidate.rescore`` is off) and re-decide every recorded request.

    ``students`` loads a registry version by name (the recorded versions, when the
    candidate has no student); ``progress`` is called with the number of requests just done.
    """
    started = time.perf_counter()
    router = router_for(candidate.task)
    clean = redact if redact_pii else str
    rows: list[Row] = []
    replayed: list[tuple[Scored, Decision]] = []
    rescored = 0
    seen: dict[Path, frozenset[str] | None] = {}
    for recorded_batch, student in _batches(traffic.scored, candidate, students, batch):
        trained: frozenset[str] | None = frozenset()  # not re-scored: the recorded version, learnt before
        if student is None:
            now = recorded_batch
        else:
            now = score_batch(student, [s.request for s in recorded_batch], clean)
            rescored += len(now)
            if student.folder not in seen:
                seen[student.folder] = trained_on(student.folder)
            trained = seen[student.folder]
        for before, after in zip(recorded_batch, now, strict=True):
            rid = before.request.request_id
            was = traffic.decisions.get(rid)
            decision = router.decide(after, was.decided_at_ms if was else after.scored_at_ms)
            in_sample = None if trained is None else rid in trained
            rows.append(_row(traffic, before, was, decision, in_sample))
            replayed.append((after, decision))
        if progress is not None:
            progress(len(recorded_batch))
    return Result(traffic, candidate, rows, time.perf_counter() - started, rescored, replayed)


def _batches(
    scored: Sequence[Scored], candidate: Candidate, students: Students, size: int
) -> Iterator[tuple[list[Scored], Student | None]]:
    """Runs of consecutive requests that one student scores (None: keep the recorded output)."""
    fixed = candidate.student
    run: list[Scored] = []
    current: Student | None = None
    for s in scored:
        if not candidate.rescore:
            student = None
        elif fixed is not None:
            student = fixed
        elif s.student is not None:  # as recorded: the version that scored it
            student = students(s.student.model_version)
        else:  # recorded without a student (cold start, a failed model): nothing to re-score
            student = None
        if run and (student is not current or len(run) >= size):
            yield run, current
            run = []
        current = student
        run.append(s)
    if run:
        yield run, current


def trained_on(folder: Path) -> frozenset[str] | None:
    """The request ids a version learnt from (None: a version trained before they were kept)."""
    path = folder / TRAINED_ON
    return frozenset(path.read_text().split("\n")) if path.exists() else None


def _row(traffic: Traffic, before: Scored, was: Decision | None, now: Decision, in_sample: bool | None) -> Row:
    rid = before.request.request_id
    teacher = traffic.teacher.get(rid)
    feedback = traffic.feedback.get(rid)
    answer = now.student_label if now.route == "student" else (teacher.label if teacher else None)
    flip = None
    if was is not None:
        if was.route == "student" and now.route == "teacher":
            flip = "student->teacher"
        elif was.route == "teacher" and now.route == "student":
            flip = "teacher->student"
        elif was.route == now.route == "student" and was.student_label != now.student_label:
            flip = "label"
    signals = now.signals
    return Row(
        request_id=rid,
        received_at_ms=before.request.received_at_ms,
        recorded_verdict=was.verdict if was else None,
        recorded_route=was.route if was else None,
        recorded_version=was.model_version if was else None,
        recorded_student_label=was.student_label if was else None,
        recorded_label=traffic.served(rid),
        recorded_reasons=",".join(was.reasons) if was else "",
        verdict=now.verdict,
        route=now.route,
        version=now.model_version,
        student_label=now.student_label,
        confidence=signals.get("confidence"),
        margin=signals.get("margin"),
        ood=signals.get("ood"),
        reasons=",".join(now.reasons),
        teacher_check=now.teacher_check,
        audit=now.audit,
        audited=teacher is not None and teacher.mode == "audit",
        teacher_label=teacher.label if teacher else None,
        teacher_cost_usd=teacher.cost_usd if teacher else None,
        feedback_label=feedback.label if feedback else None,
        review_label=traffic.reviews.get(rid),
        answer=answer,
        in_sample=in_sample,
        sampled=rid in traffic.sampled,
        flip=flip,
        matched=was is not None and same_decision(was, now),
        deviation=max((abs(was.signals[k] - v) for k, v in signals.items() if k in was.signals), default=None)
        if was is not None and was.model_version == now.model_version
        else None,
    )


def same_decision(a: Decision, b: Decision) -> bool:
    """Verdict, route, label and reasons equal; and when the same version scored both, signals
    within ``SIGNAL_TOLERANCE`` (another version's signals are its own)."""
    return (a.verdict, a.route, a.student_label, a.reasons) == (b.verdict, b.route, b.student_label, b.reasons) and (
        a.model_version != b.model_version
        or (
            a.signals.keys() == b.signals.keys()
            and all(round(abs(a.signals[k] - b.signals[k]), 9) <= SIGNAL_TOLERANCE for k in a.signals)
        )
    )


async def publish(result: Result, settings: Settings, prefix: str) -> dict[str, int]:
    """The replay as a recording of its own, in a replay namespace: ``<prefix>protege.scored``
    (as re-scored), ``.decisions`` (as replayed) and ``.teacher.results`` (the recorded answers
    for the requests the replay sends to the teacher). Replay, export and report read it back
    with ``PROTEGE_TOPIC_PREFIX=<prefix>``. Refuses the live namespace and one already written."""
    if prefix == settings.topic_prefix:
        raise ReplayError(f"--publish {prefix!r} is the live namespace: choose a prefix of its own, e.g. replay1.")
    ns = settings.model_copy(update={"topic_prefix": prefix})
    await ensure_topics(ns)
    if await read_all(ns, ns.topics.scored):
        raise ReplayError(f"{ns.topics.scored} already holds a replay: publish to a new prefix")
    teacher = result.traffic.teacher
    outs: list[Out] = []
    counts = {"scored": 0, "decisions": 0, "teacher_results": 0}
    for scored, decision in result.replayed:
        outs += [Out.of(ns.topics.scored, scored), Out.of(ns.topics.decisions, decision)]
        counts["scored"] += 1
        counts["decisions"] += 1
        answer = teacher.get(decision.request_id)
        if answer is not None and (decision.route == "teacher" or decision.teacher_check):
            outs.append(Out.of(ns.topics.teacher_results, answer))
            counts["teacher_results"] += 1
    await publish_outs(ns, outs, acks="all")
    return counts


def write_parquet(rows: Sequence[Row], path: Path) -> None:
    """The per-request rows as Parquet (pyarrow: ``pip install 'protege[analysis]'``)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ReplayError("writing Parquet needs pyarrow: pip install 'protege[analysis]'") from e
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([asdict(r) for r in rows]), path)
