"""The four routing policies, rule checks, replayable verdicts, and the drift monitor."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from protege.drift import DriftMonitor
from protege.events import Decision, Ingested, Scored, StudentOutput
from protege.generator import triage_task
from protege.policy import ROUTERS, recompute_verdict, router_for
from protege.task import Check, Drift, Task

BASE = triage_task()


def task(name: str, **policy) -> Task:
    return BASE.model_copy(update={"policy": BASE.policy.model_copy(update={"name": name, **policy})})


def scored(
    text="where is my order #4821", label="shipping", confidence=0.95, margin=0.9, ood=0.1, student=True
) -> Scored:
    req = Ingested(request_id="r1", tenant="acme", task=BASE.name, text=text, received_at_ms=1)
    out = (
        StudentOutput(
            model_version="v1", label=label, confidence=confidence, margin=margin, ood=ood, top=[(label, confidence)]
        )
        if student
        else None
    )
    return Scored(request=req, student=out, scored_at_ms=2, batch_size=1)


def test_registry_has_the_four_policies() -> None:
    assert set(ROUTERS) == {"cascade", "distill_verify", "ensemble", "shadow"}


def test_distill_verify_judges_checks_not_signals() -> None:
    t = task("distill_verify", checks=[Check(label="refund", require_pattern=r"(#|ORD-)\d+", reason="no_order_id")])
    r = router_for(t)
    unsure = r.decide(scored(confidence=0.2, margin=0.01), 3)
    assert unsure.verdict == "accept" and unsure.signals["confidence"] == 0.2
    bad = r.decide(scored(text="I want a refund", label="refund"), 3)
    assert (bad.verdict, bad.reasons) == ("escalate", ["check:no_order_id"])
    assert r.decide(scored(text="refund ORD-5521 please", label="refund"), 3).verdict == "accept"
    assert r.decide(scored(student=False), 3).reasons == ["no_student"]


def test_ensemble_accepts_with_a_teacher_check_and_rules_still_escalate() -> None:
    r = router_for(task("ensemble"))
    d = r.decide(scored(confidence=0.3), 3)
    assert (d.verdict, d.route, d.teacher_check) == ("accept", "student", True)
    legal = r.decide(scored(text="my lawyer will call you"), 3)
    assert (legal.verdict, legal.teacher_check) == ("escalate", False)
    assert r.decide(scored(student=False), 3).verdict == "escalate"


def test_shadow_always_goes_to_the_teacher_and_records_the_student() -> None:
    d = router_for(task("shadow")).decide(scored(), 3)
    assert (d.verdict, d.route, d.student_label, d.model_version) == ("shadow", "teacher", "shipping", "v1")


def test_a_request_the_verifier_gives_up_on_has_a_decision_on_record_under_every_policy() -> None:
    """The loop quarantined it: the teacher answers, and a decision names the reason, so the
    report counts the request and its teacher call; its record implies its verdict, and a
    replay of it decides again rather than reading signals it never had."""
    from protege_services.verifier.handler import Verifier

    from protege.kafka import Received
    from protege.topics import Topics

    t = Topics("q.")
    for name in sorted(ROUTERS):
        outs = Verifier({BASE.name: task(name)}, t).quarantined(Received(scored(), t.scored), "boom")
        assert [o.topic for o in outs] == [t.decisions, t.teacher_requests]
        d = Decision.model_validate_json(outs[0].value)
        assert (d.route, d.reasons, d.rules, d.signals, d.policy) == (
            "teacher",
            ["quarantined"],
            ["quarantined"],
            {},
            name,
        )
        assert d.verdict == ("shadow" if name == "shadow" else "escalate") == recompute_verdict(d)
        assert (d.student_label, d.model_version) == ("shipping", "v1")  # what the student had said, if anything
    # a task the verifier does not know has no policy to name: the teacher still answers it
    stranger = scored().model_copy(update={"request": scored().request.model_copy(update={"task": "other"})})
    [ask] = Verifier({BASE.name: BASE}, t).quarantined(Received(stranger, t.scored), "boom")
    assert ask.topic == t.teacher_requests


@given(
    st.sampled_from(sorted(ROUTERS)),
    st.floats(0, 1),
    st.floats(0, 1),
    st.floats(-1, 2),
    st.sampled_from(["where is my order #1", "see you in court", "refund now"]),
    st.booleans(),
)
def test_every_policy_s_decision_recomputes_its_verdict(
    name: str, conf: float, margin: float, ood: float, text: str, has_student: bool
) -> None:
    t = task(name, checks=[Check(label="*", require_pattern=r"\d")])
    d = router_for(t).decide(scored(text=text, confidence=conf, margin=margin, ood=ood, student=has_student), 3)
    assert recompute_verdict(d) == d.verdict


def decision(escalate: bool, reason: str = "low_confidence") -> Decision:
    return Decision(
        request_id="r",
        tenant="a",
        task="t",
        verdict="escalate" if escalate else "accept",
        route="teacher" if escalate else "student",
        policy="cascade",
        policy_version="p",
        model_version="v1",
        signals={},
        thresholds={},
        reasons=[reason] if escalate else [],
        decided_at_ms=9,
    )


def test_drift_alarm_fires_when_the_escalation_rate_leaves_its_band_and_resolves() -> None:
    m = DriftMonitor("t", "p", Drift(window=100, band=0.1))
    alerts = [m.observe(decision(i % 5 == 0)) for i in range(100)]  # baseline window: 20%
    assert alerts == [None] * 100 and m.baseline == 0.2
    fired = [a for a in (m.observe(decision(i % 2 == 0, "out_of_distribution")) for i in range(100)) if a]
    assert len(fired) == 1 and fired[0].state == "firing" and fired[0].rate > 0.3
    assert "out_of_distribution" in fired[0].reasons
    back = [a for a in (m.observe(decision(i % 5 == 0)) for i in range(200)) if a]
    assert [a.state for a in back] == ["resolved"]


def test_a_student_that_gets_better_lowers_the_learned_baseline_and_a_rise_from_there_alarms() -> None:
    m = DriftMonitor("t", "p", Drift(window=100, band=0.1))
    assert not [a for a in (m.observe(decision(i % 2 == 0)) for i in range(100)) if a] and m.baseline == 0.5
    quiet = [a for a in (m.observe(decision(i % 5 == 0)) for i in range(200)) if a]  # 20%: better, no alarm
    assert quiet == [] and m.baseline is not None and m.baseline < 0.4
    fired = [a for a in (m.observe(decision(i % 2 == 0)) for i in range(100)) if a]  # back to 50%: an alarm
    assert [a.state for a in fired] == ["firing"]


def test_decisions_without_a_student_say_nothing_about_drift() -> None:
    m = DriftMonitor("t", "p", Drift(window=20, band=0.1))
    cold = decision(True).model_copy(update={"model_version": None})
    assert [m.observe(cold) for _ in range(100)] == [None] * 100 and m.baseline is None and m.rate is None


def test_configured_baseline_is_used_from_the_first_window() -> None:
    m = DriftMonitor("t", "p", Drift(window=20, band=0.1, baseline=0.0))
    fired = [a for a in (m.observe(decision(True)) for _ in range(20)) if a]
    assert fired and fired[0].rate == 1.0


def test_verifier_counts_escalations_per_reason_as_metrics() -> None:
    import asyncio

    from protege_services.verifier.handler import Verifier

    from protege import metrics
    from protege.kafka import Received
    from protege.topics import Topics

    t = Topics("m.")
    v = Verifier({BASE.name: BASE}, t)
    before = (
        metrics.REGISTRY.get_sample_value("protege_escalations_total", {"task": BASE.name, "reason": "low_confidence"})
        or 0
    )
    outs = asyncio.run(v.handle([Received(scored(confidence=0.1), t.scored)]))
    assert [o.topic for o in outs] == [t.decisions, t.teacher_requests]
    after = metrics.REGISTRY.get_sample_value(
        "protege_escalations_total", {"task": BASE.name, "reason": "low_confidence"}
    )
    assert after == before + 1


def test_labels_that_need_extracted_fields_go_to_the_teacher() -> None:
    t = task("cascade", fields_required_for=["refund"])
    d = router_for(t).decide(scored(text="refund #4821", label="refund"), 3)
    assert (d.verdict, d.rules) == ("escalate", ["fields_required:refund"])
    assert router_for(t).decide(scored(), 3).verdict == "accept"


def test_drift_state_is_small_plain_and_restores_to_the_same_monitor() -> None:
    m = DriftMonitor("t", "p", Drift(window=100, band=0.1))
    for i in range(250):
        m.observe(decision(i % 4 == 0, "low_confidence"))
    state = json.loads(json.dumps(m.state()))
    assert len(json.dumps(state)) < 1000  # ten blocks of counts, not one entry per decision
    again = DriftMonitor.restore("t", "p", Drift(window=100, band=0.1), state)
    for i in range(300):  # both see the same decisions and say the same
        d = decision(i % 2 == 0, "out_of_distribution")
        assert m.observe(d) == again.observe(d)
    assert again.firing and again.rate == m.rate


def test_the_fused_scorer_decides_in_its_transaction_and_a_verifier_passes_its_events_by() -> None:
    import asyncio
    from types import SimpleNamespace

    from protege_services.scorer.handler import Scorer
    from protege_services.verifier.handler import Verifier

    from protege.kafka import Received
    from protege.topics import Topics

    t = Topics("f.")
    verifier = Verifier({BASE.name: BASE}, t)
    scorer = Scorer(t, load=lambda p: SimpleNamespace(version=p.name), verifier=verifier)  # type: ignore[arg-type,return-value]
    sure, unsure = scored().student, scored(confidence=0.1).student
    student = SimpleNamespace(version="v1", predict=lambda texts: [sure if "order" in x else unsure for x in texts])
    scorer.students[("acme", BASE.name)] = student  # type: ignore[assignment]
    reqs = [
        Ingested(request_id=f"r{i}", tenant="acme", task=BASE.name, text=text, received_at_ms=1)
        for i, text in enumerate(["where is my order #4821", "hmm"])
    ]
    outs = asyncio.run(scorer.handle([Received(r, t.ingested) for r in reqs]))
    # each scored event, marked decided, and right after it its decision and where it goes
    # (the accepted answer also goes to the harvest: student.learn_accepted)
    assert [o.topic for o in outs] == [
        *(t.scored, t.decisions, t.responses, t.harvest),
        *(t.scored, t.decisions, t.teacher_requests),
    ]
    events = [Scored.model_validate_json(o.value) for o in outs if o.topic == t.scored]
    assert all(e.decided for e in events)
    decisions = [Decision.model_validate_json(o.value) for o in outs if o.topic == t.decisions]
    assert [d.verdict for d in decisions] == ["accept", "escalate"]
    # the separate layout's verifier reading them: nothing more (never a second answer)
    assert asyncio.run(verifier.handle([Received(e, t.scored) for e in events])) == []
    assert (
        len(asyncio.run(verifier.handle([Received(scored(), t.scored)]))) == 3
    )  # an undecided one: decided (+ harvest)
    # a request the fused scorer's loop gives up on goes to the teacher from there
    quarantined = scorer.quarantined(Received(reqs[0], t.ingested), "boom")
    assert [o.topic for o in quarantined] == [t.scored, t.decisions, t.teacher_requests]
    assert Scored.model_validate_json(quarantined[0].value).decided
    decision = Decision.model_validate_json(quarantined[1].value)  # on record: reports count it and its teacher call
    assert (decision.verdict, decision.route, decision.reasons, decision.signals) == (
        "escalate",
        "teacher",
        ["quarantined"],
        {},
    )
    assert recompute_verdict(decision) == decision.verdict


def test_the_one_hop_scorer_ingests_scores_and_decides_in_one_transaction() -> None:
    """PROTEGE_ONE_HOP: requests in; each accepted one's ingested event (marked scored), scored
    event (marked decided) and what its decision sends out together; a refused one on
    requests.dlq with ingestion's reason; a scorer of the other layouts passes the marked
    ingested events by."""
    import asyncio
    from types import SimpleNamespace

    import pytest
    from protege_services.ingestion.handler import Ingestion, SeenIds
    from protege_services.scorer.__main__ import processor
    from protege_services.scorer.handler import Scorer
    from protege_services.verifier.handler import Verifier

    from protege.events import DeadLetter, Request
    from protege.kafka import Received, record
    from protege.settings import ScorerSettings

    settings = ScorerSettings(topic_prefix="o.", one_hop=True)
    t = settings.topics
    verifier = Verifier({BASE.name: BASE}, t)
    ingestion = Ingestion(t, max_text_chars=100, seen=SeenIds(10), service="scorer")
    load = lambda p: SimpleNamespace(version=p.name)  # noqa: E731
    with pytest.raises(ValueError, match="decides too"):
        Scorer(t, load=load, ingestion=ingestion)  # type: ignore[arg-type]
    scorer = Scorer(t, load=load, verifier=verifier, ingestion=ingestion)  # type: ignore[arg-type]
    sure, unsure = scored().student, scored(confidence=0.1).student
    student = SimpleNamespace(version="v1", predict=lambda texts: [sure if "order" in x else unsure for x in texts])
    scorer.students[("acme", BASE.name)] = student  # type: ignore[assignment]

    def request(rid: str, text: str) -> bytes:
        return Request(request_id=rid, tenant="acme", task=BASE.name, text=text).dumps()

    loop = processor(settings, scorer)
    assert list(loop.inputs) == [t.requests] and (loop.dead_letters, loop.quarantine_letters) == (t.requests_dlq, t.dlq)
    records = [
        record(t.requests, request("r1", "where is my order #4821"), offset=0),
        record(t.requests, b'{"tenant": "acme"', offset=1),  # not JSON: the decoder's reason
        record(t.requests, request("r2", "hmm"), offset=2),
        record(t.requests, request("r1", "where is my order again"), offset=3),  # a duplicate id
        record(t.requests, request("r3", "x" * 101), offset=4),  # too long for ingestion
    ]
    received, letters = loop.decode(records)
    outs = letters + asyncio.run(scorer.handle(received))
    assert [o.topic for o in outs] == [
        t.requests_dlq,  # the decoder's
        *(t.ingested, t.ingested, t.requests_dlq, t.requests_dlq),  # ingestion's, in the records' order
        *(t.scored, t.decisions, t.responses, t.harvest),
        *(t.scored, t.decisions, t.teacher_requests),
    ]
    refused = [DeadLetter.model_validate_json(o.value) for o in outs if o.topic == t.requests_dlq]
    assert [d.reason for d in refused] == ["invalid_json", "duplicate_request_id", "text_too_long"]
    assert {d.service for d in refused} == {"scorer"}  # the process that refused them
    ingested = [Ingested.model_validate_json(o.value) for o in outs if o.topic == t.ingested]
    assert [(i.request_id, i.scored) for i in ingested] == [("r1", True), ("r2", True)]
    assert all(Scored.model_validate_json(o.value).decided for o in outs if o.topic == t.scored)
    # accepted ids are duplicates once the transaction commits, not before
    assert "r1" not in ingestion.seen
    asyncio.run(ingestion.committed(received))
    assert "r1" in ingestion.seen and "r2" in ingestion.seen
    # the separate layout's scorer reading the ingested events: nothing (never a second answer)
    separate = Scorer(t, load=load)  # type: ignore[arg-type]
    separate.students[("acme", BASE.name)] = student  # type: ignore[assignment]
    assert asyncio.run(separate.handle([Received(i, t.ingested) for i in ingested])) == []
    fresh = ingested[0].model_copy(update={"scored": None})
    assert [o.topic for o in asyncio.run(separate.handle([Received(fresh, t.ingested)]))] == [t.scored]
    # a request the loop gives up on: ingested and sent to the teacher, or refused as ingestion would
    [r4] = loop.decode([record(t.requests, request("r4", "where is my order #1"), offset=5)])[0]
    assert [o.topic for o in scorer.quarantined(r4, "boom")] == [t.ingested, t.scored, t.decisions, t.teacher_requests]
    assert "r4" in ingestion.seen
    [r5] = loop.decode([record(t.requests, request("r5", "y" * 101), offset=6)])[0]
    [letter] = scorer.quarantined(r5, "boom")
    assert (letter.topic, DeadLetter.model_validate_json(letter.value).reason) == (t.requests_dlq, "text_too_long")


def test_the_verifier_hands_the_trainer_the_accepted_answers_no_teacher_sees() -> None:
    from protege_services.verifier.handler import Verifier

    from protege.events import HarvestCase
    from protege.topics import Topics

    t = Topics("h.")

    def harvested(verifier: Verifier, s: Scored) -> list[HarvestCase]:
        return [HarvestCase.model_validate_json(o.value) for o in verifier.decide(s) if o.topic == t.harvest]

    text = "where is my order #4821, write to ann@example.com"
    [case] = harvested(Verifier({BASE.name: BASE}, t), scored(text=text))
    assert (case.label, case.label_source, case.reason, case.model_version) == ("shipping", "student", "accepted", "v1")
    assert "ann@example.com" not in case.text and "#4821" in case.text  # redacted as the harvester redacts
    assert harvested(Verifier({BASE.name: BASE}, t, redact_pii=False), scored(text=text))[0].text == text
    # escalated: the teacher's label will be harvested, not the student's
    assert harvested(Verifier({BASE.name: BASE}, t), scored(confidence=0.1)) == []
    # checked or audited answers reach the harvest with the teacher's label
    ensemble = task("ensemble")
    assert harvested(Verifier({BASE.name: ensemble}, t), scored()) == []
    audit_all = task("cascade", audit_rate=1.0)
    assert harvested(Verifier({BASE.name: audit_all}, t), scored()) == []
    # off, or a share of them by a stable hash of the request id
    off = BASE.model_copy(update={"student": BASE.student.model_copy(update={"learn_accepted": 0.0})})
    assert harvested(Verifier({BASE.name: off}, t), scored()) == []
    half = BASE.model_copy(update={"student": BASE.student.model_copy(update={"learn_accepted": 0.5})})
    v = Verifier({BASE.name: half}, t)
    picked = []
    for i in range(400):
        s = scored()
        s = s.model_copy(update={"request": s.request.model_copy(update={"request_id": f"q{i}"})})
        picked.append(bool(harvested(v, s)))
        assert picked[-1] == bool(harvested(v, s))  # the same request, the same draw
    assert 0.4 < sum(picked) / 400 < 0.6
