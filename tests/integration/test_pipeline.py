"""The six services as processes on the real broker: exactly one response per request,
bad input in the dead-letter topic with reasons, one decision per request, replayable
decisions, one request followed across the services (``protege trace``), and
hypothesis-fuzzed payloads on the running services. (Kill -9 of each service,
with teacher calls counted, is in test_policies.)"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from protege.broker.embedded import EmbeddedBroker
from protege.cli import app
from protege.client import Answer, Client, ClientError, NoAnswer, Rejected
from protege.events import DeadLetter, Decision, Ingested, Scored
from protege.generator import generate, write_jsonl
from protege.harness import drive, summarize
from protege.pipeline import LocalPipeline
from protege.policy import recompute_verdict, router_for
from protege.state import read_all
from protege.student.runtime import Student
from protege.task import load_task
from protege.trace import trace
from tests.helpers import pipeline_env
from tests.unit.test_ingestion_fuzz import raw as fuzz_raw

pytestmark = pytest.mark.kafka
REPO = Path(__file__).resolve().parents[2]
TASK = "ticket-triage"


@pytest.fixture(scope="module")
def pipeline(
    kafka: EmbeddedBroker, backbone: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalPipeline]:
    home = tmp_path_factory.mktemp("pipeline")
    rows = generate(2000, seed=21)
    write_jsonl(rows, home / "labels.jsonl")
    env = pipeline_env(home / "labels.jsonl", backbone)
    with LocalPipeline(home, env=env, bootstrap=kafka.bootstrap, topic_prefix=f"it{int(time.time())}.") as p:
        p.rows = rows  # type: ignore[attr-defined]
        yield p


def run(p: LocalPipeline, rows: list[dict], tenant: str, **kw) -> dict:
    d = asyncio.run(drive(p.settings, rows, tenant=tenant, task=TASK, timeout=180, linger=3.0, **kw))
    return {"drive": d, "summary": summarize(d)}


BAD = {
    b"definitely not json": "invalid_json",
    b"[1, 2, 3]": "not_an_object",
    b'{"tenant": "acme", "task": "ticket-triage"}': "schema_violation",
    b'{"tenant": "acme", "task": "nope", "text": "hello"}': "unknown_task",
    json.dumps({"tenant": "acme", "task": TASK, "text": "y" * 5000}).encode(): "text_too_long",
    # The request that once stopped the pipeline: ~10 KB of nested arrays made the JSON parser
    # raise RecursionError, ingestion crashed on it again and again, and nothing behind it was
    # answered.
    b'{"tenant": "acme", "task": "ticket-triage", "text": "hi", "metadata": '
    + b"[" * 5000
    + b"]" * 5000
    + b"}": "too_deep",
    b'{"tenant": "acme", "task": "ticket-triage", "text": "hi", "sent_at_ms": ' + b"9" * 5000 + b"}": "invalid_json",
    b'{"tenant": "acme", "task": "ticket-triage", "text": "hi", "text": "other"}': "duplicate_key",
}


def test_each_request_answered_once_bad_input_dead_lettered(pipeline: LocalPipeline) -> None:
    rows = pipeline.rows[:300]  # type: ignore[attr-defined]
    out = run(pipeline, rows, "acme", rate=60, extra=list(BAD))
    s = out["summary"]
    assert (s["requests"], s["answered"], s["duplicates"]) == (300, 300, 0)
    assert s["teacher_share"] > 0 and s["accuracy"] > 0.9
    settings = pipeline.settings
    letters = [
        DeadLetter.model_validate_json(r.value) for r in asyncio.run(read_all(settings, settings.topics.requests_dlq))
    ]
    got = {base64.b64decode(x.value_b64): x.reason for x in letters}
    assert got == BAD
    assert all(x.service == "ingestion" and x.detail for x in letters)


def wait_for_model(p: LocalPipeline, tenant: str, timeout: float = 90) -> None:
    settings = p.settings
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        models = asyncio.run(read_all(settings, settings.topics.models))
        if any(json.loads(r.value)["tenant"] == tenant for r in models):
            time.sleep(3)  # the scorer loads it
            return
        time.sleep(1)
    raise AssertionError(f"no student announced for {tenant} in {timeout}s")


def test_one_decision_per_request_and_replay_recomputes_verdicts(pipeline: LocalPipeline) -> None:
    rows = pipeline.rows[300:700]  # type: ignore[attr-defined]
    first = run(pipeline, rows[:150], "replay", rate=80)["summary"]  # cold: the teacher answers, cases are harvested
    wait_for_model(pipeline, "replay")
    s = run(pipeline, rows[150:], "replay", rate=80)["summary"]
    assert (first["answered"] + s["answered"], first["duplicates"] + s["duplicates"]) == (400, 0)
    assert s["student_share"] > 0
    settings = pipeline.settings
    decisions = [
        Decision.model_validate_json(r.value) for r in asyncio.run(read_all(settings, settings.topics.decisions))
    ]
    mine = [d for d in decisions if d.tenant == "replay"]
    counts = Counter(d.request_id for d in mine)
    assert len(counts) == 400 and set(counts.values()) == {1}
    # Every recorded decision implies its own verdict ...
    assert all(recompute_verdict(d) == d.verdict for d in mine)
    # ... and replaying the requests through the same student version and policy gives the same verdicts.
    scored = {
        x.request.request_id: x
        for x in (Scored.model_validate_json(r.value) for r in asyncio.run(read_all(settings, settings.topics.scored)))
    }
    task = load_task(REPO / "tests" / "tasks" / f"{TASK}.yaml")
    router = router_for(task)
    versions = {d.model_version for d in mine if d.model_version}
    assert versions, "the trainer should have announced a student by now"
    registry = settings.home / "registry" / "replay" / TASK
    students = {v: Student(registry / v, providers="cpu") for v in versions}
    assert all(d.policy_version == task.policy.version for d in mine)
    for d in mine:
        original = scored[d.request_id]
        req: Ingested = original.request
        student = students[d.model_version].predict([req.text])[0] if d.model_version else None
        again = router.decide(Scored(request=req, student=student, scored_at_ms=0, batch_size=1), 0)
        assert again.verdict == d.verdict, (d, again)
        assert again.student_label == d.student_label


def test_trace_follows_a_request_across_services(pipeline: LocalPipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = pipeline.rows[700:730]  # type: ignore[attr-defined]
    s = run(pipeline, rows, "trace", rate=30)["summary"]
    assert (s["answered"], s["duplicates"]) == (30, 0)
    settings = pipeline.settings
    since = int((time.time() - 600) * 1000)
    routes = Counter()
    for row in rows[:12]:
        steps = asyncio.run(trace(settings, f"trace-{row['id']}", since_ms=since, tenant="trace"))
        topics = [step.topic for step in steps]
        assert topics[:4] == ["requests", "ingested", "scored", "decisions"], topics
        assert [step.writer for step in steps[:4]] == ["caller", "ingestion", "scorer", "verifier"]
        assert topics.count("responses") == 1 and topics.count("decisions") == 1
        assert [step.at_ms for step in steps] == sorted(step.at_ms for step in steps)
        if "teacher.requests" in topics:  # escalated: asked, answered, then the response
            assert topics.index("teacher.requests") < topics.index("teacher.results") < topics.index("responses")
        routes[steps[topics.index("responses")].event["route"]] += 1  # type: ignore[index]
    assert routes["teacher"] > 0  # a cold tenant: the teacher answered at least some
    monkeypatch.setenv("PROTEGE_BOOTSTRAP_SERVERS", settings.bootstrap_servers)
    monkeypatch.setenv("PROTEGE_TOPIC_PREFIX", settings.topic_prefix)
    out = CliRunner().invoke(app, ["trace", f"trace-{rows[0]['id']}", "--minutes", "10", "--json"])
    assert out.exit_code == 0, out.output
    assert [json.loads(line)["topic"] for line in out.stdout.splitlines()][:4] == [
        "requests",
        "ingested",
        "scored",
        "decisions",
    ]
    assert CliRunner().invoke(app, ["trace", "no-such-request", "--minutes", "10"]).exit_code == 1


def test_the_client_answers_each_request_once_with_back_pressure(pipeline: LocalPipeline) -> None:
    rows = pipeline.rows[800:860]  # type: ignore[attr-defined]
    labels = set(load_task(REPO / "tests" / "tasks" / f"{TASK}.yaml").answers)

    async def go() -> tuple[list[Answer], int, Client]:
        async with Client(pipeline.settings, tenant="client", task=TASK, timeout_s=120, max_in_flight=8) as client:
            peak = 0
            pending = []
            for row in rows:
                pending.append(await client.submit(row["text"], request_id=f"client-{row['id']}"))
                peak = max(peak, client.in_flight)
            answers = await asyncio.gather(*pending)
            assert client.in_flight == 0
            # Refused by ingestion: the dead letter's reason, not a timeout.
            with pytest.raises(Rejected) as refused:
                await client.ask("y" * 5000)
            assert refused.value.reason == "text_too_long"
            with pytest.raises(Rejected, match="unknown_task"):
                await client.ask("hello", task="no-such-task")
            # Too short a wait: NoAnswer (a TimeoutError), and the slot is free again.
            with pytest.raises(NoAnswer):
                await client.ask(rows[0]["text"], timeout_s=0)
            assert client.in_flight == 0
            return answers, peak, client

    answers, peak, client = asyncio.run(go())
    assert peak <= 8  # never more in flight than allowed
    assert [a.response.request_id for a in answers] == [f"client-{r['id']}" for r in rows]
    assert all(a.label in labels and a.response.status == "answered" and a.latency_ms > 0 for a in answers)
    assert client.in_flight == 0


def test_a_client_whose_reader_stopped_says_so(pipeline: LocalPipeline) -> None:
    async def go() -> None:
        async with Client(pipeline.settings, tenant="client", task=TASK) as client:
            assert client._reader is not None
            await client._reader.stop()  # as when the broker is gone for good: getmany raises
            for _ in range(50):
                if client._reading is not None and client._reading.done():
                    break
                await asyncio.sleep(0.1)
            with pytest.raises(ClientError, match="the response reader stopped"):
                await client.submit("hello")

    asyncio.run(go())


def test_protege_ask_and_kcat_speak_the_wire_contract(pipeline: LocalPipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = pipeline.settings
    monkeypatch.setenv("PROTEGE_BOOTSTRAP_SERVERS", settings.bootstrap_servers)
    monkeypatch.setenv("PROTEGE_TOPIC_PREFIX", settings.topic_prefix)
    text = pipeline.rows[900]["text"]  # type: ignore[attr-defined]
    out = CliRunner().invoke(app, ["ask", text, "--tenant", "cli", "--task", TASK, "--json", "--request-id", "ask-1"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout)
    assert got["response"]["request_id"] == "ask-1" and got["response"]["label"] and got["latency_ms"] > 0
    out = CliRunner().invoke(app, ["ask", text, "--tenant", "cli", "--task", "nope"])
    assert out.exit_code == 1 and "unknown_task" in out.output
    # A backend without Python: kcat (Debian's package) publishes, and reads the one answer back.
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.fail("kcat is missing: make test installs Debian's kcat package (scripts/ensure-debian-packages)")
    body = json.dumps({"request_id": "kcat-1", "tenant": "kcat", "task": TASK, "text": text})
    t, since = settings.topics, int(time.time() * 1000)  # as the README: read answers from this timestamp
    produced = subprocess.run(
        [kcat, "-P", "-b", settings.bootstrap_servers, "-t", t.requests, "-k", "kcat-1"],
        input=body + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert produced.returncode == 0, produced.stderr
    read = [kcat, "-C", "-b", settings.bootstrap_servers, "-t", t.responses, "-o", f"s@{since}", "-e", "-q"]
    read += ["-X", "isolation.level=read_committed", "-f", "%k\t%s\n"]
    deadline, mine = time.monotonic() + 60, []
    while not mine and time.monotonic() < deadline:
        lines = subprocess.run(read, capture_output=True, text=True, timeout=60).stdout.splitlines()
        mine = [json.loads(line.split("\t", 1)[1]) for line in lines if line.startswith("kcat-1\t")]
        time.sleep(0.5)
    assert len(mine) == 1 and mine[0]["tenant"] == "kcat" and mine[0]["label"], mine


@hyp_settings(
    max_examples=2,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
@given(st.lists(fuzz_raw, min_size=30, max_size=60))
def test_fuzzed_payloads_on_the_live_pipeline(pipeline: LocalPipeline, payloads: list[bytes]) -> None:
    """Whatever bytes arrive, on the running services: each record is dead-lettered with a
    reason or ingested, each ingested request is answered exactly once, no service dies."""
    from protege.harness import wait_quiet
    from protege.kafka import producer

    settings, t = pipeline.settings, pipeline.settings.topics
    assert pipeline.supervisor is not None
    restarts = {n: c.restarts for n, c in pipeline.supervisor.children.items()}
    since = int(time.time() * 1000)

    async def publish() -> set[tuple[int, int]]:
        prod = producer(settings)
        await prod.start()
        try:
            sent = [await prod.send_and_wait(t.requests, p) for p in payloads]
        finally:
            await prod.stop()
        return {(m.partition, m.offset) for m in sent}

    offsets = asyncio.run(publish())
    assert asyncio.run(wait_quiet(settings, {"ingestion": [t.requests]}, timeout=60))
    letters = [DeadLetter.model_validate_json(r.value) for r in asyncio.run(read_all(settings, t.requests_dlq))]
    dead = [x for x in letters if x.topic == t.requests and (x.partition, x.offset) in offsets]
    ingested = [
        Ingested.model_validate_json(r.value).request_id
        for r in asyncio.run(read_all(settings, t.ingested, since_ms=since))
    ]
    assert len(dead) + len(ingested) == len(payloads)  # nothing lost, nothing doubled
    assert all(x.reason and x.detail for x in dead)
    deadline = time.monotonic() + 90
    answers: Counter[str] = Counter()
    while time.monotonic() < deadline:
        answers = Counter(
            json.loads(r.value)["request_id"] for r in asyncio.run(read_all(settings, t.responses, since_ms=since))
        )
        if all(answers[i] for i in ingested):
            break
        time.sleep(1)
    assert all(answers[i] == 1 for i in ingested), {i: answers[i] for i in ingested if answers[i] != 1}
    assert {n: c.restarts for n, c in pipeline.supervisor.children.items()} == restarts
    assert all(c.proc.poll() is None for c in pipeline.supervisor.children.values())


def test_the_fused_layout_answers_each_request_once(kafka: EmbeddedBroker, backbone: Path, tmp_path: Path) -> None:
    """PROTEGE_FUSED=1: the scorer decides in its own transaction and no verifier runs; cold
    requests go to the teacher, a student answers once one is trained, one decision each, every
    scored event marked decided (a verifier passes those by: tests/unit/test_policies.py)."""
    rows = generate(600, seed=33)
    write_jsonl(rows, tmp_path / "labels.jsonl")
    env = pipeline_env(tmp_path / "labels.jsonl", backbone, PROTEGE_FUSED="1")
    with LocalPipeline(tmp_path, env=env, bootstrap=kafka.bootstrap, topic_prefix=f"fused{int(time.time())}.") as p:
        assert p.supervisor is not None and "verifier" not in p.supervisor.services
        assert "scorer" in p.supervisor.services
        first = run(p, rows[:150], "fused", rate=80)["summary"]
        wait_for_model(p, "fused")
        s = run(p, rows[150:450], "fused", rate=80)["summary"]
        assert (first["answered"] + s["answered"], first["duplicates"] + s["duplicates"]) == (450, 0)
        assert s["student_share"] > 0 and s["accuracy"] > 0.85
        settings = p.settings
        decisions = [
            Decision.model_validate_json(r.value) for r in asyncio.run(read_all(settings, settings.topics.decisions))
        ]
        assert Counter(Counter(d.request_id for d in decisions).values()) == {1: 450}
        scored = [Scored.model_validate_json(r.value) for r in asyncio.run(read_all(settings, settings.topics.scored))]
        assert len(scored) == 450 and all(x.decided for x in scored)
        assert {c.name: c.restarts for c in p.supervisor.children.values()} == dict.fromkeys(p.supervisor.services, 0)


def test_the_one_hop_layout_answers_each_request_once_and_refuses_bad_input(
    kafka: EmbeddedBroker, backbone: Path, tmp_path: Path
) -> None:
    """PROTEGE_ONE_HOP=1: the scorer reads protege.requests and ingests, scores and decides in
    one transaction; neither ingestion nor a verifier runs. Cold requests go to the teacher, a
    student answers once one is trained, one decision and one ingested event (marked scored)
    each, and bad input is refused on protege.requests.dlq with the same reasons as ingestion's."""
    rows = generate(600, seed=34)
    write_jsonl(rows, tmp_path / "labels.jsonl")
    env = pipeline_env(tmp_path / "labels.jsonl", backbone, PROTEGE_ONE_HOP="1")
    with LocalPipeline(tmp_path, env=env, bootstrap=kafka.bootstrap, topic_prefix=f"hop{int(time.time())}.") as p:
        assert p.supervisor is not None and not {"ingestion", "verifier"} & set(p.supervisor.services)
        assert "scorer" in p.supervisor.services
        first = run(p, rows[:150], "hop", rate=80, extra=list(BAD))["summary"]
        wait_for_model(p, "hop")
        s = run(p, rows[150:450], "hop", rate=80)["summary"]
        assert (first["answered"] + s["answered"], first["duplicates"] + s["duplicates"]) == (450, 0)
        assert s["student_share"] > 0 and s["accuracy"] > 0.85
        settings, t = p.settings, p.settings.topics
        letters = [DeadLetter.model_validate_json(r.value) for r in asyncio.run(read_all(settings, t.requests_dlq))]
        assert {base64.b64decode(x.value_b64): x.reason for x in letters} == BAD
        assert all(x.service == "scorer" and x.detail for x in letters)
        decisions = [Decision.model_validate_json(r.value) for r in asyncio.run(read_all(settings, t.decisions))]
        assert Counter(Counter(d.request_id for d in decisions).values()) == {1: 450}
        ingested = [Ingested.model_validate_json(r.value) for r in asyncio.run(read_all(settings, t.ingested))]
        assert len(ingested) == 450 and all(x.scored for x in ingested)
        scored = [Scored.model_validate_json(r.value) for r in asyncio.run(read_all(settings, t.scored))]
        assert len(scored) == 450 and all(x.decided for x in scored)
        steps = asyncio.run(trace(settings, ingested[-1].request_id, since_ms=0, tenant="hop"))
        assert [(s.topic, s.writer) for s in steps][:4] == [
            ("requests", "caller"),
            ("ingested", "scorer (one hop)"),
            ("scored", "scorer"),
            ("decisions", "scorer (decided there)"),
        ]
        assert {c.name: c.restarts for c in p.supervisor.children.values()} == dict.fromkeys(p.supervisor.services, 0)
