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


def test_a_layout_leaves_out_the_services_its_scorer_does_the_work_of() -> None:
    from protege.supervisor import layout

    names = [*with_replicas({"ingestion": 2, "verifier": 2}), "monitor"]
    assert layout(names, {}) == names
    assert layout(names, {"PROTEGE_FUSED": "0", "PROTEGE_ONE_HOP": "false"}) == names
    fused = ["ingestion", "ingestion-2", "scorer", "teacher", "harvester", "trainer", "monitor"]
    assert layout(names, {"PROTEGE_FUSED": "1"}) == fused
    assert layout(names, {"PROTEGE_ONE_HOP": "yes"}) == fused[2:]
    assert layout(names, {"PROTEGE_ONE_HOP": "1", "PROTEGE_FUSED": "1"}) == fused[2:]


def test_the_layout_flags_of_protege_up_and_demo_choose_the_processes() -> None:
    from protege.cli.root import layout_env
    from protege.supervisor import layout

    assert layout_env(False, False) == {}
    assert layout(SERVICES, layout_env(True, False)) == ["ingestion", "scorer", "teacher", "harvester", "trainer"]
    assert layout(SERVICES, layout_env(False, True)) == ["scorer", "teacher", "harvester", "trainer"]
