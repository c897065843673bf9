"""The trainer's schedule: first student at min_cases, then every retrain_every new cases;
after a candidate held back by its gates, sooner (every min_cases)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from protege_services.trainer.handler import CaseStore, Trainer

from protege.events import Alert, HarvestCase, ModelAnnouncement, now_ms
from protege.generator import triage_task
from protege.kafka import Received
from protege.student.train import Case, TrainResult
from protege.task import Task
from protege.topics import Topics

T = Topics("u.")


def records(start: int, n: int, source: str = "teacher") -> list[Received[HarvestCase]]:
    out = []
    for i in range(start, start + n):
        case = HarvestCase(
            request_id=f"r{i}",
            tenant="acme",
            task="ticket-triage",
            text=f"text {i}",
            label="billing" if i % 2 else "refund",
            label_source=source,  # type: ignore[arg-type]
            reason="accepted" if source == "student" else "escalated",
            harvested_at_ms=1,
        )
        out.append(Received(case, T.harvest, offset=i))
    return out


def test_schedule_retries_sooner_after_a_held_back_candidate(tmp_path: Path) -> None:
    verdicts = [False, True, True]  # the first candidate fails its gates
    trained: list[int] = []

    def train(cases: list[Case], tenant: str, task: Task, serving: Path | None, trigger: str) -> TrainResult:
        promoted = verdicts[len(trained)]
        trained.append(len(cases))
        return TrainResult(
            f"v{len(trained)}",
            tmp_path / f"v{len(trained)}",
            {"golden_accuracy": 0.9},
            ["a", "b"],
            promoted,
            "passed gates" if promoted else "golden accuracy 0.4 < floor 0.5",
        )

    trainer = Trainer(
        {"ticket-triage": triage_task()}, T, CaseStore(tmp_path / "store"), train, min_cases=40, retrain_every=1000
    )
    outs = asyncio.run(trainer.handle(records(0, 40)))
    assert trained == [40] and outs == []  # held back: nothing announced
    asyncio.run(trainer.handle(records(40, 39)))
    assert trained == [40]
    outs = asyncio.run(trainer.handle(records(79, 1)))  # min_cases more, not retrain_every
    assert trained == [40, 80] and [o.topic for o in outs] == [T.models]
    asyncio.run(trainer.handle(records(80, 100)))
    assert trained == [40, 80]  # promoted: back to every retrain_every
    # a case seen again (a re-read after a crash) adds nothing
    asyncio.run(trainer.handle(records(0, 40)))
    assert len(trainer.store.load("acme", "ticket-triage")) == 180


def test_a_first_student_that_cannot_be_trained_fails_no_batch_and_is_tried_again(tmp_path: Path) -> None:
    """The first student trains in the handler (nothing serves to judge meanwhile): a training
    that raises (seen: its fit split held one label of the two its cases had) is logged and held
    back, the batch is handled, and min_cases more cases try again (it used to fail the batch,
    and the next try waited for retrain_every cases)."""
    trained: list[int] = []

    def train(cases: list[Case], tenant: str, task: Task, serving: Path | None, trigger: str) -> TrainResult:
        trained.append(len(cases))
        if len(trained) == 1:
            raise ValueError("the fit split has fewer than two labels (30 cases)")
        return TrainResult(f"v{len(trained)}", tmp_path / "v", {"golden_accuracy": 0.9}, ["a", "b"], True, "passed")

    trainer = Trainer(
        {"ticket-triage": triage_task()}, T, CaseStore(tmp_path / "store"), train, min_cases=40, retrain_every=1000
    )
    assert asyncio.run(trainer.handle(records(0, 40))) == [] and trained == [40]
    outs = asyncio.run(trainer.handle(records(40, 40)))
    assert trained == [40, 80] and [o.topic for o in outs] == [T.models]


def alert(state: str = "firing", task: str = "ticket-triage") -> Received[Alert]:
    a = Alert(
        kind="drift",
        state=state,  # type: ignore[arg-type]
        task=task,
        policy_version="p",
        rate=0.45,
        baseline=0.2,
        band=0.15,
        window=500,
        reasons={"out_of_distribution": 0.3},
        at_ms=1,
    )
    return Received(a, T.alerts)


def recording_trainer(tmp_path: Path, **kw) -> tuple[Trainer, list[str]]:
    triggers: list[str] = []

    def train(cases: list[Case], tenant: str, task: Task, serving: Path | None, trigger: str) -> TrainResult:
        triggers.append(trigger)
        return TrainResult(f"v{len(triggers)}", tmp_path / "v", {}, ["a", "b"], True, "passed gates")

    trainer = Trainer(
        {"ticket-triage": triage_task()},
        T,
        CaseStore(tmp_path / "store"),
        train,
        min_cases=40,
        retrain_every=1000,
        **kw,
    )
    return trainer, triggers


def test_a_drift_alarm_retrains_every_tenant_with_new_cases(tmp_path: Path) -> None:
    trainer, triggers = recording_trainer(tmp_path)
    asyncio.run(trainer.handle(records(0, 40)))
    assert triggers == ["first student: 40 cases"]
    assert asyncio.run(trainer.handle([alert()])) == []  # nothing new since: nothing to learn
    asyncio.run(trainer.handle(records(40, 5)))
    assert asyncio.run(trainer.handle([alert("resolved")])) == [] and len(triggers) == 1
    outs = asyncio.run(trainer.handle([alert()]))
    assert triggers[-1] == "drift alarm: escalation rate 45.0% against a baseline of 20.0% ± 15%; 5 new cases"
    announced = ModelAnnouncement.model_validate_json(outs[0].value)
    assert announced.reason == f"trained on {triggers[-1]}; passed its gates"
    # A restarted trainer (same store) goes on from the newest version on record: nothing new
    # since it, nothing to learn; it finds the tenant on disk for the next alarm.
    again, more = recording_trainer(tmp_path, last_trained=lambda tenant, task: (45, 0, now_ms(), True))
    asyncio.run(again.handle([alert()]))
    assert more == []
    asyncio.run(again.handle(records(45, 3)))
    asyncio.run(again.handle([alert()]))
    assert more == ["drift alarm: escalation rate 45.0% against a baseline of 20.0% ± 15%; 3 new cases"]
    # with no version on record, a restarted trainer trains the first student
    fresh, first = recording_trainer(tmp_path)
    asyncio.run(fresh.handle([alert()]))
    assert first == ["first student: 48 cases"]


def test_the_students_accepted_answers_ride_along_but_trigger_no_retrain(tmp_path: Path) -> None:
    """Counted, a student answering 90% of traffic would retrain ten times as often as what the
    teacher taught it changes; they are learnt from at the next labelled trigger."""
    trained: list[tuple[int, str]] = []

    def train(cases: list[Case], tenant: str, task: Task, serving: Path | None, trigger: str) -> TrainResult:
        trained.append((len(cases), trigger))
        return TrainResult(f"v{len(trained)}", tmp_path / "v", {}, ["a", "b"], True, "passed gates")

    trainer = Trainer(
        {"ticket-triage": triage_task()}, T, CaseStore(tmp_path / "store"), train, min_cases=40, retrain_every=100
    )
    asyncio.run(trainer.handle(records(0, 39) + records(1000, 500, source="student")))
    assert trained == []  # 39 labelled cases: no first student, however many answers ride along
    asyncio.run(trainer.handle(records(39, 1)))
    assert trained == [(540, "first student: 40 cases")]
    asyncio.run(trainer.handle(records(2000, 1000, source="student") + records(40, 99)))
    assert len(trained) == 1
    asyncio.run(trainer.handle(records(139, 1)))
    assert trained[-1] == (1640, "100 new cases (and 1000 accepted answers)")
    # a restarted trainer counts from the version on record: 140 labelled, 1,500 accepted
    again, more = recording_trainer(tmp_path, last_trained=lambda tenant, task: (140, 1500, now_ms(), True))
    again.retrain_every = 100
    asyncio.run(again.handle(records(3000, 5, source="student") + records(140, 100)))
    assert more == ["100 new cases (and 5 accepted answers)"]


def test_a_schedule_retrains_when_any_case_is_new(tmp_path: Path) -> None:
    trainer, triggers = recording_trainer(tmp_path, retrain_hours=1e-9)
    asyncio.run(trainer.handle(records(0, 40)))
    # The schedule reads the clock in milliseconds: the last training a second ago, not "now"
    # (two calls within one millisecond made this test fail once in CI).
    trainer.trained_ms[("acme", "ticket-triage")] -= 1000
    asyncio.run(trainer.handle(records(40, 1)))
    assert len(triggers) == 2 and triggers[1].startswith("schedule:") and triggers[1].endswith("1 new cases")
    trainer.retrain_hours = 1000.0
    asyncio.run(trainer.handle(records(41, 1)))
    assert len(triggers) == 2  # not due yet


def test_the_case_store_keeps_who_labelled_each_case_across_a_restart(tmp_path: Path) -> None:
    store = CaseStore(tmp_path / "store")
    for r in records(0, 4):
        by_student = int(r.event.request_id[1:]) % 2 == 1
        case = r.event.model_copy(update={"label_source": "student", "reason": "accepted"}) if by_student else r.event
        assert store.add(case)
    sources = {c.request_id: c.source for c in store.load("acme", "ticket-triage").values()}
    again = {c.request_id: c.source for c in CaseStore(tmp_path / "store").load("acme", "ticket-triage").values()}
    assert sources == again == {"r0": "teacher", "r1": "student", "r2": "teacher", "r3": "student"}


def test_an_announcement_never_read_back_stops_holding_retrains_after_a_minute(tmp_path: Path) -> None:
    """The trainer waits to read its own last announcement back before it retrains (what serves is
    not known until then); one that never comes (its transaction aborted: fenced) holds it back
    for READ_BACK_MS, not for ever."""
    from protege_services.trainer.handler import READ_BACK_MS

    trainer = Trainer(
        {"ticket-triage": triage_task()},
        T,
        CaseStore(tmp_path / "store"),
        lambda *a: TrainResult("v1", tmp_path / "v1", {}, ["a", "b"], True, "passed gates"),
        min_cases=40,
        retrain_every=1000,
        has_read=lambda tenant, task, version: False,
    )
    asyncio.run(trainer.handle(records(0, 40)))  # the first student, announced, never read back
    key = ("acme", "ticket-triage")
    assert trainer.reading_back(*key) and trainer.due(*key, alert(task="ticket-triage").event) is None
    version, at = trainer.announced[key]
    trainer.announced[key] = (version, at - READ_BACK_MS - 1)  # a minute later
    assert not trainer.reading_back(*key) and key not in trainer.announced
