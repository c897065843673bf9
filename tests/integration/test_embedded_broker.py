"""The embedded broker itself: a restart keeps port and data; any cluster id formats; the
load tests' latency probe."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from protege.broker.embedded import EmbeddedBroker, free_port
from protege.harness import time_records
from protege.kafka import ensure_topics, producer
from protege.settings import Settings
from protege.state import read_all

pytestmark = pytest.mark.kafka


def test_restart_keeps_port_and_data_and_a_dash_cluster_id_formats(tmp_path: Path) -> None:
    # Cluster ids are url-safe base64, so about 1 in 64 starts with "-": it must not parse as an option.
    (tmp_path / "broker.json").write_text(
        json.dumps({"port": free_port(), "controller_port": free_port(), "cluster_id": "-abcDEFghiJKLmnoPQRstu"})
    )
    broker = EmbeddedBroker(tmp_path)
    try:
        bootstrap = broker.start()
        assert broker.running()
        settings = Settings(bootstrap_servers=bootstrap, topic_prefix="restart.")
        asyncio.run(ensure_topics(settings, [settings.topics.requests]))

        async def write() -> None:
            prod = producer(settings, acks="all")
            await prod.start()
            try:
                for i in range(5):
                    await prod.send_and_wait(settings.topics.requests, f"kept-{i}".encode(), key=b"k")
            finally:
                await prod.stop()

        asyncio.run(write())
        broker.stop()
        assert not broker.running()
        assert broker.start() == bootstrap  # the same port ...
        kept = asyncio.run(read_all(settings, settings.topics.requests))
        assert [r.value for r in kept] == [f"kept-{i}".encode() for i in range(5)]  # ... and the same data
    finally:
        broker.stop()


def test_time_records_counts_every_record_once(settings: Settings) -> None:
    """The load tests' probe: every published record is timed once on arrival, at a rate or flat out."""
    topic = f"{settings.topic_prefix}probe"
    asyncio.run(ensure_topics(settings, [topic]))
    flat_out, _ = asyncio.run(time_records(settings, topic, topic, 40, None))
    paced, seconds = asyncio.run(time_records(settings, topic, topic, 20, 50.0))
    assert len(flat_out) == 40 and len(paced) == 20
    assert all(ms >= 0 for ms in flat_out + paced)
    assert seconds >= 19 / 50  # paced: the last record is sent no earlier than its slot


def test_the_brokers_cpu_splits_by_kind_of_thread(kafka: EmbeddedBroker) -> None:
    # What loadtests/stream_rates.py puts beside each phase: the JVM's whole thread names from
    # jcmd (the kernel keeps 15 characters), numbered threads summed into their kind.
    from protege.harness import cpu_seconds, java_thread_names, thread_cpu_seconds

    pid = kafka.pid()
    assert pid is not None
    names = java_thread_names(pid)
    assert "data-plane-kafka-request-handler-0" in names.values()
    kinds = thread_cpu_seconds(pid, names)
    assert "data-plane-kafka-request-handler" in kinds and "data-plane-kafka-request-handler-0" not in kinds
    assert sum(kinds.values()) <= (cpu_seconds(pid) or 0) + 0.05  # threads that ended are not counted
    cut = thread_cpu_seconds(pid)  # without jcmd's names: the kernel's
    assert "data-plane-kafk" in cut and sum(cut.values()) == pytest.approx(sum(kinds.values()), abs=0.5)
