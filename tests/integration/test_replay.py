"""Replay on the real broker: traffic recorded by the whole pipeline (a cold start, then a
student), read back from the topics and re-scored and re-decided.

- Exactness: the recorded version and policy reproduce every recorded decision (verdict,
  label, reasons; signals within 1e-5, float32's noise across batch shapes).
- A candidate policy moves requests between the student and the teacher, and its
  accuracy is measured against the labels on record (teacher answers, feedback).
- ``protege replay`` writes its JSON and Parquet (read back with DuckDB) and says what to do
  when the tenant, the range or the version does not exist.
- ``protege export`` writes every topic's events as Parquet: DuckDB counts them against the
  topics, and replay on the exported folder reproduces the decisions without a broker.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from protege.broker.embedded import EmbeddedBroker
from protege.cli import app
from protege.events import Feedback, HarvestCase, Response, TeacherResult
from protege.generator import generate, write_jsonl
from protege.harness import drive, summarize
from protege.kafka import Out, producer
from protege.pipeline import LocalPipeline
from protege.recorded import read_export
from protege.redact import redact
from protege.registry import Registry
from protege.replay import Candidate, Selection, recorded, replay
from protege.settings import Settings
from protege.state import read_all
from protege.student.runtime import Student
from protege.task import load_tasks
from tests.browser import chromium, look
from tests.helpers import REPO, pipeline_env

pytestmark = pytest.mark.kafka
TASK = "ticket-triage"


async def send_feedback(settings: Settings, rows: list[dict]) -> None:
    prod = producer(settings)
    await prod.start()
    try:
        for row in rows:
            fb = Feedback(
                request_id=f"acme-{row['id']}", tenant="acme", task=TASK, text=row["text"], label=row["label"]
            )
            out = Out.of(settings.topics.feedback, fb)
            await prod.send_and_wait(out.topic, out.value, key=out.key)
    finally:
        await prod.stop()


@pytest.fixture(scope="module")
def recording(kafka: EmbeddedBroker, backbone: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A cold start (the teacher answers until the first student), then traffic the student serves."""
    home = tmp_path_factory.mktemp("replay")
    rows = generate(500, seed=16)
    write_jsonl(rows, home / "labels.jsonl")
    env = pipeline_env(home / "labels.jsonl", backbone, PROTEGE_RETRAIN_EVERY="100000")
    with LocalPipeline(home, env=env, bootstrap=kafka.bootstrap, topic_prefix=f"rpl{int(time.time())}.") as p:
        s = p.settings
        first = summarize(asyncio.run(drive(s, rows[:150], tenant="acme", task=TASK, timeout=240)))
        assert first["answered"] == 150
        deadline = time.monotonic() + 180
        while not asyncio.run(read_all(s, s.topics.models)):
            assert time.monotonic() < deadline, "no student was announced"
            time.sleep(1)
        time.sleep(3)  # the scorer loads it
        second = summarize(asyncio.run(drive(s, rows[150:], tenant="acme", task=TASK, timeout=240)))
        assert second["answered"] == 350 and second["student_share"] > 0
        asyncio.run(send_feedback(s, rows[400:440]))
        # Quiet before the tests read it: every teacher answer and feedback harvested (one case each;
        # the student's accepted answers reach the harvest from the verifier, with its response).
        deadline = time.monotonic() + 120
        while True:
            answers = sum(b'"acme"' in r.value for r in asyncio.run(read_all(s, s.topics.teacher_results)) if r.value)
            harvest = asyncio.run(read_all(s, s.topics.harvest))
            cases = sum(b'"acme"' in r.value and b'"reason":"accepted"' not in r.value for r in harvest if r.value)
            if cases == answers + 40:
                break
            assert time.monotonic() < deadline, f"{cases} harvested of {answers} answers + 40 feedback"
            time.sleep(1)
        yield {"settings": s, "rows": rows, "home": home}


def students(settings: Settings):
    registry = Registry.of(settings)

    @cache
    def load(name: str) -> Student:
        return Student(registry.version("acme", TASK, name).folder, threads=1)

    return load


def task():
    return load_tasks(REPO / "tests" / "tasks")[TASK]


def test_recorded_version_and_policy_reproduce_every_decision(recording: dict) -> None:
    s = recording["settings"]
    traffic = asyncio.run(recorded(s, Selection("acme", TASK)))
    assert len(traffic.scored) == 500 and len(traffic.decisions) == 500
    result = replay(traffic, Candidate(task()), students(s))
    summary = result.summary()
    assert summary["matched"] == {"count": 500, "of": 500, "share": 1.0}, [
        (r.request_id, r.recorded_reasons, r.reasons) for r in result.rows if not r.matched
    ][:5]
    assert result.scored > 0  # the student's requests were re-scored, not copied
    recorded_side, replayed = summary["recorded"], summary["replay"]
    assert recorded_side["student_share"] == replayed["student_share"] > 0
    assert summary["flips"] == {}
    assert summary["teacher_labels"]["source"].startswith("OFFLINE STAND-IN")
    assert summary["feedback_labels"] == 40
    # Policy alone, on the recorded outputs: the same decisions, without the model.
    fast = replay(traffic, Candidate(task(), rescore=False), students(s))
    assert fast.scored == 0 and fast.summary()["matched"]["count"] == 500


def test_a_looser_candidate_policy_moves_escalations_to_the_student(recording: dict) -> None:
    s = recording["settings"]
    traffic = asyncio.run(recorded(s, Selection("acme", TASK)))
    loose = task().model_copy(
        update={
            "policy": task().policy.model_copy(
                update={
                    "thresholds": task().policy.thresholds.model_copy(update={"min_confidence": 0.0, "max_ood": 1e9})
                }
            )
        }
    )
    summary = replay(traffic, Candidate(loose), students(s)).summary()
    flips = summary["flips"]
    assert flips.get("teacher->student", 0) > 0 and "student->teacher" not in flips
    rep, rec = summary["replay"], summary["recorded"]
    assert rep["student_share"] > rec["student_share"]
    assert rep["teacher_calls"] < rec["teacher_calls"]
    # Requests the teacher answered and the candidate now accepts are measured against it.
    judged = rep["accepted_vs_teacher"]
    assert judged["n"] >= flips["teacher->student"] and 0 <= judged["interval95"][0] <= judged["accuracy"]
    per_call = summary["cost_per_teacher_call_usd"]
    assert per_call > 0 and rep["teacher_cost_usd"] == pytest.approx(rep["teacher_calls"] * per_call)


def test_a_version_is_not_judged_on_the_requests_it_learnt_from(recording: dict) -> None:
    s = recording["settings"]
    traffic = asyncio.run(recorded(s, Selection("acme", TASK)))
    newest = Registry.of(s).versions("acme", TASK)[-1]
    learnt = set((newest.folder / "trained_on.txt").read_text().split("\n"))
    result = replay(traffic, Candidate(task(), student=students(s)(newest.name)), students(s))
    rep = result.summary()["replay"]
    in_sample = {r.request_id for r in result.rows if r.in_sample}
    assert in_sample and in_sample <= learnt  # it was trained on teacher answers to this very traffic
    accepted = [r for r in result.rows if r.route == "student"]
    assert rep["accepted_in_sample"] == sum(r.request_id in learnt for r in accepted) > 0
    judged = [r for r in accepted if r.teacher_label is not None and r.request_id not in learnt]
    assert rep["accepted_vs_teacher"]["n"] == len(judged)
    assert rep["training_cases_unknown"] == 0


def cli(recording: dict, *args: str, command: str = "replay", tenant: str | None = "acme"):
    s = recording["settings"]
    env = {
        "PROTEGE_BOOTSTRAP_SERVERS": s.bootstrap_servers,
        "PROTEGE_TOPIC_PREFIX": s.topic_prefix,
        "PROTEGE_HOME": str(s.home),
        "PROTEGE_TASKS_DIR": str(REPO / "tests" / "tasks"),
        "PROTEGE_THREADS": "1",
    }
    who = ["--tenant", tenant] if tenant else []
    return CliRunner().invoke(app, [command, *who, "--task", TASK, *args], env=env)


def test_replay_command_writes_json_and_parquet(recording: dict, tmp_path: Path) -> None:
    done = cli(recording, "--json", str(tmp_path / "r.json"), "--parquet", str(tmp_path / "r.parquet"))
    assert done.exit_code == 0, done.output
    assert "student share" in done.output and "OFFLINE STAND-IN" in done.output
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["requests"] == 500 and summary["matched"]["share"] == 1.0
    con = duckdb.connect()
    n, matched, accepted = con.execute(
        f"select count(*), sum(matched::int), sum((route = 'student')::int) from '{tmp_path / 'r.parquet'}'"
    ).fetchone()
    assert (n, matched) == (500, 500)
    assert accepted == round(summary["replay"]["student_share"] * 500)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--tenant", "nobody"], "no recorded requests for nobody/ticket-triage"),
        (["--from", "2099-01-01"], "the range holds no requests at all"),
        (["--version", "v9999"], "no version 'v9999' of acme/ticket-triage"),
        (["--from", "yesterday"], "not an ISO time"),
    ],
)
def test_replay_command_says_what_is_wrong(recording: dict, args: list[str], says: str) -> None:
    done = cli(recording, *args)
    assert done.exit_code == 2, done.output
    assert says in done.output.replace("\n", " ")


def test_export_matches_the_topics_and_replays_without_a_broker(recording: dict, tmp_path: Path) -> None:
    s = recording["settings"]
    out = tmp_path / "export"
    done = cli(recording, "--out", str(out), command="export")
    assert done.exit_code == 0, done.output
    con = duckdb.connect()

    def rows(table: str) -> int:
        return con.execute(f"select count(*) from '{out / table}.parquet'").fetchone()[0]

    def on_topic(topic: str) -> int:
        events = [json.loads(r.value) for r in asyncio.run(read_all(s, getattr(s.topics, topic))) if r.value]
        return sum(e.get("tenant", e.get("request", {}).get("tenant")) == "acme" for e in events)

    assert rows("scored") == rows("requests") == on_topic("scored") == 500
    assert rows("decisions") == on_topic("decisions") == 500
    assert rows("responses") == on_topic("responses") == 500
    assert rows("teacher_results") == on_topic("teacher_results") > 0
    assert rows("feedback") == on_topic("feedback") == 40
    harvested = [HarvestCase.model_validate_json(r.value) for r in asyncio.run(read_all(s, s.topics.harvest))]
    assert rows("harvest") == sum(h.tenant == "acme" for h in harvested) > 0
    assert rows("announcements") == on_topic("models") > 0  # which versions served, for the report
    assert rows("alerts") == 0  # no alarm in this recording (the monitor does not run here)
    # Joined per request: the answer given and the latency to it, the teacher's cost where it answered.
    escalated, cost, slowest = con.execute(
        f"select count(*) filter (where route = 'teacher'), sum(teacher_cost_usd), max(latency_ms) "
        f"from '{out / 'requests'}.parquet'"
    ).fetchone()
    assert escalated == rows("teacher_results") and cost > 0 and slowest > 0
    texts = [t for (t,) in con.execute(f"select text from '{out / 'scored'}.parquet'").fetchall()]
    assert all(redact(t) == t for t in texts)  # PII-redacted by default
    # Replay on the folder: the same 500 decisions, no broker needed.
    traffic = read_export(out).traffic()
    assert replay(traffic, Candidate(task()), students(s)).summary()["matched"]["count"] == 500
    from_file = cli(recording, "--input", str(out))
    assert from_file.exit_code == 0 and "500/500" in from_file.output, from_file.output
    # The report on the folder: the same totals as on the topics, without a broker.
    page = tmp_path / "from-export.html"
    reported = cli(recording, "--input", str(out), "--out", str(page), command="report")
    assert reported.exit_code == 0, reported.output
    data = json.loads(page.with_suffix(".json").read_text())
    assert data["totals"]["requests"] == 500 and data["totals"]["teacher_calls_usd"] == pytest.approx(cost, abs=1e-5)
    assert data["drift"]["alarms"] == [] and {"trained", "promoted"} <= {e["event"] for e in data["versions"]}
    # assess on the folder: the same cases and measured costs as from the topics.
    assessed = cli(
        recording,
        "--input",
        str(out),
        "--threads",
        "1",
        "--json",
        str(tmp_path / "a.json"),
        command="assess",
        tenant=None,
    )
    assert assessed.exit_code == 0, assessed.output
    a = json.loads((tmp_path / "a.json").read_text())
    assert a["cases"] == rows("teacher_results") and a["signals"]["high_volume"]["c_t_source"].startswith("measured")


def test_assess_on_recorded_traffic(recording: dict, tmp_path: Path) -> None:
    """The five signals from the topics: teacher answers with arrival times, measured costs."""
    done = cli(recording, "--json", str(tmp_path / "a.json"), "--threads", "1", command="assess")
    assert done.exit_code == 0, done.output
    a = json.loads((tmp_path / "a.json").read_text())
    s = a["signals"]
    assert a["cases"] == len(asyncio.run(recorded(recording["settings"], Selection("acme", TASK))).teacher)
    assert s["stable"]["measured"] and s["high_volume"]["c_t_source"].startswith("measured")
    assert (
        s["high_volume"]["requests_per_day_source"].startswith("measured") and s["high_volume"]["requests_per_day"] > 0
    )
    assert [p["fraction"] for p in s["program_like"]["curve"]] == [0.1, 0.3, 1.0]
    assert "recommendation:" in done.output


def test_report_agrees_with_the_events_and_every_plot_draws_in_chromium(recording: dict, tmp_path: Path) -> None:
    """``protege report`` on the recorded traffic: its JSON against the topics, its page in a
    real browser (five plots, each with ink in the report's colours)."""
    s = recording["settings"]
    done = cli(recording, "--out", str(tmp_path / "r.html"), command="report")
    assert done.exit_code == 0, done.output
    data = json.loads((tmp_path / "r.json").read_text())
    t = data["totals"]
    responses = [Response.model_validate_json(r.value) for r in asyncio.run(read_all(s, s.topics.responses))]
    mine = [r for r in responses if r.tenant == "acme"]
    assert t["requests"] == len(mine) == 500
    assert t["student_answered"] == sum(r.route == "student" for r in mine) > 0
    results = [TeacherResult.model_validate_json(r.value) for r in asyncio.run(read_all(s, s.topics.teacher_results))]
    paid = sum(r.cost_usd for r in results if r.tenant == "acme")
    assert t["teacher_calls_usd"] == pytest.approx(paid, abs=1e-5)
    assert data["teacher"]["standin"] and data["throughput"]["per_s"] > 0
    assert sum(b["requests"] for b in data["over_time"]["buckets"]) == 500
    assert data["coverage"]["curve"]["operating_point"]["source"] == "task thresholds"  # the task sets no target
    assert {"trained", "promoted"} <= {e["event"] for e in data["versions"]}
    assert data["breakeven"]["c_t_usd"] > 0 and data["breakeven"]["inputs"]["fixed_usd"] == 2000
    seen = look(chromium(), tmp_path / "r.html", tmp_path)
    assert sorted(seen.plots) == ["breakeven", "cost", "coverage", "people", "share", "versions"]
    assert data["people"] is None  # no review sample: that plot says so (drawn on live traffic in test_review)
    for name, plot in seen.plots.items():
        if name != "people":
            assert plot.ink > 0.02 and plot.colours >= 2 and plot.marks > 10, (name, plot)


def test_replay_report_and_report_errors(recording: dict, tmp_path: Path) -> None:
    done = cli(
        recording, "--min-confidence", "0.3", "--report", str(tmp_path / "rr.html"), "--json", str(tmp_path / "s.json")
    )
    assert done.exit_code == 0, done.output
    data, summary = json.loads((tmp_path / "rr.json").read_text()), json.loads((tmp_path / "s.json").read_text())
    assert data["kind"] == "replay" and "policy: cascade" in data["candidate"]
    assert data["totals"]["student_share"] == pytest.approx(summary["replay"]["student_share"], abs=1e-4)
    assert data["drift"]["alarms_source"].startswith("raised by the drift monitor")
    nobody = cli(recording, "--tenant", "nobody", "--out", str(tmp_path / "n.html"), command="report")
    assert nobody.exit_code == 2 and "no recorded requests for nobody/ticket-triage" in nobody.output.replace("\n", " ")


def test_publish_writes_a_replay_namespace_and_offsets_select(recording: dict) -> None:
    """``--publish`` writes the replay under a prefix of its own (the live topics are not
    touched) which replay reads back like any recording; ``--offsets`` selects raw offsets."""
    s = recording["settings"]

    def acme(settings: Settings, topic: str) -> int:
        return sum(b'"acme"' in r.value for r in asyncio.run(read_all(settings, topic)) if r.value)

    live_before = acme(s, s.topics.decisions)
    prefix = f"{s.topic_prefix}cand."
    done = cli(recording, "--min-confidence", "0.3", "--publish", prefix, "--json", "/dev/null")
    assert done.exit_code == 0, done.output
    assert "published 500 scored, 500 decisions" in done.output.replace("\n", " ")
    assert acme(s, s.topics.decisions) == live_before == 500
    ns = s.model_copy(update={"topic_prefix": prefix})
    traffic = asyncio.run(recorded(ns, Selection("acme", TASK)))
    assert len(traffic.scored) == len(traffic.decisions) == 500
    loose = task().model_copy(
        update={
            "policy": task().policy.model_copy(
                update={"thresholds": task().policy.thresholds.model_copy(update={"min_confidence": 0.3})}
            )
        }
    )
    again = replay(traffic, Candidate(loose, rescore=False), students(s)).summary()
    assert again["matched"]["count"] == 500  # the namespace holds the candidate's decisions
    assert sum(d.route == "teacher" for d in traffic.decisions.values()) == len(traffic.teacher)
    twice = cli(recording, "--publish", prefix)
    assert twice.exit_code == 2 and "already holds a replay" in twice.output.replace("\n", " ")
    live = cli(recording, "--publish", s.topic_prefix)
    assert live.exit_code == 2 and "is the live namespace" in live.output.replace("\n", " ")
    # Raw offsets of the scored topic: exactly the acme records in that span.
    records = [r for r in asyncio.run(read_all(s, s.topics.scored)) if r.partition == 0 and b'"acme"' in r.value]
    first, end = records[10].offset, records[60].offset
    picked = cli(recording, "--offsets", f"0:{first}-{end}", "--json", str(recording["home"] / "o.json"))
    assert picked.exit_code == 0, picked.output
    assert json.loads((recording["home"] / "o.json").read_text())["requests"] == 50
    both = cli(recording, "--offsets", "0:1-2", "--last", "1h")
    assert both.exit_code == 2 and "not both" in both.output
