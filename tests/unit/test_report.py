"""The report's numbers from hand-made events (pure logic, no broker): totals, buckets,
savings, the break-even formula, the coverage curve from a version's golden set, the drift
alarms over replayed decisions, the versions timeline; and the page escapes what it shows.
The page itself is rendered in Chromium in ``tests/integration/test_replay.py`` and here."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from protege.events import (
    AcceptRule,
    Decision,
    Feedback,
    Ingested,
    ModelAnnouncement,
    Scored,
    TeacherResult,
    Usage,
)
from protege.recorded import Events, Selection
from protege.registry import Registry
from protege.report import (
    PEOPLE_ROWS,
    Basis,
    Context,
    Inputs,
    Point,
    Throughput,
    breakeven,
    build,
    render,
    timeline,
    write,
)
from protege.student.manifest import HELD_OUT, Calibration, Data, GateReport, Target
from protege.task import Drift, Task, load_task
from tests.browser import chromium, look
from tests.helpers import REPO, manifest_only

T0 = 1_764_000_000_000  # ms
TASK = "ticket-triage"


def ticket_task(target: float | None = None, **drift: float) -> Task:
    task = load_task(REPO / "tests" / "tasks" / f"{TASK}.yaml")
    update: dict = {"target_accuracy": target}
    if drift:
        update["drift"] = Drift(**drift)  # type: ignore[arg-type]
    return task.model_copy(update={"policy": task.policy.model_copy(update=update)})


def make_version(root: Path, name: str, *, passed: bool = True, created: str = "2025-11-24T15:00:00Z") -> Path:
    """A registry folder with a manifest and a golden set as scored (no model: not loaded here)."""
    folder = root / "acme" / TASK / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    conf = rng.uniform(0.3, 1.0, 400).astype(np.float32)
    correct = rng.uniform(size=400) < conf  # confident answers are right more often
    ood = rng.uniform(0, 0.5, 400).astype(np.float32)
    np.savez_compressed(folder / HELD_OUT, confidence=conf, ood=ood, correct=correct)
    rule = AcceptRule(target_accuracy=0.9, confidence_level=0.95, min_confidence=0.8, max_ood=0.45, coverage=0.25)
    manifest_only(
        folder,
        task=TASK,
        labels=["a", "b"],
        calibration=Calibration(temperature=1.2),
        acceptance=rule,
        acceptance_target=Target(target_accuracy=0.9, confidence_level=0.95),
        metrics={"golden_accuracy": 0.8, "golden_coverage": 0.25},
        gates=GateReport(config={}, failed=[] if passed else ["accuracy 0.5 < floor 0.8"], passed=passed),
        data=Data(cases=500, request_ids_sha256="x", split={"fit": 1}, label_counts={"a": 1}),
        created_at=created,
    )
    return folder


def recorded_events(n: int = 200, every_ms: int = 60_000) -> Events:
    """``n`` requests a minute apart; every third escalates to the teacher (cost 0.003), the
    rest the student (version v0001) answers."""
    scored, decisions, teacher = [], [], []
    for i in range(n):
        rid = f"r{i:04d}"
        at = T0 + i * every_ms
        req = Ingested(request_id=rid, tenant="acme", task=TASK, text=f"text {i}", received_at_ms=at)
        scored.append(Scored(request=req, scored_at_ms=at + 5, batch_size=1))
        escalate = i % 3 == 0
        decisions.append(
            Decision(
                request_id=rid,
                tenant="acme",
                task=TASK,
                verdict="escalate" if escalate else "accept",
                route="teacher" if escalate else "student",
                policy="cascade",
                policy_version="p1",
                model_version="v0001",
                student_label="a",
                signals={"confidence": 0.5},
                thresholds={},
                reasons=["low_confidence"] if escalate else [],
                decided_at_ms=at + 10,
            )
        )
        if escalate:
            teacher.append(
                TeacherResult(
                    request_id=rid,
                    tenant="acme",
                    task=TASK,
                    text="x",
                    label="a",
                    teacher="standin:labels",
                    standin=True,
                    usage=Usage(input_tokens=100, output_tokens=10, estimated=True),
                    cost_usd=0.003,
                    latency_ms=1.0,
                    attempts=1,
                    answered_at_ms=at + 20,
                )
            )
    return Events(Selection("acme", TASK), scored, decisions=decisions, teacher=teacher)


# The review sample of ``with_reviews``: r0000-r0009 (r0000, r0003, r0006, r0009 escalated, the
# rest accepted with the student's "billing"); the teacher's answer and a person's label on each.
TEACHER = ["refund", "billing", "billing", "refund", "billing", "refund", "billing", "billing", "billing", "refund"]
PERSON = [
    "refund",
    "billing",
    "billing",
    "refund",
    "refund",
    "billing",
    "refund",
    "billing",
    "billing",
    "zzz",
]  # zzz: not a label


def with_reviews(events: Events) -> Events:
    """``events`` with r0000-r0009 in the review sample and reviewed (r0009's review is refused:
    not one of the task's answers); also a review outside the sample and a later correction,
    neither of which counts."""
    sampled = {f"r{i:04d}": i for i in range(10)}
    events.decisions = [
        d.model_copy(update={"review": True, "audit": d.route == "student", "student_label": "billing"})
        if d.request_id in sampled
        else d
        for d in events.decisions
    ]
    template = events.teacher[0]
    answers = {t.request_id: t for t in events.teacher}
    for rid, i in sampled.items():
        mode = "answer" if rid in answers else "audit"
        answers[rid] = template.model_copy(update={"request_id": rid, "label": TEACHER[i], "mode": mode})
    events.teacher = list(answers.values())

    def feedback(rid: str, label: str, kind: str = "review") -> Feedback:
        return Feedback(request_id=rid, tenant="acme", task=TASK, text="t", label=label, kind=kind)  # type: ignore[arg-type]

    events.feedback = [feedback(rid, PERSON[i]) for rid, i in sampled.items()]
    events.feedback += [feedback("r0020", "billing"), feedback("r0001", "refund", kind="correction")]
    return events


def ann(
    version: str, at: int, *, source: str = "trainer", pin: bool = False, action: str = "serve"
) -> ModelAnnouncement:
    return ModelAnnouncement(
        tenant="acme",
        task=TASK,
        version=version,
        path="-",
        labels=["a"],
        metrics={},
        trained_on=1,
        source=source,  # type: ignore[arg-type]
        pin=pin,
        action=action,  # type: ignore[arg-type]
        announced_at_ms=at,
    )


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    root = tmp_path / "registry"
    make_version(root, "v0001")
    make_version(root, "v0002", passed=False, created="2025-11-24T15:30:00Z")
    return Registry(root)


def throughput() -> Throughput:
    return Throughput("v0001", requests=1000, seconds=2.0, threads=1, batch=64)  # 500/s


def test_totals_buckets_and_savings_agree_with_the_events(registry: Registry) -> None:
    events = recorded_events()
    inputs = Inputs(core_hour_usd=0.36)  # 0.36 / 3600 / 500 = 2e-7 a request
    context = Context(ticket_task(target=0.9), versions=registry.versions("acme", TASK), throughput=throughput())
    data = build(Basis.recorded(events), context, inputs)
    t = data["totals"]
    assert t["requests"] == 200 and t["student_answered"] == 133
    assert t["teacher_calls_usd"] == pytest.approx(67 * 0.003)
    c_s = 0.36 / 3600 / 500
    assert data["breakeven"]["c_s_usd"] == pytest.approx(c_s)
    assert t["all_teacher_usd"] == pytest.approx(200 * 0.003)
    assert t["savings_to_date_usd"] == pytest.approx(200 * 0.003 - 67 * 0.003 - 133 * c_s, abs=1e-6)
    buckets = data["over_time"]["buckets"]
    assert data["over_time"]["bucket_s"] == 900  # 199 minutes in about 24 pieces: 15 minutes
    assert sum(b["requests"] for b in buckets) == 200
    assert buckets[-1]["savings_to_date_usd"] == pytest.approx(t["savings_to_date_usd"], abs=1e-5)
    assert all(b["all_teacher_per_1k_usd"] == pytest.approx(3.0) for b in buckets)
    first = buckets[0]  # requests 0..14: 0, 3, 6, 9, 12 escalate
    assert first["requests"] == 15 and first["escalation_rate"] == pytest.approx(5 / 15, abs=1e-4)
    assert data["teacher"]["standin"] is True
    # The coverage curve is the serving version's golden set, its certified rule marked.
    curve = data["coverage"]["curve"]
    with np.load(registry.version("acme", TASK, "v0001").folder / HELD_OUT) as held:
        accepted = (held["confidence"] >= 0.8) & (held["ood"] <= 0.45)
        assert curve["operating_point"]["coverage"] == pytest.approx(accepted.mean(), abs=1e-4)
        assert curve["operating_point"]["accuracy"] == pytest.approx(held["correct"][accepted].mean(), abs=1e-4)
        coverages = [p["coverage"] for p in curve["points"]]
        assert coverages == sorted(coverages, reverse=True)
        assert coverages[0] == pytest.approx((held["ood"] <= 0.45).mean(), abs=1e-4)  # the rule's OOD gate holds
    assert data["coverage"]["served_share"] == pytest.approx(133 / 200, abs=1e-4)
    assert curve["operating_point"]["source"] == "certified rule" and curve["target_accuracy"] == 0.9
    json.dumps(data)  # JSON-ready
    # A policy without a target holds every version to the task's thresholds: that is the point.
    fixed = build(Basis.recorded(events), Context(ticket_task(), versions=registry.versions("acme", TASK)), inputs)
    op = fixed["coverage"]["curve"]["operating_point"]
    assert (op["source"], op["min_confidence"], op["max_ood"]) == ("task thresholds", 0.6, 0.5)


def test_breakeven_solves_the_seeds_formula() -> None:
    points = [
        Point(T0 + i, "teacher" if i < 20 else "student", "accept", (), 0.01 if i < 20 else 0.0, "v")
        for i in range(100)
    ]
    inputs = Inputs(distill_usd=100, train_usd=50, maintain_usd=50)
    b = breakeven(points, c_t=0.01, c_s=0.0001, inputs=inputs, per_day=1000.0)
    q, c_r = 0.2, 0.01
    saving = 0.01 - ((1 - q) * 0.0001 + q * c_r)
    assert b["breakeven_requests"] == math.ceil(200 / saving)
    assert b["breakeven_days"] == pytest.approx(b["breakeven_requests"] / 1000, abs=0.01)
    # Every request through the teacher: nothing saved, no break-even, and the page says why.
    all_teacher = [Point(T0, "teacher", "escalate", (), 0.01, None)] * 10
    none = breakeven(all_teacher, c_t=0.01, c_s=0.0001, inputs=inputs, per_day=None)
    assert none["breakeven_requests"] is None and "saves nothing" in none["why_not"]
    assert (
        breakeven(points, c_t=None, c_s=0.0001, inputs=inputs, per_day=None)["why_not"] == "no teacher answer on record"
    )


def test_the_student_is_priced_on_the_hardware_it_was_measured_on(registry: Registry) -> None:
    events = recorded_events()
    context = Context(ticket_task(target=0.9), versions=registry.versions("acme", TASK), throughput=throughput())
    cpu = build(Basis.recorded(events), context, Inputs(core_hour_usd=0.36, gpu_hour_usd=3.6))
    assert cpu["breakeven"]["c_s_usd"] == pytest.approx(0.36 / 3600 / 500)
    assert cpu["breakeven"]["c_s_source"].startswith("core-hour price")
    page = render(cpu)
    assert "price of a core-hour" in page and "price of a GPU-hour" not in page and "1 thread(s)" in page
    # Measured on a GPU (a CUDA session): a GPU-hour, not one core's, buys those requests.
    context.throughput = Throughput("v0001", requests=1000, seconds=0.1, threads=1, batch=64, device="cuda")
    gpu = build(Basis.recorded(events), context, Inputs(core_hour_usd=0.36, gpu_hour_usd=3.6))
    assert gpu["breakeven"]["c_s_usd"] == pytest.approx(3.6 / 3600 / 10_000)
    assert gpu["breakeven"]["c_s_source"].startswith("GPU-hour price") and gpu["throughput"]["device"] == "cuda"
    page = render(gpu)
    assert "price of a GPU-hour" in page and "$3.600" in page and "on a GPU" in page
    # The serving GPU's throughput stated as an input wins over this machine's measurement, and says so.
    stated = build(
        Basis.recorded(events),
        Context(ticket_task(target=0.9), versions=registry.versions("acme", TASK)),
        Inputs(gpu_hour_usd=3.6, gpu_requests_per_s=20_000),
    )
    assert stated["breakeven"]["c_s_usd"] == pytest.approx(3.6 / 3600 / 20_000)
    assert "20000 requests/s on the serving GPU (input)" in stated["breakeven"]["c_s_source"]
    assert stated["breakeven"]["breakeven_requests"] is not None  # priced without a measurement here
    assert "price of a GPU-hour" in render(stated)
    assert build(Basis.recorded(events), Context(ticket_task(target=0.9)), Inputs())["breakeven"]["why_not"] == (
        "no student throughput measured"
    )


def test_a_replay_raises_the_alarms_its_decisions_would_have() -> None:
    task = ticket_task(window=20, band=0.1, baseline=0.1)
    quiet = [Point(T0 + i, "student", "accept", (), 0.0, "v") for i in range(40)]
    loud = [Point(T0 + 40 + i, "teacher", "escalate", ("ood",), 0.01, "v") for i in range(30)]
    basis = Basis("replay", Selection("acme", TASK), quiet + loud, 0.01, False, "v")
    alarms = build(basis, Context(task), Inputs())["drift"]["alarms"]
    assert [a["state"] for a in alarms] == ["firing"]
    # measured as each block of 2 decisions fills: the rate first leaves 0.1 +- 0.1 at the
    # block that holds the sixth escalation (6/20)
    assert alarms[0]["at_ms"] == T0 + 45
    assert alarms[0]["reasons"] == {"ood": pytest.approx(0.3)}


def test_versions_timeline_names_each_step(registry: Registry) -> None:
    anns = [
        ann("v0001", T0),
        ann("v0003", T0 + 10),
        ann("v0001", T0 + 20, source="operator", pin=True),  # protege models rollback
        ann("v0004", T0 + 30),  # the trainer's, held back by the pin
        ann("v0001", T0 + 40, source="operator", action="unpin"),
        ann("v0004", T0 + 50, source="operator", pin=True),  # pin a version that never served
    ]
    entries = timeline(registry.versions("acme", TASK), anns, "acme", TASK)
    steps = [(e["version"], e["event"]) for e in entries if e["at_ms"] >= T0]
    assert steps == [
        ("v0001", "promoted"),
        ("v0003", "promoted"),
        ("v0001", "rolled back"),
        ("v0004", "held back"),
        ("v0001", "unpinned"),
        ("v0004", "pinned"),
    ]
    made = {e["version"]: e for e in entries if e["at_ms"] < T0}
    assert made["v0001"]["event"] == "trained" and made["v0002"]["event"] == "gated out"
    assert "accuracy 0.5 < floor 0.8" in made["v0002"]["detail"]
    # Another tenant's announcements are not this one's.
    other = ann("v0009", T0).model_copy(update={"tenant": "globex"})
    assert not [e for e in timeline([], [other], "acme", TASK) if e["version"] == "v0009"]


def test_the_page_escapes_what_it_shows(registry: Registry) -> None:
    events = recorded_events(30)
    hostile = '<img src=x onerror="alert(1)">'
    data = build(Basis.recorded(events), Context(ticket_task(), versions=registry.versions("acme", TASK)), Inputs())
    data["versions"][0]["detail"] = hostile
    data["selection"]["tenant"] = hostile
    page = render(data)
    assert hostile not in page and "&lt;img src=x" in page
    assert "<script" not in page and not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//)", page)  # nothing to fetch
    assert "OFFLINE STAND-IN" in page


def test_every_plot_draws_in_chromium(registry: Registry, tmp_path: Path) -> None:
    """The page on synthetic events, rendered by headless Chromium: six plots, each drawn."""
    events = with_reviews(recorded_events())
    context = Context(
        ticket_task(),
        versions=registry.versions("acme", TASK),
        announcements=[ann("v0001", T0 + 3_000_000)],
        throughput=throughput(),
    )
    write(build(Basis.recorded(events), context, Inputs()), tmp_path / "r.html", tmp_path / "r.json")
    seen = look(chromium(), tmp_path / "r.html", tmp_path)
    assert sorted(seen.plots) == ["breakeven", "cost", "coverage", "people", "share", "versions"]
    for name, plot in seen.plots.items():
        assert plot.ink > 0.02, (name, plot)  # not a blank box
        assert plot.colours >= 3, (name, plot)  # lines and marks in the palette's colours, not one flat shade


def test_audits_show_as_live_accuracy_and_apart_in_the_spend(registry: Registry) -> None:
    events = recorded_events(30)
    accepted = [d for d in events.decisions if d.route == "student"][:10]
    for i, d in enumerate(accepted):
        events.teacher.append(
            events.teacher[0].model_copy(
                update={
                    "request_id": d.request_id,
                    "mode": "audit",
                    "label": "a" if i < 8 else "b",
                    "student_label": "a",
                    "model_version": "v0001",
                    "cost_usd": 0.001,
                }
            )
        )
    data = build(Basis.recorded(events), Context(ticket_task(), versions=registry.versions("acme", TASK)), Inputs())
    live = data["coverage"]["live_accuracy"]
    assert (live["audits"], live["agreed"]) == (10, 8)
    assert data["totals"]["audit_usd"] == pytest.approx(0.01)
    assert data["totals"]["teacher_calls_usd"] == pytest.approx(10 * 0.003 + 0.01)
    assert "Live accuracy from 10 audits: 80.0%" in render(data)


def test_audits_surely_below_the_golden_rows_prediction_say_the_golden_rows_are_easier(tmp_path: Path) -> None:
    folder = make_version(tmp_path / "registry", "v0001")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["metrics"] |= {"truth_agreement_on_accepted": 0.95, "truth_accepted_cases": 600.0}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    versions = Registry(tmp_path / "registry").versions("acme", TASK)
    for agreeing, easier in ((0.8, True), (0.95, False)):
        events = recorded_events(300)
        accepted = [d for d in events.decisions if d.route == "student"]
        for i, d in enumerate(accepted):
            update = {"request_id": d.request_id, "mode": "audit", "student_label": "a", "model_version": "v0001"}
            label = "a" if i < agreeing * len(accepted) else "b"
            events.teacher.append(events.teacher[0].model_copy(update=update | {"label": label}))
        data = build(Basis.recorded(events), Context(ticket_task(), versions=versions), Inputs())
        check = data["coverage"]["against_golden"]
        assert check["audits"] == len(accepted) == 200 and check["easier"] is easier
        page = " ".join(render(data).split())
        assert "The golden rows its rule accepts predicted 95.0% (600 rows)" in page
        assert ("The golden rows are easier than this traffic" in page) is easier
        assert ("the audits are consistent with it" in page) is not easier


def test_the_review_sample_measures_what_was_served_against_people(registry: Registry) -> None:
    events = with_reviews(recorded_events(40))
    data = build(Basis.recorded(events), Context(ticket_task(), versions=registry.versions("acme", TASK)), Inputs())
    people = data["people"]
    assert (people["sampled"], people["reviewed"], people["pending"]) == (10, 9, 1)

    def right(key: str) -> tuple[int, int]:
        return people[key]["correct"], people[key]["n"]

    assert right("served") == (7, 9)
    assert right("student_answered") == (5, 6) and right("teacher_answered") == (2, 3)
    assert right("teacher") == (6, 9) and right("student") == (5, 9)
    assert people["versions"]["v0001"] == people["student_answered"]
    d = people["served_minus_teacher"]
    assert (d["n"], d["wins"], d["losses"]) == (9, 1, 0) and d["difference"] == pytest.approx(1 / 9)
    page = render(data)
    assert "10 requests in the review sample" in page and "9 labelled by a person, 1 waiting" in page
    assert "Served minus teacher on the same 9 requests: +11.1 points" in page


def test_the_reviews_the_surge_alone_drew_are_left_out_of_what_the_report_estimates(registry: Registry) -> None:
    """Requests drawn for review by the surge alone (``Decision.review_surge``: no certified rule
    let the student answer) are not a uniform draw of the range: people's labels on them certify,
    but the report's estimates of what was served keep to the review_rate sample. Two of the ten
    sampled requests marked so, one of them reviewed, one pending: the numbers are the other eight's."""
    events = with_reviews(recorded_events(40))
    surge = {"r0004", "r0009"}  # r0009's review is refused (not an answer): it was pending
    events.decisions = [d.model_copy(update={"review_surge": d.request_id in surge}) for d in events.decisions]
    data = build(Basis.recorded(events), Context(ticket_task(), versions=registry.versions("acme", TASK)), Inputs())
    people = data["people"]
    assert (people["sampled"], people["reviewed"], people["pending"]) == (8, 8, 0)
    whole = build(
        Basis.recorded(with_reviews(recorded_events(40))),
        Context(ticket_task(), versions=registry.versions("acme", TASK)),
        Inputs(),
    )["people"]
    left = whole["served"]["correct"] - people["served"]["correct"]
    traffic = events.traffic()
    assert people["served"]["n"] == 8 and left == (PERSON[4] == traffic.served("r0004"))
    assert "r0004" in traffic.reviews and traffic.surge == surge  # the label is kept (it certifies)


def test_second_opinions_measure_people_and_catch_reviewers_who_share_the_teachers_mistakes(
    registry: Registry,
) -> None:
    events = with_reviews(recorded_events(40))
    person = {f.request_id: f.label for f in events.feedback if f.kind == "review"}
    split = next(rid for rid in ("r0000", "r0001", "r0002") if person[rid] != "refund")
    events.feedback += [  # a second person: agrees on r0003-r0008, splits on one
        Feedback(request_id=rid, tenant="acme", task=TASK, text="t", label=person[rid], source="bo", kind="review")
        for rid in (f"r{i:04d}" for i in range(3, 9))
    ]
    events.feedback.append(
        Feedback(request_id=split, tenant="acme", task=TASK, text="t", label="refund", source="bo", kind="review")
    )
    data = build(Basis.recorded(events), Context(ticket_task(), versions=registry.versions("acme", TASK)), Inputs())
    people = data["people"]
    assert (people["reviewed"], people["disputed"], people["pending"]) == (8, 1, 1)
    assert people["reviewers"]["rows"] == 7 and people["reviewers"]["agreement"] == pytest.approx(6 / 7)
    page = render(data)
    assert "Second opinions: 7 requests labelled by two or more people" in page and "1 split with no majority" in page
    assert "share the teacher's mistakes" not in page  # 6 of 8 right: no more than people's agreement allows

    # People who agree with each other on 70 of 100 requests, and with the teacher on 291 of 300.
    from protege.report import _second_opinions

    shared = {
        "reviewers": {"rows": 100, "agreement": 0.7, "agreed": 70, "kappa": 0.6, "disputed": 30, "pairs": []},
        "disputed": 30,
        "teacher": {"n": 300, "correct": 291, "accuracy": 0.97, "interval95": (0.944, 0.984)},
    }
    assert "share the teacher's mistakes" in _second_opinions(shared)
    shared["teacher"] = {"n": 300, "correct": 240, "accuracy": 0.8, "interval95": (0.75, 0.84)}
    assert "share the teacher's mistakes" not in _second_opinions(shared)


def test_without_a_review_sample_the_report_says_so(registry: Registry) -> None:
    data = build(
        Basis.recorded(recorded_events(30)), Context(ticket_task(), versions=registry.versions("acme", TASK)), Inputs()
    )
    assert data["people"] is None
    assert "No request in this range is in a review sample" in render(data)


def test_the_coverage_curve_holds_the_rules_ceiling_on_oos(tmp_path: Path) -> None:
    """A version certified under a false-accept cap keeps its golden view of ``oos``: the curve
    and the operating point defer in-scope answers above the rule's ceiling, never an answer
    ``oos`` itself; without the ceiling the same golden set reads as before."""
    from protege.report import coverage_curve

    rng = np.random.default_rng(3)
    n = 500
    conf = rng.uniform(0.3, 1.0, n).astype(np.float32)
    answered_oos = rng.uniform(size=n) < 0.1
    p_oos = np.where(answered_oos, conf, rng.uniform(0, 0.3, n)).astype(np.float32)
    ood = rng.uniform(0, 0.5, n).astype(np.float32)
    correct = rng.uniform(size=n) < conf
    np.savez_compressed(
        tmp_path / HELD_OUT,
        confidence=conf,
        ood=ood,
        correct=correct,
        oos_probability=p_oos,
        answered_oos=answered_oos,
    )
    rule = {"source": "certified rule", "min_confidence": 0.5, "max_ood": 0.45, "max_oos_probability": 0.1}
    curve = coverage_curve(tmp_path, 0.9, rule)
    assert curve is not None
    accepted = (conf >= 0.5) & (ood <= 0.45) & (answered_oos | (p_oos <= 0.1))
    op = curve["operating_point"]
    assert op["coverage"] == pytest.approx(accepted.mean(), abs=1e-4) and op["max_oos_probability"] == 0.1
    assert op["accuracy"] == pytest.approx(correct[accepted].mean(), abs=1e-4)
    plain = coverage_curve(tmp_path, 0.9, rule | {"max_oos_probability": None})
    assert plain is not None
    assert plain["operating_point"]["coverage"] == pytest.approx(((conf >= 0.5) & (ood <= 0.45)).mean(), abs=1e-4)
    # a rule that lets answers oos past the OOD gate: they count whatever their OOD score
    past = coverage_curve(tmp_path, 0.9, rule | {"max_ood": 0.2, "oos_past_ood_gate": True})
    assert past is not None and past["operating_point"]["oos_past_ood_gate"] is True
    taken = (conf >= 0.5) & ((ood <= 0.2) | answered_oos) & (answered_oos | (p_oos <= 0.1))
    assert past["operating_point"]["coverage"] == pytest.approx(taken.mean(), abs=1e-4)


def test_the_people_plot_draws_a_teacher_right_on_every_reviewed_row() -> None:
    # Seen on a bench whose stand-in reviewer repeated every teacher mistake: the teacher right
    # on all 6 of a range's reviewed rows, and the error bar's upper arm came out negative.
    from protege.replay import wilson
    from protege.report import plot_people

    def acc(correct: int, n: int) -> dict[str, object]:
        return {"n": n, "correct": correct, "accuracy": correct / n, "interval95": wilson(correct, n)}

    people = {key: acc(6, 6) for key, *_ in PEOPLE_ROWS} | {"student": acc(0, 6)}
    assert "<svg" in plot_people({"people": people})


def test_a_teacher_people_never_correct_is_flagged(registry: Registry) -> None:
    context = Context(ticket_task(), versions=registry.versions("acme", TASK))
    data = build(Basis.recorded(with_reviews(recorded_events(40))), context, Inputs())
    assert "agreed with the teacher on every one" not in render(data)  # right on 6 of 9
    teacher = data["people"]["teacher"]
    data["people"]["teacher"] = teacher | {"n": 120, "correct": 120, "accuracy": 1.0, "interval95": (0.97, 1.0)}
    assert "agreed with the teacher on every one of 120 reviewed requests" in render(data)
    data["people"]["teacher"] = teacher | {"n": 99, "correct": 99, "accuracy": 1.0, "interval95": (0.96, 1.0)}
    assert "agreed with the teacher on every one" not in render(data)  # too few to say


def test_an_export_carries_the_announcements_and_alarms_the_report_draws(tmp_path: Path) -> None:
    from protege.events import Alert
    from protege.recorded import read_export, write_export

    events = recorded_events(20)
    events.announcements = [ann("v0001", T0), ann("v0002", T0 + 60_000, source="operator", pin=True)]
    events.alerts = [
        Alert(
            kind="drift",
            state="firing",
            task=TASK,
            policy_version="p1",
            rate=0.5,
            baseline=0.3,
            band=0.1,
            window=50,
            reasons={},
            at_ms=T0 + 1,
        )
    ]
    counts = write_export(events, tmp_path / "x")
    assert (counts["announcements"], counts["alerts"]) == (2, 1)
    back = read_export(tmp_path / "x")
    assert back.announcements == events.announcements and back.alerts == events.alerts
    for table in ("announcements", "alerts"):  # an export written before these were kept still reads
        (tmp_path / "x" / f"{table}.parquet").unlink()
    older = read_export(tmp_path / "x")
    assert older.announcements == [] and older.alerts == [] and len(older.scored) == 20
