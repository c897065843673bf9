"""A three-node KRaft cluster (every partition on three nodes, min.insync.replicas 2): the
node that leads the most of protege's partitions is killed with kill -9 mid-stream and
started again, then the new busiest leader is stopped (a controlled shutdown, as a rolling
restart does) and started again. Nothing is lost, nothing is answered twice, and the
services find the new leaders by themselves."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from protege.broker.embedded import EmbeddedCluster
from protege.events import Decision
from protege.generator import generate, write_jsonl
from protege.harness import drive, summarize, supervised
from protege.pipeline import LocalPipeline
from protege.settings import Settings
from protege.state import read_all
from tests.helpers import pipeline_env

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
TASK = "ticket-triage"


async def leaders(settings: Settings) -> Counter[int]:
    """How many of protege's partitions each node leads, and the replica sets they sit on."""
    admin = AIOKafkaAdminClient(**settings.kafka_kwargs())
    await admin.start()
    try:
        described = await admin.describe_topics(settings.topics.all())
    finally:
        await admin.close()
    led: Counter[int] = Counter()
    for topic in described:
        for part in topic["partitions"]:
            assert len(part["replicas"]) == 3, part
            if part["leader"] >= 0:
                led[part["leader"]] += 1
    return led


async def fully_replicated(settings: Settings, timeout: float = 60.0) -> None:
    """Wait until every partition is back on all three nodes (a rolling restart waits for it too)."""
    admin = AIOKafkaAdminClient(**settings.kafka_kwargs())
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            described = await admin.describe_topics(settings.topics.all())
            if all(len(p["isr"]) == 3 for t in described for p in t["partitions"]):
                return
            await asyncio.sleep(0.5)
        raise AssertionError("partitions did not get back to three in-sync replicas")
    finally:
        await admin.close()


def test_leader_stopped_mid_stream_loses_nothing_and_answers_once(tmp_path: Path, backbone: Path) -> None:
    rows = generate(1800, seed=16)  # 72 s at 25/s: both bounces fall inside the stream
    write_jsonl(rows, tmp_path / "labels.jsonl")
    env = pipeline_env(tmp_path / "labels.jsonl", backbone)
    turns: list[str] = []
    with LocalPipeline(tmp_path / "home", env=env, brokers=3, partitions=3) as p:
        cluster = p.broker
        assert isinstance(cluster, EmbeddedCluster) and p.supervisor is not None
        sup = p.supervisor
        assert p.settings.replication_factor == 3

        async def bounce(how: str, stream: asyncio.Task) -> None:
            assert not stream.done(), f"the stream ended before the {how}"
            led = await leaders(p.settings)
            node_id, count = led.most_common(1)[0]
            node = cluster.node(node_id)
            await asyncio.to_thread(node.kill if how == "kill -9" else node.stop)
            turns.append(f"{time.strftime('%H:%M:%S')} node {node_id} ({count} leaderships) {how}")
            await asyncio.sleep(8)
            await asyncio.to_thread(node.start)
            turns.append(f"{time.strftime('%H:%M:%S')} node {node_id} started again")
            await fully_replicated(p.settings)
            turns.append(f"{time.strftime('%H:%M:%S')} all partitions on 3 in-sync replicas")

        async def run() -> dict:
            stream = asyncio.create_task(
                drive(p.settings, rows, tenant="ha", task=TASK, rate=25, timeout=300, linger=5.0)
            )

            async def chaos() -> None:
                await asyncio.sleep(6)
                await bounce("kill -9", stream)
                await bounce("stop", stream)

            turmoil = asyncio.create_task(chaos())
            result = await supervised(sup, stream)
            await turmoil
            return summarize(result)

        s = asyncio.run(run())
        decisions = Counter(
            Decision.model_validate_json(r.value).request_id
            for r in asyncio.run(read_all(p.settings, p.settings.topics.decisions))
        )
        restarts = {name: c.restarts for name, c in sup.children.items() if c.restarts}
    print(
        f"\n3-node cluster: {s['answered']}/{s['requests']} answered, {s['duplicates']} twice; {turns}; restarts {restarts}"
    )
    assert (s["requests"], s["answered"], s["duplicates"]) == (1800, 1800, 0), (s, turns)
    assert set(decisions) == {f"ha-{r['id']}" for r in rows} and set(decisions.values()) == {1}
    assert len(turns) == 6
