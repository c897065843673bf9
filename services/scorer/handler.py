"""Scorer: micro-batches of ingested requests through the ONNX student of their tenant's task.

Which student serves a (tenant, task) comes from ``protege.models``; a request for a
(tenant, task) with no student yet is passed on without one (cold start: the verifier
sends it to the teacher). A student that fails on a batch is reported on each event as
``student_error`` and the requests escalate; the scorer keeps running. A request the
scorer cannot handle at all is quarantined by the loop and goes on unscored
(``quarantined``), so the teacher still answers it.

Fused (``PROTEGE_FUSED``): the scorer also decides, with the verifier's own ``decide``, in
the same transaction as the scored event (marked ``decided``): one hop and one transaction
fewer on the student path, for deployments that want latency over scaling the two apart.

One hop (``PROTEGE_ONE_HOP``): the scorer also ingests, with ingestion's own checks, reading
``protege.requests``: a request's ingested event (marked ``scored``, so a scorer of the other
layouts passes it by), its scored event, its decision and its answer or teacher request go out
in one transaction, and a refused request's dead letter goes to ``protege.requests.dlq`` with
ingestion's reason. Every event of the other layouts is still written, so replay reads the
same topics. A request the loop gives up on is recorded on ``protege.dlq`` (``quarantined``)
and still answered by the teacher, or refused on ``protege.requests.dlq`` if ingestion would
have refused it.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog
from protege_services.ingestion.handler import Ingestion
from protege_services.verifier.handler import Verifier

from protege import metrics
from protege.canary import Arm, arm
from protege.events import Ingested, ModelAnnouncement, Request, Scored, now_ms
from protege.kafka import Out, Received
from protege.redact import redact
from protege.scoring import score_batch
from protege.serving import Serving
from protege.student.runtime import Student
from protege.topics import Topics

Loader = Callable[[Path], Student]


class Scorer:
    def __init__(
        self,
        topics: Topics,
        load: Loader,
        *,
        redact_pii: bool = True,
        verifier: Verifier | None = None,
        ingestion: Ingestion | None = None,
    ) -> None:
        if ingestion is not None and verifier is None:
            raise ValueError("the one-hop scorer decides too: it needs the verifier's decide")
        self.topics = topics
        self.verifier = verifier  # the fused layout: decided here, in the scoring transaction
        self.ingestion = ingestion  # the one-hop layout: requests ingested here too
        self.clean = redact if redact_pii else str  # the student sees text as the harvest kept it
        self.load = load
        self.students: dict[tuple[str, str], Student] = {}
        self.trials: dict[tuple[str, str], Student] = {}  # a canary's student beside the serving one
        self.serving = Serving()  # kept live from protege.models by the service (protege.serving.view)
        self.log = structlog.get_logger().bind(service="scorer")

    async def serve(self, ann: ModelAnnouncement) -> None:
        """Load the version that now serves (or is on trial) and swap it in; requests in flight
        finish on the old one."""
        key = (ann.tenant, ann.task)
        if ann.action == "abort":
            dropped = self.trials.pop(key, None)
            self.log.info("canary_ended", tenant=ann.tenant, task=ann.task, version=ann.version, reason=ann.reason)
            if dropped is not None:
                metrics.SERVING.labels(ann.tenant, ann.task, dropped.version).set(0)
            return
        if ann.action == "canary":
            try:
                self.trials[key] = await asyncio.to_thread(self.load, Path(ann.path))
            except Exception as e:  # a broken candidate: its share stays on the serving version
                self.log.error("load_failed", version=ann.version, path=ann.path, error=str(e))
                return
            self.log.info("canary", tenant=ann.tenant, task=ann.task, version=ann.version, share=ann.share)
            return
        trial = self.trials.pop(key, None)  # a version serving all requests ends any trial
        current = self.students.get(key)
        if current is not None and current.version == ann.version:
            return
        if trial is not None and trial.version == ann.version:
            student = trial  # promoted: already loaded
        else:
            try:
                student = await asyncio.to_thread(self.load, Path(ann.path))
            except Exception as e:  # a broken version must not take the scorer down
                self.log.error("load_failed", version=ann.version, path=ann.path, error=str(e))
                return
        self.students[key] = student
        if current is not None:
            metrics.SERVING.labels(ann.tenant, ann.task, current.version).set(0)
        metrics.SERVING.labels(ann.tenant, ann.task, student.version).set(1)
        self.log.info(
            "serving",
            tenant=ann.tenant,
            task=ann.task,
            version=ann.version,
            providers=student.providers,
            precision=student.manifest.precision,  # int8: one thread unless PROTEGE_THREADS says (threads_for)
            **student.encoder.session_info,  # the ONNX Runtime threads it chose, and why (the cores it has)
        )

    def quarantined(self, r: Received[Ingested] | Received[Request], why: str) -> list[Out]:
        """The loop gave up on this request: pass it on without a student answer (fused and one
        hop: to the teacher; one hop: refused instead where ingestion refuses it)."""
        outs: list[Out] = []
        if isinstance(r.event, Request):
            assert self.ingestion is not None
            [admitted] = self.ingestion.admit_batch([r], scored=True)
            if isinstance(admitted, Out):
                return [admitted]  # the backend hears why on protege.requests.dlq
            # a duplicate from now on (a restart rebuilds the filter from what committed)
            self.ingestion.seen.add(admitted.request_id)
            request = admitted
            outs.append(Out.of(self.topics.ingested, request))
        else:
            request = r.event
        scored = Scored(request=request, student=None, student_error=why[:300], scored_at_ms=now_ms(), batch_size=1)
        if self.verifier is None:
            return [Out.of(self.topics.scored, scored)]
        scored = scored.model_copy(update={"decided": True})
        return [*outs, Out.of(self.topics.scored, scored), *self.verifier.to_teacher(scored)]

    async def handle(self, received: Sequence[Received[Ingested]] | Sequence[Received[Request]]) -> list[Out]:
        if self.ingestion is None:
            # a request the one-hop layout already scored was answered in its transaction
            return await self.score([r.event for r in received if isinstance(r.event, Ingested) and not r.event.scored])
        admitted = self.ingestion.admit_batch(received, scored=True)
        requests = [a for a in admitted if isinstance(a, Ingested)]
        outs = [a if isinstance(a, Out) else Out.of(self.topics.ingested, a) for a in admitted]
        return outs + await self.score(requests)

    async def score(self, requests: Sequence[Ingested]) -> list[Out]:
        outs: list[Out] = []
        groups: dict[tuple[str, str], list[Ingested]] = defaultdict(list)
        for request in requests:
            groups[(request.tenant, request.task)].append(request)
        for key, reqs in groups.items():
            for student, batch, arms in self.arms(key, reqs):
                for scored in await asyncio.to_thread(score_batch, student, batch, self.clean):
                    chosen = arms.get(scored.request.request_id)
                    if chosen is not None and scored.student is not None:
                        scored = scored.model_copy(
                            update={"student": scored.student.model_copy(update={"arm": chosen})}
                        )
                    if self.verifier is None:
                        outs.append(Out.of(self.topics.scored, scored))
                    else:  # fused: decided here, the decision's records right after the scored event
                        scored = scored.model_copy(update={"decided": True})
                        outs += [Out.of(self.topics.scored, scored), *self.verifier.decide(scored)]
                    self.log.debug(
                        "scored",
                        request_id=scored.request.request_id,
                        tenant=key[0],
                        task=key[1],
                        version=student.version if student else None,
                        arm=chosen,
                        batch=scored.batch_size,
                    )
        return outs

    def arms(
        self, key: tuple[str, str], reqs: list[Ingested]
    ) -> list[tuple[Student | None, list[Ingested], dict[str, Arm]]]:
        """One batch per student: while a canary runs, its arm (a stable hash of the request
        id) goes to the candidate, the rest to the serving version (the control arm marked)."""
        student = self.students.get(key)
        trial, candidate = self.serving.canary(*key), self.trials.get(key)
        if trial is None or candidate is None or candidate.version != trial.version or not trial.share:
            return [(student, reqs, {})]
        chosen = {r.request_id: a for r in reqs if (a := arm(r.request_id, trial.share)) is not None}
        on_trial = [r for r in reqs if chosen.get(r.request_id) == "canary"]
        rest = [r for r in reqs if chosen.get(r.request_id) != "canary"]
        return [(s, batch, chosen) for s, batch in ((candidate, on_trial), (student, rest)) if batch]
