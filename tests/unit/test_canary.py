"""Canaries without a broker: the arms (a stable hash), the sequential verdict, the serving
state a canary goes through, the scorer's split, the raised audit rate in both arms, and the
trainer that announces a trial and judges it on the audits it harvests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

from protege_services.scorer.handler import Scorer
from protege_services.trainer.handler import CaseStore, Trainer

from protege.canary import Audits, arm, judge
from protege.events import HarvestCase, Ingested, ModelAnnouncement, Scored, StudentOutput, now_ms
from protege.generator import triage_task
from protege.kafka import Received
from protege.policy import audited, router_for
from protege.serving import Serving
from protege.student.train import Case, TrainResult
from protege.task import Canary, Task
from protege.topics import Topics

T = Topics("u.")
CONFIG = Canary(share=0.1, min_audits=30, max_audits=400, margin=0.02, confidence=0.99)


def ann(version: str, action: str = "serve", share: float | None = None, **kw) -> ModelAnnouncement:
    return ModelAnnouncement(
        tenant="acme",
        task="ticket-triage",
        version=version,
        path=f"/reg/{version}",
        labels=["a"],
        metrics={},
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


def test_a_clearly_worse_canary_is_rolled_back_and_a_like_one_promoted_at_the_limit() -> None:
    assert judge(CONFIG, Audits(20, 10), Audits(200, 190), 60) is None  # too few canary audits yet
    worse = judge(CONFIG, Audits(60, 36), Audits(200, 190), 60)
    assert worse is not None and worse.action == "rollback" and worse.evidence["high"] < -0.02
    assert "worse by more than 2.0%" in worse.reason
    like = judge(CONFIG, Audits(200, 190), Audits(200, 191), 60)
    assert like is None  # within the margin but not yet surely: keep gathering
    assert judge(CONFIG, Audits(400, 380), Audits(400, 381), 60).action == "promote"  # the volume limit
    better = judge(CONFIG, Audits(300, 297), Audits(300, 270), 60)
    assert better is not None and better.action == "promote" and better.evidence["low"] > -0.02
    silent = judge(CONFIG, Audits(5, 5), Audits(300, 290), CONFIG.max_minutes * 60)
    assert silent is not None and silent.action == "rollback" and "too little evidence" in silent.reason


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


def case(i: int, *, version: str, right: bool, at: int = 10) -> Received[HarvestCase]:
    c = HarvestCase(
        request_id=f"a{version}-{i}",
        tenant="acme",
        task="ticket-triage",
        text=f"text {i}",
        label="billing" if i % 2 else "refund",
        label_source="teacher",
        student_label=("billing" if i % 2 else "refund") if right else "shipping",
        model_version=version,
        reason="audit",
        harvested_at_ms=at,
    )
    return Received(c, T.harvest, offset=i)


def test_trainer_puts_a_candidate_on_trial_and_rolls_it_back_on_its_audits(tmp_path: Path) -> None:
    task = triage_task()
    task = task.model_copy(update={"student": task.student.model_copy(update={"canary": CONFIG})})
    state = Serving()
    state.apply(ann("v1", at=0))
    trained: list[int] = []

    def train(cases: list[Case], tenant: str, t: Task, serving: Path | None, trigger: str) -> TrainResult:
        trained.append(len(cases))
        return TrainResult("v2", tmp_path / "v2", {"golden_accuracy": 0.9}, ["a"], True, "passed gates")

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
    )
    outs = asyncio.run(trainer.handle([case(i, version="v1", right=True) for i in range(40)]))
    first = ModelAnnouncement.model_validate_json(outs[0].value)
    assert (first.action, first.share, first.version) == ("canary", 0.1, "v2") and "on trial for 10%" in first.reason
    state.apply(first)
    # While it is on trial: no new candidate, and no verdict without the canary's audits.
    during = [case(100 + i, version="v1", right=True, at=now_ms()) for i in range(40)]
    assert asyncio.run(trainer.handle(during)) == []
    assert trained == [40]
    wrong = [
        case(200 + i, version="v2", right=i % 4 < 2, at=now_ms()) for i in range(40)
    ]  # 50% against the serving 100%
    outs = asyncio.run(trainer.handle(wrong))
    verdict = ModelAnnouncement.model_validate_json(outs[0].value)
    assert verdict.action == "abort" and verdict.version == "v2" and verdict.reason.startswith("canary rolled back")
    assert verdict.evidence["canary_audits"] == 40 and verdict.evidence["serving_audits"] == 40  # since the trial began
    assert asyncio.run(trainer.handle([case(300, version="v2", right=False)])) == []  # judged once
    # The audits are kept with the cases: a restarted trainer counts the same.
    again = CaseStore(tmp_path / "store")
    assert again.audited("acme", "ticket-triage", "v2", since_ms=first.announced_at_ms) == Audits(40, 20)
    assert again.audited("acme", "ticket-triage", "v1") == Audits(80, 80)
