"""Shared fixtures.

``kafka`` starts one real Apache Kafka broker (the embedded KRaft node, jars resolved by
Maven) per test session on a free loopback port. Each test that uses ``settings`` gets a
unique topic prefix, so tests never see each other's events.

A test that uses the real student backbone (the ``backbone`` fixture: all-MiniLM-L6-v2
exported to ONNX, a minute on first use) is marked ``backbone``, wherever it lives: the
unit tests without I/O are ``-m "not kafka and not backbone"``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from protege.broker.embedded import EmbeddedBroker
from protege.kafka import ensure_topics
from protege.settings import Settings
from protege.student.backbone import cached_backbone

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "backbone" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.backbone)


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(tmp_path_factory.mktemp("broker"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def settings(kafka: EmbeddedBroker, tmp_path: Path) -> Settings:
    s = Settings(
        bootstrap_servers=kafka.bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        home=tmp_path / "home",
        tasks_dir=REPO / "tests" / "tasks",
        partitions=2,
    )
    asyncio.run(ensure_topics(s))
    return s


@pytest.fixture(scope="session")
def backbone() -> Path:
    """The real all-MiniLM-L6-v2 backbone exported to ONNX (cached across sessions)."""
    return cached_backbone()
