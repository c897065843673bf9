"""A small async client for backends: publish a request, await its one answer.

    async with Client(tenant="acme", task="ticket-triage") as client:
        answer = await client.ask("I was charged twice for my order")
        print(answer.label, answer.route, answer.answered_by)

        pending = [await client.submit(text) for text in texts]   # many in flight
        answers = await asyncio.gather(*pending, return_exceptions=True)

The wire contract is the one in ``schemas/``: a ``protege.request`` on ``protege.requests``
(keyed by its request id), and exactly one ``protege.response`` on ``protege.responses`` —
or, for a request ingestion refused, a ``protege.dead_letter`` on
``protege.requests.dlq`` with its reason (:class:`Rejected`). One response reader per client
serves every request in flight: it reads both topics from their ends at start
(``read_committed``: only answers whose transaction committed), and hands each answer to the
request waiting for it; answers for other clients' requests are skipped.

Back-pressure: at most ``max_in_flight`` requests wait for answers; ``submit`` waits for a
slot beyond that. A request that gets no answer within ``timeout_s`` raises
:class:`NoAnswer` and frees its slot; its answer, if it comes later, is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from protege.events import DeadLetter, Request, Response
from protege.kafka import consumer, partitions_of, producer
from protege.settings import Settings


class ClientError(Exception):
    """The base of what :class:`Client` raises for one request."""


class NoAnswer(ClientError, TimeoutError):
    """No answer within the timeout (the request may still be answered later)."""


class Rejected(ClientError):
    """Ingestion refused the request; ``reason`` is the dead letter's code (e.g. ``text_too_long``)."""

    def __init__(self, request_id: str, reason: str, detail: str) -> None:
        super().__init__(f"request {request_id} rejected: {reason}: {detail}")
        self.request_id, self.reason, self.detail = request_id, reason, detail


@dataclass(frozen=True)
class Answer:
    """A response, with the round trip this client measured."""

    response: Response
    latency_ms: float

    @property
    def label(self) -> str | None:
        return self.response.label

    @property
    def route(self) -> str:
        return self.response.route

    @property
    def answered_by(self) -> str:
        return self.response.answered_by


@dataclass
class _Waiting:
    future: asyncio.Future[Answer]
    sent: float


class Client:
    """Submit requests to protege and await their answers (one shared response reader)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        tenant: str,
        task: str,
        timeout_s: float = 60.0,
        max_in_flight: int = 1000,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.settings = settings or Settings()
        self.tenant, self.task, self.timeout_s = tenant, task, timeout_s
        self._slots = asyncio.Semaphore(max_in_flight)
        self._waiting: dict[str, _Waiting] = {}
        self._producer: AIOKafkaProducer | None = None
        self._reader: AIOKafkaConsumer | None = None
        self._reading: asyncio.Task[None] | None = None
        self.skipped = 0  # answers to requests this client is not waiting for (others', or late)

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the reader at the topics' current ends, then the producer: no answer to a
        request sent after this can be missed."""
        topics = self.settings.topics
        reader, prod = consumer(self.settings, group=None), None
        try:
            await reader.start()
            tps = [
                TopicPartition(t, p)
                for t in (topics.responses, topics.requests_dlq)
                for p in sorted(await partitions_of(reader, t))
            ]
            if not tps:
                raise ClientError(f"no {topics.responses} topic on {self.settings.bootstrap_servers}: is protege up?")
            reader.assign(tps)
            for tp, end in (await reader.end_offsets(tps)).items():
                reader.seek(tp, end)
            for tp in tps:  # resolve the positions now, before the first request goes out
                await reader.position(tp)
            prod = producer(self.settings, acks="all")
            await prod.start()
        except BaseException:  # nothing left open: a broker that is not there leaves no client behind
            for started in (prod, reader):
                if started is not None:
                    with contextlib.suppress(KafkaError):
                        await started.stop()
            raise
        self._reader, self._producer = reader, prod
        self._reading = asyncio.create_task(self._read(), name="protege-client-reader")

    async def close(self) -> None:
        """Stop reading and producing; requests still waiting fail with :class:`ClientError`."""
        if self._reading is not None:
            self._reading.cancel()
            # cancelled, or it had already stopped on an error the waiting requests were given
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reading
        for rid, w in list(self._waiting.items()):
            if not w.future.done():
                w.future.set_exception(ClientError(f"request {rid}: the client closed before its answer"))
        self._waiting.clear()
        if self._producer is not None:
            await self._producer.stop()
        if self._reader is not None:
            await self._reader.stop()
        self._producer = self._reader = self._reading = None

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    async def submit(
        self,
        text: str,
        *,
        request_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        timeout_s: float | None = None,
        tenant: str | None = None,
        task: str | None = None,
    ) -> asyncio.Task[Answer]:
        """Publish one request once a slot is free; return a task that resolves to its answer
        (raises :class:`NoAnswer` after ``timeout_s``, :class:`Rejected` when ingestion refuses
        it). The timeout runs whether or not the task is awaited, so a slot is never lost.
        ``tenant`` and ``task`` override the client's for this request (one reader serves all)."""
        if self._producer is None or self._reading is None:
            raise ClientError("the client is not started (async with Client(...) as client)")
        if self._reading.done():
            raise ClientError("the response reader stopped") from self._reading.exception()
        tenant, task = tenant or self.tenant, task or self.task
        request_id = request_id or f"{tenant}-{uuid.uuid4().hex}"
        if request_id in self._waiting:
            raise ClientError(f"request {request_id} is already waiting for its answer")
        sent = time.time()
        # Validated here as ingestion will: a request that cannot pass fails in the caller.
        try:
            body = Request(
                request_id=request_id,
                tenant=tenant,
                task=task,
                text=text,
                metadata=metadata,
                sent_at_ms=int(sent * 1000),
            )
        except ValidationError as e:
            raise ClientError(f"not a valid request: {e}") from None
        await self._slots.acquire()
        waiting = _Waiting(asyncio.get_running_loop().create_future(), sent)
        self._waiting[request_id] = waiting
        try:
            payload = json.dumps(body.model_dump(mode="json", exclude_none=True)).encode()
            await self._producer.send_and_wait(self.settings.topics.requests, payload, key=request_id.encode())
        except BaseException:
            self._forget(request_id)
            raise
        timeout = self.timeout_s if timeout_s is None else timeout_s
        return asyncio.create_task(self._answer(request_id, waiting, timeout), name=f"protege-answer-{request_id}")

    async def ask(self, text: str, **kw: Any) -> Answer:
        """``submit`` and wait for the answer."""
        return await (await self.submit(text, **kw))

    async def _answer(self, request_id: str, waiting: _Waiting, timeout_s: float) -> Answer:
        try:
            return await asyncio.wait_for(asyncio.shield(waiting.future), timeout_s)
        except TimeoutError:
            raise NoAnswer(f"request {request_id}: no answer in {timeout_s:g} s") from None
        finally:
            self._forget(request_id)

    def _forget(self, request_id: str) -> None:
        if self._waiting.pop(request_id, None) is not None:
            self._slots.release()

    async def _read(self) -> None:
        assert self._reader is not None
        responses = self.settings.topics.responses
        try:
            while True:
                batch = await self._reader.getmany(timeout_ms=500)
                now = time.time()
                for tp, records in batch.items():
                    for r in records:
                        if r.value is None:
                            continue
                        if tp.topic == responses:
                            self._on_response(r.value, now)
                        else:
                            self._on_dead_letter(r.value, r.key)
        except Exception as e:
            # No answer can arrive any more: every waiting request hears why now, not at its timeout.
            for rid, w in list(self._waiting.items()):
                if not w.future.done():
                    w.future.set_exception(ClientError(f"request {rid}: the response reader stopped: {e!r}"))
            raise

    def _on_response(self, value: bytes, now: float) -> None:
        try:
            resp = Response.model_validate_json(value)
        except ValidationError:
            self.skipped += 1  # not ours to judge: the topic's own consumers dead-letter it
            return
        w = self._waiting.get(resp.request_id)
        if w is None or w.future.done():
            self.skipped += 1
            return
        w.future.set_result(Answer(resp, (now - w.sent) * 1000))

    def _on_dead_letter(self, value: bytes, key: bytes | None) -> None:
        try:
            letter = DeadLetter.model_validate_json(value)
        except ValidationError:
            return
        rid = letter.request_id or (key.decode(errors="replace") if key else None)
        w = self._waiting.get(rid) if rid else None
        if rid is None or w is None or w.future.done():
            return
        w.future.set_exception(Rejected(rid, letter.reason, letter.detail))
