"""The teacher's loop: each request answered as soon as its own call returns.

A teacher call takes seconds, with a long tail (a p99 of 15 s is ordinary). The other
services handle a batch in one transaction (``protege.kafka.Processor``); here that would
make every answer wait for the slowest call of its batch and start no new call until the
batch is done: throughput near concurrency ÷ the slowest call. So this loop keeps up to
``capacity`` requests in flight, starts each as soon as it is fetched (``concurrency``
calls at once, the worker's semaphore), and every ``flush_ms`` commits what has finished,
one transaction per input partition (its producer, its transactional id: the owner of the
partition is the only one that can commit for it, as in ``Processor``):

- the finished requests' outputs (results, responses, corrections, held requests);
- the partition's offset, moved up to the oldest request still in flight (offsets commit
  in order; a request finished beyond it is not yet below the committed offset);
- for each request answered beyond that offset, a *handled* mark on the journal
  (``journal.handled_key``), in the same transaction as its answer. A worker that reads the
  request again — this one after a crash, or another replica after a rebalance — finds the
  mark and passes the request over: it is answered exactly once. Marks are deleted once the
  committed offset has passed them.

The journal's paid answers work as before: a call that was paid for and not yet committed
is found there and not paid again (``TeacherWorker.answer``).

A request whose handling raises is tried ``max_attempts`` times, then quarantined: a dead
letter and the worker's fallback answer. Kafka errors stop the loop (the service restarts;
nothing it did not commit is lost). A revoked partition, or a stop, waits up to
``drain_s`` for its calls in flight and commits them before letting go.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from protege_services.teacher.handler import TeacherWorker
from protege_services.teacher.journal import handled_key

from protege import metrics
from protege.events import TeacherRequest
from protege.kafka import (
    FENCED,
    INFRASTRUCTURE,
    Heartbeat,
    Out,
    Ownership,
    Received,
    Record,
    consumer,
    dead_letter,
    receive,
    seek_committed,
    started_producer,
)
from protege.settings import Settings


@dataclass
class Partition:
    """One owned input partition: what is in flight, what has finished and waits for the
    next commit, and where its committed offset stands."""

    producer: AIOKafkaProducer
    committed: int  # the committed offset: every record below it is answered
    fetched: int  # the position after the last record fetched
    running: dict[int, asyncio.Task[None]] = field(default_factory=dict)  # offset -> its handling
    finished: dict[int, tuple[Received[Any] | None, list[Out]]] = field(default_factory=dict)  # offset -> outputs
    marked: set[int] = field(default_factory=set)  # offsets with a handled mark, at or above ``committed``

    @property
    def watermark(self) -> int:
        """How far the committed offset can move: to the oldest record still running."""
        return min(self.running) if self.running else self.fetched


class AnswerLoop:
    def __init__(
        self,
        settings: Settings,
        service: str,
        topic: str,
        worker: TeacherWorker,
        *,
        capacity: int,
        flush_ms: int = 50,
        drain_s: float = 30.0,
        max_attempts: int = 3,
        retry_backoff_s: float = 0.2,
        transaction_timeout_ms: int = 60_000,
    ) -> None:
        self.settings = settings
        self.service = service
        self.topic = topic
        self.worker = worker
        self.capacity = capacity
        self.flush_s = flush_ms / 1000
        self.drain_s = drain_s
        self.max_attempts = max_attempts
        self.retry_backoff_s = retry_backoff_s
        self.transaction_timeout_ms = transaction_timeout_ms
        self.group = f"{settings.topic_prefix}protege-{service}"
        self.parts: dict[TopicPartition, Partition] = {}
        self.broken: BaseException | None = None  # a Kafka error in a handling or the listener, raised by the loop
        self.rebalances = 0
        self.owning = asyncio.Lock()  # the listener and a commit never interleave
        self.finishing = asyncio.Event()  # set when a handling finishes
        self.log = structlog.get_logger().bind(service=service)
        self.answered = 0
        self.quarantined = 0

    @property
    def in_flight(self) -> int:
        return sum(len(p.running) for p in self.parts.values())

    async def run(self, stop: asyncio.Event) -> None:
        assert self.worker.journal is not None, "the loop's handled marks live on the journal"
        self.consumer = cons = consumer(self.settings, group=self.group, max_poll_interval_ms=600_000)
        cons.subscribe([self.topic], listener=Ownership(self))
        await cons.start()
        self.log.info("processing", inputs=[self.topic], group=self.group, capacity=self.capacity)
        heartbeat = Heartbeat(self.settings.home / "health" / self.service)
        last_flush = time.monotonic()
        try:
            while not stop.is_set():
                heartbeat.beat()
                if self.broken is not None:
                    raise self.broken
                room = self.capacity - self.in_flight
                owned = list(self.parts)
                if room <= 0:  # full: keep polling (the group needs it) without taking more
                    cons.pause(*owned)
                else:
                    cons.resume(*owned)
                fetched_in = self.rebalances
                batches = await cons.getmany(timeout_ms=int(self.flush_s * 1000), max_records=max(room, 1))
                async with self.owning:
                    if self.rebalances == fetched_in:
                        for tp, records in batches.items():
                            await self.take(tp, records)
                    elif batches:  # fetched from positions a rebalance has moved since: read again from there
                        self.log.info("stale_batch_dropped", records=sum(len(rs) for rs in batches.values()))
                if room <= 0 and not batches:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.finishing.wait(), timeout=self.flush_s)
                metrics.TEACHER_IN_FLIGHT.labels(self.service).set(self.in_flight)
                if time.monotonic() - last_flush >= self.flush_s:
                    self.finishing.clear()
                    last_flush = time.monotonic()
                    async with self.owning:
                        await self.flush(list(self.parts))
        finally:
            with contextlib.suppress(Exception):
                async with self.owning:
                    await self.release(list(self.parts))
            await cons.stop()
            self.log.info("stopped", answered=self.answered, quarantined=self.quarantined)

    async def take(self, tp: TopicPartition, records: list[Record]) -> None:
        """Start handling each fetched record of an owned partition."""
        part = self.parts.get(tp)
        if part is None:
            return
        records = [r for r in records if r.offset >= part.committed]  # committed already: handled
        if not records:
            return
        part.fetched = max(records[-1].offset + 1, await self.consumer.position(tp))
        metrics.RECORDS_IN.labels(self.service, tp.topic).inc(len(records))
        journal = self.worker.journal
        assert journal is not None
        for record in records:
            if handled_key(tp.topic, tp.partition, record.offset) in journal.handled:
                part.finished[record.offset] = (None, [])  # answered before, beyond the committed offset
                part.marked.add(record.offset)
                self.log.info("already_handled", topic=tp.topic, partition=tp.partition, offset=record.offset)
                continue
            received, letters = receive(
                [record],
                {self.topic: TeacherRequest},
                service=self.service,
                dead_letters=self.settings.topics.dlq,
                tasks=self.worker.tasks,
            )
            if not received:
                part.finished[record.offset] = (None, letters)
                continue
            part.running[record.offset] = asyncio.create_task(self.handle(part, record, received[0]))
        end = self.consumer.highwater(tp)
        if end is not None:
            metrics.CONSUMER_LAG.labels(self.service, tp.topic, str(tp.partition)).set(max(0, end - part.fetched))

    async def handle(self, part: Partition, record: Record, received: Received[TeacherRequest]) -> None:
        """One request, tried ``max_attempts`` times, then quarantined. Until it has its
        outputs it stays in ``running``, holding the partition's offset below it: a request
        cut off (a Kafka error, a cancel) is read again, never skipped."""
        error: Exception | None = None
        outs: list[Out] | None = None
        for attempt in range(1, self.max_attempts + 1):
            try:
                outs = await self.worker.answer(received)
                break
            except INFRASTRUCTURE as e:
                self.broken = self.broken or e
                self.finishing.set()
                return
            except Exception as e:
                error = e
                self.log.warning(
                    "record_failed", offset=record.offset, partition=record.partition, attempt=attempt, error=str(e)
                )
                if attempt < self.max_attempts:
                    await asyncio.sleep(self.retry_backoff_s * 2 ** (attempt - 1))
        if outs is None:
            assert error is not None
            outs = self.quarantine(record, received, error)
        part.finished[record.offset] = (received, outs)
        part.running.pop(record.offset, None)
        self.finishing.set()

    def quarantine(self, record: Record, received: Received[TeacherRequest], error: Exception) -> list[Out]:
        detail = f"{self.service} raised {type(error).__name__}: {error} on each of {self.max_attempts} attempts"
        outs = [
            dead_letter(
                record, "quarantined", detail[:1000], self.service, self.settings.topics.dlq, **received.event.ids()
            )
        ]
        try:
            outs.extend(self.worker.quarantined(received, detail))
        except Exception as e:  # the letter alone still goes out
            self.log.error("fallback_failed", offset=record.offset, error=f"{type(e).__name__}: {e}")
        self.quarantined += 1
        metrics.QUARANTINED.labels(self.service).inc()
        self.log.error("quarantined", partition=record.partition, offset=record.offset, error=detail[:300])
        return outs

    async def flush(self, tps: Collection[TopicPartition]) -> None:
        """Commit what has finished on each partition, and its offset as far as it can move."""
        for tp in tps:
            part = self.parts.get(tp)
            if part is None:
                continue
            watermark = part.watermark
            passed = {o for o in part.marked if o < watermark}  # their marks can go: the offset passes them
            if not part.finished and watermark == part.committed and not passed:
                continue
            finished = dict(part.finished)
            journal = self.settings.topics.teacher_journal
            outs = [out for _, (_, o) in sorted(finished.items()) for out in o]
            beyond = [o for o in finished if o >= watermark and o not in part.marked]
            try:
                async with part.producer.transaction():
                    for out in outs:
                        await part.producer.send(out.topic, out.value, key=out.key)
                    for offset in beyond:
                        key = handled_key(tp.topic, tp.partition, offset).encode()
                        await part.producer.send(journal, b'{"handled": true}', key=key)
                    for offset in passed:
                        await part.producer.send(
                            journal, None, key=handled_key(tp.topic, tp.partition, offset).encode()
                        )
                    await part.producer.send_offsets_to_transaction({tp: watermark}, self.group)
            except FENCED as e:
                await self.fenced(tp, e)
                continue
            for offset in finished:
                part.finished.pop(offset, None)
            part.marked = (part.marked - passed) | set(beyond)
            part.committed = watermark
            self.answered += sum(1 for r, _ in finished.values() if r is not None)
            for out in outs:
                metrics.RECORDS_OUT.labels(self.service, out.topic).inc()
            await self.worker.committed([r for r, _ in finished.values() if r is not None])

    async def release(self, tps: Collection[TopicPartition]) -> None:
        """Let the calls in flight on ``tps`` finish (up to ``drain_s``), commit, let go."""
        running = [t for tp in tps if tp in self.parts for t in self.parts[tp].running.values()]
        if running:
            self.log.info("draining", in_flight=len(running))
            _, late = await asyncio.wait(running, timeout=self.drain_s)
            for task in late:  # read again by the partition's next owner (the journal keeps what was paid)
                task.cancel()
            if late:
                self.log.warning("abandoned", in_flight=len(late), after_s=self.drain_s)
        with contextlib.suppress(KafkaError):
            await self.flush(tps)
        for tp in tps:
            part = self.parts.pop(tp, None)
            if part is not None:
                with contextlib.suppress(KafkaError):
                    await part.producer.stop()

    async def fenced(self, tp: TopicPartition, error: Exception) -> None:
        """Another replica owns ``tp`` now: its transaction was aborted and the new owner
        reads the records again from the committed offset; this one lets go of them."""
        self.log.warning("fenced", topic=tp.topic, partition=tp.partition, error=f"{type(error).__name__}: {error}")
        metrics.FENCED.labels(self.service).inc()
        part = self.parts.pop(tp, None)
        if part is not None:
            for task in part.running.values():
                task.cancel()
            with contextlib.suppress(KafkaError):
                await part.producer.stop()

    async def acquire(self, tps: Collection[TopicPartition]) -> None:
        """Partitions assigned: a transactional producer for each (starting it fences the
        previous owner and waits for its last transaction), the journal read up to now (the
        previous owner's marks and paid answers), then the committed offset."""
        journal = self.worker.journal
        assert journal is not None
        for tp in sorted(tps):
            if tp in self.parts:
                continue
            prod = await started_producer(
                self.settings,
                f"{self.group}-{tp.topic}-{tp.partition}",
                transaction_timeout_ms=self.transaction_timeout_ms,
            )
            self.parts[tp] = Partition(prod, committed=0, fetched=0)
        await journal.view.synced()
        for tp in tps:
            try:
                committed = await seek_committed(self.consumer, tp)
            except KafkaError as e:  # the listener's errors are swallowed by aiokafka: the loop raises it
                self.broken = e
                return
            self.parts[tp].committed = self.parts[tp].fetched = committed
        self.log.info("assigned", partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in self.parts))
