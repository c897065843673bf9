"""Kafka wiring shared by every service: topic creation, the dead-letter helper, and the
exactly-once processing loop.

Error policy of the loop, stage by stage:

- decode: a record that is not a valid event becomes a ``DeadLetter`` (original bytes,
  reason code, detail) on the service's dead-letter topic; its offset commits with it.
- handle: the handler returns the records to produce. If it raises, the transaction is
  aborted and the batch is handled again one record at a time, each in its own
  transaction. A record that still fails after ``max_attempts`` tries (with backoff) is
  *quarantined*: a ``DeadLetter`` with reason ``quarantined`` (the service, the exception,
  the original bytes) goes to the dead-letter topic, with the service's ``fallback``
  outputs (e.g. a ``failed`` answer, so the request is still answered once), and the
  partition moves on. One bad record never stops a service. Errors of the broker itself
  (``KafkaError``, connection and timeout errors) are not the record's fault: they end the
  process and the supervisor (``protege up``, Kubernetes) restarts it, reading again from
  the last committed offset.
- produce: outputs and the input offsets commit in one Kafka transaction, so a restart
  at any point neither loses nor duplicates an output. Readers use ``read_committed``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

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
Fallback = Callable[[Record, str], list[Out]]  # what to produce for a quarantined record, besides the letter
INFRASTRUCTURE = (KafkaError, ConnectionError, TimeoutError)  # not a record's fault: restart, do not quarantine


class HandlerFailed(Exception):
    """The handler raised on a batch (internal to the loop: ``error`` is what it raised)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error


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
    await _wait_until_led(settings, wanted)


async def _wait_until_led(settings: Settings, topics: Sequence[str]) -> None:
    """Ask every partition's leader for its end offset until all answer.

    A leader in the metadata is not yet a leader that serves: on a new topic, the first
    produce requests got NotLeaderForPartition and NotEnoughReplicas for up to a second
    (measured on the embedded broker), which every client logs as a warning. Its own
    retries are expected here, so aiokafka's warnings are held back while it waits.
    """
    log = logging.getLogger("aiokafka")
    level = log.level
    log.setLevel(max(level, logging.ERROR))
    cons = consumer(settings, group=None)
    try:
        await cons.start()
        tps = [TopicPartition(t, p) for t in topics for p in sorted(await partitions_of(cons, t))]
        await cons.end_offsets(tps)
    finally:
        await cons.stop()
        log.setLevel(level)


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
        dead_letters: str | None = None,
        fallback: Fallback | None = None,
        max_attempts: int = 3,
        retry_backoff_s: float = 0.2,
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
        self.dead_letters = dead_letters or settings.topics.dlq
        self.fallback = fallback
        self.max_attempts = max_attempts
        self.retry_backoff_s = retry_backoff_s
        self.quarantined = 0
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
                # The position, not last offset + 1: it has moved past transaction markers,
                # so a caught-up group shows zero lag.
                ends = {tp: max(rs[-1].offset + 1, await cons.position(tp)) for tp, rs in batches.items()}
                try:
                    outs = await self.commit(prod, records, ends)
                except HandlerFailed as failed:
                    self.log.warning("batch_failed", records=len(records), error=str(failed))
                    outs = await self.one_by_one(prod, batches, ends)
                self.observe(cons, batches, outs, time.perf_counter() - started)
        finally:
            await cons.stop()
            await prod.stop()
            self.log.info("stopped", processed=self.processed, quarantined=self.quarantined)

    async def handled(self, records: Sequence[Record]) -> list[Out]:
        try:
            return await self.handle(records)
        except INFRASTRUCTURE:
            raise
        except Exception as e:
            raise HandlerFailed(e) from e

    async def commit(self, prod: AIOKafkaProducer, records: Sequence[Record],
                     offsets: dict[TopicPartition, int]) -> list[Out]:
        """Handle ``records`` and commit their outputs with ``offsets`` in one transaction."""
        async with prod.transaction():
            outs = await self.handled(records)
            for out in outs:
                await prod.send(out.topic, out.value, key=out.key)
            await prod.send_offsets_to_transaction(offsets, self.group)
        self.processed += len(records)
        if self.on_commit is not None:
            await self.on_commit(records)
        return outs

    async def one_by_one(self, prod: AIOKafkaProducer, batches: dict[TopicPartition, list[Record]],
                         ends: dict[TopicPartition, int]) -> list[Out]:
        """A batch failed: handle its records one at a time, in order, quarantining what keeps failing."""
        outs: list[Out] = []
        for tp, rs in batches.items():
            for i, record in enumerate(rs):
                offsets = {tp: ends[tp] if i == len(rs) - 1 else record.offset + 1}
                outs.extend(await self.isolate(prod, record, offsets))
        return outs

    async def isolate(self, prod: AIOKafkaProducer, record: Record, offsets: dict[TopicPartition, int]) -> list[Out]:
        error: Exception | None = None
        for attempt in range(1, self.max_attempts + 1):
            try:
                return await self.commit(prod, [record], offsets)
            except HandlerFailed as failed:
                error = failed.error
                self.log.warning("record_failed", topic=record.topic, partition=record.partition,
                                 offset=record.offset, attempt=attempt, error=str(failed))
                if attempt < self.max_attempts:
                    await asyncio.sleep(self.retry_backoff_s * 2 ** (attempt - 1))
        assert error is not None
        return await self.quarantine(prod, record, offsets, error)

    async def quarantine(self, prod: AIOKafkaProducer, record: Record, offsets: dict[TopicPartition, int],
                         error: Exception) -> list[Out]:
        detail = (f"{self.service} raised {type(error).__name__}: {error} on each of {self.max_attempts} "
                  "attempts")[:1000]
        outs = [dead_letter(record, "quarantined", detail, self.service, self.dead_letters)]
        if self.fallback is not None:
            try:
                outs.extend(self.fallback(record, detail))
            except Exception as e:  # the letter alone still goes out
                self.log.error("fallback_failed", offset=record.offset, error=f"{type(e).__name__}: {e}")
        async with prod.transaction():
            for out in outs:
                await prod.send(out.topic, out.value, key=out.key)
            await prod.send_offsets_to_transaction(offsets, self.group)
        self.processed += 1
        self.quarantined += 1
        metrics.QUARANTINED.labels(self.service).inc()
        self.log.error("quarantined", topic=record.topic, partition=record.partition, offset=record.offset,
                       dead_letters=self.dead_letters, error=f"{type(error).__name__}: {error}"[:300],
                       exc_info=error)
        return outs

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
