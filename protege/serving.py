"""Which student version serves each tenant's task: one view of ``protege.models``.

The announcements on ``protege.models`` (one partition, read from the beginning) decide;
``Serving`` applies them in order. The trainer's versions serve as they come, unless an
operator pinned one (``protege models pin`` or ``rollback``); an operator's announcement
always applies, and while a pin holds the trainer's versions and the monitor's verdicts do
not; ``unpin`` lets the trainer's next version through. A ``canary`` serves a share of
requests beside the serving version until a ``serve`` of it (promoted) or an ``abort``
(rolled back), which the monitor announces; any version serving all requests, or a pin,
ends the trial. The scorer, the trainer
(the version a candidate is gated against) and the CLI (``protege models``) all read it
through this module; a scorer and the trainer keep it live (``view``), the CLI reads it once
(``read_serving``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from aiokafka.errors import KafkaConnectionError

from protege.errors import BrokerError, InvalidEvent
from protege.events import ModelAnnouncement
from protege.kafka import Record
from protege.serde import decode
from protege.settings import Settings
from protege.state import TopicView, read_all

Key = tuple[str, str]  # (tenant, task)


@dataclass
class Serving:
    """The serving state of every (tenant, task), from the announcements applied so far."""

    pinned: set[Key] = field(default_factory=set)
    current: dict[Key, ModelAnnouncement] = field(default_factory=dict)
    histories: dict[Key, list[str]] = field(default_factory=dict)
    canaries: dict[Key, ModelAnnouncement] = field(default_factory=dict)  # versions on trial
    announced: set[tuple[str, str, str]] = field(default_factory=set)  # (tenant, task, version) read so far

    def apply(self, ann: ModelAnnouncement) -> bool:
        """Apply one announcement; True when it changed what serves (a version serving all
        requests, or a canary starting or ending)."""
        key = (ann.tenant, ann.task)
        self.announced.add((ann.tenant, ann.task, ann.version))
        if ann.action == "unpin":
            self.pinned.discard(key)
            return False
        if ann.action == "abort":
            trial = self.canaries.get(key)
            if trial is None or trial.version != ann.version:
                return False
            del self.canaries[key]
            return True
        if ann.source != "operator" and key in self.pinned:
            return False
        if ann.action == "canary":
            if key not in self.current:  # nothing to compare with: it serves outright
                ann = ann.model_copy(update={"action": "serve", "share": None})
            else:
                self.canaries[key] = ann
                return True
        self.canaries.pop(key, None)  # a version serving all requests (or a pin) ends any trial
        if ann.pin:
            self.pinned.add(key)
        else:
            self.pinned.discard(key)
        self.current[key] = ann
        history = self.histories.setdefault(key, [])
        if not history or history[-1] != ann.version:
            history.append(ann.version)
        return True

    def serving(self, tenant: str, task: str) -> ModelAnnouncement | None:
        return self.current.get((tenant, task))

    def canary(self, tenant: str, task: str) -> ModelAnnouncement | None:
        """The version on trial, if one is."""
        return self.canaries.get((tenant, task))

    def history(self, tenant: str, task: str) -> list[str]:
        """The versions that served, oldest first."""
        return list(self.histories.get((tenant, task), []))

    def has_read(self, tenant: str, task: str, version: str) -> bool:
        """Whether an announcement of ``version`` has been applied (whatever its action)."""
        return (tenant, task, version) in self.announced

    def is_pinned(self, tenant: str, task: str) -> bool:
        return (tenant, task) in self.pinned


def view(
    settings: Settings, serving: Serving, on_serve: Callable[[ModelAnnouncement], Awaitable[None]] | None = None
) -> TopicView:
    """``serving`` kept live from ``protege.models``; ``on_serve`` is called for each
    announcement that (now) serves (the scorer loads it)."""
    log = structlog.get_logger()

    async def apply(record: Record) -> None:
        try:
            ann = decode(ModelAnnouncement, record.value)
        except InvalidEvent as e:
            log.error("bad_announcement", reason=e.reason, detail=e.detail, offset=record.offset)
            return
        if serving.apply(ann):
            if on_serve is not None:
                await on_serve(ann)
        else:
            log.info(
                "not_applied",
                tenant=ann.tenant,
                task=ann.task,
                version=ann.version,
                action=ann.action,
                pinned=serving.is_pinned(ann.tenant, ann.task),
            )

    return TopicView(settings, settings.topics.models, apply)


async def read_serving(settings: Settings) -> Serving:
    """The serving state as ``protege.models`` has it now (read once)."""
    serving = Serving()
    try:
        records = await read_all(settings, settings.topics.models)
    except KafkaConnectionError as e:
        raise BrokerError(f"cannot reach Kafka at {settings.bootstrap_servers}: {e}") from None
    for record in records:
        serving.apply(ModelAnnouncement.model_validate_json(record.value))
    return serving
