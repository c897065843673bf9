"""Kafka wiring shared by every service: topic creation, the dead-letter helper, and the
exactly-once processing loop.

Error policy of the loop, stage by stage:

- decode: the loop is given the event type of each input topic and decodes every record
  itself (``protege.serde``: any bytes give an event or a reason). A record that is not a
  valid event, or names a task the service does not have, becomes a ``DeadLetter``
  (original bytes, reason code, detail) on the service's dead-letter topic, in the same
  transaction as the batch's outputs and offsets. Handlers never see bytes.
- handle: the handler gets the batch's typed events (``Received``: the event and where it
  came from) and returns the records to produce. If it raises, the transaction is
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
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaConnectionError,
    KafkaError,
    ProducerFenced,
    TopicAlreadyExistsError,
)

from protege import metrics
from protege.errors import BrokerError, InvalidEvent
from protege.events import DeadLetter, Event, now_ms
from protege.serde import decode
from protege.settings import Settings


@dataclass(frozen=True)
class Out:
    """One record to produce."""

    topic: str
    value: bytes
    key: bytes | None = None

    @classmethod
    def of(cls, topic: str, event: Event, key: str | None = None) -> Out:
        """``event`` on ``topic``, under ``key`` or else the event's own key (``Event.key``)."""
        key = key if key is not None else event.key
        return cls(topic, event.dumps(), key.encode() if key is not None else None)


E = TypeVar("E", bound=Event)
Record: TypeAlias = ConsumerRecord  # [bytes, bytes]: keys and values are raw bytes


class Source(Protocol):
    """Where bytes came from: a consumed record, or a received event."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True)
class Received(Generic[E]):
    """One decoded input: the typed event, and the record it came from."""

    event: E
    topic: str = ""
    partition: int = 0
    offset: int = 0
    key: bytes | None = None
    value: bytes = b""  # the original bytes, for a dead letter

    @property
    def coordinates(self) -> tuple[str, int, int]:
        return self.topic, self.partition, self.offset


BatchHandler = Callable[[Sequence[Received[Any]]], Awaitable[list[Out]]]
CommitHook = Callable[[Sequence[Received[Any]]], Awaitable[None]]
IdleHook = Callable[[], Awaitable[list[Out]]]
Fallback = Callable[[Received[Any], str], list[Out]]  # what to produce for a quarantined record, besides the letter
INFRASTRUCTURE = (KafkaError, ConnectionError, TimeoutError)  # not a record's fault: restart, do not quarantine
FENCED = (ProducerFenced, InvalidProducerEpoch)  # another replica owns the partition now


def record(topic: str, value: bytes | None, key: bytes | None = None, *, partition: int = 0, offset: int = 0) -> Record:
    """A consumed record as aiokafka gives it (what the loop decodes; tests and probes build them)."""
    return ConsumerRecord(topic, partition, offset, 0, 0, key, value, None, len(key or b""), len(value or b""), ())


def receive(
    records: Sequence[Source],
    inputs: Mapping[str, type[Event]],
    *,
    service: str,
    dead_letters: str,
    tasks: Collection[str] | None = None,
) -> tuple[list[Received[Any]], list[Out]]:
    """Decode records into typed events, and dead letters for those that are not one (never raises).

    With ``tasks``, an event about another task is a dead letter (``unknown_task``) too.
    """
    received: list[Received[Any]] = []
    letters: list[Out] = []
    for r in records:
        try:
            event = decode(inputs[r.topic], r.value)
        except InvalidEvent as e:
            letters.append(dead_letter(r, e.reason, e.detail, service, dead_letters))
            continue
        task = getattr(event, "task", None)
        if tasks is not None and task is not None and task not in tasks:
            letters.append(
                dead_letter(
                    r,
                    "unknown_task",
                    f"{service} has no task {task!r}; known: {sorted(tasks)}",
                    service,
                    dead_letters,
                    **event.ids(),
                )
            )
            continue
        received.append(Received(event, r.topic, r.partition, r.offset, r.key, r.value or b""))
    return received, letters


class HandlerFailed(Exception):
    """The handler raised on a batch (internal to the loop: ``error`` is what it raised)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error


def dead_letter(source: Source, reason: str, detail: str, service: str, topic: str, **ids: str | None) -> Out:
    letter = DeadLetter(
        reason=reason,
        detail=detail,
        service=service,
        topic=source.topic,
        partition=source.partition,
        offset=source.offset,
        key_b64=base64.b64encode(source.key).decode() if source.key is not None else None,
        value_b64=base64.b64encode(source.value or b"").decode(),
        at_ms=now_ms(),
        **ids,
    )
    key = ids.get("request_id") or (source.key.decode(errors="replace") if source.key else None)
    metrics.DEAD_LETTERS.labels(service, reason).inc()
    return Out.of(topic, letter, key)


async def ensure_topics(settings: Settings, names: Sequence[str] | None = None) -> None:
    """Create protege's topics if they do not exist (idempotent)."""
    topics = settings.topics
    wanted = list(names or topics.all())
    try:
        admin = await started_admin(settings)
    except KafkaConnectionError as e:
        who = f" as {settings.sasl_username!r}" if settings.sasl_username else ""
        how = settings.security_protocol + (f", SASL {settings.sasl_mechanism}{who}" if settings.sasl_mechanism else "")
        raise BrokerError(
            f"cannot reach Kafka at {settings.bootstrap_servers} over {how}: {e} (the client's log "
            "line before this one says why: refused credentials, an untrusted certificate, ...)"
        ) from e
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(
                t,
                topics.partitions(t, settings.partitions),
                settings.replication_factor,
                topic_configs={**topics.configs(t), **_durability(settings.replication_factor)},
            )
            for t in wanted
            if t not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
        # A new topic takes a moment to elect leaders; producing before that fails.
        for _ in range(100):
            described = await admin.describe_topics(wanted)
            if all(
                t["error_code"] == 0 and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])
                for t in described
            ):
                break
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    await _wait_until_led(settings, wanted)


async def started_admin(settings: Settings, **kw: Any) -> AIOKafkaAdminClient:
    """An admin client, started; one that cannot start (a refused login, no broker) is closed,
    and its connections with it, before the error goes on."""
    admin = AIOKafkaAdminClient(**settings.kafka_kwargs(), **kw)
    try:
        await admin.start()
    except BaseException:
        await admin.close()
        await closed_connections()
        raise
    return admin


async def closed_connections(timeout_s: float = 5.0) -> None:
    """Until every connection this loop opened has closed, ``timeout_s`` at most. A connection
    the broker refused at its SASL handshake is closed by aiokafka, but over TLS the close takes a
    round trip (close_notify) that ``asyncio.run`` does not wait for: its socket was left open for
    the garbage collector, which reported it in whatever ran then (a CI run failed
    ``test_state.py`` on the one ``test_secured_broker.py``'s wrong password left in the
    doctor's check; stop 39). Reads the selector loop's own table of its transports; on another
    loop, nothing to wait for."""
    loop = asyncio.get_running_loop()
    transports = getattr(loop, "_transports", None)
    deadline = loop.time() + timeout_s
    while transports is not None and loop.time() < deadline:
        if all(t.is_closing() for t in list(transports.values())):
            break
        await asyncio.sleep(0.01)
    for _ in range(3):  # a closing transport closes its socket on the next turns of the loop
        await asyncio.sleep(0)


def _durability(copies: int) -> dict[str, str]:
    """With several copies of a partition, an acks=all write needs all but one in sync: one
    broker may be down (a rolling restart, a crash) without refusing writes, and an
    acknowledged write is on at least two brokers."""
    return {"min.insync.replicas": str(copies - 1)} if copies > 1 else {}


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


async def started_producer(settings: Settings, transactional_id: str, **kw: Any) -> AIOKafkaProducer:
    """A transactional producer, started (which fences the id's previous owner); one that
    cannot start is closed before the error goes on (to the rebalance listener: ``Ownership``)."""
    prod = producer(settings, transactional_id, **kw)
    try:
        await prod.start()
    except KafkaError:
        with contextlib.suppress(KafkaError):
            await prod.stop()
        raise
    return prod


async def publish(settings: Settings, outs: Sequence[Out], **kw: Any) -> None:
    """Produce ``outs`` as they are (topic, value, key) and return once the broker has
    acknowledged every one; raise if it refused or lost any (a flush alone would not say).
    ``kw``: producer settings (``acks="all"``)."""
    prod = producer(settings, **kw)
    try:
        await prod.start()
        sent = [await prod.send(out.topic, out.value, key=out.key) for out in outs]
        await asyncio.gather(*sent)
    finally:
        await prod.stop()


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
    """Consume ``inputs`` (topic -> the event type on it), decode each batch, hand its typed
    events to ``handle``, produce its outputs exactly once.

    With ``tasks``, an event about a task the service does not have is dead-lettered
    (``unknown_task``) before the handler sees it.
    """

    def __init__(
        self,
        settings: Settings,
        service: str,
        inputs: Mapping[str, type[Event]],
        handle: BatchHandler,
        *,
        tasks: Collection[str] | None = None,
        max_records: int = 500,
        max_wait_ms: int = 100,
        transaction_timeout_ms: int = 60_000,
        max_poll_interval_ms: int = 300_000,
        on_commit: CommitHook | None = None,
        dead_letters: str | None = None,
        quarantine_letters: str | None = None,
        fallback: Fallback | None = None,
        max_attempts: int = 3,
        retry_backoff_s: float = 0.2,
        idle: IdleHook | None = None,
        linger_ms: Callable[[], int] | None = None,
    ) -> None:
        self.settings = settings
        # how long the next micro-batch may wait to fill (``linger``); settings.linger_ms unless given
        self.linger_ms = linger_ms or (lambda: settings.linger_ms)
        self.idle = idle  # when a poll brings nothing: outputs the handler made meanwhile (``flush_idle``)
        self.service = service
        self.inputs = dict(inputs)
        self.handle = handle
        self.tasks = tasks
        self.max_records = max_records
        self.max_wait_ms = max_wait_ms
        self.group = f"{settings.topic_prefix}protege-{service}"
        self.transaction_timeout_ms = transaction_timeout_ms
        self.max_poll_interval_ms = max_poll_interval_ms
        self.on_commit = on_commit  # after a batch's transaction committed (the teacher settles its journal)
        self.dead_letters = dead_letters or settings.topics.dlq
        # where a record the handler gave up on is recorded once the fallback has passed it on (the
        # one-hop scorer: protege.dlq, since its backends read protege.requests.dlq as refusals)
        self.quarantine_letters = quarantine_letters or self.dead_letters
        self.fallback = fallback
        self.max_attempts = max_attempts
        self.retry_backoff_s = retry_backoff_s
        self.quarantined = 0
        self.log = structlog.get_logger().bind(service=service)
        self.processed = 0

    async def run(self, stop: asyncio.Event) -> None:
        self.producers: dict[TopicPartition, AIOKafkaProducer] = {}
        self.floor: dict[TopicPartition, int] = {}  # the committed offset when the partition was acquired
        self.broken: BaseException | None = None  # a failure inside the rebalance listener, raised here
        self.rebalances = 0  # counted by the listener: a batch fetched before one is stale
        self.owning = asyncio.Lock()  # a revocation waits for the batch in hand to commit
        self.consumer = cons = consumer(self.settings, group=self.group, max_poll_interval_ms=self.max_poll_interval_ms)
        cons.subscribe(list(self.inputs), listener=Ownership(self))
        await cons.start()
        self.log.info("processing", inputs=list(self.inputs), group=self.group)
        heartbeat = Heartbeat(self.settings.home / "health" / self.service)
        try:
            while not stop.is_set():
                heartbeat.beat()
                batches = await cons.getmany(timeout_ms=self.max_wait_ms, max_records=self.max_records)
                fetched_in = self.rebalances
                if self.broken is not None:
                    raise self.broken
                if not batches:
                    if self.idle is not None:
                        await self.flush_idle()
                    continue
                if lingering := self.linger_ms():  # a rebalance meanwhile makes the whole batch stale (below)
                    batches = await self.linger(cons, batches, lingering)
                started = time.perf_counter()
                outs: list[Out] = []
                async with self.owning:
                    if self.rebalances != fetched_in:
                        # Fetched while a rebalance ran, from positions it may have moved since:
                        # handled now, these records could come again (seen when a group
                        # coordinator moved). Nothing has been handled since the rebalance, so
                        # the committed offset is where each partition resumes.
                        self.log.info("stale_batch_dropped", records=sum(len(rs) for rs in batches.values()))
                        await self.resume([tp for tp in batches if tp in self.producers])
                        continue
                    for tp, rs in batches.items():
                        prod = self.producers.get(tp)
                        if prod is None:  # not ours any more: its new owner reads these from the committed offset
                            continue
                        # Fetched from a position set before the partition's last transaction had
                        # landed: already committed, so handled; never again.
                        rs = [r for r in rs if r.offset >= self.floor.get(tp, 0)]
                        if not rs:
                            continue
                        # The position, not last offset + 1: it has moved past transaction markers,
                        # so a caught-up group shows zero lag.
                        end = max(rs[-1].offset + 1, await cons.position(tp))
                        try:
                            outs += await self.partition(prod, tp, rs, end)
                        except FENCED as e:
                            await self.fenced(tp, e)
                self.observe(cons, batches, outs, time.perf_counter() - started)
        finally:
            await cons.stop()
            async with self.owning:
                await self.release(list(self.producers))
            self.log.info("stopped", processed=self.processed, quarantined=self.quarantined)

    async def linger(
        self, cons: AIOKafkaConsumer, batches: dict[TopicPartition, list[Record]], ms: int
    ) -> dict[TopicPartition, list[Record]]:
        """``ms`` more for records to join a micro-batch that is not full."""
        room = self.max_records - sum(len(rs) for rs in batches.values())
        if room <= 0:
            return batches
        await asyncio.sleep(ms / 1000)
        for tp, rs in (await cons.getmany(timeout_ms=0, max_records=room)).items():
            batches[tp] = [*batches.get(tp, []), *rs]
        return batches

    def transactional_id(self, tp: TopicPartition) -> str:
        """One per input partition: whoever owns the partition owns the id (see ``acquire``)."""
        return f"{self.group}-{tp.topic}-{tp.partition}"

    async def acquire(self, tps: Collection[TopicPartition]) -> None:
        """Partitions assigned to this replica: a transactional producer for each. Starting it
        fences the partition's previous owner: its open transaction is aborted and it can
        commit nothing more, even if it is only paused and resumes later (a zombie)."""
        new = []
        for tp in sorted(tps):
            if tp in self.producers:
                continue
            self.producers[tp] = await started_producer(
                self.settings, self.transactional_id(tp), transaction_timeout_ms=self.transaction_timeout_ms
            )
            new.append(tp)
        await self.resume(new)
        self.log.info("assigned", partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in self.producers))

    async def resume(self, tps: Collection[TopicPartition]) -> None:
        """Start each newly owned partition at its committed offset, asked for now.

        aiokafka fetches committed offsets when a rebalance completes, concurrently with this
        listener, and without KIP-447's ``require_stable``: while the previous owner's last
        transaction is committed but its markers are still being written (seconds, when a
        broker is down), the broker answers with the offset before it, and that transaction's
        records would be handled twice. Starting the producer above waited for that transaction
        to complete (the coordinator answers CONCURRENT_TRANSACTIONS until it has), so the
        offset asked for here is the one to resume from; records below it are dropped.
        """
        for tp in tps:
            try:
                self.floor[tp] = await seek_committed(self.consumer, tp)
            except KafkaError as e:  # the listener's errors are swallowed by aiokafka: the loop raises it
                self.broken = e
                return

    async def release(self, tps: Collection[TopicPartition]) -> None:
        """Partitions revoked (or this replica stops): their producers close."""
        for tp in tps:
            prod = self.producers.pop(tp, None)
            if prod is not None:
                with contextlib.suppress(KafkaError):
                    await prod.stop()

    async def flush_idle(self) -> None:
        """What the handler finished between batches (the trainer's retrain, in a worker thread):
        produced in a transaction of its own, on a partition this replica owns, with no offsets;
        asked for only while it owns one (else the handler keeps it for the next batch)."""
        assert self.idle is not None
        async with self.owning:
            if not self.producers:
                return
            tp, prod = next(iter(self.producers.items()))
            outs = await self.idle()
            if not outs:
                return
            try:
                async with prod.transaction():
                    for out in outs:
                        await prod.send(out.topic, out.value, key=out.key)
            except FENCED as e:
                await self.fenced(tp, e)

    async def fenced(self, tp: TopicPartition, error: Exception) -> None:
        """Another replica took ``tp`` while this one held a transaction open on it (this one
        was paused past its session, or lost the group): the transaction was aborted, the new
        owner reads the records again from the committed offset, and this replica keeps off
        the partition until the group gives it back."""
        self.log.warning("fenced", topic=tp.topic, partition=tp.partition, error=f"{type(error).__name__}: {error}")
        metrics.FENCED.labels(self.service).inc()
        await self.release([tp])

    async def partition(self, prod: AIOKafkaProducer, tp: TopicPartition, records: list[Record], end: int) -> list[Out]:
        """One partition's share of a batch, in its own transaction (its producer is its owner's)."""
        try:
            return await self.commit(prod, records, {tp: end})
        except HandlerFailed as failed:
            self.log.warning(
                "batch_failed", topic=tp.topic, partition=tp.partition, records=len(records), error=str(failed)
            )
            outs: list[Out] = []
            for i, record in enumerate(records):
                offsets = {tp: end if i == len(records) - 1 else record.offset + 1}
                outs.extend(await self.isolate(prod, record, offsets))
            return outs

    def decode(self, records: Sequence[Record]) -> tuple[list[Received[Any]], list[Out]]:
        return receive(records, self.inputs, service=self.service, dead_letters=self.dead_letters, tasks=self.tasks)

    async def handled(self, received: Sequence[Received[Any]]) -> list[Out]:
        if not received:
            return []
        try:
            return await self.handle(received)
        except INFRASTRUCTURE:
            raise
        except Exception as e:
            raise HandlerFailed(e) from e

    async def commit(
        self, prod: AIOKafkaProducer, records: Sequence[Record], offsets: dict[TopicPartition, int]
    ) -> list[Out]:
        """Decode and handle ``records``; commit the outputs with ``offsets`` in one transaction."""
        async with prod.transaction():
            received, outs = self.decode(records)
            outs += await self.handled(received)
            for out in outs:
                await prod.send(out.topic, out.value, key=out.key)
            await prod.send_offsets_to_transaction(offsets, self.group)
        self.processed += len(records)
        if self.on_commit is not None and received:
            await self.on_commit(received)
        return outs

    async def isolate(self, prod: AIOKafkaProducer, record: Record, offsets: dict[TopicPartition, int]) -> list[Out]:
        error: Exception | None = None
        for attempt in range(1, self.max_attempts + 1):
            try:
                return await self.commit(prod, [record], offsets)
            except HandlerFailed as failed:
                error = failed.error
                self.log.warning(
                    "record_failed",
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    attempt=attempt,
                    error=str(failed),
                )
                if attempt < self.max_attempts:
                    await asyncio.sleep(self.retry_backoff_s * 2 ** (attempt - 1))
        assert error is not None
        return await self.quarantine(prod, record, offsets, error)

    async def quarantine(
        self, prod: AIOKafkaProducer, record: Record, offsets: dict[TopicPartition, int], error: Exception
    ) -> list[Out]:
        detail = (f"{self.service} raised {type(error).__name__}: {error} on each of {self.max_attempts} attempts")[
            :1000
        ]
        received, _ = self.decode([record])
        passed_on: list[Out] | None = None
        if self.fallback is not None and received:
            try:
                passed_on = self.fallback(received[0], detail)
            except Exception as e:  # the letter alone still goes out, where the dead letters go
                self.log.error("fallback_failed", offset=record.offset, error=f"{type(e).__name__}: {e}")
        letters = self.dead_letters if passed_on is None else self.quarantine_letters
        ids = received[0].event.ids() if received else {}
        outs = [dead_letter(record, "quarantined", detail, self.service, letters, **ids), *(passed_on or [])]
        async with prod.transaction():
            for out in outs:
                await prod.send(out.topic, out.value, key=out.key)
            await prod.send_offsets_to_transaction(offsets, self.group)
        self.processed += 1
        self.quarantined += 1
        metrics.QUARANTINED.labels(self.service).inc()
        self.log.error(
            "quarantined",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            dead_letters=outs[0].topic,
            error=f"{type(error).__name__}: {error}"[:300],
            exc_info=error,
        )
        return outs

    def observe(
        self, cons: AIOKafkaConsumer, batches: dict[TopicPartition, list[Record]], outs: list[Out], seconds: float
    ) -> None:
        """The loop's metrics, after the transaction committed."""
        metrics.BATCH_SIZE.labels(self.service).observe(sum(len(rs) for rs in batches.values()))
        metrics.HANDLE_SECONDS.labels(self.service).observe(seconds)
        for tp, rs in batches.items():
            metrics.RECORDS_IN.labels(self.service, tp.topic).inc(len(rs))
            end = cons.highwater(tp)
            if end is not None:
                metrics.CONSUMER_LAG.labels(self.service, tp.topic, str(tp.partition)).set(
                    max(0, end - rs[-1].offset - 1)
                )
        for out in outs:
            metrics.RECORDS_OUT.labels(self.service, out.topic).inc()


class Owner(Protocol):
    """A loop that holds a producer per owned partition: ``Processor``, the teacher's loop."""

    owning: asyncio.Lock
    rebalances: int
    broken: BaseException | None  # a failure in the listener, raised by the owner's loop

    async def acquire(self, tps: Collection[TopicPartition]) -> None: ...
    async def release(self, tps: Collection[TopicPartition]) -> None: ...


class Ownership(ConsumerRebalanceListener):
    """The group's assignment decides which partitions' producers this replica holds."""

    def __init__(self, owner: Owner) -> None:
        self.owner = owner

    # Counted when each step has finished: a batch that ``getmany`` returned while one ran
    # (from positions it then moved: a seek in ``resume``) must not be handled.
    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        async with self.owner.owning:
            await self.owner.release(revoked)
            self.owner.rebalances += 1

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        async with self.owner.owning:
            try:
                await self.owner.acquire(assigned)
            except KafkaError as e:
                # aiokafka logs a listener's error and goes on: the replica would own partitions
                # it holds no producer for and pass their records by forever (seen in CI: a
                # broker killed while ingestion started its producers; it processed nothing for
                # five minutes). The loop raises it instead, and the service restarts.
                self.owner.broken = e
            self.owner.rebalances += 1


async def seek_committed(cons: AIOKafkaConsumer, tp: TopicPartition) -> int:
    """Position ``tp`` at its committed offset, asked for now (see ``Processor.resume``), and
    return it; with nothing committed yet, from the start (as auto_offset_reset says), 0."""
    committed = await cons.committed(tp)
    if committed is None:
        await cons.seek_to_beginning(tp)
        return 0
    cons.seek(tp, committed)
    return committed


async def partitions_of(cons: AIOKafkaConsumer, topic: str) -> set[int]:
    """A topic's partitions, refreshing the consumer's metadata once if it has not seen the topic."""
    parts = cons.partitions_for_topic(topic)
    if not parts:
        await cons._client.force_metadata_update()  # no public API for this
        parts = cons.partitions_for_topic(topic)
    return set(parts or ())
