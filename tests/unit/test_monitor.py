"""The monitor's window operation: counts added once per source record, whatever is read
again after a restart or forwarded twice (the broker test is tests/integration/test_monitor.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from faust.windows import HoppingWindow
from protege_services.monitor.app import counted, decision_fields, drift_step, rekeyed, span, trial_step, trial_tick

from protege.errors import InvalidEvent
from protege.events import ModelAnnouncement
from protege.generator import triage_task
from protege.task import Canary, Drift, Task
from protege.topics import Topics


def test_a_record_at_or_below_the_mark_is_not_counted_again() -> None:
    op = counted(decision_fields)
    window: dict = {}
    for p, o, verdict in [(0, 0, "accept"), (0, 1, "escalate"), (1, 0, "accept"), (0, 1, "escalate"), (1, 0, "accept")]:
        route = "student" if verdict == "accept" else "teacher"
        window = op(window, {"s": "d", "p": p, "o": o, "verdict": verdict, "route": route})
    assert (window["decided"], window["escalated"], window["student"], window["skipped"]) == (3, 1, 2, 2)
    assert window["marks"] == {"d0": 1, "d1": 0}
    # A restart that restored this window reads from an older committed offset: skipped.
    again = op(window, {"s": "d", "p": 0, "o": 0, "verdict": "accept", "route": "student"})
    assert again["decided"] == 3 and again["skipped"] == 3
    assert window["skipped"] == 2  # the op returns a new value; the stored one is not mutated


def test_the_drift_alarm_fires_once_and_stays_raised_through_a_restore() -> None:
    task = triage_task()
    task = task.model_copy(
        update={"policy": task.policy.model_copy(update={"drift": Drift(window=20, band=0.1, baseline=0.0)})}
    )
    value: dict | None = {}
    alerts = []
    for o in range(40):
        record = {
            "s": "d",
            "p": 0,
            "o": o,
            "verdict": "escalate",
            "reasons": ["out_of_distribution:0.9"],
            "at": o,
            "version": "v1",
        }
        value, alert = drift_step(task, json.loads(json.dumps(value)), record)  # through JSON, as the changelog
        assert value is not None
        alerts += [alert] if alert else []
        if o == 25:  # read again after a restart: counted already, nothing changes
            assert drift_step(task, value, {**record, "o": 20}) == (None, None)
    assert [a.state for a in alerts] == ["firing"] and alerts[0].rate == 1.0
    assert alerts[0].reasons == {"out_of_distribution": 1.0} and alerts[0].window == 20
    assert value["drift"]["firing"] is True  # raised, in the state the changelog keeps


def model(task: Task, version: str, action: str, at: int) -> dict:
    """An announcement as the monitor routes it onto its keyed topic."""
    ann = ModelAnnouncement(
        tenant="acme",
        task=task.name,
        version=version,
        path="/p",
        labels=["a"],
        metrics={},
        trained_on=1,
        action=action,  # type: ignore[arg-type]
        share=0.1 if action == "canary" else None,
        announced_at_ms=at,
    )
    return {"s": "m", "p": 0, "k": "model", "ann": ann.model_dump(mode="json")}


def test_trial_records_lead_to_one_verdict() -> None:
    task = triage_task()
    canary = Canary(share=0.1, audit_rate=1.0, min_audits=5, margin=0.1, confidence=0.9)
    task = task.model_copy(update={"student": task.student.model_copy(update={"canary": canary})})

    before = {"k": "decision", "version": "v1", "verdict": "accept", "at": 5}  # no trial yet: nothing to write
    records = [model(task, "v1", "serve", 0), before, model(task, "v2", "canary", 10)]
    for i in range(40):
        records += [{"k": "decision", "version": v, "verdict": "accept", "at": 20 + i} for v in ("v1", "v2")] + [
            {"k": "audit", "version": "v1", "agreed": True, "at": 20 + i},
            {"k": "audit", "version": "v2", "agreed": False, "at": 20 + i},
        ]
    value: dict = {}
    verdicts, writes = [], 0
    for o, r in enumerate(records):
        new, verdict = trial_step(task, value, {"s": "m" if r["k"] == "model" else "d", "p": 0, "o": o, **r})
        if new is not None:  # else nothing to write: the table keeps its value
            value, writes = new, writes + 1
        verdicts += [verdict] if verdict else []
    assert [(v.action, v.version) for v in verdicts] == [("abort", "v2")]
    assert verdicts[0].evidence["canary_audits"] == verdicts[0].evidence["serving_audits"] == 5
    # A state is written for the two announcements and each record of the trial up to the
    # verdict (five rounds of two decisions and two audits), none outside it.
    assert writes == 2 + 5 * 4


def test_the_window_shown_is_the_one_open_longest() -> None:
    """Of the four hopping windows (an hour, every 15 minutes) open at a moment, /metrics shows
    the one that began first: it holds the last 45 to 60 minutes, where the newest one
    (faust's ``current()``) holds less than the last 15."""
    window = HoppingWindow(3600, 900)
    now = 10 * 3600 + 600.0  # 10:10
    ranges = window.ranges(now)
    assert [r[0] for r in ranges] == [9.25 * 3600, 9.5 * 3600, 9.75 * 3600, 10 * 3600]  # 09:15, 09:30 ... 10:00
    table = SimpleNamespace(window=window, data={("k", r): {"decided": i} for i, r in enumerate(ranges)})
    assert span(SimpleNamespace(table=table), "k", now) == {"decided": 0}
    assert span(SimpleNamespace(table=table), "other", now) == {}


def test_a_quiet_trial_ends_at_its_time_limit() -> None:
    """No record arrives after the trial began (a quiet tenant, or the traffic ended): the
    monitor's clock ends it once ``max_minutes`` have passed — rolled back, with too few
    audits to promote — so the trainer is not kept waiting for ever."""
    task = triage_task()
    canary = Canary(share=0.1, min_audits=5, max_minutes=1)
    task = task.model_copy(update={"student": task.student.model_copy(update={"canary": canary})})

    value: dict = {}
    for o, r in enumerate([model(task, "v1", "serve", 0), model(task, "v2", "canary", 1_000)]):
        value, _ = trial_step(task, value, {**r, "o": o})
        assert value is not None
    assert trial_tick(task, value, 1_000 + 59_000) == (None, None)  # within the minute: nothing yet
    new, verdict = trial_tick(task, value, 1_000 + 60_000)
    assert verdict is not None and (verdict.action, verdict.version, verdict.source) == ("abort", "v2", "monitor")
    assert "limit reached" in (verdict.reason or "") and new is not None
    assert trial_tick(task, new, 1_000 + 65_000) == (None, None)  # said once
    assert trial_tick(task, {}, 1_000) == (None, None)  # no trial at all


def test_source_records_are_rekeyed_by_task_with_their_coordinates() -> None:
    topics = Topics("x.")
    task = triage_task()
    ann = ModelAnnouncement(**{**model(task, "v2", "canary", 7)["ann"], "tenant": "acme"})
    name, record = rekeyed(topics.models, ann.dumps(), 0, 41, topics)
    assert (name, record["k"], record["s"], record["p"], record["o"], record["tenant"]) == (
        task.name,
        "model",
        "m",
        0,
        41,
        "acme",
    )
    assert ModelAnnouncement.model_validate(record["ann"]) == ann
    assert json.loads(json.dumps(record)) == record  # as the keyed topic carries it
    # A record that does not decode is refused with its reason (the router counts and passes over it).
    with pytest.raises(InvalidEvent) as e:
        rekeyed(topics.decisions, b"{not json", 1, 3, topics)
    assert e.value.reason == "invalid_json"
    with pytest.raises(InvalidEvent):
        rekeyed(topics.teacher_results, json.dumps({"tenant": "acme"}).encode(), 1, 3, topics)
