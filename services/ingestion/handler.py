"""Ingestion: validate, normalise and stamp requests; reject bad input with a reason.

Reason codes on ``protege.requests.dlq``: the loop's decoder's (empty, too_large,
invalid_utf8, invalid_json, too_deep, duplicate_key, not_an_object, schema_violation; see
``protege.serde``) and unknown_task; then this handler's invalid_key, empty_text,
text_too_long, duplicate_request_id; and the loop's quarantined.

The request id is the body's ``request_id``; else the record's key (what a backend that
keys each request by its id expects to match the answer by); else one stamped from the
record's coordinates. Accepted ids join the duplicate filter only once their batch has
committed, so a batch that is handled again (after a failure) is not refused as its own
duplicate.
"""

from __future__ import annotations

import re
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import structlog

from protege.events import ID_PATTERN, Ingested, Request, now_ms
from protege.kafka import Out, Received, dead_letter
from protege.text import normalize
from protege.topics import Topics

SERVICE = "ingestion"
STAMP_NAMESPACE = uuid.UUID("6f1c3b52-8d0e-4c61-9a3e-5b7f0e2d9c41")
_ID = re.compile(ID_PATTERN)


class SeenIds:
    """The most recent ``size`` request ids, to reject duplicates."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, request_id: str) -> bool:
        """Remember ``request_id``; False if it was already there."""
        if request_id in self._ids:
            return False
        self._ids[request_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._ids

    def extend(self, ids: Iterable[str]) -> None:
        for i in ids:
            self.add(i)


class Ingestion:
    """Requests the loop has decoded (and checked for a known task) become ingested events."""

    def __init__(self, topics: Topics, *, max_text_chars: int, seen: SeenIds, service: str = SERVICE) -> None:
        self.topics = topics
        self.max_text_chars = max_text_chars
        self.seen = seen
        self.pending: set[str] = set()  # accepted in the batch being handled, until it commits
        self.service = service  # on its dead letters: the process that refused (the one-hop scorer's too)
        self.log = structlog.get_logger().bind(service=service)

    @staticmethod
    def stamp(r: Received[Request]) -> str:
        # Deterministic in the record's coordinates: a re-read after a crash stamps the same id.
        return "req-" + str(uuid.uuid5(STAMP_NAMESPACE, "{}:{}:{}".format(*r.coordinates)))

    @staticmethod
    def key_id(key: bytes) -> str | None:
        """The record key as a request id, or None when it cannot be one."""
        try:
            text = key.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return text if len(text) <= 128 and _ID.fullmatch(text) else None

    def admit(self, r: Received[Request], batch: set[str]) -> Ingested | Out:
        """The request as an ingested event, or its dead letter (on ``protege.requests.dlq``)."""
        req = r.event

        def reject(reason: str, detail: str, request_id: str | None = None) -> Out:
            return dead_letter(
                r, reason, detail, self.service, self.topics.requests_dlq, request_id=request_id, tenant=req.tenant
            )

        request_id, source = req.request_id, "request_id"
        if request_id is None and r.key is not None:
            request_id, source = self.key_id(r.key), "record key"
            if request_id is None:
                return reject(
                    "invalid_key",
                    "no request_id, and the record key cannot be one (UTF-8, 1-128 "
                    f"characters matching {ID_PATTERN}): set request_id in the body",
                )
        text = normalize(req.text)
        if not text:
            return reject("empty_text", "the text is empty after normalisation", request_id)
        if len(text) > self.max_text_chars:
            return reject("text_too_long", f"{len(text)} characters > limit {self.max_text_chars}", request_id)
        if request_id is None:
            request_id, source = self.stamp(r), "stamped"
        if request_id in self.seen or request_id in batch:
            return reject(
                "duplicate_request_id",
                f"request id {request_id!r} (from the {source}) was already accepted",
                request_id,
            )
        batch.add(request_id)
        event = Ingested(
            request_id=request_id,
            tenant=req.tenant,
            task=req.task,
            text=text,
            metadata=req.metadata or {},
            sent_at_ms=req.sent_at_ms,
            received_at_ms=now_ms(),
        )
        self.log.debug("ingested", request_id=request_id, tenant=req.tenant, task=req.task, id_from=source)
        return event

    def admit_batch(self, received: Sequence[Received[Request]], **mark: bool) -> list[Ingested | Out]:
        """Each request as an ingested event (with the fields ``mark`` sets: the one-hop scorer's
        ``scored``) or its dead letter; the accepted ids are duplicates once the batch commits."""
        batch: set[str] = set()
        admitted = [self.admit(r, batch) for r in received]
        self.pending = batch
        return [a if isinstance(a, Out) or not mark else a.model_copy(update=mark) for a in admitted]

    async def handle(self, received: Sequence[Received[Request]]) -> list[Out]:
        return [a if isinstance(a, Out) else Out.of(self.topics.ingested, a) for a in self.admit_batch(received)]

    async def committed(self, received: Sequence[Received[Request]]) -> None:
        """The batch committed: its accepted ids are now duplicates for later requests."""
        self.seen.extend(self.pending)
        self.pending = set()
