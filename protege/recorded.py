"""Recorded traffic: one tenant and task's events over a time range, read back from the
topics (no consumer group, committed records only) or from a folder ``protege export`` wrote.

    events = await read_events(settings, Selection("acme", "ticket-triage", since_ms, until_ms))
    traffic = events.traffic()          # per request: scored, decision, teacher answer, feedback, response
    write_export(events, Path("out/"))  # Parquet, one file per topic plus one joined table
    events = read_export(Path("out/"))  # the same events back (replay runs on them)

A request belongs to the selection when it was *received* in the range; every other event
is kept when it is about one of those requests.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiokafka.errors import KafkaConnectionError
from pydantic import BaseModel, ValidationError

from protege.agreement import consensus
from protege.errors import BrokerError, ConfigError
from protege.events import (
    Alert,
    Decision,
    Feedback,
    HarvestCase,
    ModelAnnouncement,
    Response,
    Scored,
    TeacherResult,
    now_ms,
)
from protege.kafka import Record
from protege.redact import redact
from protege.settings import Settings
from protege.state import read_all

E = TypeVar("E", bound=BaseModel)
EXPORT_VERSION = 1


class ReplayError(ConfigError):
    """Reading the record back cannot run as asked (no traffic in range, unknown version, ...)."""


@dataclass(frozen=True)
class Selection:
    tenant: str
    task: str
    since_ms: int | None = None  # received at or after
    until_ms: int | None = None  # received before
    # Raw offsets on the scored topic instead: partition -> [first, last) (no time filter then)
    offsets: dict[int, tuple[int, int]] | None = None

    def contains(self, received_at_ms: int) -> bool:
        return (self.since_ms is None or received_at_ms >= self.since_ms) and (
            self.until_ms is None or received_at_ms < self.until_ms
        )

    def holds(self, partition: int, offset: int) -> bool:
        """Whether a record of the scored topic is in the selection's offsets (all, without any)."""
        if self.offsets is None:
            return True
        span = self.offsets.get(partition)
        return span is not None and span[0] <= offset < span[1]

    def describe(self) -> str:
        if self.offsets is not None:
            spans = ", ".join(f"{p}:{a}-{b}" for p, (a, b) in sorted(self.offsets.items()))
            return f"{self.tenant}/{self.task}, scored offsets {spans}"

        def when(ms: int | None) -> str:
            return "…" if ms is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))

        return f"{self.tenant}/{self.task}, received {when(self.since_ms)} to {when(self.until_ms)}"


@dataclass
class Traffic:
    """One tenant and task's recorded requests (as scored, in arrival order) and what became of them."""

    selection: Selection
    scored: list[Scored]
    decisions: dict[str, Decision] = field(default_factory=dict)
    teacher: dict[str, TeacherResult] = field(default_factory=dict)
    feedback: dict[str, Feedback] = field(default_factory=dict)  # corrections (reviews are apart)
    responses: dict[str, Response] = field(default_factory=dict)
    sampled: set[str] = field(default_factory=set)  # in the review_rate sample (the recorded decision says so)
    # sent to people by the review surge alone (Decision.review_surge): they certify, but are not a uniform
    # draw of the range, so estimates leave them out
    surge: set[str] = field(default_factory=set)
    opinions: dict[str, dict[str, str]] = field(default_factory=dict)  # a sampled request's reviewers -> label
    reviews: dict[str, str] = field(default_factory=dict)  # the label its people settled on (a majority)

    @property
    def standin(self) -> bool:
        """Whether any teacher label here came from the offline stand-in, not a real teacher."""
        return any(r.standin for r in self.teacher.values())

    @property
    def uniform_opinions(self) -> dict[str, dict[str, str]]:
        """People's labels on the review_rate sample alone (the surge's rows left out): what estimates of
        the whole range count."""
        return {rid: said for rid, said in self.opinions.items() if rid not in self.surge}

    def served(self, request_id: str) -> str | None:
        """The answer the request got: its response's label (an ensemble's provisional answer
        replaced by the teacher's check, as its correction did), else what its decision implies."""
        response, was = self.responses.get(request_id), self.decisions.get(request_id)
        teacher = self.teacher.get(request_id)
        if response is not None and response.label is not None:
            if response.provisional and teacher is not None and teacher.mode == "check":
                return teacher.label
            return response.label
        if was is None:
            return None
        return was.student_label if was.route == "student" else (teacher.label if teacher else None)


@dataclass
class Events:
    """Every event of a selection, topic by topic, in the order they were written."""

    selection: Selection
    scored: list[Scored]
    decisions: list[Decision] = field(default_factory=list)
    teacher: list[TeacherResult] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)
    feedback: list[Feedback] = field(default_factory=list)
    harvest: list[HarvestCase] = field(default_factory=list)
    announcements: list[ModelAnnouncement] = field(default_factory=list)  # the task's, from the beginning
    alerts: list[Alert] = field(default_factory=list)  # the task's alarms, from the beginning
    unreadable: int = 0  # records on those topics that did not parse (skipped, counted)

    def traffic(self) -> Traffic:
        t = Traffic(self.selection, sorted(self.scored, key=lambda s: (s.request.received_at_ms, s.request.request_id)))
        for d in self.decisions:
            t.decisions.setdefault(d.request_id, d)
            if d.review:
                (t.surge if d.review_surge else t.sampled).add(d.request_id)
        for r in self.teacher:
            t.teacher[r.request_id] = r  # the last answer (a held request is answered once; a check after)
        for f in self.feedback:
            if f.kind == "correction":
                t.feedback[f.request_id] = f  # the latest word
            elif f.request_id in t.sampled or f.request_id in t.surge:  # the harvester refuses the others
                t.opinions.setdefault(f.request_id, {})[f.source] = f.label  # a reviewer's last word
        # Two people who split leave a request without a label until a third gives one a majority.
        t.reviews = {rid: label for rid, said in t.opinions.items() if (label := consensus(said)) is not None}
        for resp in self.responses:
            t.responses.setdefault(resp.request_id, resp)
        return t


def _parse(model: type[E], records: Iterable[Record], bad: Counter[str]) -> Iterator[E]:
    for r in records:
        if r.value is None:
            continue
        try:
            yield model.model_validate_json(r.value)
        except ValidationError:
            bad[r.topic] += 1


async def read_events(settings: Settings, selection: Selection) -> Events:
    """A selection's events from the topics. Raises ``ReplayError`` when it holds no request,
    naming the tenants and tasks that the range does hold."""
    t = settings.topics
    since = None if selection.since_ms is None else selection.since_ms - 60_000  # scored a little after arrival
    names = (t.scored, t.decisions, t.teacher_results, t.responses, t.feedback, t.harvest)
    try:  # the requests first: an unreachable broker fails once, not six times at once
        read = [await read_all(settings, names[0], since_ms=since)]
        read += await asyncio.gather(*(read_all(settings, name, since_ms=since) for name in names[1:]))
        # Which versions served, and the alarms: from the beginning (a version announced before the
        # range served in it).
        models, alerts = await asyncio.gather(read_all(settings, t.models), read_all(settings, t.alerts))
    except KafkaConnectionError as e:
        raise BrokerError(
            f"cannot reach Kafka at {settings.bootstrap_servers}: {e} (is it running? protege broker start "
            "starts the embedded one; PROTEGE_BOOTSTRAP_SERVERS says where it is)"
        ) from None
    bad: Counter[str] = Counter()
    mine = (selection.tenant, selection.task)
    scored: list[Scored] = []
    ids: set[str] = set()
    elsewhere: Counter[str] = Counter()
    for s in _parse(Scored, (r for r in read[0] if selection.holds(r.partition, r.offset)), bad):
        req = s.request
        if not selection.contains(req.received_at_ms):
            continue
        if (req.tenant, req.task) != mine:
            elsewhere[f"{req.tenant}/{req.task}"] += 1
        elif req.request_id not in ids:
            ids.add(req.request_id)
            scored.append(s)
    if not scored:
        others = ", ".join(f"{name} ({n})" for name, n in elsewhere.most_common(8))
        raise ReplayError(
            f"no recorded requests for {selection.describe()} on {t.scored}"
            + (f"; requests in that range belong to: {others}" if others else "; the range holds no requests at all")
        )

    def ours(e: Any) -> bool:
        return (e.tenant, e.task) == mine and e.request_id in ids

    return Events(
        selection,
        scored,
        decisions=[e for e in _parse(Decision, read[1], bad) if ours(e)],
        teacher=[e for e in _parse(TeacherResult, read[2], bad) if ours(e)],
        responses=[e for e in _parse(Response, read[3], bad) if ours(e)],
        feedback=[e for e in _parse(Feedback, read[4], bad) if ours(e)],
        harvest=[e for e in _parse(HarvestCase, read[5], bad) if ours(e)],
        announcements=[e for e in _parse(ModelAnnouncement, models, bad) if (e.tenant, e.task) == mine],
        alerts=[e for e in _parse(Alert, alerts, bad) if e.task == selection.task],
        unreadable=sum(bad.values()),
    )


async def recorded(settings: Settings, selection: Selection) -> Traffic:
    """A selection's traffic from the topics."""
    return (await read_events(settings, selection)).traffic()


# -- export: Parquet ----------------------------------------------------------------

LATER_TABLES = ("announcements", "alerts")  # added to export version 1 later: optional when read


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ReplayError("Parquet needs pyarrow: pip install 'protege[analysis]'") from e
    return pa, pq


def _scrub(event: E, with_text: bool) -> E:
    """The event with its text(s) PII-redacted (what the harvest keeps and the student sees)."""
    if with_text:
        return event
    if isinstance(event, Scored):
        return event.model_copy(
            update={"request": event.request.model_copy(update={"text": redact(event.request.text)})}
        )
    if isinstance(event, (TeacherResult, Feedback, HarvestCase)):
        return event.model_copy(update={"text": redact(event.text)})  # type: ignore[return-value]
    return event


def _flat(table: str, e: Any) -> dict[str, Any]:
    """The columns of one event in its table (the whole event is kept too, as ``event``)."""
    if table == "scored":
        req, out = e.request, e.student
        return {
            "request_id": req.request_id,
            "received_at_ms": req.received_at_ms,
            "sent_at_ms": req.sent_at_ms,
            "text": req.text,
            "model_version": out.model_version if out else None,
            "student_label": out.label if out else None,
            "confidence": out.confidence if out else None,
            "margin": out.margin if out else None,
            "ood": out.ood if out else None,
            "student_error": e.student_error,
            "scored_at_ms": e.scored_at_ms,
            "batch_size": e.batch_size,
        }
    if table == "decisions":
        return {
            "request_id": e.request_id,
            "verdict": e.verdict,
            "route": e.route,
            "policy": e.policy,
            "policy_version": e.policy_version,
            "model_version": e.model_version,
            "student_label": e.student_label,
            "confidence": e.signals.get("confidence"),
            "margin": e.signals.get("margin"),
            "ood": e.signals.get("ood"),
            "reasons": ",".join(e.reasons),
            "teacher_check": e.teacher_check,
            "audit": e.audit,
            "review": e.review,
            "review_surge": e.review_surge,
            "decided_at_ms": e.decided_at_ms,
        }
    if table == "teacher_results":
        u = e.usage
        return {
            "request_id": e.request_id,
            "label": e.label,
            "teacher": e.teacher,
            "standin": e.standin,
            "mode": e.mode,
            "input_tokens": u.input_tokens,
            "output_tokens": u.output_tokens,
            "cache_write_tokens": u.cache_creation_input_tokens,
            "cache_read_tokens": u.cache_read_input_tokens,
            "tokens_estimated": u.estimated,
            "cost_usd": e.cost_usd,
            "latency_ms": e.latency_ms,
            "attempts": e.attempts,
            "student_label": e.student_label,
            "agrees": e.agrees,
            "answered_at_ms": e.answered_at_ms,
        }
    if table == "responses":
        return {
            "request_id": e.request_id,
            "label": e.label,
            "route": e.route,
            "status": e.status,
            "provisional": e.provisional,
            "answered_by": e.answered_by,
            "standin": e.standin,
            "confidence": e.confidence,
            "received_at_ms": e.received_at_ms,
            "answered_at_ms": e.answered_at_ms,
            "latency_ms": e.answered_at_ms - e.received_at_ms,
        }
    if table == "feedback":
        return {"request_id": e.request_id, "label": e.label, "kind": e.kind, "source": e.source, "text": e.text}
    if table == "announcements":
        return {
            "version": e.version,
            "action": e.action,
            "source": e.source,
            "share": e.share,
            "reason": e.reason,
            "announced_at_ms": e.announced_at_ms,
        }
    if table == "alerts":
        return {"kind": e.kind, "state": e.state, "rate": e.rate, "baseline": e.baseline, "at_ms": e.at_ms}
    return {  # harvest
        "request_id": e.request_id,
        "label": e.label,
        "label_source": e.label_source,
        "reason": e.reason,
        "student_label": e.student_label,
        "model_version": e.model_version,
        "harvested_at_ms": e.harvested_at_ms,
        "text": e.text,
    }


def _joined(events: Events) -> list[dict[str, Any]]:
    """One row per request: arrival, the student, the decision, the teacher, the answer, feedback."""
    t = events.traffic()
    rows = []
    for s in t.scored:
        rid = s.request.request_id
        row = {k: v for k, v in _flat("scored", s).items() if k != "text"}
        d, tr, resp, fb = t.decisions.get(rid), t.teacher.get(rid), t.responses.get(rid), t.feedback.get(rid)
        row |= {
            "verdict": d.verdict if d else None,
            "route": d.route if d else None,
            "reasons": ",".join(d.reasons) if d else None,
            "policy_version": d.policy_version if d else None,
            "review": d.review if d else None,
            "review_surge": d.review_surge if d else None,
            "teacher_label": tr.label if tr else None,
            "teacher_cost_usd": tr.cost_usd if tr else None,
            "teacher_standin": tr.standin if tr else None,
            "answer": resp.label if resp else None,
            "answer_status": resp.status if resp else None,
            "answered_by": resp.answered_by if resp else None,
            "latency_ms": (resp.answered_at_ms - resp.received_at_ms) if resp else None,
            "feedback_label": fb.label if fb else None,
            "review_label": t.reviews.get(rid),
        }
        rows.append(row)
    return rows


def write_export(events: Events, folder: Path, *, with_text: bool = False) -> dict[str, int]:
    """One Parquet file per topic (flat columns + the whole event as JSON), ``requests.parquet``
    joined per request, and ``export.json`` (selection, counts, whether texts are raw).
    Texts are PII-redacted unless ``with_text``. Returns the row count of each file."""
    pa, pq = _pyarrow()
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    lists: dict[str, list[Any]] = {
        "scored": events.scored,
        "decisions": events.decisions,
        "teacher_results": events.teacher,
        "responses": events.responses,
        "feedback": events.feedback,
        "harvest": events.harvest,
        "announcements": events.announcements,
        "alerts": events.alerts,
    }
    for table, items in lists.items():
        rows = []
        for e in items:
            e = _scrub(e, with_text)
            rows.append(_flat(table, e) | {"event": e.model_dump_json()})
        key = [] if table in LATER_TABLES else [("request_id", pa.string())]
        schema = None if rows else pa.schema([*key, ("event", pa.string())])
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / f"{table}.parquet")
        counts[table] = len(rows)
    joined = _joined(events)
    pq.write_table(pa.Table.from_pylist(joined), folder / "requests.parquet")
    counts["requests"] = len(joined)
    meta = {
        "export_version": EXPORT_VERSION,
        "selection": asdict(events.selection),
        "texts": "raw" if with_text else "pii-redacted",
        "counts": counts,
        "unreadable_records_skipped": events.unreadable,
        "written_at_ms": now_ms(),
    }
    (folder / "export.json").write_text(json.dumps(meta, indent=2) + "\n")
    return counts


def read_export(folder: Path) -> Events:
    """The events a ``write_export`` folder holds."""
    _, pq = _pyarrow()
    meta_path = folder / "export.json"
    if not meta_path.exists():
        raise ReplayError(f"{folder} is not a protege export (no export.json): write one with protege export")
    meta = json.loads(meta_path.read_text())
    if meta.get("export_version") != EXPORT_VERSION:
        raise ReplayError(f"{folder}: export version {meta.get('export_version')}, this protege reads {EXPORT_VERSION}")

    def load(table: str, model: type[E]) -> list[E]:
        path = folder / f"{table}.parquet"
        if table in LATER_TABLES and not path.exists():
            return []  # an export written before protege kept these
        column = pq.read_table(path, columns=["event"]).column("event").to_pylist()
        return [model.model_validate_json(v) for v in column]

    sel = meta["selection"]
    offsets = sel.get("offsets")
    return Events(
        Selection(
            sel["tenant"],
            sel["task"],
            sel.get("since_ms"),
            sel.get("until_ms"),
            None if offsets is None else {int(p): (a, b) for p, (a, b) in offsets.items()},
        ),
        load("scored", Scored),
        decisions=load("decisions", Decision),
        teacher=load("teacher_results", TeacherResult),
        responses=load("responses", Response),
        feedback=load("feedback", Feedback),
        harvest=load("harvest", HarvestCase),
        announcements=load("announcements", ModelAnnouncement),
        alerts=load("alerts", Alert),
    )
