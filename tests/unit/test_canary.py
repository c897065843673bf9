"""Canaries without a broker: the arms (a stable hash), the sequential verdict, the serving
state a canary goes through, the scorer's split, the raised audit rate in both arms, the
trainer that announces a trial (and waits for its verdict), and the monitor's ``Trial`` that
judges it on the audits and escalations."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

from protege_services.scorer.handler import Scorer
from protege_services.trainer.handler import CaseStore, Trainer

from protege.canary import Expected, Tally, Trial, arm, expected, judge
from protege.events import AcceptRule, HarvestCase, Ingested, ModelAnnouncement, Scored, StudentOutput
from protege.generator import triage_task
from protege.kafka import Received
from protege.policy import audited, router_for
from protege.serving import Serving
from protege.student.train import Case, TrainResult
from protege.task import Canary, Task
from protege.topics import Topics
from tests.helpers import manifest_only

T = Topics("u.")
CONFIG = Canary(share=0.1, min_audits=30, max_audits=400, margin=0.02, confidence=0.99)


def ann(version: str, action: str = "serve", share: float | None = None, **kw) -> ModelAnnouncement:
    return ModelAnnouncement(
        tenant="acme",
        task="ticket-triage",
        version=version,
        path=f"/reg/{version}",
        labels=["a"],
        metrics=kw.pop("metrics", {}),
        trained_on=1,
        action=action,  # type: ignore[arg-type]
        share=share,
        announced_at_ms=kw.pop("at", 1),
        **kw,
    )


def test_arms_are_stable_disjoint_and_the_right_size() -> None:
    ids = [f"acme-{i}" for i in range(20_000)]
    arms = [arm(i, 0.1) for i in ids]
    assert 0.09 < arms.count("canary") / len(ids) < 0.11 and 0.09 < arms.count("control") / len(ids) < 0.11
    assert arms == [arm(i, 0.1) for i in ids]  # a request always meets the same version
    assert all(arm(i, 0.0) is None for i in ids[:100])
    # salted apart from the audit hash: the canary arm is audited at the same rate as the rest
    on_trial = [i for i, a in zip(ids, arms, strict=True) if a == "canary"]
    assert 0.15 < sum(audited(i, 0.25) for i in on_trial) / len(on_trial) < 0.35


def audits(n: int, agreed: int, decided: int | None = None, escalated: int | None = None) -> Tally:
    """n audits, and decisions at a 10% escalation rate unless stated."""
    decided = 4 * n if decided is None else decided
    return Tally(n, agreed, decided, decided // 10 if escalated is None else escalated)


def test_a_clearly_worse_canary_is_rolled_back_and_a_like_one_promoted_at_the_limit() -> None:
    assert judge(CONFIG, audits(20, 10), audits(200, 190), 60) is None  # too few canary audits yet
    worse = judge(CONFIG, audits(60, 36), audits(200, 190), 60)
    assert worse is not None and worse.action == "rollback" and worse.evidence["high"] < -0.02
    assert "less accurate by more than 2.0%" in worse.reason
    like = judge(CONFIG, audits(200, 190), audits(200, 191), 60)
    assert like is None  # within the margin but not yet surely: keep gathering
    assert judge(CONFIG, audits(400, 380), audits(400, 381), 60).action == "promote"  # the volume limit
    better = judge(CONFIG, audits(300, 297), audits(300, 270), 60)
    assert better is not None and better.action == "promote" and better.evidence["low"] > -0.02
    silent = judge(CONFIG, audits(5, 5), audits(300, 290), CONFIG.max_minutes * 60)
    assert silent is not None and silent.action == "rollback" and "too little evidence" in silent.reason


def test_a_canary_that_escalates_much_more_is_rolled_back_however_accurate() -> None:
    # As accurate on what it accepts, but it sends 40% of requests to the teacher, not 10%.
    costly = judge(CONFIG, audits(300, 297, 1000, 400), audits(300, 270, 4000, 400), 60)
    assert costly is not None and costly.action == "rollback" and "escalates more" in costly.reason
    assert costly.evidence["escalation_low"] > CONFIG.escalation_margin
    # 12% against 10%: within the 5-point margin, surely: promoted on both counts.
    fine = judge(CONFIG, audits(300, 297, 4000, 480), audits(300, 270, 4000, 400), 60)
    assert fine is not None and fine.action == "promote" and fine.evidence["escalation_high"] < 0.05
    # Few decisions: the escalation interval is too wide to promote yet, although accuracy is.
    unsure = judge(CONFIG, audits(300, 297, 300, 36), audits(300, 270, 300, 30), 60)
    assert unsure is None


def test_under_a_target_audits_are_read_against_what_the_golden_rows_predict() -> None:
    """A candidate certified for more of the traffic is right less often on what it accepts,
    as its golden rows said: read against that, it is promoted where a plain comparison with a
    first version certified for less rolls it back; one worse than its golden rows said is not."""
    predicted = (Expected(0.95, 900), Expected(0.99, 600))  # canary, serving
    as_said = (audits(400, 380, 1600, 80), audits(400, 396, 1600, 640))  # 95% vs 99%; 5% vs 40% escalated
    plain = judge(CONFIG, *as_said, 60)
    assert plain is not None and plain.action == "rollback" and "limit reached" in plain.reason
    read = judge(CONFIG, *as_said, 60, predicted)
    assert read is not None and read.action == "promote", read.reason
    assert read.evidence["expected_difference"] == -0.04 and read.evidence["difference"] == 0.0
    assert "golden rows predicted 95.0% and 99.0%" in read.reason
    # The interval is wider than the audits' alone: the predictions are estimates too.
    assert read.evidence["high"] - read.evidence["low"] > plain.evidence["high"] - plain.evidence["low"]
    worse = judge(CONFIG, audits(400, 352, 1600, 80), audits(400, 396, 1600, 640), 60, predicted)  # 88%
    assert worse is not None and worse.action == "rollback" and worse.evidence["high"] < -0.02
    assert "less accurate by more than 2.0%" in worse.reason
    # What a version's announcement says it should find, when its golden rows are enough.
    assert expected({"truth_agreement_on_accepted": 0.95, "truth_accepted_cases": 900.0}) == Expected(0.95, 900)
    assert expected({"truth_agreement_on_accepted": 1.0, "truth_accepted_cases": 9.0}) is None  # too few rows
    assert expected({"golden_accepted_accuracy": 0.95}) is None


def test_the_monitors_trial_reads_audits_against_the_predictions_only_under_a_target() -> None:
    told = {"truth_agreement_on_accepted": 0.99, "truth_accepted_cases": 600.0}
    trial = Trial()
    trial.announced(ann("v1", at=0, metrics=told))
    trial.announced(
        ann("v2", "canary", 0.1, at=100, metrics={"truth_agreement_on_accepted": 0.95, "truth_accepted_cases": 900.0})
    )
    for i in range(400):
        for _ in range(4):
            trial.decided("v1", i % 5 < 2, 200 + i)  # serving escalates 40%, the canary 5%
            trial.decided("v2", i % 20 == 0, 200 + i)
        trial.audited("v1", i % 100 != 0, 200 + i)  # 99%
        trial.audited("v2", i % 20 != 0, 200 + i)  # 95%, as its golden rows said
    state = json.dumps(trial.state())
    untargeted = Trial(json.loads(state)).verdict(CONFIG, 1000)
    assert untargeted is not None and untargeted.action == "abort" and "golden rows" not in (untargeted.reason or "")
    targeted = Trial(json.loads(state)).verdict(CONFIG, 1000, targeted=True)
    assert targeted is not None and targeted.action == "serve", targeted.reason
    assert targeted.evidence["canary_expected"] == 0.95 and targeted.evidence["serving_expected_cases"] == 600


def test_serving_state_through_a_trial() -> None:
    s = Serving()
    assert (
        s.apply(ann("v1", "canary", 0.1)) and s.serving("acme", "ticket-triage").version == "v1"
    )  # nothing to compare
    assert s.canary("acme", "ticket-triage") is None
    assert s.apply(ann("v2", "canary", 0.1)) and s.canary("acme", "ticket-triage").version == "v2"
    assert s.serving("acme", "ticket-triage").version == "v1"
    assert not s.apply(ann("v9", "abort"))  # not the version on trial
    assert s.apply(ann("v2", "abort")) and s.canary("acme", "ticket-triage") is None  # rolled back
    assert s.serving("acme", "ticket-triage").version == "v1"
    s.apply(ann("v3", "canary", 0.1))
    assert s.apply(ann("v3")) and s.serving("acme", "ticket-triage").version == "v3"  # promoted
    assert s.canary("acme", "ticket-triage") is None and s.history("acme", "ticket-triage") == ["v1", "v3"]
    s.apply(ann("v4", "canary", 0.1))
    s.apply(ann("v3", source="operator", pin=True))  # a pin stops the trial
    assert s.canary("acme", "ticket-triage") is None
    assert not s.apply(ann("v5", "canary", 0.1)) and s.canary("acme", "ticket-triage") is None  # pinned


def test_scorer_splits_a_batch_by_arm() -> None:
    scorer = Scorer(T, load=lambda p: SimpleNamespace(version=p.name))
    key = ("acme", "ticket-triage")
    serving, candidate = SimpleNamespace(version="v1"), SimpleNamespace(version="v2")
    scorer.students[key] = serving  # type: ignore[assignment]
    reqs = [
        Ingested(request_id=f"acme-{i}", tenant="acme", task="ticket-triage", text="t", received_at_ms=1)
        for i in range(400)
    ]
    assert scorer.arms(key, reqs) == [(serving, reqs, {})]  # no trial
    scorer.serving.apply(ann("v1"))
    scorer.serving.apply(ann("v2", "canary", 0.1))
    scorer.trials[key] = candidate  # type: ignore[assignment]
    (first, on_trial, chosen), (second, rest, _) = scorer.arms(key, reqs)
    assert (first, second) == (candidate, serving)
    assert {r.request_id for r in on_trial} == {r.request_id for r in reqs if arm(r.request_id, 0.1) == "canary"}
    assert len(on_trial) + len(rest) == 400 and on_trial
    assert {k for k, a in chosen.items() if a == "control"} <= {r.request_id for r in rest}


def test_both_arms_are_audited_at_the_trial_rate() -> None:
    task = triage_task()
    task = task.model_copy(
        update={"student": task.student.model_copy(update={"canary": Canary(share=0.1, audit_rate=1.0)})}
    )
    router = router_for(task)

    def scored(arm_: str | None) -> Scored:
        out = StudentOutput(
            model_version="v2", label="shipping", confidence=0.95, margin=0.9, ood=0.1, top=[], arm=arm_
        )
        req = Ingested(request_id="acme-7", tenant="acme", task=task.name, text="where is my order", received_at_ms=1)
        return Scored(request=req, student=out, scored_at_ms=1, batch_size=1)

    assert router.decide(scored("canary"), 2).audit and router.decide(scored("control"), 2).audit
    assert not router.decide(scored(None), 2).audit  # the policy's own rate: 0


def harvested(i: int, version: str) -> Received[HarvestCase]:
    c = HarvestCase(
        request_id=f"a{version}-{i}",
        tenant="acme",
        task="ticket-triage",
        text=f"text {i}",
        label="billing" if i % 2 else "refund",
        label_source="teacher",
        student_label="billing" if i % 2 else "refund",
        model_version=version,
        reason="audit",
        harvested_at_ms=10,
    )
    return Received(c, T.harvest, offset=i)


def test_trainer_puts_a_candidate_on_trial_and_trains_no_other_until_its_verdict(tmp_path: Path) -> None:
    task = triage_task()
    task = task.model_copy(update={"student": task.student.model_copy(update={"canary": CONFIG})})
    state = Serving()
    state.apply(ann("v1", at=0))
    trained: list[int] = []

    def train(cases: list[Case], tenant: str, t: Task, serving: Path | None, trigger: str) -> TrainResult:
        trained.append(len(cases))
        version = f"v{len(trained) + 1}"
        return TrainResult(version, tmp_path / version, {"golden_accuracy": 0.9}, ["a"], True, "passed gates")

    async def serving_folder(tenant: str, task_name: str) -> Path:
        return tmp_path / "v1"

    trainer = Trainer(
        {"ticket-triage": task},
        T,
        CaseStore(tmp_path / "store"),
        train,
        min_cases=40,
        retrain_every=40,
        serving=serving_folder,
        trials=lambda tenant, t: (state.canary(tenant, t), state.serving(tenant, t)),
        has_read=state.has_read,
    )
    outs = asyncio.run(trainer.handle([harvested(i, "v1") for i in range(40)]))
    first = ModelAnnouncement.model_validate_json(outs[0].value)
    assert (first.action, first.share, first.version) == ("canary", 0.1, "v2") and "on trial for 10%" in first.reason
    # Before its view has read its own announcement: nothing, though no trial shows yet.
    assert asyncio.run(trainer.handle([harvested(50 + i, "v1") for i in range(45)])) == []
    assert trained == [40] and state.canary("acme", "ticket-triage") is None
    state.apply(first)
    # While it is on trial: no new candidate, however many cases arrive.
    assert asyncio.run(trainer.handle([harvested(100 + i, "v1") for i in range(80)])) == []
    assert trained == [40]
    state.apply(first.model_copy(update={"action": "abort", "source": "monitor"}))  # the monitor's verdict
    outs = asyncio.run(trainer.handle([harvested(200, "v1")]))
    assert trained == [40, 166] and ModelAnnouncement.model_validate_json(outs[0].value).version == "v3"


def test_a_candidate_serves_at_once_when_the_serving_version_certifies_nothing(tmp_path: Path) -> None:
    """Under a target, a version without a rule for it answers no request: a trial against it
    would have no audits on either side and could only end at its limit (seen in the demo)."""
    task = triage_task()
    task = task.model_copy(
        update={
            "policy": task.policy.model_copy(update={"target_margin": 0.01}),
            "student": task.student.model_copy(update={"canary": CONFIG}),
        }
    )
    rule = AcceptRule(
        target_margin=0.01, confidence_level=0.95, evidence="golden", min_confidence=0.9, max_ood=0.3, coverage=0.5
    )
    for serving_rule, action in (
        (None, "serve"),
        (rule.model_copy(update={"target_margin": 0.05}), "serve"),
        (rule, "canary"),
    ):
        home = tmp_path / action / str(serving_rule is not None)
        folder = manifest_only(home / "v1", acceptance=serving_rule)

        def train(cases: list[Case], tenant: str, t: Task, serving: Path | None, trigger: str) -> TrainResult:
            return TrainResult("v2", tmp_path / "v2", {}, ["a"], True, "passed gates")

        async def serving_folder(tenant: str, task_name: str, folder: Path = folder) -> Path:
            return folder

        trainer = Trainer(
            {"ticket-triage": task},
            T,
            CaseStore(home / "store"),
            train,
            min_cases=40,
            retrain_every=40,
            serving=serving_folder,
        )
        outs = asyncio.run(trainer.handle([harvested(i, "v1") for i in range(40)]))
        announced = ModelAnnouncement.model_validate_json(outs[0].value)
        assert announced.action == action, announced.reason
        if action == "serve":
            assert "v1 certifies nothing for the target, so no trial" in announced.reason


def test_the_monitors_trial_judges_from_the_announcement_on_and_says_so_once() -> None:
    config = Canary(share=0.1, min_audits=30, max_audits=400, margin=0.02, confidence=0.99)
    trial = Trial()
    trial.announced(ann("v1", at=0))
    trial.decided("v1", False, 50)  # before any trial: not counted
    trial.announced(ann("v2", "canary", 0.1, at=100))
    assert trial.canary is not None and trial.serving is not None and trial.serving.version == "v1"
    at = 100
    for i in range(400):
        at += 10
        trial.decided("v1", i % 10 == 0, at)  # serving: 10% escalated, every audit right
        trial.audited("v1", True, at)
        trial.decided("v2", i % 10 == 0, at)  # canary: as often escalated, half its audits wrong
        trial.audited("v2", i % 2 == 0, at)
        trial.decided("v7", True, at)  # neither version: not counted
        verdict = trial.verdict(config, at)
        if verdict is not None:
            break
    assert verdict is not None and verdict.action == "abort" and verdict.source == "monitor"
    assert verdict.version == "v2" and verdict.reason.startswith("canary rolled back")
    assert verdict.evidence["serving_decided"] == verdict.evidence["canary_decided"] == i + 1
    assert verdict.announced_at_ms == at  # event time: the same records give the same verdict
    assert trial.verdict(config, at + 1) is None  # said once
    again = Trial(json.loads(json.dumps(trial.state())))  # restored from the changelog
    assert again.verdict(config, at + 1) is None and again.tally("v2") == trial.tally("v2")
    again.announced(verdict)  # its own verdict comes back on protege.models: the trial ends
    assert again.canary is None and again.tallies == {} and again.serving.version == "v1"
    # A pin ends a trial; a verdict after it is not applied.
    again.announced(ann("v3", "canary", 0.1, at=5000))
    again.announced(ann("v1", source="operator", pin=True, at=5001))
    assert again.canary is None and again.pinned
    again.announced(ann("v3", source="monitor", at=5002))
    assert again.serving.version == "v1"


def test_the_demo_knows_a_trial_still_open_at_the_end() -> None:
    """``protege demo`` waits for the verdict of a trial still open when the traffic ends."""
    from protege.cli.stream import on_trial

    serve = {"version": "v1", "action": "serve", "source": "trainer"}
    canary = {"version": "v2", "action": "canary", "source": "trainer"}
    assert on_trial([serve]) is None
    assert on_trial([serve, canary]) == canary
    assert on_trial([serve, canary, {"version": "v2", "action": "abort", "source": "monitor"}]) is None
    assert on_trial([serve, canary, {"version": "v2", "action": "serve", "source": "monitor"}]) is None
    assert on_trial([serve, canary, {"version": "v1", "action": "serve", "source": "operator"}]) is None  # a pin


def test_a_candidate_goes_on_trial_only_against_a_version_that_answers() -> None:
    """The trainer's retrains and `protege train --announce` (the scheduled fine-tune) announce
    alike: on trial for the canary share when canaries are on and a version serves, else at once."""
    from protege.canary import candidate

    base = triage_task()  # no target: any serving version answers under its fixed thresholds
    on = base.model_copy(update={"student": base.student.model_copy(update={"canary": CONFIG})})
    fields = {"labels": ["a"], "metrics": {}, "trained_on": 5}
    folder, serving = Path("/reg/v0002-b"), Path("/reg/v0001-a")
    trial = candidate("acme", on, "v0002-b", folder, serving=serving, trigger="5 cases", **fields)
    assert (trial.action, trial.share, trial.path) == ("canary", 0.1, str(folder))
    assert trial.reason == "trained on 5 cases; passed its gates; on trial for 10% of requests against v0001-a"
    first = candidate("acme", on, "v0001-a", serving, serving=None, trigger="5 cases", **fields)
    assert (first.action, first.share) == ("serve", None)  # nothing to compare the first with
    off = candidate("acme", base, "v0002-b", folder, serving=serving, trigger="5 cases", **fields)
    assert (off.action, off.reason) == ("serve", "trained on 5 cases; passed its gates")
