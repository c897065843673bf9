"""Kafka wiring shared by every service: topic creation, the dead-letter helper, and the
exactly-once processing loop.

Error policy of the loop, stage by stage:

- decode: a record that is not a valid event becomes a ``DeadLetter`` (original bytes,
  reason code, detail) on the service's dead-letter topic; its offset commits with it.
- handle: the handler returns the records to produce. An unexpected exception aborts
  the transaction and ends the process; the supervisor (``protege up``, Kubernetes)
  restarts it and the records are read again from the last committed offset.
- produce: outputs and the input offsets commit in one Kafka transaction, so a restart
  at any point neither loses nor duplicates an output. Readers use ``read_committed``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from protege import metrics
from protege.errors import BrokerError
from protege.events import DeadLetter, Event, now_ms
from protege.settings import Settings


@dataclass(frozen=True)
class Out:
    """One record to produce."""

    topic: str
    value: bytes
    key: bytes | None = None

    @classmethod
    def of(cls, topic: str, event: Event, key: str | None) -> Out:
        return cls(topic, event.dumps(), key.encode() if key is not None else None)


Record: TypeAlias = ConsumerRecord  # [bytes, bytes]: keys and values are raw bytes
BatchHandler = Callable[[Sequence[Record]], Awaitable[list[Out]]]
CommitHook = Callable[[Sequence[Record]], Awaitable[None]]


def dead_letter(record: Record, reason: str, detail: str, service: str, topic: str, **ids: str | None) -> Out:
    letter = DeadLetter(
        reason=reason,
        detail=detail,
        service=service,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key_b64=base64.b64encode(record.key).decode() if record.key is not None else None,
        value_b64=base64.b64encode(record.value or b"").decode(),
        at_ms=now_ms(),
        **ids,
    )
    key = ids.get("request_id") or (record.key.decode(errors="replace") if record.key else None)
    metrics.DEAD_LETTERS.labels(service, reason).inc()
    return Out.of(topic, letter, key)


async def ensure_topics(settings: Settings, names: Sequence[str] | None = None) -> None:
    """Create protege's topics if they do not exist (idempotent)."""
    topics = settings.topics
    wanted = list(names or topics.all())
    admin = AIOKafkaAdminClient(**settings.kafka_kwargs())
    try:
        await admin.start()
    except KafkaConnectionError as e:
        await admin.close()
        how = settings.security_protocol + (f", SASL {settings.sasl_mechanism} as {settings.sasl_username!r}"
                                            if settings.sasl_mechanism else "")
        raise BrokerError(f"cannot reach Kafka at {settings.bootstrap_servers} over {how}: {e} (the client's log "
                          "line before this one says why: refused credentials, an untrusted certificate, ...)") from e
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(t, topics.partitions(t, settings.partitions), settings.replication_factor,
                     topic_configs=topics.configs(t))
            for t in wanted
            if t not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
        # A new topic takes a moment to elect leaders; producing before that fails.
        for _ in range(100):
            described = await admin.describe_topics(wanted)
            if all(t["error_code"] == 0 and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])
                   for t in described):
                break
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


def producer(settings: Settings, transactional_id: str | None = None, **kw: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **settings.kafka_kwargs(),
        enable_idempotence=True,
        transactional_id=transactional_id,
        linger_ms=kw.pop("linger_ms", 0),
        retry_backoff_ms=kw.pop("retry_backoff_ms", settings.retry_backoff_ms),
        **kw,
    )


def consumer(settings: Settings, *topics: str, group: str | None, **kw: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *topics,
        **settings.kafka_kwargs(),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        **kw,
    )


class Heartbeat:
    """A file touched while the loop turns; the liveness probe is ``protege health <service>``."""

    def __init__(self, path: Path, every: float = 5.0) -> None:
        self.path = path
        self.every = every
        self.last = 0.0
        path.parent.mkdir(parents=True, exist_ok=True)

    def beat(self) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.path.write_text(str(time.time()))
            self.last = now


class Processor:
    """Consume ``inputs``, hand each batch to ``handle``, produce its outputs exactly once."""

    def __init__(
        self,
        settings: Settings,
        service: str,
        inputs: Sequence[str],
        handle: BatchHandler,
        *,
        max_records: int = 500,
        max_wait_ms: int = 100,
        transaction_timeout_ms: int = 60_000,
        max_poll_interval_ms: int = 300_000,
        on_commit: CommitHook | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.inputs = list(inputs)
        self.handle = handle
        self.max_records = max_records
        self.max_wait_ms = max_wait_ms
        self.group = f"{settings.topic_prefix}protege-{service}"
        self.transactional_id = f"{self.group}-{settings.instance}"
        self.transaction_timeout_ms = transaction_timeout_ms
        self.max_poll_interval_ms = max_poll_interval_ms
        self.on_commit = on_commit  # after a batch's transaction committed (the teacher settles its journal)
        self.log = structlog.get_logger().bind(service=service)
        self.processed = 0

    async def run(self, stop: asyncio.Event) -> None:
        cons = consumer(self.settings, *self.inputs, group=self.group, max_poll_interval_ms=self.max_poll_interval_ms)
        prod = producer(self.settings, self.transactional_id, transaction_timeout_ms=self.transaction_timeout_ms)
        await prod.start()
        await cons.start()
        self.log.info("processing", inputs=self.inputs, group=self.group, transactional_id=self.transactional_id)
        heartbeat = Heartbeat(self.settings.home / "health" / self.service)
        try:
            while not stop.is_set():
                heartbeat.beat()
                batches = await cons.getmany(timeout_ms=self.max_wait_ms, max_records=self.max_records)
                records = [r for rs in batches.values() for r in rs]
                if not records:
                    continue
                started = time.perf_counter()
                async with prod.transaction():
                    outs = await self.handle(records)
                    for out in outs:
                        await prod.send(out.topic, out.value, key=out.key)
                    # The position, not last offset + 1: it has moved past transaction
                    # markers, so a caught-up group shows zero lag.
                    offsets = {tp: max(rs[-1].offset + 1, await cons.position(tp)) for tp, rs in batches.items()}
                    await prod.send_offsets_to_transaction(offsets, self.group)
                self.processed += len(records)
                if self.on_commit is not None:
                    await self.on_commit(records)
                self.observe(cons, batches, outs, time.perf_counter() - started)
        finally:
            await cons.stop()
            await prod.stop()
            self.log.info("stopped", processed=self.processed)


    def observe(self, cons: AIOKafkaConsumer, batches: dict[TopicPartition, list[Record]], outs: list[Out],
                seconds: float) -> None:
        """The loop's metrics, after the transaction committed."""
        metrics.BATCH_SIZE.labels(self.service).observe(sum(len(rs) for rs in batches.values()))
        metrics.HANDLE_SECONDS.labels(self.service).observe(seconds)
        for tp, rs in batches.items():
            metrics.RECORDS_IN.labels(self.service, tp.topic).inc(len(rs))
            end = cons.highwater(tp)
            if end is not None:
                metrics.CONSUMER_LAG.labels(self.service, tp.topic, str(tp.partition)).set(max(0, end - rs[-1].offset - 1))
        for out in outs:
            metrics.RECORDS_OUT.labels(self.service, out.topic).inc()


async def partitions_of(cons: AIOKafkaConsumer, topic: str) -> set[int]:
    """A topic's partitions, refreshing the consumer's metadata once if it has not seen the topic."""
    parts = cons.partitions_for_topic(topic)
    if not parts:
        await cons._client.force_metadata_update()  # no public API for this
        parts = cons.partitions_for_topic(topic)
    return set(parts or ())


async def read_all(settings: Settings, topic: str, *, since_ms: int | None = None, idle_ms: int = 500) -> list[Record]:
    """Every committed record now on ``topic``, from the beginning or from the first one
    appended at or after ``since_ms`` (no consumer group)."""
    cons = consumer(settings, group=None)
    await cons.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await partitions_of(cons, topic))]
        cons.assign(tps)
        end = await cons.end_offsets(tps)
        if since_ms is None:
            await cons.seek_to_beginning(*tps)
        else:
            found = await cons.offsets_for_times({tp: since_ms for tp in tps})
            for tp in tps:
                cons.seek(tp, found[tp].offset if found[tp] is not None else end[tp])
        out: list[Record] = []

        async def behind() -> bool:
            return any([await cons.position(tp) < end[tp] for tp in tps])

        while await behind():
            batch = await cons.getmany(timeout_ms=idle_ms)
            for rs in batch.values():
                out.extend(rs)
        return out
    finally:
        await cons.stop()
