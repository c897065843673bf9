"""The broker stops and starts mid-stream (data kept, same port): every request is still
answered exactly once. Services reconnect; one whose transaction broke exits and the
supervisor restarts it (crash-only), without losing or duplicating an answer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from protege.generator import generate, write_jsonl
from protege.harness import drive, summarize, supervised
from protege.pipeline import LocalPipeline

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def test_broker_restart_mid_stream_loses_nothing(tmp_path: Path, backbone: Path) -> None:
    rows = generate(500, seed=55)
    write_jsonl(rows, tmp_path / "labels.jsonl")
    env = {
        "PROTEGE_TASKS_DIR": str(REPO / "tests" / "tasks"),
        "PROTEGE_STANDIN_LABELS": str(tmp_path / "labels.jsonl"),
        "PROTEGE_MIN_CASES": "60",
        "PROTEGE_RETRAIN_EVERY": "100000",
        "PROTEGE_BACKBONE": str(backbone),
        "PROTEGE_THREADS": "1",
        "PROTEGE_TRAINER_THREADS": "1",
    }
    with LocalPipeline(tmp_path / "home", env=env) as p:  # its own broker: this test stops it
        assert p.broker is not None and p.supervisor is not None
        broker, supervisor = p.broker, p.supervisor

        async def restart_mid_stream() -> dict:
            stream = asyncio.create_task(
                drive(p.settings, rows, tenant="r", task="ticket-triage", rate=30, timeout=240, linger=5.0)
            )
            await asyncio.sleep(6)
            bootstrap = broker.bootstrap
            await asyncio.to_thread(broker.stop)
            await asyncio.sleep(4)
            assert await asyncio.to_thread(broker.start) == bootstrap  # same port: clients reconnect
            return summarize(await supervised(supervisor, stream))

        s = asyncio.run(restart_mid_stream())
    assert (s["requests"], s["answered"], s["duplicates"]) == (500, 500, 0)
