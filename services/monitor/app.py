"""The monitor: windowed statistics of the live loop, on faust-streaming tables whose state
lives in Kafka changelog topics (it survives kill -9).

    decisions       -> per tenant/task/version: decided, escalated, answered by the student
    teacher.results -> per tenant/task/version: audits and how many the teacher agreed with;
                       per tenant/task: teacher spend and calls (tumbling hours)

A record is counted in every hopping window that holds it (window/step of them: one
changelog write each); /metrics shows the window open longest, which covers the last
window-less-a-step to window seconds.

It also owns two verdicts, each kept in a changelog-backed table and published once it
changes:

    drift   per task, over the decisions of all its tenants (``protege.drift``): an alert
            on ``protege.alerts`` when the escalation rate rises past its band, and when it is back
    trials  per tenant/task, from protege.models + decisions + audits (``protege.canary``):
            the canary's promotion (``serve``) or rollback (``abort``) on ``protege.models``,
            with the reason and the numbers; every 5 s a tick (through the keyed topic)
            also ends a trial whose time limit has passed with no record since

Reading is at least once (faust's exactly-once mode has open bugs and is not used): after a
crash, records after the last committed offset are read again. Counts must not inflate, so
each record is first re-keyed onto ``<prefix>protege.monitor.keyed`` by its task (one keyed
record per source record: a task's windows, drift and trials live in one partition) with its
source coordinates (partition, offset), and each table's value keeps, per source partition, the
highest offset it has counted: a record read again, or forwarded twice, is at or below that
mark and is skipped. The mark is written in the same changelog record as the counts it
guards, so restoring the table restores both together. A record that changes nothing (a
decision outside a trial, a shadow verdict for drift) writes nothing: read again, it changes
nothing again. A verdict is published before the
state that records it is written: a crash between the two repeats the same verdict (same
content: it is computed from the same records) rather than losing it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import faust
import structlog
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError

from protege import metrics
from protege.canary import Trial
from protege.drift import DriftMonitor
from protege.errors import InvalidEvent
from protege.events import Alert, Decision, ModelAnnouncement, TeacherResult
from protege.kafka import Heartbeat, consumer, producer
from protege.serde import decode
from protege.settings import MonitorSettings
from protege.task import Task, load_tasks
from protege.topics import Topics

log = structlog.get_logger()
Value = dict[str, Any]
KEYED = 2  # the shape of the records on the keyed topic: one per source record, keyed by task


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
    was counted already or does not count: a shadow verdict, no student; an ``Alert`` when
    the alarm fired or resolved, else None)."""
    if record["verdict"] == "shadow" or record["version"] is None:
        return None, None
    fresh = marked(value, record)
    if fresh is None:
        return None, None
    monitor = DriftMonitor.restore(task.name, task.policy.version, task.policy.drift, fresh.get("drift"))
    alert = monitor.see(record["verdict"], record["reasons"], record["at"], record["version"])
    fresh["drift"] = monitor.state()
    return fresh, alert


def trial_step(task: Task, value: Value | None, record: Value) -> tuple[Value | None, ModelAnnouncement | None]:
    """One announcement, decision or audit into a tenant's trial: (the new state, or None
    when the record was counted already or changes nothing — a decision or audit outside a
    trial, so no state is written for it; the canary's verdict when it was reached)."""
    fresh = marked(value, record)
    if fresh is None:
        return None, None
    trial = Trial(fresh.get("trial"))
    if record["k"] == "model":
        trial.announced(ModelAnnouncement.model_validate(record["ann"]))
        fresh["trial"] = trial.state()
        return fresh, None
    if record["k"] == "decision":
        counts = trial.decided(record["version"], record["verdict"] == "escalate", record["at"])
    else:
        counts = trial.audited(record["version"], record["agreed"], record["at"])
    if not counts:
        return None, None
    verdict = trial.verdict(task.student.canary, record["at"], task.policy.targeted)
    fresh["trial"] = trial.state()
    return fresh, verdict


def trial_tick(task: Task, value: Value | None, at_ms: int) -> tuple[Value | None, ModelAnnouncement | None]:
    """The clock's turn at a tenant's trial: its verdict once the trial's time limit has passed
    at ``at_ms`` (wall time), although no record came since — a quiet tenant's trial ends
    too, so its next version can be trained. (The new state, the verdict), or (None, None)."""
    trial = Trial((value or {}).get("trial"))
    if not trial.on_trial:
        return None, None
    verdict = trial.verdict(task.student.canary, at_ms, task.policy.targeted)
    if verdict is None:
        return None, None
    return {**(value or {}), "trial": trial.state()}, verdict


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


def rekeyed(topic: str, value: bytes | None, partition: int, offset: int, topics: Topics) -> tuple[str, Value]:
    """A source record as the keyed topic's record: (its task, the record), with its source
    coordinates. Raises ``InvalidEvent`` for one that does not decode."""
    at: Value = {"p": partition, "o": offset}
    if topic == topics.decisions:
        d = decode(Decision, value)
        record = {"v": KEYED, "k": "decision", "s": "d", **at, "tenant": d.tenant, "version": d.model_version}
        return d.task, record | {"verdict": d.verdict, "route": d.route, "reasons": d.reasons, "at": d.decided_at_ms}
    if topic == topics.teacher_results:
        r = decode(TeacherResult, value)
        record = {"v": KEYED, "k": "result", "s": "r", **at, "tenant": r.tenant, "version": r.model_version}
        record |= {"usd": r.cost_usd, "mode": r.mode, "agreed": r.student_label == r.label}
        return r.task, record | {"at": r.answered_at_ms}
    ann = decode(ModelAnnouncement, value)
    record = {"v": KEYED, "k": "model", "s": "m", **at, "tenant": ann.tenant}
    return ann.task, record | {"ann": ann.model_dump(mode="json")}


class Router:
    """Reads the monitor's sources — decisions, teacher results, model announcements, all
    written in transactions — and re-keys each record onto the keyed topic by its task.

    With protege's own consumer (aiokafka, read_committed), not a faust agent: faust-streaming
    0.15.3's consumer left its commits stalled on these topics (it learns the gap a
    transaction marker leaves only from two records fetched one after the other, so a marker at
    a committed offset stops its commits there) and, restarted after a kill, sometimes skipped
    a run of their offsets (its issue #216). aiokafka steps over markers and aborted records
    itself and commits the position it reached. The keyed topic has no transactions, so faust
    reads it without either defect.

    At least once: a batch's offsets are committed after every keyed record of the batch is
    acknowledged, so a crash re-sends the records after the last commit, which the tables'
    marks skip. Order holds per source partition (one producer, idempotent), which the marks
    need."""

    def __init__(self, settings: MonitorSettings) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.group = f"{settings.topic_prefix}protege-monitor-sources"
        t = self.topics
        self.names = {t.decisions: "decisions", t.teacher_results: "teacher_results", t.models: "models"}

    async def run(self) -> None:
        cons = consumer(self.settings, *self.names, group=self.group)
        prod = producer(self.settings, linger_ms=self.settings.monitor_linger_ms, acks="all")
        await prod.start()
        try:
            await cons.start()
            try:
                while True:
                    batch = await cons.getmany(timeout_ms=1000, max_records=1000)
                    if batch:
                        await self.forward(batch, prod)
                        try:
                            await cons.commit()
                        except CommitFailedError as e:  # a rebalance: the new owner sends them again
                            log.warning("monitor_sources_commit_failed", error=str(e))
            finally:
                await cons.stop()
        finally:
            await prod.stop()

    async def forward(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]], prod: Any) -> None:
        """Every record of ``batch`` on the keyed topic, acknowledged; one that does not decode
        is counted (``protege_monitor_skipped``) and passed over."""
        sent = []
        for tp, records in batch.items():
            for m in records:
                try:
                    task, record = rekeyed(tp.topic, m.value, m.partition, m.offset, self.topics)
                except InvalidEvent as e:
                    metrics.MONITOR_SKIPPED.labels(self.names[tp.topic], e.reason).inc()
                    continue
                sent.append(await prod.send(self.topics.monitor_keyed, json.dumps(record).encode(), key=task.encode()))
        await asyncio.gather(*sent)


def credentials(settings: MonitorSettings) -> faust.types.auth.CredentialsT | None:
    """protege's Kafka security settings (``PROTEGE_SECURITY_PROTOCOL``, ``PROTEGE_SASL_*``,
    ``PROTEGE_SSL_CAFILE``) as faust's credentials: the same broker, the same way in."""
    kw = settings.kafka_kwargs()
    if "sasl_oauth_token_provider" in kw:
        return faust.OAuthCredentials(oauth_cb=kw["sasl_oauth_token_provider"], ssl_context=kw.get("ssl_context"))
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
        producer_linger=settings.monitor_linger_ms / 1000,
    )
    topics = settings.topics
    models = app.topic(topics.models, key_type=bytes, value_type=bytes, value_serializer="raw")
    alerts = app.topic(topics.alerts, key_type=bytes, value_type=bytes, value_serializer="raw")
    keyed = app.topic(  # created by the service's start (ensure_topics), co-partitioned with the tables' changelogs
        topics.monitor_keyed,
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

    @app.task
    async def route() -> None:
        """The sources, re-keyed onto the keyed topic by protege's own consumer (see ``Router``)."""
        await Router(settings).run()

    heartbeat = Heartbeat(settings.home / "health" / "monitor")

    def window(name: str, key: str, record: Value) -> None:
        tables[name][key].apply(ops[name], record)
        export(name, key, span(tables[name], key, time.time()))

    async def judge_drift(task: Task, record: Value) -> None:
        value, alert = drift_step(task, drift[task.name], record)
        if value is None:
            return
        if alert is not None:  # published before the state that records it is written
            log.warning("drift_alarm", **alert.model_dump())
            await alerts.send(key=task.name.encode(), value=alert.dumps())
        drift[task.name] = value
        export_drift(task.name, value["drift"])

    async def judge_trial(task: Task, key: str, record: Value) -> None:
        if record["k"] == "tick":
            value, verdict = trial_tick(task, trials[key], record["at"])
        else:
            value, verdict = trial_step(task, trials[key], record)
        if value is None:
            return
        if verdict is not None:  # the same: published first
            log.info("canary_verdict", key=key, version=verdict.version, action=verdict.action, reason=verdict.reason)
            metrics.CANARY_VERDICTS.labels(verdict.tenant, verdict.task, verdict.action).inc()
            await models.send(key=key.encode(), value=verdict.dumps())
        trials[key] = value
        export_trial(key, value["trial"])

    @app.agent(keyed)
    async def count(stream: Any) -> None:
        # Record by record: each record's state is written before the next is read. (Tried:
        # faust's take_events, one write per key per batch; the kill -9 test under-counted
        # with it as without it — faust's consumer skips offsets after a restart, see
        # docs/architecture.md, "The monitor" — so the batching bought nothing proven and was taken out.)
        async for name, record in stream.items():
            heartbeat.beat()
            if record.get("v") != KEYED:  # routed by an older monitor: its shape is not this one's
                metrics.MONITOR_SKIPPED.labels("keyed", "older_record").inc()
                continue
            if record["k"] == "tick":  # the clock, for the trials of this task
                if name in tasks:
                    for key in [k for k in list(trials.data) if k.endswith(f"/{name}")]:
                        await judge_trial(tasks[name], key, record)
                continue
            task, tenant, kind = tasks.get(name), record["tenant"], record["k"]
            version = f"{tenant}/{name}/{record.get('version') or 'none'}"
            if kind == "decision":
                window("routing", version, record)
            elif kind == "result":
                window("spend", f"{tenant}/{name}", record)
                if record["mode"] == "audit":
                    window("audits", version, record)
            if task is None:
                metrics.MONITOR_SKIPPED.labels("keyed", "unknown_task").inc()
                continue
            if kind == "decision":
                await judge_drift(task, record)
            if kind != "result" or record["mode"] == "audit":
                await judge_trial(task, f"{tenant}/{name}", record)

    @app.timer(interval=5.0)
    async def republish() -> None:
        """Every key's window over the last ``size`` seconds on /metrics, also after a restart
        (restored from the changelog) before any new record arrives, and as windows close;
        and the liveness heartbeat."""
        heartbeat.beat()
        now = time.time()
        for name, wrapper in tables.items():
            for key in {key for key, _ in list(wrapper.table.data)}:
                export(name, key, span(wrapper, key, now))
        for key, value in list(drift.data.items()):
            export_drift(key, value["drift"])
        on_trial = set()
        for key, value in list(trials.data.items()):
            export_trial(key, value["trial"])
            if Trial(value["trial"]).on_trial:
                on_trial.add(key.split("/", 1)[1])
        for task in sorted(on_trial):  # through the keyed topic: a table is written from its partition's stream
            await keyed.send(key=task, value={"v": KEYED, "k": "tick", "at": int(time.time() * 1000)})

    return app


def span(wrapper: Any, key: str, now: float) -> Value:
    """The value of the window that covers the last ``size`` seconds: of the hopping windows
    open at ``now``, the one that began first (faust's ``current()`` is the newest, which
    began less than a step ago and holds only that much)."""
    table = wrapper.table
    value: Value = table.data.get((key, table.window.earliest(now)), {})
    return value


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
    elif len(parts) == 2:
        metrics.MONITOR_SPEND.labels(*parts).set(value.get("usd", 0.0))
