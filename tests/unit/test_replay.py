"""Replay's pure parts: decisions re-made on recorded outputs, flips, the numbers of each
side, the Wilson interval and the signal tolerance (the broker test is
tests/integration/test_replay.py)."""

from __future__ import annotations

import pytest
import typer

from protege.cli.evaluate import parse_offsets
from protege.events import Feedback, Ingested, Scored, StudentOutput, TeacherResult, Usage
from protege.generator import triage_task
from protege.policy import router_for
from protege.replay import Candidate, Selection, Traffic, replay, same_decision, wilson

TASK = triage_task()


def scored(i: int, confidence: float | None, label: str = "shipping") -> Scored:
    req = Ingested(request_id=f"r{i}", tenant="acme", task=TASK.name, text=f"where is order {i}", received_at_ms=i)
    out = (
        None
        if confidence is None
        else StudentOutput(
            model_version="v1",
            label=label,
            confidence=confidence,
            margin=confidence,
            ood=0.1,
            top=[(label, confidence)],
        )
    )
    return Scored(request=req, student=out, scored_at_ms=i, batch_size=1)


def teacher(i: int, label: str) -> TeacherResult:
    return TeacherResult(
        request_id=f"r{i}",
        tenant="acme",
        task=TASK.name,
        text="t",
        label=label,
        teacher="claude-sonnet-4-6",
        standin=False,
        usage=Usage(input_tokens=100, output_tokens=10),
        cost_usd=0.002,
        latency_ms=500,
        attempts=1,
        answered_at_ms=i,
    )


def traffic() -> Traffic:
    """Four requests: a confident accept, two escalated for low confidence (the teacher said
    shipping and billing), and a cold start; one person's feedback on the accepted one."""
    recorded = [scored(0, 0.97), scored(1, 0.5), scored(2, 0.5), scored(3, None)]
    router = router_for(TASK)
    t = Traffic(Selection("acme", TASK.name), recorded)
    t.decisions = {s.request.request_id: router.decide(s, 10) for s in recorded}
    t.teacher = {"r1": teacher(1, "shipping"), "r2": teacher(2, "billing"), "r3": teacher(3, "shipping")}
    t.feedback = {"r0": Feedback(request_id="r0", tenant="acme", task=TASK.name, text="t", label="billing")}
    return t


def no_students(name: str):
    raise AssertionError(f"nothing is re-scored here (asked for {name})")


def test_the_recorded_policy_on_recorded_outputs_reproduces_every_decision() -> None:
    s = replay(traffic(), Candidate(TASK, rescore=False), no_students).summary()
    assert s["matched"] == {"count": 4, "of": 4, "share": 1.0} and s["flips"] == {}
    assert s["recorded"]["student_share"] == s["replay"]["student_share"] == 0.25
    assert s["recorded"]["teacher_calls"] == s["replay"]["teacher_calls"] == 3
    assert s["cost_per_teacher_call_usd"] == pytest.approx(0.002)


def test_a_looser_threshold_flips_escalations_and_is_judged_by_the_teacher_labels() -> None:
    loose = TASK.model_copy(
        update={
            "policy": TASK.policy.model_copy(
                update={
                    "thresholds": TASK.policy.thresholds.model_copy(update={"min_confidence": 0.4, "min_margin": 0.4})
                }
            )
        }
    )
    result = replay(traffic(), Candidate(loose, rescore=False), no_students)
    s = result.summary()
    assert s["flips"] == {"teacher->student": 2}
    rep = s["replay"]
    assert rep["student_share"] == 0.75 and rep["teacher_calls"] == 1  # the cold start still escalates
    assert rep["teacher_cost_usd"] == pytest.approx(0.002)
    # r1: student says shipping, teacher shipping; r2: student shipping, teacher billing.
    assert (rep["accepted_vs_teacher"]["n"], rep["accepted_vs_teacher"]["correct"]) == (2, 1)
    assert rep["accepted_vs_feedback"]["n"] == 1 and rep["accepted_vs_feedback"]["correct"] == 0
    assert rep["accepted_unlabelled"] == 0
    by_id = {r.request_id: r for r in result.rows}
    assert by_id["r2"].answer == "shipping" and by_id["r2"].teacher_label == "billing"
    assert by_id["r3"].answer == "shipping" and by_id["r3"].route == "teacher"  # the teacher's recorded answer


def test_wilson_interval() -> None:
    assert wilson(0, 0) is None
    lo, hi = wilson(95, 100)  # type: ignore[misc]
    assert 0.88 < lo < 0.89 and 0.977 < hi < 0.98
    assert wilson(10, 10)[1] == 1.0  # type: ignore[index]
    # It holds the estimate itself: rounding put the end below 1.0 for 933 of the n up to 3,000
    # (a report whose teacher was right on every reviewed row could not draw its error bar).
    for n in range(1, 3000):
        assert wilson(n, n)[1] == 1.0 and wilson(0, n)[0] == 0.0  # type: ignore[index]


def test_signals_match_within_float32_noise() -> None:
    router = router_for(TASK)
    a = router.decide(scored(0, 0.916906), 1)
    b = router.decide(scored(0, 0.916908), 1)
    c = router.decide(scored(0, 0.91693), 1)
    assert same_decision(a, b) and not same_decision(a, c)


def test_another_versions_signals_are_its_own() -> None:
    router = router_for(TASK)
    a = router.decide(scored(0, 0.9), 1)
    other = scored(0, 0.95)
    assert other.student is not None
    b = router.decide(other.model_copy(update={"student": other.student.model_copy(update={"model_version": "v2"})}), 1)
    assert same_decision(a, b) and not same_decision(a, router.decide(other, 1))


def test_offsets_parse_and_select() -> None:
    spans = parse_offsets("0:100-200, 3:0-5")
    assert spans == {0: (100, 200), 3: (0, 5)}
    sel = Selection("acme", "t", offsets=spans)
    assert sel.holds(0, 100) and sel.holds(0, 199) and not sel.holds(0, 200) and not sel.holds(1, 150)
    assert Selection("acme", "t").holds(7, 10**9)  # no offsets: every record
    assert "scored offsets 0:100-200, 3:0-5" in sel.describe()
    for bad in ("0:200-100", "x:1-2", "0:1-2,0:3-4", "0-1"):
        with pytest.raises(typer.BadParameter):
            parse_offsets(bad)


def audit(i: int, label: str, student_label: str) -> TeacherResult:
    return teacher(i, label).model_copy(
        update={
            "mode": "audit",
            "student_label": student_label,
            "model_version": "v1",
            "agrees": label == student_label,
        }
    )


def test_unlabelled_accepted_answers_are_estimated_from_the_audits() -> None:
    """100 accepted answers, 20 audited (16 right); a candidate that also accepts the two
    escalations (both labelled by the teacher, one right): the audits carry the estimate of
    the 98 accepted answers only they label, the escalations count as they are."""
    recorded = [scored(i, 0.97) for i in range(100)] + [scored(100, 0.5), scored(101, 0.5)]
    router = router_for(TASK)
    t = Traffic(Selection("acme", TASK.name), recorded)
    t.decisions = {s.request.request_id: router.decide(s, 10) for s in recorded}
    t.teacher = {f"r{i}": audit(i, "shipping" if i < 16 else "billing", "shipping") for i in range(20)}
    t.teacher |= {"r100": teacher(100, "shipping"), "r101": teacher(101, "billing")}
    for i in range(20):
        t.decisions[f"r{i}"] = t.decisions[f"r{i}"].model_copy(update={"audit": True})
    recorded_side = replay(t, Candidate(TASK, rescore=False), no_students).summary()["recorded"]
    est = recorded_side["accepted_estimate"]
    assert (est["audits"], est["labelled_in_full"], est["estimated_from_audits"]) == (20, 0, 100)
    assert est["accuracy"] == pytest.approx(0.8)
    assert est["interval95"] == pytest.approx(wilson(16, 20))
    assert recorded_side["audit_calls"] == 20 and recorded_side["teacher_calls"] == 22
    loose = TASK.model_copy(
        update={
            "policy": TASK.policy.model_copy(
                update={
                    "thresholds": TASK.policy.thresholds.model_copy(update={"min_confidence": 0.4, "min_margin": 0.4})
                }
            )
        }
    )
    s = replay(t, Candidate(loose, rescore=False), no_students).summary()["replay"]
    est = s["accepted_estimate"]
    assert (est["audits"], est["labelled_in_full"], est["estimated_from_audits"]) == (20, 2, 100)
    assert est["accuracy"] == pytest.approx((1 + 100 * 0.8) / 102)
    lo, hi = wilson(16, 20)
    assert est["interval95"] == pytest.approx(((1 + 100 * lo) / 102, (1 + 100 * hi) / 102))
    assert (
        replay(traffic(), Candidate(TASK, rescore=False), no_students).summary()["replay"]["accepted_estimate"] is None
    )


def test_the_review_sample_judges_each_side_against_people(capsys: pytest.CaptureFixture[str]) -> None:
    """Three requests of the review sample, each labelled by a person: the answers served, the
    teacher's and the student's against those labels, recorded beside a looser candidate's."""
    t = traffic()
    t.teacher["r0"] = teacher(0, "shipping").model_copy(update={"mode": "audit"})  # accepted and sampled: audited
    t.sampled = {"r0", "r1", "r2", "r3"}
    t.opinions = {"r0": {"ana": "billing", "bo": "billing"}, "r1": {"ana": "shipping"}, "r2": {"ana": "billing"}}
    t.opinions["r3"] = {"ana": "billing", "bo": "shipping"}  # split: no label until a third person
    t.reviews = {"r0": "billing", "r1": "shipping", "r2": "billing"}
    loose = TASK.model_copy(
        update={
            "policy": TASK.policy.model_copy(
                update={
                    "thresholds": TASK.policy.thresholds.model_copy(update={"min_confidence": 0.4, "min_margin": 0.4})
                }
            )
        }
    )
    s = replay(t, Candidate(loose, rescore=False), no_students).summary()
    rec, rep = s["recorded"]["answers_vs_people"], s["replay"]["answers_vs_people"]
    assert (rec["sampled"], rec["reviewed"], rec["pending"], rec["disputed"]) == (4, 3, 0, 1)
    assert (rec["reviewers"]["rows"], rec["reviewers"]["agreement"]) == (2, 0.5)  # r0 agreed, r3 split
    from protege.cli.evaluate import print_summary

    print_summary(s)
    printed = " ".join(capsys.readouterr().out.split())
    assert "second opinions: on 2 requests two or more people labelled, two of them agreed 50.0%" in printed
    assert "1 split with no majority" in printed
    # recorded: r0 the student's shipping (wrong), r1 and r2 the teacher's (right)
    assert (rec["served"]["correct"], rec["served"]["n"]) == (2, 3)
    assert (rec["teacher"]["correct"], rec["student_answered"]["correct"], rec["teacher_answered"]["correct"]) == (
        2,
        0,
        2,
    )
    assert rec["served_minus_teacher"]["difference"] == 0
    # the candidate also accepts r1 and r2 with shipping: r2 was right with the teacher, now wrong
    assert (rep["served"]["correct"], rep["student_answered"]["n"]) == (1, 3)
    d = rep["served_minus_teacher"]
    assert (d["wins"], d["losses"]) == (0, 1) and d["difference"] == pytest.approx(-1 / 3)
    lo, hi = d["interval95"]
    assert lo < -1 / 3 < hi <= 1
    assert rep["versions"] == {"v1": rep["student_answered"]}
    assert s["recorded"]["answers_vs_people"]["teacher"] == rep["teacher"]  # the teacher is the same on both sides
    # r2 drawn by the review surge alone (no certified rule then): its label certifies, but neither
    # side estimates from it (not a uniform draw of the range); r3's split stays counted
    t.sampled, t.surge = t.sampled - {"r2"}, {"r2"}
    s = replay(t, Candidate(loose, rescore=False), no_students).summary()
    rec, rep = s["recorded"]["answers_vs_people"], s["replay"]["answers_vs_people"]
    assert (rec["sampled"], rec["reviewed"], rec["pending"], rec["disputed"]) == (3, 2, 0, 1)
    assert (rec["served"]["correct"], rec["served"]["n"]) == (1, 2) and (
        rep["served"]["correct"],
        rep["served"]["n"],
    ) == (1, 2)


def test_no_review_sample_no_accuracy_against_people() -> None:
    s = replay(traffic(), Candidate(TASK, rescore=False), no_students).summary()
    assert s["recorded"]["answers_vs_people"] is None and s["replay"]["answers_vs_people"] is None
