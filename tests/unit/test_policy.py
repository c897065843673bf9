from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protege.events import Ingested, Scored, StudentOutput
from protege.generator import triage_task
from protege.policy import audited, in_review, recompute_verdict, router_for
from protege.task import Policy, Task

TASK = triage_task()


def scored(
    text: str = "where is my order",
    label: str = "shipping",
    confidence: float = 0.95,
    margin: float = 0.9,
    ood: float = 0.1,
    tenant: str = "acme",
    student: bool = True,
) -> Scored:
    req = Ingested(request_id="r1", tenant=tenant, task=TASK.name, text=text, received_at_ms=1)
    out = (
        StudentOutput(
            model_version="v1", label=label, confidence=confidence, margin=margin, ood=ood, top=[(label, confidence)]
        )
        if student
        else None
    )
    return Scored(request=req, student=out, scored_at_ms=2, batch_size=1)


def decide(s: Scored):
    return router_for(TASK).decide(s, 3)


def test_confident_student_is_accepted() -> None:
    d = decide(scored())
    assert (d.verdict, d.route, d.reasons) == ("accept", "student", [])
    assert d.policy == "cascade" and d.policy_version == TASK.policy.version
    assert d.signals == {"confidence": 0.95, "margin": 0.9, "ood": 0.1}


def test_cold_start_escalates() -> None:
    d = decide(scored(student=False))
    assert (d.verdict, d.route, d.reasons, d.model_version) == ("escalate", "teacher", ["no_student"], None)


def test_each_signal_can_escalate() -> None:
    assert decide(scored(confidence=0.3)).reasons == ["low_confidence"]
    assert decide(scored(margin=0.05)).reasons == ["low_margin"]
    assert decide(scored(ood=0.9)).reasons == ["out_of_distribution"]


def test_rules_escalate_whatever_the_signals() -> None:
    d = decide(scored(text="I will take you to court over this"))
    assert d.verdict == "escalate" and d.rules == [r"pattern:\b(lawyer|lawsuit|sue|court)\b"]
    vip = TASK.model_copy(update={"policy": TASK.policy.model_copy(update={"vip_tenants": ["bigco"]})})
    assert router_for(vip).decide(scored(tenant="bigco"), 3).rules == ["vip_tenant"]
    sens = TASK.model_copy(update={"policy": TASK.policy.model_copy(update={"always_escalate_labels": ["refund"]})})
    assert router_for(sens).decide(scored(label="refund"), 3).rules == ["sensitive_label:refund"]


def test_policy_version_changes_with_the_policy() -> None:
    other = TASK.policy.model_copy(update={"thresholds": TASK.policy.thresholds.model_copy(update={"min_margin": 0.5})})
    assert other.version != TASK.policy.version
    assert triage_task().policy.version == TASK.policy.version


@given(st.floats(0, 1), st.floats(0, 1), st.floats(-1, 2), st.booleans())
def test_recorded_decision_recomputes_its_verdict(conf: float, margin: float, ood: float, angry: bool) -> None:
    text = "see you in court" if angry else "where is my order"
    d = decide(scored(text=text, confidence=conf, margin=margin, ood=ood))
    assert recompute_verdict(d) == d.verdict


def test_target_accuracy_uses_the_versions_certified_rule() -> None:
    from protege.events import AcceptRule

    target = TASK.model_copy(update={"policy": TASK.policy.model_copy(update={"target_accuracy": 0.97})})
    rule = AcceptRule(target_accuracy=0.97, confidence_level=0.95, min_confidence=0.9, max_ood=0.3, coverage=0.6)

    def with_rule(r: AcceptRule | None, **kw: float) -> Scored:
        s = scored(**kw)
        assert s.student is not None
        return s.model_copy(update={"student": s.student.model_copy(update={"rule": r})})

    router = router_for(target)
    ok = router.decide(with_rule(rule, confidence=0.92, margin=0.01), 3)  # margin is not part of the rule
    assert ok.verdict == "accept" and ok.thresholds == {"min_confidence": 0.9, "min_margin": 0.0, "max_ood": 0.3}
    assert router.decide(with_rule(rule, confidence=0.85), 3).reasons == ["low_confidence"]
    assert router.decide(with_rule(rule, ood=0.4), 3).reasons == ["out_of_distribution"]
    # no rule, or a rule for another target: nothing certifies the student, the teacher answers
    for r in (None, rule.model_copy(update={"target_accuracy": 0.9})):
        d = router.decide(with_rule(r), 3)
        assert d.verdict == "escalate" and d.reasons == ["no_certified_rule"] and recompute_verdict(d) == "escalate"
    assert recompute_verdict(ok) == "accept"


def test_a_target_relative_to_the_teacher_needs_a_rule_certified_for_it() -> None:
    from protege.events import AcceptRule

    relative = TASK.model_copy(update={"policy": TASK.policy.model_copy(update={"target_margin": 0.01})})
    rule = AcceptRule(
        target_margin=0.01, confidence_level=0.95, evidence="golden", min_confidence=0.8, max_ood=0.3, coverage=0.7
    )
    router = router_for(relative)

    def with_rule(r: AcceptRule | None, **kw: float) -> Scored:
        s = scored(**kw)
        assert s.student is not None
        return s.model_copy(update={"student": s.student.model_copy(update={"rule": r})})

    assert router.decide(with_rule(rule, confidence=0.85), 3).verdict == "accept"
    # an absolute rule, another margin, a lower confidence: not this target's
    for other in (
        rule.model_copy(update={"target_margin": None, "target_accuracy": 0.99}),
        rule.model_copy(update={"target_margin": 0.02}),
        rule.model_copy(update={"confidence_level": 0.9}),
    ):
        assert router.decide(with_rule(other, confidence=0.85), 3).reasons == ["no_certified_rule"]
    # one task holds one target; the policy of one without a relative target hashes as before
    with pytest.raises(ValueError):
        Policy.model_validate({**TASK.policy.model_dump(), "target_accuracy": 0.97, "target_margin": 0.01})
    assert relative.policy.version != TASK.policy.version


def relative_rule(**fields: object):
    """The triage task with a relative target, and a version's rule certified for it."""
    from protege.events import AcceptRule

    relative = TASK.model_copy(update={"policy": TASK.policy.model_copy(update={"target_margin": 0.01})})
    rule = AcceptRule.model_validate(
        {"target_margin": 0.01, "confidence_level": 0.95, "evidence": "golden", "min_confidence": 0.6}
        | {"max_ood": 0.3, "coverage": 0.7}
        | fields
    )
    return relative, rule


def test_a_ceiling_on_oos_holds_back_answers_in_scope_only() -> None:
    """A rule chosen under a false-accept cap defers an in-scope answer that gives ``oos`` more
    than its ceiling; an answer ``oos`` is judged as before; the signal is recorded only where a
    ceiling applies, and recorded decisions recompute to their verdicts."""
    from protege.events import AcceptRule

    relative, rule = relative_rule(max_oos_probability=0.05)
    router = router_for(relative)

    def answer(label: str, p_oos: float, r: AcceptRule = rule) -> Scored:
        s = scored(label=label, confidence=0.8)
        assert s.student is not None
        return s.model_copy(update={"student": s.student.model_copy(update={"rule": r, "oos_probability": p_oos})})

    held = router.decide(answer("shipping", 0.2), 3)
    assert held.reasons == ["maybe_out_of_scope"] and held.signals["oos_probability"] == 0.2
    assert held.thresholds["max_oos_probability"] == 0.05 and recompute_verdict(held) == "escalate"
    ok = router.decide(answer("shipping", 0.01), 3)
    assert ok.verdict == "accept" and recompute_verdict(ok) == "accept"
    out = router.decide(answer("oos", 0.8), 3)
    assert out.verdict == "accept" and "oos_probability" not in out.signals
    plain = router.decide(answer("shipping", 0.2, rule.model_copy(update={"max_oos_probability": None})), 3)
    assert plain.verdict == "accept" and set(plain.signals) == {"confidence", "margin", "ood"}


def test_an_answer_oos_passes_the_ood_gate_where_the_rule_says_so() -> None:
    """Under a rule that lets an answer ``oos`` past the OOD gate, an unfamiliar request the
    student confidently calls ``oos`` is accepted and its decision records no OOD threshold; an
    answer in scope with the same score escalates; a rule without it (and every decision
    recorded before it existed) holds both to the gate. Recorded decisions recompute to their
    verdicts."""
    from protege.events import AcceptRule

    relative, rule = relative_rule(oos_past_ood_gate=True)
    relative = relative.model_copy(update={"policy": relative.policy.model_copy(update={"oos_past_ood_gate": True})})
    router = router_for(relative)

    def answer(label: str, confidence: float, r: AcceptRule = rule) -> Scored:
        s = scored(label=label, confidence=confidence, ood=0.7)
        assert s.student is not None
        return s.model_copy(update={"student": s.student.model_copy(update={"rule": r})})

    out = router.decide(answer("oos", 0.9), 3)
    assert out.verdict == "accept" and "max_ood" not in out.thresholds and recompute_verdict(out) == "accept"
    unsure = router.decide(answer("oos", 0.5), 3)
    assert unsure.reasons == ["low_confidence"] and recompute_verdict(unsure) == "escalate"
    in_scope = router.decide(answer("shipping", 0.9), 3)
    assert in_scope.reasons == ["out_of_distribution"] and in_scope.thresholds["max_ood"] == 0.3
    assert recompute_verdict(in_scope) == "escalate"
    gated = router.decide(answer("oos", 0.9, rule.model_copy(update={"oos_past_ood_gate": False})), 3)
    assert gated.reasons == ["out_of_distribution"] and recompute_verdict(gated) == "escalate"
    assert AcceptRule.model_validate(rule.model_dump(exclude={"oos_past_ood_gate"})).oos_past_ood_gate is False
    # the policy decides whether such a rule may serve: one that asks for the gate on every answer
    # does not take it (the version serves nothing until a rule certified that way), a rule
    # certified with the gate on every answer serves under either
    assert relative.policy.certified_by(rule)
    strict = relative.policy.model_copy(update={"oos_past_ood_gate": False})
    assert not strict.certified_by(rule) and strict.certified_by(rule.model_copy(update={"oos_past_ood_gate": False}))


def with_audits(rate: float, name: str = "cascade"):
    return TASK.model_copy(update={"policy": TASK.policy.model_copy(update={"audit_rate": rate, "name": name})})


def test_audits_pick_a_stable_share_of_accepted_answers() -> None:
    ids = [f"acme-{i}" for i in range(20_000)]
    picked = [i for i in ids if audited(i, 0.02)]
    assert 0.017 < len(picked) / len(ids) < 0.023  # a hash, not a coin: the same ids on every run
    assert picked == [i for i in ids if audited(i, 0.02)]
    assert set(picked) <= {i for i in ids if audited(i, 0.1)}  # a higher rate keeps the lower rate's picks
    assert not any(audited(i, 0.0) for i in ids[:1000]) and all(audited(i, 1.0) for i in ids[:1000])


def test_only_accepted_answers_are_audited_and_ensemble_checks_them_all_anyway() -> None:
    router = router_for(with_audits(1.0))
    assert router.decide(scored(), 3).audit is True
    assert router.decide(scored(confidence=0.3), 3).audit is False  # escalated: the teacher answers it
    ensemble = router_for(with_audits(1.0, "ensemble")).decide(scored(), 3)
    assert ensemble.teacher_check and not ensemble.audit
    assert router_for(TASK).decide(scored(), 3).audit is False


def test_a_policy_without_audits_keeps_its_version() -> None:
    """Adding audit_rate to the policy did not change the version of a policy without audits
    (recorded decisions keep matching their task file); setting it does."""
    assert triage_task().policy.version == "8d0788706752"
    assert with_audits(0.02).policy.version != TASK.policy.version


def test_the_review_sample_is_every_route_s_and_its_accepted_answers_are_audited() -> None:
    """review_rate draws requests by its own hash, whatever the route: escalated or accepted,
    the teacher's answer is on record (an accepted one is audited), so each reviewed request is
    a golden row. Independent of the audits' draw, and the policy's version is unchanged."""
    reviewed = TASK.model_copy(update={"review_rate": 0.05})
    ids = [f"acme-{i}" for i in range(20_000)]
    picked = {i for i in ids if in_review(i, 0.05)}
    assert 0.045 < len(picked) / len(ids) < 0.055
    both = picked & {i for i in ids if audited(i, 0.05)}
    assert 0.0015 < len(both) / len(ids) < 0.0035  # about 0.05², not 0.05: another draw
    router = router_for(reviewed)
    sampled = next(i for i in sorted(picked) if not audited(i, TASK.policy.audit_rate))
    other = next(i for i in ids if i not in picked and not audited(i, TASK.policy.audit_rate))

    def at(request_id: str, **kw: float) -> Scored:
        s = scored(**kw)
        return s.model_copy(update={"request": s.request.model_copy(update={"request_id": request_id})})

    accepted = router.decide(at(sampled), 3)
    assert (accepted.verdict, accepted.review, accepted.audit) == ("accept", True, True)
    escalated = router.decide(at(sampled, confidence=0.3), 3)
    assert (escalated.verdict, escalated.review, escalated.audit) == ("escalate", True, False)
    assert router.decide(at(other), 3).review is False and router.decide(at(other), 3).audit is False
    assert router_for(TASK).decide(at(sampled), 3).review is False  # review_rate 0: no sample
    assert reviewed.policy.version == TASK.policy.version


def test_the_review_sample_surges_while_no_certified_rule_lets_the_student_answer() -> None:
    """Under a target, a request with no certified rule to judge it by (no version yet, or one
    whose rule the rows could not certify) is drawn for review at review_surge_rate, by the same
    hash: the review_rate sample is the part of it below that rate, and the rest is marked
    ``review_surge`` (reports leave it out of their uniform estimates). With a rule the base rate
    holds; without a target there is no surge; a review of a surge-drawn request is accepted."""
    from protege.events import AcceptRule, Feedback
    from protege.policy import refused

    rule = AcceptRule(target_accuracy=0.97, confidence_level=0.95, min_confidence=0.9, max_ood=0.3, coverage=0.6)
    task = TASK.model_copy(
        update={
            "policy": TASK.policy.model_copy(update={"target_accuracy": 0.97}),
            "review_rate": 0.05,
            "review_surge_rate": 0.5,
        }
    )
    router = router_for(task)
    ids = [f"acme-{i}" for i in range(4_000)]

    def at(request_id: str, r: AcceptRule | None, student: bool = True) -> Scored:
        s = scored(student=student)
        if s.student is not None:
            s = s.model_copy(update={"student": s.student.model_copy(update={"rule": r})})
        return s.model_copy(update={"request": s.request.model_copy(update={"request_id": request_id})})

    for shut_out in ({"r": None}, {"r": None, "student": False}):
        decided = [router.decide(at(i, **shut_out), 3) for i in ids]  # type: ignore[arg-type]
        drawn = {d.request_id for d in decided if d.review}
        assert 0.47 < len(drawn) / len(ids) < 0.53
        assert {d.request_id for d in decided if d.review and not d.review_surge} == {
            i for i in ids if in_review(i, 0.05)
        }
        assert all(not d.review_surge for d in decided if not d.review)
    served = [router.decide(at(i, rule), 3) for i in ids]
    assert {d.request_id for d in served if d.review} == {i for i in ids if in_review(i, 0.05)}
    assert not any(d.review_surge for d in served)
    # no target: nothing ever shuts the student out for want of a rule, so no surge
    plain = router_for(TASK.model_copy(update={"review_rate": 0.05, "review_surge_rate": 0.5}))
    assert not any(plain.decide(at(i, None, student=False), 3).review_surge for i in ids)
    # people's labels on the surge's requests join the golden set; outside it they are refused
    surged = next(i for i in ids if in_review(i, 0.5) and not in_review(i, 0.05))
    outside = next(i for i in ids if not in_review(i, 0.5))
    review = Feedback(request_id=surged, tenant="acme", task=task.name, text="t", label="shipping", kind="review")
    assert refused(review, task) is None
    assert refused(review, TASK.model_copy(update={"review_rate": 0.05})) is not None
    assert refused(review.model_copy(update={"request_id": outside}), task)[0] == "not_in_review_sample"  # type: ignore[index]
    with pytest.raises(ValueError, match="below review_rate"):
        Task.model_validate({**task.model_dump(), "review_rate": 0.1, "review_surge_rate": 0.01})
