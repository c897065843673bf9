"""``protege report``: a tenant's task over a time range, or a replay of it, for a person.

    basis = Basis.recorded(events)              # what happened; or Basis.replayed(result)
    data = build(basis, context, inputs)        # every number, JSON-ready
    page = render(data)                         # one HTML file: plots inline as SVG, no script
    write(data, Path("report.html"), Path("report.json"))

Six parts, each a plot and the numbers under it:

- the coverage curve: accuracy against student share on the version's golden set
  (``held_out.npz``), with its certified operating point, the target and the share served;
- accuracy against people on the review sample (``Task.review_rate``): the answers served,
  the student's and the teacher's, each against a person's label, with 95% intervals;
- student share and escalation rate over time, with the drift band and the alarms;
- cost per 1,000 requests against all-teacher over time, and the savings to date;
- the break-even horizon, N·c_t > D + T + M + N·((1-q)·c_s + q·c_r): q, c_t and c_r from
  the events, c_s from the student's throughput measured on the recorded texts and a
  stated price per core-hour (per GPU-hour where the student ran on a GPU, or at a GPU
  throughput stated as an input); D, T, M are inputs and shown as such;
- the versions timeline: trained, gated, promoted, pinned, rolled back, unpinned.

Nothing here reads a request's text into the page: a report is mailed around.
"""

from __future__ import annotations

import html
import io
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from protege.audits import against_golden, live_accuracy
from protege.certify import through_gates
from protege.costs import gpu_request_usd
from protege.drift import DriftMonitor
from protege.events import Alert, ModelAnnouncement
from protege.recorded import Events, Selection
from protege.registry import Version
from protege.replay import Result, Reviewed, against_people, wilson
from protege.serving import Serving
from protege.student.manifest import HELD_OUT
from protege.task import Task

REPORT_VERSION = 1
NICE_BUCKETS_S = (1, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)


@dataclass(frozen=True)
class Inputs:
    """What a report cannot measure, shown as inputs: the fixed costs of distilling (the
    seeds' D, T, M) and the price of the student's compute."""

    distill_usd: float = 1000.0  # D: labelling and building the student
    train_usd: float = 500.0  # T: training runs
    maintain_usd: float = 500.0  # M: keeping it running (retrains, on-call) over the horizon
    core_hour_usd: float = 0.05  # one CPU core for an hour
    buckets: int = 24  # time buckets over the range
    gpu_hour_usd: float = 3.0  # one GPU for an hour: prices c_s where the student scores on a GPU
    gpu_requests_per_s: float | None = (
        None  # the student's throughput on the serving GPU, where it was measured elsewhere
    )

    @property
    def fixed_usd(self) -> float:
        return self.distill_usd + self.train_usd + self.maintain_usd


@dataclass(frozen=True)
class Throughput:
    """The student measured on recorded texts through the scorer's batched path."""

    version: str
    requests: int
    seconds: float
    threads: int
    batch: int
    device: str = "cpu"  # cpu | cuda: the provider the session really ran on

    @property
    def per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else math.inf


def student_cost(th: Throughput | None, inputs: Inputs) -> tuple[float | None, str]:
    """c_s, the student's compute for one request, and where it comes from: a GPU-hour at the
    GPU throughput stated as an input; else the price of the hardware the throughput was measured
    on (a GPU-hour for a CUDA session, the session's cores' core-hours for a CPU one)."""
    if inputs.gpu_requests_per_s is not None:
        return gpu_request_usd(inputs.gpu_hour_usd, inputs.gpu_requests_per_s)
    if th is None:
        return None, "no student throughput measured"
    if th.device == "cuda":
        return (
            inputs.gpu_hour_usd / 3600 / th.per_s,
            "GPU-hour price (input) / requests per GPU-hour measured on the recorded texts",
        )
    return (
        inputs.core_hour_usd * th.threads / 3600 / th.per_s,
        "core-hour price (input) / requests per core-hour measured on the recorded texts",
    )


@dataclass(frozen=True)
class Point:
    """One request as the report sees it."""

    at_ms: int
    route: str  # student | teacher
    verdict: str  # accept | escalate | shadow
    reasons: tuple[str, ...]
    teacher_usd: float  # paid (or, for a replayed escalation with no answer on record, estimated)
    version: str | None


@dataclass
class Basis:
    """The requests a report is about: recorded decisions, or a replay's."""

    kind: str  # recorded | replay
    selection: Selection
    points: list[Point]
    teacher_call_usd: float | None  # mean cost of one teacher answer on record (c_t)
    standin: bool
    version: str | None  # the version the coverage curve is drawn for
    candidate: str | None = None
    estimated_calls: int = 0  # replayed escalations priced at c_t (no answer on record)
    undecided: int = 0  # recorded requests with no decision on record (left out)
    audit_usd: float = 0.0  # teacher spend on audits (part of the points' teacher_usd)
    live: dict[str, dict[str, Any]] = field(default_factory=dict)  # version -> live accuracy from audits
    sampled: int = 0  # requests in the review sample (Task.review_rate; not the surge's extra rows)
    reviewed: list[Reviewed] = field(default_factory=list)  # those a person labelled, as this basis answers them
    opinions: dict[str, dict[str, str]] = field(default_factory=dict)  # sampled request -> reviewer -> label

    @classmethod
    def recorded(cls, events: Events) -> Basis:
        traffic = events.traffic()
        paid: dict[str, float] = {}
        for r in events.teacher:
            paid[r.request_id] = paid.get(r.request_id, 0.0) + r.cost_usd
        answers = [r.cost_usd for r in events.teacher if r.mode == "answer"]
        points, undecided, reviewed = [], 0, []
        for s in traffic.scored:
            rid = s.request.request_id
            d = traffic.decisions.get(rid)
            if d is None:
                undecided += 1
                continue
            if rid in traffic.reviews and rid in traffic.sampled:  # the uniform draw alone
                teacher = traffic.teacher.get(rid)
                reviewed.append(
                    Reviewed(
                        traffic.reviews[rid],
                        traffic.served(rid),
                        d.route,
                        teacher.label if teacher else None,
                        d.student_label,
                        d.model_version,
                    )
                )
            points.append(
                Point(
                    s.request.received_at_ms, d.route, d.verdict, tuple(d.reasons), paid.get(rid, 0.0), d.model_version
                )
            )
        sel = traffic.selection
        return cls(
            "recorded",
            sel,
            points,
            sum(answers) / len(answers) if answers else None,
            traffic.standin,
            _last_version(points),
            undecided=undecided,
            audit_usd=sum(r.cost_usd for r in events.teacher if r.mode == "audit"),
            live=live_accuracy(events.teacher, sel.tenant, sel.task),
            sampled=len(traffic.sampled),
            reviewed=reviewed,
            opinions=traffic.uniform_opinions,
        )

    @classmethod
    def replayed(cls, result: Result) -> Basis:
        t = result.traffic
        answers = [r.cost_usd for r in t.teacher.values() if r.mode == "answer"]
        per_call = sum(answers) / len(answers) if answers else None
        points, estimated = [], 0
        for row in result.rows:
            usd = 0.0
            if row.route == "teacher" or row.teacher_check:
                if row.teacher_cost_usd is not None:
                    usd = row.teacher_cost_usd
                else:
                    usd, estimated = per_call or 0.0, estimated + 1
            reasons = tuple(r for r in row.reasons.split(",") if r)
            points.append(Point(row.received_at_ms, row.route, row.verdict, reasons, usd, row.version))
        candidate = result.candidate
        version = candidate.student.version if candidate.student is not None else _last_version(points)
        audits = [r for r in result.rows if r.audit]
        return cls(
            "replay",
            t.selection,
            points,
            per_call,
            t.standin,
            version,
            candidate.describe(),
            estimated_calls=estimated,
            audit_usd=sum(r.teacher_cost_usd or per_call or 0.0 for r in audits),
            live=live_accuracy(t.teacher.values(), t.selection.tenant, t.selection.task),
            sampled=sum(r.sampled for r in result.rows),
            reviewed=[
                Reviewed(r.review_label, r.answer, r.route, r.teacher_label, r.student_label, r.version)
                for r in result.rows
                if r.review_label is not None and r.sampled and not r.in_sample
            ],
            opinions=t.uniform_opinions,
        )


def _last_version(points: Sequence[Point]) -> str | None:
    return next((p.version for p in reversed(points) if p.version), None)


@dataclass
class Context:
    """What the report reads beside the requests: the task, its versions, the announcements
    and alerts on record, and the student's measured throughput."""

    task: Task
    versions: list[Version] = field(default_factory=list)
    announcements: list[ModelAnnouncement] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    throughput: Throughput | None = None


# -- the numbers ----------------------------------------------------------------------


def operating(task: Task, version: Version) -> dict[str, Any] | None:
    """The thresholds the policy holds this version to: the task's own, or with a target
    accuracy the version's certified rule for it (None: it has none, the teacher answers)."""
    policy = task.policy
    if not policy.targeted:
        t = policy.thresholds
        return {"source": "task thresholds", "min_confidence": t.min_confidence, "max_ood": t.max_ood}
    rule = version.manifest.acceptance
    if rule is None or not policy.certified_by(rule):
        return None
    return {
        "source": "certified rule",
        "min_confidence": rule.min_confidence,
        "max_ood": rule.max_ood,
        "max_oos_probability": rule.max_oos_probability,
        "oos_past_ood_gate": rule.oos_past_ood_gate,
    }


def coverage_curve(folder: Path, target: float | None, rule: dict[str, Any] | None) -> dict[str, Any] | None:
    """Accuracy against share accepted on a version's golden set (confidence thresholds from
    0 to 0.99), the operating point's OOD gate held; the margin threshold is not applied
    (the golden set keeps confidence and OOD)."""
    path = folder / HELD_OUT
    if not path.exists():
        return None
    with np.load(path) as held:
        conf, ood, correct = held["confidence"], held["ood"], held["correct"].astype(bool)
        p_oos = held.get("oos_probability")
        answered_oos = held["answered_oos"].astype(bool) if "answered_oos" in held else None
    gate = rule.get("max_oos_probability") if rule else None
    passes = through_gates(  # the operating point's gates, as the verifier holds them
        ood,
        rule["max_ood"] if rule else math.inf,
        p_oos,
        gate,
        answered_oos,
        oos_past_ood_gate=bool(rule and rule.get("oos_past_ood_gate")),
    )
    points = []
    for t in np.round(np.arange(0.0, 1.0, 0.01), 2):
        accepted = (conf >= t) & passes
        if accepted.any():
            points.append(
                {
                    "min_confidence": float(t),
                    "coverage": round(float(accepted.mean()), 4),
                    "accuracy": round(float(correct[accepted].mean()), 4),
                }
            )
    operating = None
    if rule:
        accepted = (conf >= rule["min_confidence"]) & passes
        operating = {
            "source": rule["source"],
            "min_confidence": rule["min_confidence"],
            "max_ood": rule["max_ood"],
            "max_oos_probability": gate,
            "oos_past_ood_gate": bool(rule.get("oos_past_ood_gate")),
            "coverage": round(float(accepted.mean()), 4),
            "accuracy": round(float(correct[accepted].mean()), 4) if accepted.any() else None,
        }
    return {"cases": len(conf), "target_accuracy": target, "points": points, "operating_point": operating}


def bucket_seconds(span_ms: int, buckets: int) -> int:
    """A round bucket width that cuts the span into about ``buckets`` pieces."""
    want = max(1.0, span_ms / 1000 / max(1, buckets))
    return next((b for b in NICE_BUCKETS_S if b >= want), NICE_BUCKETS_S[-1])


def over_time(points: Sequence[Point], width_s: int, c_t: float | None, c_s: float | None) -> list[dict[str, Any]]:
    """Per bucket: requests, student share, escalation rate, cost per 1,000 against all-teacher."""
    width = width_s * 1000
    groups: dict[int, list[Point]] = {}
    for p in points:
        groups.setdefault(p.at_ms // width * width, []).append(p)
    rows, saved = [], 0.0
    for start in sorted(groups):
        ps = groups[start]
        n = len(ps)
        decided = [p for p in ps if p.verdict != "shadow"]
        student = sum(p.route == "student" for p in ps)
        teacher_usd = sum(p.teacher_usd for p in ps)
        cost = teacher_usd + (student * c_s if c_s is not None else 0.0)
        row: dict[str, Any] = {
            "start_ms": start,
            "requests": n,
            "student_share": round(student / n, 4),
            "escalation_rate": round(sum(p.verdict == "escalate" for p in decided) / len(decided), 4)
            if decided
            else None,
            "teacher_usd": round(teacher_usd, 6),
            "cost_per_1k_usd": round(1000 * cost / n, 4),
            "all_teacher_per_1k_usd": None if c_t is None else round(1000 * c_t, 4),
        }
        if c_t is not None:
            saved += n * c_t - cost
            row["savings_to_date_usd"] = round(saved, 6)
        rows.append(row)
    return rows


def drift(points: Sequence[Point], task: Task, recorded_alerts: Sequence[Alert], kind: str) -> dict[str, Any]:
    """The task's drift band, and its alarms: on record for recorded traffic (the monitor
    watches a task across tenants), raised by the same drift monitor over a replay."""
    monitor = DriftMonitor(task.name, task.policy.version, task.policy.drift)
    raised = [a for p in points if (a := monitor.see(p.verdict, p.reasons, p.at_ms, p.version)) is not None]
    alarms = raised if kind == "replay" else list(recorded_alerts)
    return {
        "window": task.policy.drift.window,
        "band": task.policy.drift.band,
        "baseline": monitor.baseline,
        "baseline_source": "task"
        if task.policy.drift.baseline is not None
        else "learned (first full window, lower as the student improved)",
        "alarms": [a.model_dump(mode="json") for a in alarms],
        "alarms_source": "raised by the drift monitor over the replayed decisions"
        if kind == "replay"
        else "on record (protege.alerts; the monitor watches a task across all its tenants)",
    }


def breakeven(
    points: Sequence[Point],
    c_t: float | None,
    c_s: float | None,
    inputs: Inputs,
    per_day: float | None,
    c_s_source: str = "core-hour price (input) / requests per core-hour measured on the recorded texts",
) -> dict[str, Any]:
    """N·c_t > D + T + M + N·((1-q)·c_s + q·c_r), solved for N."""
    n = len(points)
    teacher_routed = sum(p.route == "teacher" for p in points)
    q = teacher_routed / n if n else None
    spent = sum(p.teacher_usd for p in points)
    c_r = spent / teacher_routed if teacher_routed else (0.0 if spent == 0 else None)
    out: dict[str, Any] = {
        "formula": "N·c_t > D + T + M + N·((1-q)·c_s + q·c_r)",
        "q_teacher_share": None if q is None else round(q, 4),
        "c_t_usd": c_t,
        "c_t_source": "mean cost of a teacher answer on record",
        "c_r_usd": c_r,
        "c_r_source": "teacher spend per request routed to the teacher (ensemble checks included)",
        "c_s_usd": c_s,
        "c_s_source": c_s_source,
        "inputs": {**asdict(inputs), "fixed_usd": inputs.fixed_usd},
        "requests_per_day": None if per_day is None else round(per_day, 1),
        "requests_per_day_source": "measured from the range's arrivals",
    }
    if None in (q, c_t, c_s, c_r):
        out.update(saving_per_request_usd=None, breakeven_requests=None, breakeven_days=None)
        out["why_not"] = "no teacher answer on record" if c_t is None else "no student throughput measured"
        return out
    assert q is not None and c_t is not None and c_s is not None and c_r is not None
    per_request = (1 - q) * c_s + q * c_r
    saving = c_t - per_request
    requests = math.ceil(inputs.fixed_usd / saving) if saving > 1e-9 * c_t else None  # not float noise
    out.update(
        cost_per_request_usd=per_request,
        saving_per_request_usd=saving,
        breakeven_requests=requests,
        breakeven_days=None if requests is None or not per_day else round(requests / per_day, 2),
    )
    if requests is None:
        out["why_not"] = "the student saves nothing per request at this share"
    return out


def timeline(
    versions: Sequence[Version], announcements: Sequence[ModelAnnouncement], tenant: str, task: str
) -> list[dict[str, Any]]:
    """Trained and gated (from the registry's manifests), then what the announcements on
    ``protege.models`` did, applied in order as the scorers apply them."""
    entries: list[dict[str, Any]] = []
    for v in versions:
        m = v.manifest
        at = int(datetime.strptime(m.created_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp() * 1000)
        gates = m.gates
        entries.append(
            {
                "at_ms": at,
                "version": v.name,
                "event": "trained" if gates.passed else "gated out",
                "by": "trainer",
                "detail": f"{m.recipe.get('kind', '?')} recipe on {m.data.cases} cases; golden accuracy "
                f"{m.metrics.get('golden_accuracy', float('nan')):.3f}, coverage {m.metrics.get('golden_coverage', 0):.3f}; "
                + ("gates passed" if gates.passed else "failed: " + "; ".join(gates.failed)),
            }
        )
    serving = Serving()
    for ann in announcements:
        if (ann.tenant, ann.task) != (tenant, task):
            continue
        before = serving.history(tenant, task)
        was = serving.serving(tenant, task)
        applied = serving.apply(ann)
        if ann.action == "unpin":
            event, detail = "unpinned", "the trainer's next version serves"
        elif ann.action == "abort":
            event, detail = "rolled back", ann.reason or "its trial ended"
        elif not applied:
            event, detail = "held back", f"{was.version if was else '?'} is pinned by an operator"
        elif ann.action == "canary" and serving.canary(tenant, task) is not None:
            event, detail = "canary", ann.reason or f"on trial for {ann.share:.0%} of requests"
        elif ann.source == "trainer":
            event, detail = "promoted", ann.reason or "passed its gates; serves"
        elif ann.pin and ann.version in before[:-1] and was is not None and was.version != ann.version:
            event, detail = "rolled back", f"from {was.version}, pinned"
        elif ann.pin:
            event, detail = "pinned", "serves; the trainer's versions are held back"
        else:
            event, detail = "promoted", "by an operator"
        entries.append(
            {"at_ms": ann.announced_at_ms, "version": ann.version, "event": event, "by": ann.source, "detail": detail}
        )
    return sorted(entries, key=lambda e: e["at_ms"])


def build(basis: Basis, context: Context, inputs: Inputs) -> dict[str, Any]:
    """Every number of the report, JSON-ready."""
    points = basis.points
    task = context.task
    sel = basis.selection
    c_t = basis.teacher_call_usd
    th = context.throughput
    c_s, c_s_source = student_cost(th, inputs)
    first = min((p.at_ms for p in points), default=0)
    last = max((p.at_ms for p in points), default=0)
    span_days = (last - first) / 86_400_000
    per_day = len(points) / span_days if span_days > 0 else None
    width = bucket_seconds(last - first, inputs.buckets)
    version = next((v for v in context.versions if v.name == basis.version), None)
    curve = None
    if version is not None:
        # a relative target has no accuracy line to draw (target_accuracy is None then)
        target = task.policy.target_accuracy or version.manifest.acceptance_target.target_accuracy
        curve = coverage_curve(version.folder, target, operating(task, version))
    n = len(points)
    student = sum(p.route == "student" for p in points)
    spent = sum(p.teacher_usd for p in points)
    cost = spent + (student * c_s if c_s is not None else 0.0)
    live = basis.live.get(basis.version or "")
    return {
        "report_version": REPORT_VERSION,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kind": basis.kind,
        "selection": asdict(sel),
        "range": {"first_ms": first, "last_ms": last},
        "candidate": basis.candidate,
        "policy": {"name": task.policy.name, "version": task.policy.version},
        "teacher": {
            "source": "OFFLINE STAND-IN (answers from labelled data)" if basis.standin else "teacher",
            "standin": basis.standin,
        },
        "totals": {
            "requests": n,
            "undecided": basis.undecided,
            "student_answered": student,
            "student_share": round(student / n, 4) if n else None,
            "teacher_calls_usd": round(spent, 6),
            "audit_usd": round(basis.audit_usd, 6),
            "estimated_teacher_calls": basis.estimated_calls,
            "cost_usd": round(cost, 6),
            "all_teacher_usd": None if c_t is None else round(n * c_t, 6),
            "savings_to_date_usd": None if c_t is None else round(n * c_t - cost, 6),
        },
        "coverage": {
            "version": basis.version,
            "curve": curve,
            "live_accuracy": live,
            "against_golden": None if version is None else against_golden(live, version.manifest.metrics),
            "served_share": round(
                sum(p.route == "student" for p in points if p.version == basis.version)
                / max(1, sum(p.version == basis.version for p in points)),
                4,
            )
            if basis.version
            else None,
        },
        "over_time": {"bucket_s": width, "buckets": over_time(points, width, c_t, c_s)},
        "drift": drift(points, task, context.alerts, basis.kind),
        "breakeven": breakeven(points, c_t, c_s, inputs, per_day, c_s_source),
        "people": against_people(basis.reviewed, basis.sampled, task.answers, basis.opinions),
        "throughput": None if th is None else {**asdict(th), "per_s": round(th.per_s, 1)},
        "versions": timeline(context.versions, context.announcements, sel.tenant, sel.task),
    }


# -- the page -------------------------------------------------------------------------

PALETTE = {"student": "#2b6cb0", "teacher": "#c05621", "band": "#cbd5e0", "good": "#2f855a", "bad": "#c53030"}


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "protege", "svg.fonttype": "none", "font.size": 10})
    fig, ax = plt.subplots(figsize=(7.5, 3.4), dpi=96)
    ax.grid(alpha=0.3)
    return fig, ax


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.tight_layout()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return re.sub(r"\s*<metadata>.*?</metadata>", "", text[text.index("<svg") :], flags=re.S)


def _when(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _empty(ax: Any, why: str) -> None:
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="#4a5568")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_coverage(data: dict[str, Any]) -> str:
    fig, ax = _figure()
    cov = data["coverage"]
    curve = cov["curve"]
    if curve is None or not curve["points"]:
        _empty(ax, "no golden set on record for this version")
        return _svg(fig)
    xs = [p["coverage"] for p in curve["points"]]
    ys = [p["accuracy"] for p in curve["points"]]
    ax.plot(xs, ys, color=PALETTE["student"], label=f"{cov['version']} on {curve['cases']} golden cases")
    if curve["target_accuracy"] is not None:
        ax.axhline(curve["target_accuracy"], color=PALETTE["bad"], ls="--", lw=1, label="target accuracy")
    op = curve["operating_point"]
    if op and op["accuracy"] is not None:
        ax.plot(
            [op["coverage"]],
            [op["accuracy"]],
            "o",
            color=PALETTE["teacher"],
            ms=8,
            label=f"operating point ({op['source']})",
        )
    if cov["served_share"] is not None:
        ax.axvline(cov["served_share"], color=PALETTE["good"], ls=":", lw=1.5, label="share it answered")
    ax.set_xlabel("student share (accepted / all)")
    ax.set_ylabel("accuracy of accepted")
    ax.set_xlim(0, 1.02)
    ax.legend(loc="lower left", fontsize=8)
    return _svg(fig)


BLIND_SPOT_ROWS = 100  # reviewed rows on which a teacher never wrong is worth a warning
PEOPLE_ROWS = (  # (key, what, colour)
    ("served", "answers served", "good"),
    ("student_answered", "served by the student", "student"),
    ("teacher_answered", "served by the teacher", "teacher"),
    ("teacher", "the teacher, on all", "teacher"),
    ("student", "the student's label, on all", "student"),
)


def plot_people(data: dict[str, Any]) -> str:
    fig, ax = _figure()
    people = data["people"]
    rows = [] if people is None else [(what, people[key], c) for key, what, c in PEOPLE_ROWS if people[key]["n"]]
    if not rows:
        why = "no review sample in this range (review_rate)" if people is None else "no reviewed request yet"
        _empty(ax, why)
        return _svg(fig)
    ys = range(len(rows))[::-1]
    for y, (_, acc, colour) in zip(ys, rows, strict=True):
        lo, hi = acc["interval95"]
        ax.barh(y, acc["accuracy"], color=PALETTE[colour], height=0.6)
        ax.errorbar(
            acc["accuracy"], y, xerr=[[acc["accuracy"] - lo], [hi - acc["accuracy"]]], color="#1a202c", capsize=4
        )
    ax.set_yticks(list(ys), [f"{what}\n{100 * acc['accuracy']:.1f}% of {acc['n']:,}" for what, acc, _ in rows])
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("accuracy against people's labels (95% interval)")
    return _svg(fig)


def plot_share(data: dict[str, Any]) -> str:
    fig, ax = _figure()
    rows = data["over_time"]["buckets"]
    if not rows:
        _empty(ax, "no requests in range")
        return _svg(fig)
    xs = [_when(r["start_ms"]) for r in rows]
    ax.plot(xs, [r["student_share"] for r in rows], color=PALETTE["student"], marker=".", label="student share")
    esc = [r["escalation_rate"] for r in rows]
    ax.plot(
        xs, [math.nan if e is None else e for e in esc], color=PALETTE["teacher"], marker=".", label="escalation rate"
    )
    d = data["drift"]
    if d["baseline"] is not None:
        lo, hi = d["baseline"], min(1.0, d["baseline"] + d["band"])  # an alarm is a rise past the band
        ax.axhspan(lo, hi, color=PALETTE["band"], alpha=0.5, label="drift band (escalation)")
    for a in d["alarms"]:
        colour = PALETTE["bad"] if a["state"] == "firing" else PALETTE["good"]
        ax.axvline(_when(a["at_ms"]), color=colour, lw=1.2, ls="--")
    if d["alarms"]:
        ax.plot([], [], color=PALETTE["bad"], ls="--", label="alarm fired / resolved")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("share of requests")
    ax.legend(loc="best", fontsize=8)
    fig.autofmt_xdate()
    return _svg(fig)


def plot_cost(data: dict[str, Any]) -> str:
    fig, ax = _figure()
    rows = data["over_time"]["buckets"]
    if not rows or rows[0]["all_teacher_per_1k_usd"] is None:
        _empty(ax, "no teacher answer on record: cost cannot be compared")
        return _svg(fig)
    xs = [_when(r["start_ms"]) for r in rows]
    ax.plot(xs, [r["cost_per_1k_usd"] for r in rows], color=PALETTE["student"], marker=".", label="protege per 1k")
    ax.plot(
        xs, [r["all_teacher_per_1k_usd"] for r in rows], color=PALETTE["teacher"], ls="--", label="all-teacher per 1k"
    )
    ax.set_ylabel("USD per 1,000 requests")
    ax.set_ylim(bottom=0)
    right = ax.twinx()
    right.plot(xs, [r["savings_to_date_usd"] for r in rows], color=PALETTE["good"], lw=1, label="savings to date")
    right.set_ylabel("savings to date, USD")
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="best", fontsize=8)
    fig.autofmt_xdate()
    return _svg(fig)


def plot_breakeven(data: dict[str, Any]) -> str:
    fig, ax = _figure()
    b = data["breakeven"]
    if b.get("breakeven_requests") is None:
        _empty(ax, f"no break-even: {b.get('why_not', '')}")
        return _svg(fig)
    n_star = b["breakeven_requests"]
    xs = np.linspace(0, 2 * n_star, 50)
    ax.plot(xs, xs * b["c_t_usd"], color=PALETTE["teacher"], label="all-teacher: N·c_t")
    fixed = b["inputs"]["fixed_usd"]
    ax.plot(xs, fixed + xs * b["cost_per_request_usd"], color=PALETTE["student"], label="distilled: D+T+M + N·(…)")
    ax.axvline(n_star, color=PALETTE["good"], ls=":", label=f"break-even: {n_star:,} requests")
    ax.set_xlabel("requests N")
    ax.set_ylabel("USD")
    ax.legend(loc="upper left", fontsize=8)
    return _svg(fig)


def plot_versions(data: dict[str, Any]) -> str:
    fig, ax = _figure()
    entries = data["versions"]
    if not entries:
        _empty(ax, "no versions on record")
        return _svg(fig)
    names = sorted({e["version"] for e in entries})
    marks = {
        "trained": ("s", PALETTE["student"]),
        "gated out": ("x", PALETTE["bad"]),
        "promoted": ("^", PALETTE["good"]),
        "pinned": ("D", PALETTE["teacher"]),
        "rolled back": ("v", PALETTE["bad"]),
        "canary": ("P", PALETTE["teacher"]),
        "held back": ("o", "#718096"),
        "unpinned": ("d", "#718096"),
    }
    for event, (marker, colour) in marks.items():
        mine = [e for e in entries if e["event"] == event]
        if mine:
            ax.scatter(
                [_when(e["at_ms"]) for e in mine],
                [names.index(e["version"]) for e in mine],
                marker=marker,
                color=colour,
                s=50,
                label=event,
                zorder=3,
            )
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(-0.7, len(names) - 0.3)
    ax.legend(loc="best", fontsize=8)
    fig.autofmt_xdate()
    return _svg(fig)


PLOTS = (
    ("coverage", "Accuracy against student share", plot_coverage),
    ("people", "Accuracy against people: the review sample", plot_people),
    ("share", "Student share and escalation rate over time", plot_share),
    ("cost", "Cost per 1,000 requests against all-teacher", plot_cost),
    ("breakeven", "Break-even horizon", plot_breakeven),
    ("versions", "Versions", plot_versions),
)

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;color:#1a202c;max-width:980px;margin:24px auto;padding:0 16px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 6px} .sub{color:#4a5568}
.standin{background:#fffbeb;border:2px solid #c05621;padding:8px 12px;margin:12px 0;font-weight:600}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0} .card{border:1px solid #e2e8f0;border-radius:6px;padding:8px 12px}
.card b{display:block;font-size:18px} figure.plot{margin:6px 0} figure.plot svg{width:100%;height:auto}
table{border-collapse:collapse;font-size:13px;margin:6px 0} td,th{border-bottom:1px solid #e2e8f0;padding:3px 8px;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums} .input{color:#6b46c1}
.warn{border-left:4px solid #c05621;padding-left:8px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _usd(x: float | None, digits: int = 4) -> str:
    return "—" if x is None else f"${x:,.{digits}f}"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _ts(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + "Z"


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        cells = "".join(
            f'<td class="n">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>" for i, c in enumerate(row)
        )
        out.append(f"<tr>{cells}</tr>")
    return "".join(out) + "</table>"


def render(data: dict[str, Any]) -> str:
    """The page: self-contained (inline CSS and SVG, no script, no fetch)."""
    sel = data["selection"]
    t = data["totals"]
    b = data["breakeven"]
    title = f"protege report: {sel['tenant']}/{sel['task']}" + (" (replay)" if data["kind"] == "replay" else "")
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<div class='sub'>requests received {_e(_ts(data['range']['first_ms']))} to {_e(_ts(data['range']['last_ms']))}; "
        f"policy {_e(data['policy']['name'])} {_e(data['policy']['version'])}; generated {_e(data['generated_at'])}</div>",
    ]
    if data["candidate"]:
        parts.append(f"<div class='sub'>replayed with {_e(data['candidate'])}</div>")
    if data["teacher"]["standin"]:
        parts.append(
            "<div class='standin'>Teacher labels and costs here come from the OFFLINE STAND-IN, which answers "
            "from labelled data; they are not a real teacher's.</div>"
        )
    cards = [
        ("requests", f"{t['requests']:,}"),
        ("student share", _pct(t["student_share"])),
        ("teacher spend", _usd(t["teacher_calls_usd"])),
        ("all-teacher", _usd(t["all_teacher_usd"])),
        ("savings to date", _usd(t["savings_to_date_usd"])),
        ("break-even", "—" if b.get("breakeven_requests") is None else f"{b['breakeven_requests']:,} requests"),
    ]
    parts.append(
        "<div class='cards'>" + "".join(f"<div class='card'>{_e(k)}<b>{_e(v)}</b></div>" for k, v in cards) + "</div>"
    )
    notes = {
        "coverage": _coverage_note(data),
        "people": _people_note(data),
        "share": _drift_note(data),
        "cost": _cost_note(data),
        "breakeven": _breakeven_note(data),
        "versions": _versions_note(data),
    }
    for key, heading, plot in PLOTS:
        parts.append(f"<h2>{_e(heading)}</h2><figure class='plot' id='plot-{key}'>{plot(data)}</figure>{notes[key]}")
    parts.append("</body></html>")
    return "\n".join(parts)


def _coverage_note(data: dict[str, Any]) -> str:
    cov = data["coverage"]
    curve = cov["curve"]
    if cov["version"] is None:
        return "<p class='sub'>No student scored a request in this range.</p>"
    if curve is None:
        return f"<p class='sub'>{_e(cov['version'])} is not in this registry or kept no golden set (held_out.npz).</p>"
    op = curve["operating_point"]
    rule = (
        f"operating point ({op['source']}): confidence ≥ {op['min_confidence']}, OOD ≤ {op['max_ood']:.4f}"
        + (" (answers oos past it)" if op.get("oos_past_ood_gate") else "")
        + ", "
        + ("" if op.get("max_oos_probability") is None else f"P(oos) ≤ {op['max_oos_probability']:g} in scope, ")
        + f"accepting {_pct(op['coverage'])} of golden cases at {_pct(op['accuracy'])}"
        + (" (its margin threshold is not applied here)" if op["source"] == "task thresholds" else "")
        if op
        else "no certified rule for the policy's target: the teacher answers every request this version scores"
    )
    live = cov["live_accuracy"]
    audits = (
        f" Live accuracy from {live['audits']} audits: {_pct(live['accuracy'])} "
        f"[{_pct(live['interval95'][0])}-{_pct(live['interval95'][1])}]."
        if live
        else " No audits on record (policy.audit_rate): its live accuracy is not measured."
    )
    if check := cov.get("against_golden"):
        audits += (
            f" The golden rows its rule accepts predicted {_pct(check['predicted'])} ({check['golden_rows']} rows)"
        )
        audits += (
            f": the audits find surely less (by {-check['difference']:.1%}; upper bound {check['high']:+.3f} at "
            f"{check['confidence']:.0%}). The golden rows are easier than this traffic, and the certified "
            "guarantee rests on them: review a sample of the traffic (review_rate) to certify on it."
            if check["easier"]
            else "; the audits are consistent with it."
        )
    return (
        f"<p class='sub'>{_e(cov['version'])} on its golden set ({curve['cases']} cases it never trained on); "
        f"target {_pct(curve['target_accuracy'])}; {_e(rule)}; in this range it answered {_pct(cov['served_share'])} "
        f"of the requests it scored.{_e(audits)}</p>"
    )


def _people_note(data: dict[str, Any]) -> str:
    people = data["people"]
    if people is None:
        return (
            "<p class='sub'>No request in this range is in a review sample (the task's review_rate is 0): "
            "accuracy here is measured against the teacher only.</p>"
        )
    head = (
        f"<p class='sub'>{people['sampled']:,} requests in the review sample (a uniform draw of all traffic by "
        f"request id), {people['reviewed']:,} labelled by a person, {people['pending']:,} waiting "
        "(protege review pull). People's labels are the truth here; the teacher is measured too.</p>"
    )
    rows = []
    for key, what, _ in PEOPLE_ROWS:
        acc = people[key]
        rows.append((what, acc["n"], *_interval(acc)))
    for version, acc in people["versions"].items():
        rows.append((f"served by {version}", acc["n"], *_interval(acc)))
    table = _table(("", "reviewed", "accuracy", "95% interval"), rows, (1, 2, 3))
    teacher = people["teacher"]
    if teacher["n"] >= BLIND_SPOT_ROWS and teacher["correct"] == teacher["n"]:
        # Measured (docs/benchmarks.md, "a reviewer with the teacher's blind spots"): people who repeat the
        # teacher's mistakes make it look perfect, and a relative target then shuts the student out.
        table += (
            f"<p class='sub warn'>People agreed with the teacher on every one of {teacher['n']:,} reviewed "
            "requests. Either it is never wrong here, or the reviewers are not independent of it (they saw its "
            "answer, or confuse what it confuses): then its mistakes are invisible here, and a target relative "
            "to the teacher asks the student to repeat them.</p>"
        )
    table += _second_opinions(people)
    d = people["served_minus_teacher"]
    if d is None:
        return head + table
    lo, hi = d["interval95"]
    return (
        head
        + table
        + f"<p class='sub'>Served minus teacher on the same {d['n']:,} requests: {100 * d['difference']:+.1f} points "
        f"[{100 * lo:+.1f}, {100 * hi:+.1f}] ({d['wins']} right where the teacher was wrong, {d['losses']} the "
        "reverse).</p>"
    )


def _second_opinions(people: dict[str, Any]) -> str:
    """How often people agree with each other where two labelled a request (``Task.review_overlap``),
    and a warning when the teacher agrees with them more than that allows.

    If each reviewer is right with probability q > 1/2, independently of the teacher and of each
    other, two reviewers agree at least q² of the time, and the teacher agrees with one at most q
    of the time: so it cannot agree with people much beyond the square root of their agreement
    with each other. When its lower bound passes the root of their upper bound, people share
    its mistakes (or saw its answer)."""
    r = people["reviewers"]
    if not r["rows"]:
        return ""
    # Two reviewers of a request agree with probability r["agreement"] (the share of requests they
    # agree on, where each has two); its interval as if from that many requests.
    lo, hi = wilson(round(r["agreement"] * r["rows"]), r["rows"]) or (0.0, 1.0)
    kappa = "—" if r["kappa"] is None else f"{r['kappa']:.2f}"
    text = (
        f"<p class='sub'>Second opinions: {r['rows']:,} requests labelled by two or more people (the task's "
        f"review_overlap); two reviewers of one agreed {_pct(r['agreement'])} of the time (95% {_pct(lo)}-"
        f"{_pct(hi)}), Fleiss' kappa {kappa}. {people['disputed']:,} split with no majority: left out of the rows "
        "above until a third person labels them (protege review pull)."
    )
    if r.get("tie_breaks_left_out"):
        text += (
            f" {r['tie_breaks_left_out']:,} labels given after two split broke ties and are not counted in the "
            "agreement (asked because they split, they would make split requests look agreed)."
        )
    text += "</p>"
    teacher = people["teacher"]
    if teacher["n"] and teacher["interval95"][0] > math.sqrt(hi):
        text += (
            f"<p class='sub warn'>The teacher agrees with people ({_pct(teacher['accuracy'])}) more than people who "
            f"agree with each other {_pct(r['agreement'])} of the time could if their mistakes were their "
            "own: the reviewers share the teacher's mistakes (or saw its answer), so its accuracy here is too high, "
            "and a target relative to it too strict.</p>"
        )
    return text


def _interval(acc: dict[str, Any]) -> tuple[str, str]:
    if not acc["n"]:
        return "—", "—"
    lo, hi = acc["interval95"]
    return _pct(acc["accuracy"]), f"{_pct(lo)}-{_pct(hi)}"


def _drift_note(data: dict[str, Any]) -> str:
    d = data["drift"]
    base = "—" if d["baseline"] is None else _pct(d["baseline"])
    rows = [(_ts(a["at_ms"]), a["state"], _pct(a["rate"]), _pct(a["baseline"]), a["window"]) for a in d["alarms"]]
    alarms = (
        _table(("at", "state", "escalation rate", "baseline", "window"), rows, (2, 3, 4))
        if rows
        else "<p>No alarm.</p>"
    )
    return (
        f"<p class='sub'>Band: baseline {base} ({_e(d['baseline_source'])}) + {_pct(d['band'])} over "
        f"{d['window']} decisions. Alarms {_e(d['alarms_source'])}; buckets of {data['over_time']['bucket_s']} s.</p>"
        + alarms
    )


def _cost_note(data: dict[str, Any]) -> str:
    t = data["totals"]
    b = data["breakeven"]
    est = f"; {t['estimated_teacher_calls']} replayed escalations priced at c_t" if t["estimated_teacher_calls"] else ""
    return (
        f"<p class='sub'>Teacher spend {_usd(t['teacher_calls_usd'])} (audits {_usd(t['audit_usd'])}) plus the student's compute "
        f"(c_s {_usd(b['c_s_usd'], 8)} a request) against {_usd(t['all_teacher_usd'])} had the teacher answered "
        f"everything (c_t {_usd(b['c_t_usd'], 6)} a request){_e(est)}.</p>"
    )


def _breakeven_note(data: dict[str, Any]) -> str:
    b = data["breakeven"]
    i = b["inputs"]
    th = data["throughput"]
    on = "a GPU" if th and th.get("device") == "cuda" else f"{th['threads']} thread(s)" if th else ""
    measured = (
        f"{th['version']}: {th['requests']} recorded texts in {th['seconds']:.2f} s on {on}, "
        f"batch {th['batch']} = {th['per_s']} requests/s"
        if th
        else "not measured"
    )
    if i.get("gpu_requests_per_s") is not None:
        measured += "; not used: the GPU throughput is an input"
    gpu = (th is not None and th.get("device") == "cuda") or i.get("gpu_requests_per_s") is not None
    rows = [
        ("q (share to the teacher)", _pct(b["q_teacher_share"]), "measured"),
        ("c_t (teacher, a request)", _usd(b["c_t_usd"], 6), b["c_t_source"]),
        ("c_r (teacher, a routed request)", _usd(b["c_r_usd"], 6), b["c_r_source"]),
        ("c_s (student, a request)", _usd(b["c_s_usd"], 8), f"{b['c_s_source']} ({measured})"),
        ("D (distilling)", _usd(i["distill_usd"], 0), "input"),
        ("T (training)", _usd(i["train_usd"], 0), "input"),
        ("M (maintenance)", _usd(i["maintain_usd"], 0), "input"),
        ("price of a GPU-hour", _usd(i["gpu_hour_usd"], 3), "input")
        if gpu
        else ("price of a core-hour", _usd(i["core_hour_usd"], 3), "input"),
        (
            "requests a day",
            "—" if b["requests_per_day"] is None else f"{b['requests_per_day']:,.0f}",
            b["requests_per_day_source"],
        ),
        ("break-even", "—" if b["breakeven_requests"] is None else f"{b['breakeven_requests']:,} requests", ""),
        (
            "break-even horizon",
            "—" if b["breakeven_days"] is None else f"{b['breakeven_days']:,} days",
            "at the range's rate",
        ),
    ]
    return f"<p class='sub'>{_e(b['formula'])}</p>" + _table(("", "value", "from"), rows, (1,))


def _versions_note(data: dict[str, Any]) -> str:
    rows = [(_ts(e["at_ms"]), e["version"], e["event"], e["by"], e["detail"]) for e in data["versions"]]
    return _table(("at", "version", "event", "by", "detail"), rows) if rows else ""


def write(data: dict[str, Any], html_path: Path, json_path: Path | None = None) -> None:
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(render(data))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(data, indent=2) + "\n")
