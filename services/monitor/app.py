"""The monitor: windowed statistics of the live loop, on faust-streaming tables whose state
lives in Kafka changelog topics (it survives kill -9).

    decisions       -> per tenant/task/version: decided, escalated, answered by the student
    teacher.results -> per tenant/task/version: audits and how many the teacher agreed with;
                       per tenant: teacher spend and calls (tumbling hours)

Reading is at least once (faust's exactly-once mode has open bugs and is not used): after a
crash, records after the last committed offset are read again. Counts must not inflate, so
each record is first re-keyed onto ``<prefix>protege.monitor.keyed`` with its source
coordinates (partition, offset), and each window's value keeps, per source partition, the
highest offset it has counted: a record read again, or forwarded twice, is at or below that
mark and is skipped. The mark is written in the same changelog record as the counts it
guards, so restoring the table restores both together.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import faust
import structlog

from protege import metrics
from protege.errors import InvalidEvent
from protege.events import Decision, TeacherResult
from protege.kafka import Heartbeat
from protege.serde import decode
from protege.settings import MonitorSettings

log = structlog.get_logger()
Value = dict[str, Any]


def counted(fields: Callable[[Value], dict[str, float]]) -> Callable[[Value, Value], Value]:
    """A window operation: add ``fields(record)`` to the window's value unless the record's
    source offset is at or below the window's mark for its partition (counted already)."""

    def op(window: Value, record: Value) -> Value:
        window = dict(window or {})
        marks = dict(window.get("marks", {}))
        part, offset = str(record["p"]), record["o"]
        if offset <= marks.get(part, -1):
            window["skipped"] = window.get("skipped", 0) + 1
            return window
        marks[part] = offset
        window["marks"] = marks
        for name, amount in fields(record).items():
            window[name] = window.get(name, 0) + amount
        return window

    return op


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


def make_app(settings: MonitorSettings) -> faust.App:
    prefix = settings.topic_prefix
    (settings.home / "monitor").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"{prefix}protege-monitor",
        broker=f"kafka://{settings.bootstrap_servers}",
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
    ops = {"routing": counted(decision_fields), "audits": counted(audit_fields), "spend": counted(cost_fields)}
    tables = {"routing": routing, "audits": audits, "spend": spend}

    @app.agent(decisions)
    async def route_decisions(stream: Any) -> None:
        async for event in stream.events():
            try:
                d = decode(Decision, event.value)
            except InvalidEvent as e:
                metrics.MONITOR_SKIPPED.labels("decisions", e.reason).inc()
                continue
            m = event.message
            record = {"t": "routing", "p": m.partition, "o": m.offset, "verdict": d.verdict, "route": d.route}
            await keyed.send(key=f"{d.tenant}/{d.task}/{d.model_version or 'none'}", value=record)

    @app.agent(results)
    async def route_results(stream: Any) -> None:
        async for event in stream.events():
            try:
                r = decode(TeacherResult, event.value)
            except InvalidEvent as e:
                metrics.MONITOR_SKIPPED.labels("teacher_results", e.reason).inc()
                continue
            m = event.message
            coords = {"p": m.partition, "o": m.offset}
            await keyed.send(key=f"{r.tenant}", value={"t": "spend", **coords, "usd": r.cost_usd, "mode": r.mode})
            if r.mode == "audit":
                agreed = r.student_label == r.label
                key = f"{r.tenant}/{r.task}/{r.model_version or 'none'}"
                await keyed.send(key=key, value={"t": "audits", **coords, "agreed": agreed})

    heartbeat = Heartbeat(settings.home / "health" / "monitor")

    @app.agent(keyed)
    async def count(stream: Any) -> None:
        async for key, record in stream.items():
            heartbeat.beat()
            name = record["t"]
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

    return app


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
