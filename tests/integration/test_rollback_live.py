"""`protege models rollback` in the middle of a live stream: the running scorer swaps back
without a restart, and every request is answered exactly once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from protege.broker.embedded import EmbeddedBroker
from protege.cli import app
from protege.events import Scored
from protege.generator import generate, write_jsonl
from protege.harness import drive, summarize
from protege.pipeline import LocalPipeline
from protege.state import read_all
from protege.student.runtime import Encoder
from protege.student.train import Case, EmbeddingCache, FastRecipe, train_version
from protege.task import load_task

pytestmark = pytest.mark.kafka
REPO = Path(__file__).resolve().parents[2]


def test_rollback_mid_stream(
    kafka: EmbeddedBroker, backbone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    rows = generate(1400, seed=41)
    write_jsonl(rows, home / "labels.jsonl")
    task = load_task(REPO / "tests" / "tasks" / "ticket-triage.yaml")
    recipe = FastRecipe(EmbeddingCache(Encoder(backbone / "model.onnx", backbone / "tokenizer.json")), backbone)
    cases = [Case(r["id"], r["text"], r["label"]) for r in rows[:600]]
    v1 = train_version(cases[:300], recipe=recipe, registry=home / "registry", tenant="roll", task=task)
    v2 = train_version(cases, recipe=recipe, registry=home / "registry", tenant="roll", task=task)
    assert v1.promoted and v2.promoted and v1.version != v2.version
    env = {
        "PROTEGE_TASKS_DIR": str(REPO / "tests" / "tasks"),
        "PROTEGE_STANDIN_LABELS": str(home / "labels.jsonl"),
        "PROTEGE_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    services = ["ingestion", "scorer", "verifier", "teacher", "harvester"]  # no trainer: only our two versions
    prefix = f"roll{int(time.time())}."
    with LocalPipeline(home, env=env, bootstrap=kafka.bootstrap, topic_prefix=prefix, services=services) as p:
        settings = p.settings
        for key, value in {
            "PROTEGE_BOOTSTRAP_SERVERS": kafka.bootstrap,
            "PROTEGE_TOPIC_PREFIX": prefix,
            "PROTEGE_HOME": str(home),
        }.items():
            monkeypatch.setenv(key, value)
        cli = CliRunner()
        args = ["--tenant", "roll", "--task", task.name]
        for v in (v1, v2):
            assert cli.invoke(app, ["models", "promote", v.version, *args]).exit_code == 0
        assert p.supervisor is not None
        scorer_pid = p.supervisor.children["scorer"].proc.pid
        # The scorer has read both promotions and is scoring (its loop's heartbeat) before the
        # stream starts: on a loaded machine its start alone took longer than the 10 s below.
        deadline = time.monotonic() + 120
        while not (home / "health" / "scorer").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (home / "health" / "scorer").exists(), "the scorer never started its loop"

        async def scenario() -> tuple[object, float]:
            stream = asyncio.create_task(
                drive(settings, rows[600:], tenant="roll", task=task.name, rate=40, timeout=180, linger=3.0)
            )
            await asyncio.sleep(10)
            rolled = await asyncio.to_thread(cli.invoke, app, ["models", "rollback", *args])
            assert rolled.exit_code == 0, rolled.output
            at = time.time()
            return await stream, at

        d, rolled_at = asyncio.run(scenario())
        scored = [Scored.model_validate_json(r.value) for r in asyncio.run(read_all(settings, settings.topics.scored))]
        assert p.supervisor.children["scorer"].proc.pid == scorer_pid
        assert p.supervisor.children["scorer"].restarts == 0

    s = summarize(d)  # type: ignore[arg-type]
    assert s["answered"] == s["requests"] == 800 and s["duplicates"] == 0
    mine = [x for x in scored if x.request.tenant == "roll" and x.student is not None]
    assert len({x.request.request_id for x in mine}) == len(mine)  # scored once each
    before = [x.student.model_version for x in mine if x.scored_at_ms < (rolled_at - 1) * 1000]  # type: ignore[union-attr]
    after = [x.student.model_version for x in mine if x.scored_at_ms > (rolled_at + 2) * 1000]  # type: ignore[union-attr]
    assert before and set(before[-50:]) == {v2.version}
    assert after and set(after) == {v1.version}
