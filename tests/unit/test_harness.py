"""The run statistics the demo, the bench and the load tests report (protege.harness.summarize)."""

from __future__ import annotations

import pytest

from protege.events import Response
from protege.harness import Drive, Outcome, cores_between, machine_cpu, summarize


def outcome(i: int, truth: str, route: str, label: str) -> Outcome:
    response = Response(
        request_id=f"r{i}",
        tenant="acme",
        task="bench",
        label=label,
        route=route,  # type: ignore[arg-type]
        answered_by="v1" if route == "student" else "teacher",
        sent_at_ms=1,
        received_at_ms=2,
        answered_at_ms=3,
    )
    return Outcome(f"r{i}", truth, 0.0, response, 0.01)


def test_out_of_scope_requests_are_counted_three_ways() -> None:
    outs = [
        outcome(0, "oos", "teacher", "oos"),  # deferred, the teacher says oos
        outcome(1, "oos", "student", "oos"),  # the student answers oos itself
        outcome(2, "oos", "student", "card_lost"),  # a false accept
        outcome(3, "oos", "teacher", "card_lost"),  # the teacher erred
        outcome(4, "card_lost", "student", "card_lost"),
        outcome(5, "card_lost", "teacher", "card_lost"),  # in scope, deferred
        outcome(6, "refund", "student", "refund"),
        outcome(7, "refund", "student", "oos"),  # in scope, the student said oos: not deferred
    ]
    s = summarize(Drive({o.request_id: o for o in outs}, [], 1.0))
    assert s["scope"] == {
        "out_of_scope": 4,
        "oos_recall": 0.5,
        "oos_false_accepts": 0.25,
        "oos_by_student": 0.25,
        "in_scope_deferred": 0.25,
    }
    assert s["accuracy"] == 5 / 8
    none = summarize(Drive({o.request_id: o for o in outs[4:]}, [], 1.0))["scope"]
    assert none["out_of_scope"] == 0 and none["oos_recall"] is None and none["in_scope_deferred"] == 0.25


def test_the_standin_reviewers_mistakes_are_seeded_and_apart_from_the_teachers() -> None:
    from protege.harness import StandinReviewer
    from protege.settings import Settings

    truth = {f"r{i}": ("a", "b", "c")[i % 3] for i in range(2000)}
    reviewer = StandinReviewer(Settings(), truth, noise=0.1, seed=5)
    said = {rid: reviewer.label_for(rid) for rid in truth}
    wrong = {rid for rid, label in said.items() if label != truth[rid]}
    assert 140 <= len(wrong) <= 260  # 10% of 2,000, sd ~13
    assert said == {rid: StandinReviewer(Settings(), truth, noise=0.1, seed=5).label_for(rid) for rid in truth}
    assert wrong != {
        rid for rid in truth if StandinReviewer(Settings(), truth, noise=0.1, seed=6).label_for(rid) != truth[rid]
    }
    assert StandinReviewer(Settings(), truth).label_for("r1") == "b" and reviewer.label_for("nobody") is None


def test_a_reviewer_with_the_teachers_blind_spots_repeats_that_share_of_its_mistakes() -> None:
    from protege.harness import StandinReviewer
    from protege.settings import Settings

    truth = {f"r{i}": ("a", "b", "c")[i % 3] for i in range(2000)}
    teacher = {
        rid: ("c" if label == "a" else label) if i % 4 == 0 else label for i, (rid, label) in enumerate(truth.items())
    }
    mistakes = {rid for rid in truth if teacher[rid] != truth[rid]}  # every 12th request: a -> c
    same = StandinReviewer(Settings(), truth, follow=1.0, teacher=teacher)
    assert {rid: same.label_for(rid) for rid in truth} == teacher  # the teacher's mistakes, and only those

    half = StandinReviewer(Settings(), truth, follow=0.5, teacher=teacher, seed=2)
    repeated = {rid for rid in truth if half.label_for(rid) != truth[rid]}
    assert repeated <= mistakes and 0.35 * len(mistakes) <= len(repeated) <= 0.65 * len(mistakes)  # 167, sd ~6.5
    assert all(half.label_for(rid) == teacher[rid] for rid in repeated)
    assert "repeating 50% of the teacher's mistakes" in half.describe()

    both = StandinReviewer(Settings(), truth, noise=0.1, follow=1.0, teacher=teacher, seed=2)
    other = {rid for rid in truth if rid not in mistakes and both.label_for(rid) != truth[rid]}
    assert 0.05 * 2000 <= len(other) <= 0.15 * 2000  # its own mistakes elsewhere, independent
    with pytest.raises(ValueError, match="teacher's answers"):
        StandinReviewer(Settings(), truth, follow=0.5)


def test_a_second_standin_person_draws_its_own_mistakes() -> None:
    from protege.agreement import agreement
    from protege.generator import triage_task
    from protege.harness import StandinReviewer
    from protege.settings import Settings

    truth = {f"r{i}": ("a", "b", "c")[i % 3] for i in range(2000)}
    two = StandinReviewer(
        Settings(),
        truth,
        noise=0.1,
        seed=5,
        overlap=triage_task().model_copy(update={"review_rate": 1, "review_overlap": 0.5}),
    )
    first = {rid: two.label_for(rid) for rid in truth}
    assert first == {rid: StandinReviewer(Settings(), truth, noise=0.1, seed=5).label_for(rid) for rid in truth}
    second = {rid: two.label_for(rid, person=2) for rid in truth}
    people = agreement({rid: {"one": first[rid], "two": second[rid]} for rid in truth})
    # each right 90% of the time, independently: they agree ~0.81 + 0.01/2 (the same wrong one of two)
    assert 0.78 <= people["agreement"] <= 0.85
    assert "a second person on 50% of them, a third where the two split" in two.describe()
    # a third person, drawn apart again, breaks most ties to the truth: with both others one of them is right
    split = [rid for rid in truth if first[rid] != second[rid]]
    third = {rid: two.label_for(rid, person=3) for rid in split}
    assert third != {rid: first[rid] for rid in split} and third != {rid: second[rid] for rid in split}
    settled = [rid for rid in split if third[rid] in (first[rid], second[rid])]
    assert len(settled) >= 0.85 * len(split)
    assert sum(third[rid] == truth[rid] for rid in settled) >= 0.85 * len(settled)


def test_the_machines_cores_over_a_phase_split_into_busy_idle_and_stolen() -> None:
    """What a load test records beside its figures: the machine's cores busy, and those its host
    took away (steal), beside a figure measured on a shared virtual machine."""
    before = {"busy": 100.0, "idle": 50.0, "steal": 2.0}
    after = {"busy": 115.0, "idle": 54.0, "steal": 3.0}
    assert cores_between(before, after, 10.0) == {"busy": 1.5, "idle": 0.4, "steal": 0.1}
    assert cores_between({}, after, 10.0) == {} and cores_between(before, after, 0.0) == {}
    now = machine_cpu()  # this machine's own /proc/stat: counters that only grow
    assert set(now) == {"busy", "idle", "steal"} and all(v >= 0 for v in now.values())
    assert all(machine_cpu()[k] >= now[k] for k in now)
