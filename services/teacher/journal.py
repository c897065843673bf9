"""The teacher's journal of paid answers: protege.teacher.journal, compacted, keyed by request.

A teacher call is paid for when the API answers, but its result only commits with the
batch's transaction. A worker killed between the two would read the same requests again
after its restart and pay for each of them twice. So every answer goes to the journal
(acks=all, outside the transaction) as soon as the API returns it; the worker looks a
request up there before it calls; and once a batch's transaction has committed, its
entries are deleted (tombstones: the topic is compacted, so it stays small). Every
replica tails the whole journal, so a partition that moves to another replica keeps its
paid answers.

What it cannot save: a call the API received but whose answer never reached the worker
(killed mid-call). The Messages API has no idempotency key to ask "did you answer this?".

An answer the teacher gave outside the label set, twice (its repair too), was paid for as
well: it is journaled under ``invalid:`` and its key, so the worker that reads the request
again dead-letters it and answers it from the student (or as failed) without a third call.

It also keeps the worker's *handled* marks. The worker answers each request as soon as
its call returns, in a transaction of its own, while calls that began earlier on the same
partition may still be running: the partition's committed offset can only move up to the
oldest of those. A request answered beyond that offset gets a mark (``handled:`` and its
topic, partition and offset) written in the same transaction as its answer, so a worker
that reads it again — after a crash, or on another replica after a rebalance — passes it
over instead of answering twice. Once the committed offset has passed it, the mark is
deleted too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import BaseModel, ValidationError

from protege.events import TeacherResult, Usage
from protege.kafka import Record, producer
from protege.settings import Settings
from protege.state import TopicView
from protege.teacher import TeacherAnswer


def key_of(tenant: str, request_id: str) -> str:
    return f"{tenant}/{request_id}"


HANDLED = "handled:"
INVALID = "invalid:"


def invalid_key(key: str) -> str:
    """The journal key of a paid answer that stayed outside the label set."""
    return f"{INVALID}{key}"


class PaidInvalid(BaseModel):
    """Teacher calls paid for whose answer stayed outside the label set (journal entry)."""

    error: str
    teacher: str
    standin: bool
    usage: Usage
    cost_usd: float
    latency_ms: float
    attempts: int

    @classmethod
    def of(cls, error: str, paid: TeacherAnswer) -> PaidInvalid:
        return cls(
            error=error,
            teacher=paid.model,
            standin=paid.standin,
            usage=paid.usage,
            cost_usd=paid.cost_usd,
            latency_ms=paid.latency_ms,
            attempts=paid.attempts,
        )


def handled_key(topic: str, partition: int, offset: int) -> str:
    """The mark of an input record answered beyond its partition's committed offset."""
    return f"{HANDLED}{topic}:{partition}:{offset}"


def answer_of(paid: TeacherResult) -> TeacherAnswer:
    """The teacher's answer as it was paid for, from its journal entry."""
    return TeacherAnswer(
        label=paid.label,
        rationale=paid.rationale,
        model=paid.teacher,
        standin=paid.standin,
        usage=paid.usage,
        cost_usd=paid.cost_usd,
        latency_ms=paid.latency_ms,
        attempts=paid.attempts,
        fields=paid.fields,
    )


class AnswerJournal:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.topics.teacher_journal
        self.answers: dict[str, TeacherResult] = {}
        self.invalid: dict[str, PaidInvalid] = {}  # invalid_key()s
        self.handled: set[str] = set()  # handled_key()s of records answered, not yet below the committed offset
        self.view = TopicView(settings, self.topic, self.apply)
        self.producer: AIOKafkaProducer | None = None
        self.log = structlog.get_logger().bind(service="teacher")

    async def run(self, stop: asyncio.Event) -> None:
        """Tail the journal from the beginning; ``caught_up`` is set once it has read to the end."""
        self.producer = producer(self.settings, acks="all")
        await self.producer.start()
        try:
            reading = asyncio.create_task(self.view.run(stop))
            await self.view.ready(reading)
            self.log.info("journal_read", unsettled=len(self.answers) + len(self.invalid))
            await reading
        finally:
            await self.producer.stop()

    @property
    def caught_up(self) -> asyncio.Event:
        return self.view.caught_up

    def apply(self, record: Record) -> None:
        if record.key is None:
            return
        key = record.key.decode()
        if key.startswith(HANDLED):
            if record.value is None:
                self.handled.discard(key)
            else:
                self.handled.add(key)
            return
        if record.value is None:
            self.answers.pop(key, None)
            self.invalid.pop(key, None)
            return
        try:
            if key.startswith(INVALID):
                self.invalid[key] = PaidInvalid.model_validate_json(record.value)
            else:
                self.answers[key] = TeacherResult.model_validate_json(record.value)
        except ValidationError as e:
            self.log.error("bad_journal_entry", key=key, offset=record.offset, error=str(e)[:300])

    def get(self, key: str) -> TeacherResult | None:
        return self.answers.get(key)

    def get_invalid(self, key: str) -> PaidInvalid | None:
        """The paid invalid answer for request ``key`` (a ``key_of``), if one is unsettled."""
        return self.invalid.get(invalid_key(key))

    async def put(self, key: str, result: TeacherResult) -> None:
        """Record a paid answer; returns once the broker has it (acks=all)."""
        assert self.producer is not None, "run() starts the journal"
        self.answers[key] = result
        await self.producer.send_and_wait(self.topic, result.dumps(), key=key.encode())

    async def put_invalid(self, key: str, entry: PaidInvalid) -> str:
        """Record a paid answer outside the label set for request ``key``; returns its journal key."""
        assert self.producer is not None, "run() starts the journal"
        journal_key = invalid_key(key)
        self.invalid[journal_key] = entry
        await self.producer.send_and_wait(self.topic, entry.model_dump_json().encode(), key=journal_key.encode())
        return journal_key

    async def settle(self, keys: Iterable[str]) -> None:
        """The answers for ``keys`` are committed: delete them from the journal. Best effort:
        an entry whose tombstone is lost only costs memory until the topic's retention."""
        assert self.producer is not None, "run() starts the journal"
        keys = list(keys)
        for key in keys:
            self.answers.pop(key, None)
            self.invalid.pop(key, None)
        try:
            sent = [await self.producer.send(self.topic, None, key=key.encode()) for key in keys]
            await asyncio.gather(*sent)
        except KafkaError as e:
            self.log.warning("journal_settle_failed", entries=len(keys), error=f"{type(e).__name__}: {e}")
