"""The review sample grows the golden set from live traffic: the harvester sends a sampled
request's teacher answer to people (blind) and to the trainer as half a golden row, never to
training; a person's review is the other half; feedback from outside that names a label the
task does not have, or a review of a request outside the sample, is dead-lettered with its
reason; the trainer joins the halves (``ReviewStore``) and measures versions on them."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from protege_services.harvester.handler import Harvester
from protege_services.trainer.handler import CaseStore, Train, Trainer

from protege import metrics
from protege.cli.review import reviews, short_of_labels
from protege.events import (
    AcceptRule,
    DeadLetter,
    Feedback,
    HarvestCase,
    ModelAnnouncement,
    ReviewItem,
    TeacherResult,
    Usage,
)
from protege.generator import triage_task
from protege.kafka import Out, Received
from protege.policy import in_review, reviewers_wanted
from protege.review import ReviewStore
from protege.student.train import Case, Recertified, TrainResult, Trusted
from protege.task import Canary, Task
from protege.topics import Topics
from tests.helpers import harvest_case, manifest_only

T = Topics("u.")
TASK = triage_task().model_copy(update={"review_rate": 0.2})
TASKS = {TASK.name: TASK}
IDS = [f"acme-{i}" for i in range(400)]
SAMPLED = [i for i in IDS if in_review(i, TASK.review_rate)]
OTHERS = [i for i in IDS if not in_review(i, TASK.review_rate)]


def result(request_id: str, label: str = "billing", *, review: bool, mode: str = "answer") -> Received[TeacherResult]:
    event = TeacherResult(
        request_id=request_id,
        tenant="acme",
        task=TASK.name,
        text=f"ticket {request_id}, mail me at ann@example.com",
        label=label,
        teacher="claude-sonnet-4-6",
        standin=False,
        usage=Usage(input_tokens=1, output_tokens=1),
        cost_usd=0.001,
        latency_ms=1,
        attempts=1,
        mode=mode,  # type: ignore[arg-type]
        student_label="refund",
        review=review,
        answered_at_ms=1,
    )
    return Received(event, T.teacher_results, value=event.dumps())


def feedback(request_id: str, label: str, kind: str = "review") -> Received[Feedback]:
    event = Feedback(
        request_id=request_id,
        tenant="acme",
        task=TASK.name,
        text="ticket",
        label=label,
        kind=kind,  # type: ignore[arg-type]
    )
    return Received(event, T.feedback, offset=7, value=event.dumps())


def harvest(*received: Received) -> list[Out]:
    return asyncio.run(Harvester(TASKS, T).handle(list(received)))


def cases(outs: list[Out]) -> list[HarvestCase]:
    return [HarvestCase.model_validate_json(o.value) for o in outs if o.topic == T.harvest]


def letters(outs: list[Out]) -> list[DeadLetter]:
    return [DeadLetter.model_validate_json(o.value) for o in outs if o.topic == T.dlq]


def test_a_sampled_teacher_answer_goes_to_people_blind_and_to_the_trainer_as_golden_half() -> None:
    outs = harvest(result(SAMPLED[0], review=True, mode="audit"), result(OTHERS[0], review=False))
    (item,) = [ReviewItem.model_validate_json(o.value) for o in outs if o.topic == T.review]
    assert item.request_id == SAMPLED[0] and "ann@example.com" not in item.text  # redacted as harvested
    assert not {"label", "student_label", "teacher"} & set(json.loads(item.dumps()))  # blind
    golden_half, learnt = cases(outs)
    assert (golden_half.reason, golden_half.label_source, golden_half.label) == ("review", "teacher", "billing")
    assert (learnt.reason, learnt.request_id) == ("disagreement", OTHERS[0])


def test_feedback_from_outside_is_checked_before_it_teaches_or_judges() -> None:
    outs = harvest(
        feedback(SAMPLED[0], "billing"),  # a review of a sampled request: half a golden row
        feedback(OTHERS[0], "billing", kind="correction"),  # a correction: learnt
        feedback(OTHERS[1], "billing"),  # a review of a request nobody sampled
        feedback(SAMPLED[1], "no-such-queue", kind="correction"),  # would teach the student a label it must not give
        feedback(SAMPLED[2], "oos"),  # out of scope is an answer
    )
    got = [(c.request_id, c.reason, c.label_source) for c in cases(outs)]
    assert got == [
        (SAMPLED[0], "review", "feedback"),
        (OTHERS[0], "feedback", "feedback"),
        (SAMPLED[2], "review", "feedback"),
    ]
    dead = {(d.request_id, d.reason) for d in letters(outs)}
    assert dead == {(OTHERS[1], "not_in_review_sample"), (SAMPLED[1], "unknown_label")}
    assert all(d.value_b64 and d.service == "harvester" and d.detail for d in letters(outs))


def half(request_id: str, label: str, source: str, by: str | None = None) -> HarvestCase:
    return harvest_case(request_id, label, source, by, task=TASK.name)


def trainer_on(tmp_path: Path, train: Train, *, tasks: dict[str, Task] = TASKS, **kw: Any) -> Trainer:
    """A trainer of ``tasks`` whose case store is under ``tmp_path``; ``kw``: the rest of ``Trainer``'s."""
    return Trainer(tasks, T, CaseStore(tmp_path / "cases"), train, **kw)


def feeder(trainer: Trainer) -> Callable[..., list[Out]]:
    """``batch(cases=, rows=)``: that many escalated cases (two labels) and reviewed golden rows
    (both halves) handed to ``trainer`` as one batch; its outputs."""
    offset = 0

    def batch(cases: int, rows: int) -> list[Out]:
        nonlocal offset
        got: list[Received[HarvestCase]] = []
        for _ in range(cases):
            case = half(f"c{offset}", "billing" if offset % 2 else "refund", "teacher")
            got.append(Received(case.model_copy(update={"reason": "escalated"}), T.harvest, offset=offset))
            offset += 1
        for _ in range(rows):
            for h in (half(f"g{offset}", "billing", "teacher"), half(f"g{offset}", "billing", "feedback")):
                got.append(Received(h, T.harvest, offset=offset))
            offset += 1
        return asyncio.run(trainer.handle(got))

    return batch


def test_two_people_who_disagree_leave_a_row_out_until_a_third_decides(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path)
    for rid in ("r1", "r2"):
        store.add(half(rid, "billing", "teacher"))
        store.add(half(rid, "billing", "feedback", by="ana"))
    store.add(half("r1", "billing", "feedback", by="bo"))  # a second opinion that agrees
    store.add(half("r2", "refund", "feedback", by="bo"))  # one that does not: disputed
    assert [t.request_id for t in store.golden("acme", TASK)] == ["r1"]
    assert store.opinions("acme", TASK.name) == {
        "r1": {"ana": "billing", "bo": "billing"},
        "r2": {"ana": "billing", "bo": "refund"},
    }
    assert store.waiting("acme", TASK.name) == 0  # labelled, if split
    store.add(half("r2", "refund", "feedback", by="cy"))  # a third person breaks the tie
    assert [(t.request_id, t.label) for t in store.golden("acme", TASK)] == [("r1", "billing"), ("r2", "refund")]
    store.add(half("r2", "billing", "feedback", by="cy"))  # and changes their mind: the majority moves with them
    again = ReviewStore(tmp_path)  # a restarted trainer reads the same rows back
    assert [(t.request_id, t.label) for t in again.golden("acme", TASK)] == [("r1", "billing"), ("r2", "billing")]
    assert again.opinions("acme", TASK.name)["r2"] == {"ana": "billing", "bo": "refund", "cy": "billing"}


def test_the_harvester_names_the_reviewer_on_a_persons_half() -> None:
    review = Feedback(
        request_id=SAMPLED[0], tenant="acme", task=TASK.name, text="t", label="billing", source="ana", kind="review"
    )
    fix = review.model_copy(update={"request_id": OTHERS[0], "kind": "correction"})
    got = cases(
        harvest(Received(review, T.feedback, value=review.dumps()), Received(fix, T.feedback, value=fix.dumps()))
    )
    assert [(c.reason, c.labelled_by) for c in got] == [("review", "ana"), ("feedback", None)]


def test_the_review_store_joins_the_halves_in_either_order_and_keeps_them(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path)
    store.add(half("r1", "billing", "teacher"))
    store.add(half("r2", "refund", "feedback"))  # the person was faster than the teacher
    store.add(half("r3", "shipping", "teacher"))  # waits for a person
    assert store.golden("acme", TASK) == []
    store.add(half("r1", "refund", "feedback"))
    store.add(half("r2", "refund", "teacher"))
    store.add(half("r1", "billing", "feedback"))  # the reviewer changed their mind: the last label wins
    want = [
        Trusted("r1", "text r1", "billing", "billing", source="review"),
        Trusted("r2", "text r2", "refund", "refund", source="review"),
    ]
    assert store.golden("acme", TASK) == want
    assert store.waiting("acme", TASK.name) == 1
    again = ReviewStore(tmp_path)  # a restarted trainer
    assert again.golden("acme", TASK) == want and again.golden("other", TASK) == []


def test_reviewed_rows_join_a_golden_file_at_once_and_stand_alone_from_min_golden(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path)
    small = TASK.model_copy(
        update={
            "student": TASK.student.model_copy(
                update={"gates": TASK.student.gates.model_copy(update={"min_golden": 3})}
            )
        }
    )
    for i in range(2):
        store.add(half(f"r{i}", "billing", "teacher"))
        store.add(half(f"r{i}", "billing", "feedback"))
    file = [Trusted("r0", "from the file", "refund", "refund"), Trusted("f1", "file row", "billing", "refund")]
    assert store.truth("acme", small) == []  # 2 reviewed rows certify nothing: not yet a golden set
    assert [(t.request_id, t.source) for t in store.truth("acme", small, file)] == [
        ("r0", "file"),  # the file's row wins an id both hold
        ("r1", "review"),
        ("f1", "file"),
    ]
    store.add(half("r2", "oos", "teacher"))
    store.add(half("r2", "oos", "feedback"))
    assert [t.request_id for t in store.truth("acme", small)] == ["r0", "r1", "r2"]


def test_a_review_window_keeps_the_rows_people_completed_last(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path)
    windowed = TASK.model_copy(
        update={
            "review_window": 3,
            "student": TASK.student.model_copy(
                update={"gates": TASK.student.gates.model_copy(update={"min_golden": 3})}
            ),
        }
    )
    # teacher halves in id order; people complete r4, r0, r3, r1, r2 (a reviewer works out of order)
    for i in range(5):
        store.add(half(f"r{i}", "billing", "teacher"))
    for i in (4, 0, 3, 1, 2):
        store.add(half(f"r{i}", "billing", "feedback"))
    assert [t.request_id for t in store.truth("acme", windowed)] == ["r1", "r2", "r3"]
    store.add(half("r4", "refund", "feedback"))  # a changed mind does not make a row newer
    assert [t.request_id for t in store.truth("acme", windowed)] == ["r1", "r2", "r3"]
    file = [Trusted("f1", "file row", "billing", "refund")]
    assert [t.request_id for t in store.truth("acme", windowed, file)] == ["r1", "r2", "r3", "f1"]  # the file counts
    again = ReviewStore(tmp_path)  # a restarted trainer reads the same order back
    assert [t.request_id for t in again.truth("acme", windowed)] == ["r1", "r2", "r3"]
    assert len(again.truth("acme", TASK.model_copy(update={"student": windowed.student}))) == 5  # no window: all


def test_the_trainer_never_learns_a_reviewed_case(tmp_path: Path) -> None:
    trained: list[list[Case]] = []

    def train(cases: list[Case], tenant: str, task: Task, serving: Path | None, trigger: str) -> TrainResult:
        trained.append(cases)
        return TrainResult("v1", tmp_path / "v1", {}, ["billing", "refund"], False, "held back")

    store, reviewed = CaseStore(tmp_path / "cases"), ReviewStore(tmp_path / "review")
    trainer = Trainer(TASKS, T, store, train, min_cases=4, retrain_every=1000, reviews=reviewed, observe_every_s=0)
    halves = [half(f"g{i}", "billing" if i % 2 else "refund", "teacher") for i in range(6)]
    asyncio.run(trainer.handle([Received(h, T.harvest, offset=i) for i, h in enumerate(halves)]))
    assert trained == [] and store.counts("acme", TASK.name) == (0, 0)  # no case, no retrain
    assert reviewed.load("acme", TASK.name).keys() == {f"g{i}" for i in range(6)}
    people = [half("g0", "refund", "feedback"), half("g1", "refund", "feedback")]  # agrees with the teacher, then not
    asyncio.run(trainer.handle([Received(h, T.harvest, offset=10 + i) for i, h in enumerate(people)]))
    assert trained == [] and store.counts("acme", TASK.name) == (0, 0)
    sample = metrics.REGISTRY.get_sample_value
    labels = {"tenant": "acme", "task": TASK.name}
    assert sample("protege_reviewed_golden_rows", labels) == 2
    assert sample("protege_reviewed_teacher_accuracy", labels) == 0.5
    second = [half("g0", "refund", "feedback", by="bo"), half("g1", "billing", "feedback", by="bo")]  # agrees, splits
    asyncio.run(trainer.handle([Received(h, T.harvest, offset=20 + i) for i, h in enumerate(second)]))
    assert sample("protege_reviewers_agreement", labels) == 0.5
    assert sample("protege_reviewed_disputed_rows", labels) == 1
    assert sample("protege_reviewed_golden_rows", labels) == 1  # the split row left the golden set


def test_protege_review_submit_checks_every_line_before_sending() -> None:
    def line(request_id: str, label: str | None, task: str = TASK.name) -> str:
        return json.dumps({"request_id": request_id, "tenant": "acme", "task": task, "text": "ticket", "label": label})

    got = reviews(
        [line(SAMPLED[0], "billing"), line(SAMPLED[1], None), "", line(SAMPLED[2], "oos")], TASKS, source="ann"
    )
    assert [(f.request_id, f.label, f.kind, f.source) for f in got] == [
        (SAMPLED[0], "billing", "review", "ann"),
        (SAMPLED[2], "oos", "review", "ann"),
    ]
    for bad, why in [
        ("not json", "line 1: not JSON"),
        ("[1]", "line 1: a line is an object"),
        (line(SAMPLED[0], "no-such-queue"), "line 1: 'no-such-queue' is not one of"),
        (line(OTHERS[0], "billing"), "is not in ticket-triage's review sample"),
        (line(SAMPLED[0], "billing", task="nope"), "line 1: no task 'nope'"),
        (
            json.dumps({"request_id": SAMPLED[0], "tenant": "a b", "task": TASK.name, "text": "x", "label": "billing"}),
            "line 1: ('tenant',)",
        ),
    ]:
        with pytest.raises(ValueError, match=re.escape(why)):
            reviews([bad], TASKS, source="ann")


def test_a_second_opinion_is_asked_of_somebody_else_and_a_split_of_a_third() -> None:
    overlap = TASK.model_copy(update={"review_overlap": 0.5})
    twice = [i for i in SAMPLED if reviewers_wanted(i, overlap) == 2]
    once = [i for i in SAMPLED if reviewers_wanted(i, overlap) == 1]
    assert twice and once and all(reviewers_wanted(i, overlap) == 0 for i in OTHERS)
    a, b, c = twice[:3]
    items = [
        ReviewItem(request_id=i, tenant="acme", task=TASK.name, text="t", sampled_at_ms=1) for i in (a, b, c, once[0])
    ]

    def said(rid: str, by: str, label: str) -> Feedback:
        return Feedback(request_id=rid, tenant="acme", task=TASK.name, text="t", label=label, source=by, kind="review")

    given = [said(a, "ana", "billing"), said(b, "ana", "billing"), said(b, "bo", "billing"), said(c, "ana", "billing")]
    given += [said(c, "bo", "refund"), said(once[0], "ana", "refund")]

    def left(source: str | None) -> list[str]:
        return [i.request_id for i in short_of_labels(items, given, "acme", overlap, source)]

    assert left("bo") == [a]  # a wants a second person; b agreed; c is split but bo labelled it
    assert left("ana") == []  # ana gave her opinion on a and c already
    assert left("cy") == [a, c]  # a third person breaks c's tie
    assert left(None) == [a, c]
    assert [i.request_id for i in short_of_labels(items, given, "acme", TASK)] == [c]  # no overlap: one each, c split


def test_the_trainer_judges_the_serving_rule_again_every_so_many_reviewed_rows(tmp_path: Path) -> None:
    """Every ``recertify_every`` reviewed rows the serving version's rule is judged again; a rule
    the rows show falls short is replaced at once (no trial), a looser one the rows certify goes
    on trial like any candidate; nothing is judged while a candidate is on trial, nor before a
    version serves."""
    canaries = TASK.model_copy(update={"student": TASK.student.model_copy(update={"canary": Canary(share=0.2)})})
    tasks = {TASK.name: canaries}
    judged: list[tuple[str, int, int | None]] = []
    verdicts: list[bool | None] = [None, True, False]  # kept, then it falls short, then a looser rule
    state: dict[str, ModelAnnouncement | Path | None] = {"serving": None, "canary": None}
    read_back: list[str] = []  # the versions the serving view has read

    def recertify(
        tenant: str, task: Task, serving: Path, since: int | None, anew: bool, alarm: str | None
    ) -> Recertified | None:
        judged.append((serving.name, reviewed.done(tenant, task.name), since))
        broken = verdicts[len(judged) - 1]
        if broken is None:
            return None
        rule = (
            None
            if broken
            else AcceptRule(target_accuracy=0.9, confidence_level=0.95, min_confidence=0.5, max_ood=1.0, coverage=0.8)
        )
        n = len(judged)
        shift_from = 7 if broken else None  # the rows changed one row after its certification
        return Recertified(
            f"v000{n}-abc",
            tmp_path / f"v000{n}-abc",
            serving.name,
            rule,
            broken,
            "why",
            {"m": 1.0},
            ["billing"],
            7,
            shift_from,
        )

    async def serving_folder(tenant: str, task: str) -> Path | None:
        folder = state["serving"]
        return folder if isinstance(folder, Path) else None

    def trials(tenant: str, task: str) -> tuple[ModelAnnouncement | None, ModelAnnouncement | None]:
        canary = state["canary"]
        return (canary if isinstance(canary, ModelAnnouncement) else None), None

    def train(cases: list[Case], tenant: str, task: Task, serving: Path | None, trigger: str) -> TrainResult:
        raise AssertionError("no case to learn here")

    reviewed = ReviewStore(tmp_path / "review")
    trainer = Trainer(
        tasks,
        T,
        CaseStore(tmp_path / "cases"),
        train,
        min_cases=4,
        retrain_every=1000,
        reviews=reviewed,
        serving=serving_folder,
        trials=trials,
        recertify=recertify,
        recertify_every=3,
        has_read=lambda tenant, task, version: version in read_back,
    )
    offset = 0

    def review(n: int) -> list[Out]:
        nonlocal offset
        got: list[Received[HarvestCase]] = []
        for _ in range(n):
            rid = f"g{offset}"
            for h in (half(rid, "billing", "teacher"), half(rid, "billing", "feedback")):
                got.append(Received(h, T.harvest, offset=offset))
            offset += 1
        return asyncio.run(trainer.handle(got))

    assert review(5) == [] and judged == []  # nothing serves yet
    state["serving"] = tmp_path / "v0001-abc"
    assert review(1) == [] and judged == [("v0001-abc", 6, 6)]  # the first rows after a version serves: kept
    assert review(2) == [] and len(judged) == 1  # 2 new rows of 3
    (out,) = review(1)
    ann = ModelAnnouncement.model_validate_json(out.value)
    assert judged[-1] == ("v0001-abc", 9, 6)  # the rows since its rule was last judged: 6, 7, 8
    assert ann.version == "v0002-abc" and ann.action == "serve" and ann.share is None  # at once, no trial
    assert ann.reason == "v0001-abc re-certified: why" and ann.trained_on == 7 and out.topic == T.models
    # the rows since showed a shift from the second of them on: those before no longer count,
    # here and after a restart
    assert reviewed.shift("acme", TASK.name) == 7 and ReviewStore(tmp_path / "review").shift("acme", TASK.name) == 7
    assert [t.request_id for t in reviewed.golden("acme", TASK)] == ["g7", "g8"]
    assert len(reviewed.golden("acme", TASK, since=0)) == 9
    state["serving"] = tmp_path / "v0002-abc"
    assert review(3) == [] and len(judged) == 2  # its own announcement not read back yet
    read_back.append("v0002-abc")
    state["canary"] = ann  # a candidate on trial: nothing judged
    assert review(3) == [] and len(judged) == 2
    state["canary"] = None
    (out,) = review(1)
    ann = ModelAnnouncement.model_validate_json(out.value)
    assert ann.action == "canary" and ann.share == 0.2
    assert judged[-1] == ("v0002-abc", 16, 9) and "on trial for 20% of requests against v0002-abc" in (ann.reason or "")
    sample = metrics.REGISTRY.get_sample_value
    for outcome, n in (("kept", 1), ("tightened", 1), ("loosened", 1)):
        assert (
            sample("protege_trainer_recertifications_total", {"tenant": "acme", "task": TASK.name, "outcome": outcome})
            == n
        )


def test_retraining_often_does_not_keep_the_serving_rule_from_being_judged(tmp_path: Path) -> None:
    """A trainer retraining batch after batch (cases arriving faster than it trains: the e2e
    review bench at 100 cases apart) still judges the serving rule at its own pace, before the
    retrain; the retrained version's rule counts as certified at its retrain."""
    judged: list[tuple[int, int | None]] = []
    reviewed = ReviewStore(tmp_path / "review")

    def train(cases: list[Case], tenant: str, task: Task, serving: Path | None, trigger: str) -> TrainResult:
        return TrainResult(f"v{len(cases)}", tmp_path / f"v{len(cases)}", {}, ["billing", "refund"], True, "passed")

    def recertify(
        tenant: str, task: Task, serving: Path, since: int | None, anew: bool, alarm: str | None
    ) -> Recertified | None:
        judged.append((reviewed.done(tenant, task.name), since))
        return None

    async def serving_folder(tenant: str, task: str) -> Path | None:
        return tmp_path / "v-serving"

    trainer = trainer_on(
        tmp_path,
        train,
        min_cases=2,
        retrain_every=2,
        reviews=reviewed,
        serving=serving_folder,
        recertify=recertify,
        recertify_every=4,
    )
    batch = feeder(trainer)

    for _ in range(6):
        assert len(batch(cases=2, rows=2)) == 1  # every batch retrains, and is announced
    # (rows people completed, the rows since the rule was certified: at the last retrain) — a
    # check every 4 rows, each before its batch's retrain (before stop 35: none at all)
    assert judged == [(2, 2), (6, 4), (10, 8)]


def test_a_check_that_fails_leaves_the_rule_standing_and_the_harvest_going(tmp_path: Path) -> None:
    calls: list[int] = []

    def recertify(
        tenant: str, task: Task, serving: Path, since: int | None, anew: bool, alarm: str | None
    ) -> Recertified | None:
        calls.append(len(calls))
        raise OSError("the registry's disk is full")

    async def serving_folder(tenant: str, task: str) -> Path | None:
        return tmp_path / "v0001-abc"

    def train(cases: list[Case], tenant: str, task: Task, serving: Path | None, trigger: str) -> TrainResult:
        raise AssertionError("no case to learn here")

    reviewed = ReviewStore(tmp_path / "review")
    trainer = trainer_on(
        tmp_path,
        train,
        min_cases=4,
        retrain_every=1000,
        reviews=reviewed,
        serving=serving_folder,
        recertify=recertify,
        recertify_every=1,
    )
    for i in range(2):
        halves = [half(f"g{i}", "billing", "teacher"), half(f"g{i}", "billing", "feedback")]
        assert (
            asyncio.run(trainer.handle([Received(h, T.harvest, offset=2 * i + j) for j, h in enumerate(halves)])) == []
        )
    assert calls == [0, 1] and reviewed.done("acme", TASK.name) == 2  # the rows kept, the next check ran
    sample = metrics.REGISTRY.get_sample_value
    assert (
        sample("protege_trainer_recertifications_total", {"tenant": "acme", "task": TASK.name, "outcome": "failed"})
        == 2
    )


def test_the_bench_counts_the_labels_of_each_phase_and_the_surges_share() -> None:
    from protege.cli.stream import labelled_by_phase
    from protege.policy import in_review

    ids = [f"bench-{i}" for i in range(400)]
    base = [i for i in ids if in_review(i, 0.1)]
    extra = [i for i in ids if in_review(i, 0.5) and not in_review(i, 0.1)]
    phase_of = {i: "train" if n < 200 else "test" for n, i in enumerate(ids)}
    counts = labelled_by_phase(base + extra + ["elsewhere-1"], phase_of, 0.1)
    assert counts["train"]["labels"] + counts["test"]["labels"] == len(base) + len(extra)
    assert counts["train"]["surge"] + counts["test"]["surge"] == len(extra) > 0
    assert counts["other"] == {"labels": 1, "surge": int(not in_review("elsewhere-1", 0.1))}


def test_a_retrain_in_the_worker_thread_lets_the_rule_be_judged_meanwhile(tmp_path: Path) -> None:
    """With ``background`` the retrain runs in a worker thread and batches go on being read: the
    serving rule is judged on the rows reviewed meanwhile (a shift is marked and the rule
    replaced before the retrain ends), no second retrain starts beside it, and the retrain's
    candidate, whose rule was certified on rows the shift ruled out, is certified again on
    today's rows before it is announced — after the retrain, by the idle poll."""
    release = __import__("threading").Event()
    trained: list[int] = []
    judged: list[tuple[str, int | None, bool]] = []
    state: dict[str, Path] = {"serving": tmp_path / "v0001-abc"}
    read_back: list[str] = []

    def train(cases: list[Case], tenant: str, task: Task, serving: Path | None, trigger: str) -> TrainResult:
        trained.append(len(cases))
        assert release.wait(30), "the test never released the retrain"
        return TrainResult("v0002-new", tmp_path / "v0002-new", {"m": 1.0}, ["billing", "refund"], True, "passed")

    def recertify(
        tenant: str, task: Task, serving: Path, since: int | None, anew: bool, alarm: str | None
    ) -> Recertified | None:
        judged.append((serving.name, since, anew))
        name = "v0004-new" if anew else "v0003-abc"
        why = "a shift was marked while it trained; 2 trusted rows of today certify nothing" if anew else "short"
        return Recertified(
            name, tmp_path / name, serving.name, None, not anew, why, {"m": 2.0}, ["billing", "refund"], 9, 5
        )

    async def serving_folder(tenant: str, task: str) -> Path | None:
        return state["serving"]

    reviewed = ReviewStore(tmp_path / "review")
    trainer = trainer_on(
        tmp_path,
        train,
        min_cases=4,
        retrain_every=4,
        reviews=reviewed,
        serving=serving_folder,
        recertify=recertify,
        recertify_every=3,
        has_read=lambda tenant, task, version: version in read_back,
        background=True,
    )
    batch = feeder(trainer)

    try:
        assert batch(cases=4, rows=0) == []  # the first student: training, not waited for
        assert batch(cases=8, rows=0) == [] and trained == [4]  # due again, but one retrain at a time
        assert asyncio.run(trainer.idle()) == []  # nothing ended yet
        (out,) = batch(cases=0, rows=3)  # judged while it trains: the rule falls short
        broken = ModelAnnouncement.model_validate_json(out.value)
        assert broken.version == "v0003-abc" and broken.action == "serve" and judged == [("v0001-abc", 3, False)]
        assert reviewed.shift("acme", TASK.name) == 5  # where the rows changed (shift_from)
        read_back.append("v0003-abc")
        state["serving"] = tmp_path / "v0003-abc"
        release.set()
        trainer.settle(30)
        (out,) = asyncio.run(trainer.idle())
        ann = ModelAnnouncement.model_validate_json(out.value)
        # certified again on today's rows, then a candidate against what serves now
        assert judged[-1] == ("v0002-new", None, True) and ann.version == "v0004-new" and ann.trained_on == 4
        assert ann.reason is not None and ann.reason.startswith("v0002-new re-certified: a shift was marked")
        assert asyncio.run(trainer.idle()) == [] and trainer.training == {}
    finally:
        release.set()
        trainer.settle(30)


def test_a_retrain_that_fails_in_the_worker_thread_is_logged_and_tried_again(tmp_path: Path) -> None:
    calls: list[int] = []

    def train(cases: list[Case], tenant: str, task: Task, serving: Path | None, trigger: str) -> TrainResult:
        calls.append(len(cases))
        if len(calls) == 1:
            raise MemoryError("the first retrain ran out of memory")
        return TrainResult("v0001-abc", tmp_path / "v0001-abc", {}, ["billing", "refund"], True, "passed")

    async def serving_folder(tenant: str, task: str) -> Path | None:
        return tmp_path / "v0000-abc"  # a version serves: the retrain runs in the worker thread

    trainer = trainer_on(
        tmp_path,
        train,
        min_cases=4,
        retrain_every=100,
        serving=serving_folder,
        background=True,
    )
    cases = [
        Received(
            half(f"c{i}", "billing" if i % 2 else "refund", "teacher").model_copy(update={"reason": "escalated"}),
            T.harvest,
            offset=i,
        )
        for i in range(12)
    ]
    assert asyncio.run(trainer.handle(cases[:4])) == []
    trainer.settle(30)
    assert asyncio.run(trainer.idle()) == [] and calls == [4]  # failed: nothing announced, nothing raised
    assert asyncio.run(trainer.handle(cases[4:8])) == []  # held back: again at min_cases new cases
    trainer.settle(30)
    (out,) = asyncio.run(trainer.idle())
    assert ModelAnnouncement.model_validate_json(out.value).version == "v0001-abc" and calls == [4, 8]


def test_a_first_student_is_trained_waiting_even_with_the_worker_thread(tmp_path: Path) -> None:
    """With nothing serving there is no rule to judge while it trains: the batch that triggers
    the first student waits for it and carries its announcement."""
    threads: list[str] = []

    def train(cases: list[Case], tenant: str, task: Task, serving: Path | None, trigger: str) -> TrainResult:
        threads.append(__import__("threading").current_thread().name)
        return TrainResult("v0001-abc", tmp_path / "v0001-abc", {}, ["billing", "refund"], True, "passed")

    trainer = trainer_on(tmp_path, train, min_cases=4, retrain_every=100, background=True)
    (out,) = feeder(trainer)(cases=4, rows=0)
    assert ModelAnnouncement.model_validate_json(out.value).version == "v0001-abc"
    assert trainer.training == {} and not threads[0].startswith("retrain")


def test_a_rule_that_certifies_nothing_is_not_judged_beside_a_cold_starts_retrain(tmp_path: Path) -> None:
    """A cold start: while a retrain runs in the worker thread, a serving rule that certifies
    nothing is not judged again (the retrain learns from the same traffic with more cases, and
    the checks took the cores from it). Once a shift is marked the checks go on: a rule today's
    rows certify is the way back while the retrain runs."""
    task = TASK.model_copy(update={"policy": TASK.policy.model_copy(update={"target_margin": 0.01})})
    release = __import__("threading").Event()
    judged: list[int | None] = []
    serving = manifest_only(tmp_path / "v0001-abc")

    def train(cases: list[Case], tenant: str, t: Task, serving: Path | None, trigger: str) -> TrainResult:
        assert release.wait(30), "the test never released the retrain"
        return TrainResult("v0002-new", tmp_path / "v0002-new", {}, ["billing", "refund"], True, "passed")

    def recertify(
        tenant: str, t: Task, folder: Path, since: int | None, anew: bool, alarm: str | None
    ) -> Recertified | None:
        judged.append(since)
        return None

    async def serving_folder(tenant: str, task_name: str) -> Path | None:
        return serving

    reviewed = ReviewStore(tmp_path / "review")
    trainer = trainer_on(
        tmp_path,
        train,
        tasks={task.name: task},
        min_cases=4,
        retrain_every=100,
        serving=serving_folder,
        reviews=reviewed,
        recertify=recertify,
        recertify_every=2,
        background=True,
    )
    batch = feeder(trainer)
    try:
        assert batch(cases=4, rows=2) == [] and judged == [2]  # judged, then the retrain starts
        assert ("acme", task.name) in trainer.training
        assert batch(cases=0, rows=3) == [] and judged == [2]  # not beside the retrain
        reviewed.mark_shift("acme", task.name, 4, "a check of another trainer saw it")
        assert batch(cases=0, rows=3) == [] and judged == [2, 2]  # not a cold start any more
    finally:
        release.set()
        trainer.settle(30)


def test_a_rise_of_out_of_scope_reviews_calls_a_check_before_its_turn(tmp_path: Path) -> None:
    """The serving rule is judged every 100 reviewed rows; between checks the reviewed labels
    are counted row by row (``protege.certify.out_of_scope_alarm``): when out-of-scope rows
    come where none came before, the check runs at once, told why, and once per certification;
    in-scope rows call none."""
    task = TASK.model_copy(update={"policy": TASK.policy.model_copy(update={"target_margin": 0.01})})
    rule = AcceptRule(
        target_margin=0.01, confidence_level=0.95, evidence="golden", min_confidence=0.5, max_ood=1.0, coverage=0.5
    )
    serving = manifest_only(tmp_path / "v0001-abc", acceptance=rule)
    judged: list[tuple[int, int | None, str | None]] = []
    reviewed = ReviewStore(tmp_path / "review")

    def recertify(
        tenant: str, t: Task, folder: Path, since: int | None, anew: bool, alarm: str | None
    ) -> Recertified | None:
        judged.append((reviewed.done(tenant, t.name), since, alarm))
        return None

    state: dict[str, Path | None] = {"serving": None}

    async def serving_folder(tenant: str, task_name: str) -> Path | None:
        return state["serving"]

    def train(cases: list[Case], tenant: str, t: Task, serving: Path | None, trigger: str) -> TrainResult:
        raise AssertionError("no retrain here")

    trainer = trainer_on(
        tmp_path,
        train,
        tasks={task.name: task},
        min_cases=1000,
        retrain_every=1000,
        serving=serving_folder,
        reviews=reviewed,
        recertify=recertify,
    )
    offset = 0

    def rows(label: str, n: int) -> None:
        nonlocal offset
        for _ in range(n):
            got = [
                Received(harvest_case(f"g{offset}", label, source, None, task=task.name), T.harvest, offset=offset)
                for source in ("teacher", "feedback")
            ]
            assert asyncio.run(trainer.handle(got)) == []
            offset += 1

    rows("billing", 99)  # nothing serves yet: nothing to judge
    state["serving"] = serving
    rows("billing", 1)
    assert judged == [(100, 100, None)]  # the first check: its rule counts as certified from there
    rows("billing", 60)
    assert judged == [(100, 100, None)]  # in scope: no check before the 100th row since
    rows("oos", 10)
    assert len(judged) == 2, judged
    done, since, why = judged[-1]
    assert since == 100 and 160 < done <= 170, judged
    assert why is not None and why.startswith("the out-of-scope share rose from 0.0% (0 of 100 rows) to "), why
    assert "a CUSUM rang" in why, why
    alarms = {"tenant": "acme", "task": task.name}
    assert metrics.REGISTRY.get_sample_value("protege_trainer_out_of_scope_alarms_total", alarms) == 1
    rows("oos", 20)
    assert len(judged) == 2  # once per certification
    rows("oos", done + 100 - offset)
    assert judged[-1] == (done + 100, 100, None)  # the checks every 100 rows go on from there


@pytest.mark.parametrize(("ours", "announced"), [(0.3, False), (0.7, True)])
def test_a_retrain_that_ends_after_a_check_replaced_the_serving_rule_is_gated_on_todays_rows(
    tmp_path: Path, ours: float, announced: bool
) -> None:
    """A check loosened the serving rule while the retrain ran (no shift): the candidate, gated
    against the rule that served when it started, is certified again on today's rows and
    announced only if it covers no less of them than what serves now (the gates' tolerance)."""
    release = __import__("threading").Event()
    anew: list[str] = []
    state: dict[str, Path] = {"serving": tmp_path / "v0001-abc"}
    serving_ann = ModelAnnouncement(
        tenant="acme",
        task=TASK.name,
        version="v0002-abc",
        path=str(tmp_path),
        metrics={"truth_coverage": 0.6},
        labels=["billing", "refund"],
        trained_on=8,
        announced_at_ms=1,
    )

    def train(cases: list[Case], tenant: str, task: Task, serving: Path | None, trigger: str) -> TrainResult:
        assert release.wait(30)
        return TrainResult("v0003-new", tmp_path / "v0003-new", {}, ["billing", "refund"], True, "passed")

    def recertify(
        tenant: str, task: Task, serving: Path, since: int | None, is_anew: bool, alarm: str | None
    ) -> Recertified | None:
        anew.append(serving.name) if is_anew else None
        rule = AcceptRule(target_accuracy=0.9, confidence_level=0.95, min_confidence=0.5, max_ood=1.0, coverage=0.6)
        if is_anew:
            return Recertified(
                "v0004-new", tmp_path / "v0004-new", serving.name, rule, False, "today", {"truth_coverage": ours}, [], 8
            )
        return Recertified("v0002-abc", tmp_path / "v0002-abc", serving.name, rule, False, "looser", {}, [], 8)

    async def serving_folder(tenant: str, task: str) -> Path | None:
        return state["serving"]

    trainer = trainer_on(
        tmp_path,
        train,
        min_cases=4,
        retrain_every=1000,
        reviews=ReviewStore(tmp_path / "review"),
        serving=serving_folder,
        trials=lambda tenant, task: (None, serving_ann),
        recertify=recertify,
        recertify_every=2,
        has_read=lambda tenant, task, version: True,
        background=True,
    )
    got: list[Received[HarvestCase]] = [
        Received(
            half(f"c{i}", ("billing", "refund")[i % 2], "teacher").model_copy(update={"reason": "escalated"}),
            T.harvest,
            offset=i,
        )
        for i in range(4)
    ]
    try:
        assert asyncio.run(trainer.handle(got)) == []  # training
        rows = [
            h for i in range(2) for h in (half(f"g{i}", "billing", "teacher"), half(f"g{i}", "billing", "feedback"))
        ]
        (out,) = asyncio.run(trainer.handle([Received(h, T.harvest, offset=10 + i) for i, h in enumerate(rows)]))
        assert ModelAnnouncement.model_validate_json(out.value).version == "v0002-abc"  # the looser rule
        state["serving"] = tmp_path / "v0002-abc"
        release.set()
        trainer.settle(30)
        outs = asyncio.run(trainer.idle())
        assert anew == ["v0003-new"]
        assert [ModelAnnouncement.model_validate_json(o.value).version for o in outs] == (
            ["v0004-new"] if announced else []
        )
        assert (("acme", TASK.name) in trainer.held_back) is not announced
    finally:
        release.set()
        trainer.settle(30)


def test_the_review_gauges_are_set_once_a_second_at_most_and_on_the_idle_poll(tmp_path: Path) -> None:
    """They count every row: a trainer reading small batches while it retrains spent most of its
    loop there. What a batch left unset, the next idle poll sets."""
    trainer = Trainer(
        TASKS,
        T,
        CaseStore(tmp_path / "cases"),
        lambda *a: None,  # type: ignore[arg-type,return-value]
        min_cases=4,
        retrain_every=1000,
        reviews=ReviewStore(tmp_path / "review"),
        observe_every_s=3600,
    )
    labels = {"tenant": "acme", "task": TASK.name}
    sample = metrics.REGISTRY.get_sample_value
    offset = 0

    def row(rid: str) -> None:
        nonlocal offset
        halves = [half(rid, "billing", "teacher"), half(rid, "billing", "feedback")]
        asyncio.run(trainer.handle([Received(h, T.harvest, offset=offset + i) for i, h in enumerate(halves)]))
        offset += 2

    row("gauge-1")
    assert sample("protege_reviewed_golden_rows", labels) == 1  # the first batch sets them
    row("gauge-2")
    assert sample("protege_reviewed_golden_rows", labels) == 1  # within the second: not yet
    assert asyncio.run(trainer.idle()) == []
    assert sample("protege_reviewed_golden_rows", labels) == 2


def test_a_retrain_that_ends_while_a_candidate_is_on_trial_waits_for_its_verdict(tmp_path: Path) -> None:
    """A check put a looser rule on trial while the retrain ran: the retrain's candidate is not
    announced beside it (one on trial at a time) but after the verdict."""
    on_trial: list[ModelAnnouncement] = []

    async def serving_v0000(tenant: str, task: str) -> Path | None:
        return tmp_path / "v0000-abc"

    def train(cases: list[Case], tenant: str, task: Task, serving: Path | None, trigger: str) -> TrainResult:
        return TrainResult("v0002-new", tmp_path / "v0002-new", {}, ["billing", "refund"], True, "passed")

    trainer = trainer_on(
        tmp_path,
        train,
        min_cases=4,
        retrain_every=1000,
        serving=serving_v0000,
        trials=lambda tenant, task: (on_trial[0] if on_trial else None, None),
        background=True,
    )
    assert feeder(trainer)(cases=4, rows=0) == []
    trainer.settle(30)
    on_trial.append(
        ModelAnnouncement(
            tenant="acme",
            task=TASK.name,
            version="v0001-loose",
            path=str(tmp_path),
            action="canary",
            share=0.2,
            labels=["billing", "refund"],
            metrics={},
            trained_on=4,
            announced_at_ms=1,
        )
    )
    assert asyncio.run(trainer.idle()) == [] and ("acme", TASK.name) in trainer.training  # kept, not lost
    on_trial.clear()  # the verdict
    (out,) = asyncio.run(trainer.idle())
    assert ModelAnnouncement.model_validate_json(out.value).version == "v0002-new"
