"""The monitor: windowed statistics of the live loop, on faust-streaming tables whose state
lives in Kafka changelog topics (it survives kill -9).

    decisions       -> per tenant/task/version: decided, escalated, answered by the student
    teacher.results -> per tenant/task/version: audits and how many the teacher agreed with;
                       per tenant: teacher spend and calls (tumbling hours)

It also owns two verdicts, each kept in a changelog-backed table and published once it
changes:

    drift   per task, over the decisions of all its tenants (``protege.drift``): an alert
            on ``protege.alerts`` when the escalation rate rises past its band, and when it is back
    trials  per tenant/task, from protege.models + decisions + audits (``protege.canary``):
            the canary's promotion (``serve``) or rollback (``abort``) on ``protege.models``,
            with the reason and the numbers

Reading is at least once (faust's exactly-once mode has open bugs and is not used): after a
crash, records after the last committed offset are read again. Counts must not inflate, so
each record is first re-keyed onto ``<prefix>protege.monitor.keyed`` with its source
coordinates (partition, offset), and each window's value keeps, per source partition, the
highest offset it has counted: a record read again, or forwarded twice, is at or below that
mark and is skipped. The mark is written in the same changelog record as the counts it
guards, so restoring the table restores both together. A verdict is published before the
state that records it is written: a crash between the two repeats the same verdict (same
content: it is computed from the same records) rather than losing it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any, TypeVar

import faust
import structlog

from protege import metrics
from protege.canary import Trial
from protege.drift import DriftMonitor
from protege.errors import InvalidEvent
from protege.events import Alert, Decision, Event, ModelAnnouncement, TeacherResult
from protege.kafka import Heartbeat
from protege.serde import decode
from protege.settings import MonitorSettings
from protege.task import Task, load_tasks

log = structlog.get_logger()
Value = dict[str, Any]
E = TypeVar("E", bound=Event)


def marked(value: Value | None, record: Value) -> Value | None:
    """A copy of ``value`` with the record's source mark advanced to its offset, or None when
    the offset is at or below the mark (the record was counted already). A source is a topic
    (``s``) and partition (``p``)."""
    value = dict(value or {})
    marks = dict(value.get("marks", {}))
    source, offset = f"{record['s']}{record['p']}", record["o"]
    if offset <= marks.get(source, -1):
        return None
    marks[source] = offset
    value["marks"] = marks
    return value


def counted(fields: Callable[[Value], dict[str, float]]) -> Callable[[Value, Value], Value]:
    """A window operation: add ``fields(record)`` to the window's value unless the record's
    source offset is at or below the window's mark for its partition (counted already)."""

    def op(window: Value, record: Value) -> Value:
        fresh = marked(window, record)
        if fresh is None:
            window = dict(window or {})
            window["skipped"] = window.get("skipped", 0) + 1
            return window
        for name, amount in fields(record).items():
            fresh[name] = fresh.get(name, 0) + amount
        return fresh

    return op


def drift_step(task: Task, value: Value | None, record: Value) -> tuple[Value | None, Alert | None]:
    """One decision into the task's drift state: (the new state, or None when the record
    was counted already; an ``Alert`` when the alarm fired or resolved, else None)."""
    fresh = marked(value, record)
    if fresh is None:
        return None, None
    monitor = DriftMonitor.restore(task.name, task.policy.version, task.policy.drift, fresh.get("drift"))
    alert = monitor.see(record["verdict"], record["reasons"], record["at"], record["version"])
    fresh["drift"] = monitor.state()
    return fresh, alert


def trial_step(task: Task, value: Value | None, record: Value) -> tuple[Value | None, ModelAnnouncement | None]:
    """One announcement, decision or audit into a tenant's trial: (the new state, or None
    when the record was counted already; the canary's verdict when it was reached)."""
    fresh = marked(value, record)
    if fresh is None:
        return None, None
    trial = Trial(fresh.get("trial"))
    verdict = None
    if record["k"] == "model":
        trial.announced(ModelAnnouncement.model_validate(record["ann"]))
    else:
        if record["k"] == "decision":
            trial.decided(record["version"], record["escalated"], record["at"])
        else:
            trial.audited(record["version"], record["agreed"], record["at"])
        verdict = trial.verdict(task.student.canary, record["at"])
    fresh["trial"] = trial.state()
    return fresh, verdict


def decision_fields(r: Value) -> dict[str, float]:
    return {
        "decided": 1,
        "escalated": int(r["verdict"] == "escalate"),
        "student": int(r["route"] == "student"),
        "shadow": int(r["verdict"] == "shadow"),
    }


def audit_fields(r: Value) -> dict[str, float]:
    return {"audits": 1, "agreed": int(bool(r["agreed"]))}


def cost_fields(r: Value) -> dict[str, float]:
    return {"usd": r["usd"], "calls": 1, "audit_usd": r["usd"] if r["mode"] == "audit" else 0.0}


def credentials(settings: MonitorSettings) -> faust.types.auth.CredentialsT | None:
    """protege's Kafka security settings (``PROTEGE_SECURITY_PROTOCOL``, ``PROTEGE_SASL_*``,
    ``PROTEGE_SSL_CAFILE``) as faust's credentials: the same broker, the same way in."""
    kw = settings.kafka_kwargs()
    if settings.sasl_mechanism:
        return faust.SASLCredentials(
            username=kw["sasl_plain_username"],
            password=kw["sasl_plain_password"],
            ssl_context=kw.get("ssl_context"),
            mechanism=settings.sasl_mechanism,
        )
    if "ssl_context" in kw:
        return faust.SSLCredentials(kw["ssl_context"])
    return None


def make_app(settings: MonitorSettings) -> faust.App:
    prefix = settings.topic_prefix
    tasks = load_tasks(settings.tasks_dir)
    (settings.home / "monitor").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"{prefix}protege-monitor",
        broker=[f"kafka://{server.strip()}" for server in settings.bootstrap_servers.split(",")],
        broker_credentials=credentials(settings),
        store="memory://",  # restored from the changelog topics at start
        topic_replication_factor=settings.replication_factor,
        topic_partitions=settings.partitions,
        web_enabled=False,
        datadir=str(settings.home / "monitor"),
        broker_commit_every=settings.monitor_commit_every,
        broker_commit_interval=1.0,
        # A restarted monitor takes its partitions back when the dead one's session ends:
        # 10 s, not faust's 60 s (the other services use the same).
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        producer_acks=-1,
    )
    topics = settings.topics
    decisions = app.topic(topics.decisions, key_type=bytes, value_type=bytes, value_serializer="raw")
    results = app.topic(topics.teacher_results, key_type=bytes, value_type=bytes, value_serializer="raw")
    models = app.topic(topics.models, key_type=bytes, value_type=bytes, value_serializer="raw")
    alerts = app.topic(topics.alerts, key_type=bytes, value_type=bytes, value_serializer="raw")
    keyed = app.topic(  # faust creates it, co-partitioned with the tables' changelogs
        f"{prefix}protege.monitor.keyed",
        key_type=str,
        key_serializer="raw",
        value_serializer="json",
        partitions=settings.partitions,
        internal=True,
    )
    size, step = timedelta(seconds=settings.monitor_window_s), timedelta(seconds=settings.monitor_step_s)
    expires = timedelta(hours=25)
    routing = app.Table("routing", default=dict).hopping(size, step, expires=expires)
    audits = app.Table("audits", default=dict).hopping(size, step, expires=expires)
    spend = app.Table("spend", default=dict).tumbling(timedelta(hours=1), expires=expires)
    drift = app.Table("drift", default=dict)  # per task
    trials = app.Table("trials", default=dict)  # per tenant/task
    ops = {"routing": counted(decision_fields), "audits": counted(audit_fields), "spend": counted(cost_fields)}
    tables = {"routing": routing, "audits": audits, "spend": spend}

    async def decoded(stream: Any, model: type[E], topic: str) -> AsyncIterator[tuple[E, Value]]:
        """Each event of ``stream`` decoded as ``model`` with its source coordinates; an
        undecodable one is counted (``protege_monitor_skipped``) and passed over."""
        async for event in stream.events():
            try:
                item = decode(model, event.value)
            except InvalidEvent as e:
                metrics.MONITOR_SKIPPED.labels(topic, e.reason).inc()
                continue
            yield item, {"p": event.message.partition, "o": event.message.offset}

    @app.agent(decisions)
    async def route_decisions(stream: Any) -> None:
        async for d, at in decoded(stream, Decision, "decisions"):
            coords = {"s": "d", **at}
            routing_ = {"t": "routing", **coords, "verdict": d.verdict, "route": d.route}
            await keyed.send(key=f"{d.tenant}/{d.task}/{d.model_version or 'none'}", value=routing_)
            if d.task not in tasks:
                metrics.MONITOR_SKIPPED.labels("decisions", "unknown_task").inc()
                continue
            when = d.decided_at_ms
            drift_ = {"t": "drift", **coords, "verdict": d.verdict, "reasons": d.reasons, "version": d.model_version}
            await keyed.send(key=d.task, value={**drift_, "at": when})
            escalated = d.verdict == "escalate"
            trial = {"t": "trial", **coords, "k": "decision", "version": d.model_version, "escalated": escalated}
            await keyed.send(key=f"{d.tenant}/{d.task}", value={**trial, "at": when})

    @app.agent(models)
    async def route_models(stream: Any) -> None:
        async for ann, at in decoded(stream, ModelAnnouncement, "models"):
            record = {"t": "trial", "s": "m", **at, "k": "model", "ann": ann.model_dump(mode="json")}
            await keyed.send(key=f"{ann.tenant}/{ann.task}", value=record)

    @app.agent(results)
    async def route_results(stream: Any) -> None:
        async for r, at in decoded(stream, TeacherResult, "teacher_results"):
            coords = {"s": "r", **at}
            await keyed.send(key=f"{r.tenant}", value={"t": "spend", **coords, "usd": r.cost_usd, "mode": r.mode})
            if r.mode == "audit":
                agreed = r.student_label == r.label
                key = f"{r.tenant}/{r.task}/{r.model_version or 'none'}"
                await keyed.send(key=key, value={"t": "audits", **coords, "agreed": agreed})
                if r.task in tasks:
                    audit = {"t": "trial", **coords, "k": "audit", "version": r.model_version, "agreed": agreed}
                    await keyed.send(key=f"{r.tenant}/{r.task}", value={**audit, "at": r.answered_at_ms})

    heartbeat = Heartbeat(settings.home / "health" / "monitor")

    @app.agent(keyed)
    async def count(stream: Any) -> None:
        # Record by record: each record's state is written before the next is read. (Tried:
        # faust's take_events, one write per key per batch; the kill -9 test under-counted
        # with it as without it — faust's consumer skips offsets after a restart, see the
        # README — so the batching bought nothing proven and was taken out.)
        async for key, record in stream.items():
            heartbeat.beat()
            name = record["t"]
            if name == "drift":
                task = tasks[key]
                value, alert = drift_step(task, drift[key], record)
                if value is None:
                    continue
                if alert is not None:  # published before the state that records it is written
                    log.warning("drift_alarm", **alert.model_dump())
                    await alerts.send(key=task.name.encode(), value=alert.dumps())
                drift[key] = value
                export_drift(task.name, value["drift"])
            elif name == "trial":
                value, verdict = trial_step(tasks[key.split("/", 1)[1]], trials[key], record)
                if value is None:
                    continue
                if verdict is not None:  # the same: published first
                    log.info(
                        "canary_verdict", key=key, version=verdict.version, action=verdict.action, reason=verdict.reason
                    )
                    metrics.CANARY_VERDICTS.labels(verdict.tenant, verdict.task, verdict.action).inc()
                    await models.send(key=key.encode(), value=verdict.dumps())
                trials[key] = value
                export_trial(key, value["trial"])
            else:
                tables[name][key].apply(ops[name], record)
                export(name, key, tables[name][key].current())

    @app.timer(interval=5.0)
    async def republish() -> None:
        """Every key's newest window on /metrics, also after a restart (restored from the
        changelog) before any new record arrives; and the liveness heartbeat."""
        heartbeat.beat()
        for name, wrapper in tables.items():
            newest: dict[str, tuple[float, Value]] = {}
            for (key, (start, _end)), value in list(wrapper.table.data.items()):
                if key not in newest or start > newest[key][0]:
                    newest[key] = (start, value)
            for key, (_, value) in newest.items():
                export(name, key, value)
        for key, value in list(drift.data.items()):
            export_drift(key, value["drift"])
        for key, value in list(trials.data.items()):
            export_trial(key, value["trial"])

    return app


def export_drift(task: str, state: Value) -> None:
    if state.get("rate") is not None:
        metrics.ESCALATION_RATE.labels(task).set(state["rate"])
    metrics.DRIFT_ALARM.labels(task).set(int(state["firing"]))


def export_trial(key: str, state: Value) -> None:
    tenant, task = key.split("/", 1)
    canary = state.get("canary")
    metrics.CANARY_ON_TRIAL.labels(tenant, task).set(int(canary is not None and not state["judged"]))


def export(table: str, key: str, value: Value) -> None:
    """The current window's numbers on /metrics."""
    parts = key.split("/")
    if table == "routing":
        tenant, task, version = parts
        decided = value.get("decided", 0)
        metrics.MONITOR_DECIDED.labels(tenant, task, version).set(decided)
        metrics.MONITOR_ESCALATED.labels(tenant, task, version).set(value.get("escalated", 0))
        metrics.MONITOR_REREAD.labels(tenant, task, version).set(value.get("skipped", 0))
        if decided:
            metrics.MONITOR_STUDENT_SHARE.labels(tenant, task, version).set(value.get("student", 0) / decided)
    elif table == "audits":
        tenant, task, version = parts
        metrics.MONITOR_AUDITS.labels(tenant, task, version).set(value.get("audits", 0))
        if value.get("audits"):
            metrics.MONITOR_AUDITED_ACCURACY.labels(tenant, task, version).set(value["agreed"] / value["audits"])
    else:
        metrics.MONITOR_SPEND.labels(parts[0]).set(value.get("usd", 0.0))
