"""Which version serves: the announcements replayed in order, with operator pins."""

from __future__ import annotations

from protege.events import ModelAnnouncement
from protege.registry import Serving, serving_history


def ann(version: str, source: str = "trainer", pin: bool = False, action: str = "serve") -> ModelAnnouncement:
    return ModelAnnouncement(tenant="a", task="t", version=version, path="/x", labels=[], metrics={}, trained_on=1,
                             source=source, pin=pin, action=action, announced_at_ms=1)  # type: ignore[arg-type]


def test_trainer_versions_serve_in_order() -> None:
    assert serving_history([ann("v1"), ann("v2"), ann("v3")], "a", "t") == (["v1", "v2", "v3"], False)


def test_a_pin_holds_until_unpin() -> None:
    events = [ann("v1"), ann("v2"), ann("v1", "operator", pin=True), ann("v3"), ann("v4")]
    assert serving_history(events, "a", "t") == (["v1", "v2", "v1"], True)
    events += [ann("v1", "operator", action="unpin"), ann("v5")]
    assert serving_history(events, "a", "t") == (["v1", "v2", "v1", "v5"], False)


def test_operator_promote_does_not_pin_and_other_tasks_do_not_count() -> None:
    other = ModelAnnouncement(tenant="b", task="t", version="vX", path="/x", labels=[], metrics={}, trained_on=1,
                              announced_at_ms=1)
    events = [ann("v1"), ann("v2"), other, ann("v1", "operator"), ann("v3")]
    assert serving_history(events, "a", "t") == (["v1", "v2", "v1", "v3"], False)
    s = Serving()
    assert not s.applies(ann("v1", action="unpin"))
