"""Replica names: the same service module, one process name each."""

from __future__ import annotations

import pytest

from protege.supervisor import SERVICES, service_of, with_replicas


def test_replicas_are_named_after_their_service() -> None:
    names = with_replicas({"scorer": 3, "verifier": 2})
    assert names == [
        "ingestion",
        "scorer",
        "scorer-2",
        "scorer-3",
        "verifier",
        "verifier-2",
        "teacher",
        "harvester",
        "trainer",
    ]
    assert [service_of(n) for n in names] == [
        "ingestion",
        *["scorer"] * 3,
        *["verifier"] * 2,
        "teacher",
        "harvester",
        "trainer",
    ]
    assert with_replicas({}) == SERVICES


def test_an_unknown_service_is_refused() -> None:
    with pytest.raises(ValueError, match="no such service"):
        with_replicas({"scorr": 2})
