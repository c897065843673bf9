"""Which version serves: the announcements replayed in order, with operator pins
(``protege.serving``), and the registry's folders on disk (``protege.registry``)."""

from __future__ import annotations

from protege.events import ModelAnnouncement
from protege.serving import Serving


def ann(
    version: str, source: str = "trainer", pin: bool = False, action: str = "serve", tenant: str = "a"
) -> ModelAnnouncement:
    return ModelAnnouncement(
        tenant=tenant,
        task="t",
        version=version,
        path="/x",
        labels=[],
        metrics={},
        trained_on=1,
        source=source,
        pin=pin,
        action=action,
        announced_at_ms=1,
    )  # type: ignore[arg-type]


def replay(*events: ModelAnnouncement) -> Serving:
    serving = Serving()
    for e in events:
        serving.apply(e)
    return serving


def test_trainer_versions_serve_in_order() -> None:
    s = replay(ann("v1"), ann("v2"), ann("v3"))
    assert (s.history("a", "t"), s.is_pinned("a", "t")) == (["v1", "v2", "v3"], False)
    now = s.serving("a", "t")
    assert now is not None and now.version == "v3"


def test_a_pin_holds_until_unpin() -> None:
    events = [ann("v1"), ann("v2"), ann("v1", "operator", pin=True), ann("v3"), ann("v4")]
    s = replay(*events)
    assert (s.history("a", "t"), s.is_pinned("a", "t")) == (["v1", "v2", "v1"], True)
    s = replay(*events, ann("v1", "operator", action="unpin"), ann("v5"))
    assert (s.history("a", "t"), s.is_pinned("a", "t")) == (["v1", "v2", "v1", "v5"], False)


def test_operator_promote_does_not_pin_and_other_tasks_do_not_count() -> None:
    s = replay(ann("v1"), ann("v2"), ann("vX", tenant="b"), ann("v1", "operator"), ann("v3"))
    assert (s.history("a", "t"), s.is_pinned("a", "t")) == (["v1", "v2", "v1", "v3"], False)
    assert s.history("b", "t") == ["vX"]
    assert not Serving().apply(ann("v1", action="unpin"))
