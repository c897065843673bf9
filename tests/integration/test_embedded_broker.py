"""The embedded broker itself: restart keeps port and data; any cluster id formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protege.broker.embedded import EmbeddedBroker, free_port

pytestmark = pytest.mark.kafka


def test_cluster_id_starting_with_a_dash_formats(tmp_path: Path) -> None:
    # Cluster ids are url-safe base64, so about 1 in 64 starts with "-": it must not parse as an option.
    (tmp_path / "broker.json").write_text(json.dumps(
        {"port": free_port(), "controller_port": free_port(), "cluster_id": "-abcDEFghiJKLmnoPQRstu"}))
    broker = EmbeddedBroker(tmp_path)
    try:
        bootstrap = broker.start()
        assert broker.running()
        broker.stop()
        assert not broker.running()
        assert broker.start() == bootstrap  # same port and data after a restart
    finally:
        broker.stop()
