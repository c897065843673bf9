"""Scorer service: protege.ingested (+ protege.models) -> protege.scored (fused, PROTEGE_FUSED=1:
also protege.decisions + protege.responses | protege.teacher.requests, and no verifier runs;
one hop, PROTEGE_ONE_HOP=1: protege.requests in, protege.ingested | protege.requests.dlq out as
well, and no ingestion runs either).

    python -m protege_services.scorer             (or: protege run scorer)

Every replica reads ``protege.models`` from the beginning without a consumer group, so
each one serves the newest announced version of each tenant's task; it catches up on
announcements before it scores anything.
"""

from __future__ import annotations

import asyncio
from functools import partial

import structlog
from protege_services.ingestion.__main__ import ingestion
from protege_services.scorer.handler import Scorer
from protege_services.verifier.handler import Verifier

from protege.events import Ingested, Request
from protege.kafka import Processor
from protege.service import run_service
from protege.serving import view
from protege.settings import ScorerSettings
from protege.student.runtime import Student, limit_blas, require_gpu
from protege.task import load_tasks

log = structlog.get_logger(service="scorer")  # lazy: bound when first used, after logging is configured


async def serve(settings: ScorerSettings, stop: asyncio.Event) -> None:
    if settings.providers == "cuda":
        require_gpu()  # refuse to start, with the reason, rather than score on the CPU
    # numpy's BLAS at one thread (PROTEGE_BLAS_THREADS): its pool busy-waited on the cores the
    # model and the broker need (protege.student.runtime.limit_blas)
    log.info("blas", wanted=settings.blas_threads, **limit_blas(settings.blas_threads))
    # Fused: the verifier's decisions made here, on the tasks it would have loaded.
    verifier = (
        Verifier(load_tasks(settings.tasks_dir), settings.topics, redact_pii=settings.redact_pii)
        if settings.fused or settings.one_hop
        else None
    )
    scorer = Scorer(
        settings.topics,
        partial(
            Student,
            providers=settings.providers,
            threads=settings.threads,
            sub_batch=settings.sub_batch,
            spinning=settings.spinning,
        ),
        redact_pii=settings.redact_pii,
        verifier=verifier,
        ingestion=await ingestion(settings, "scorer") if settings.one_hop else None,
    )
    # The announcements, from the beginning, applied in order: it serves nothing before it has read them.
    models = view(settings, scorer.serving, scorer.serve)
    watcher = asyncio.create_task(models.run(stop))
    await models.ready(watcher)
    await asyncio.gather(processor(settings, scorer).run(stop), watcher)


def processor(settings: ScorerSettings, scorer: Scorer) -> Processor:
    """Micro-batches from the fetch; a request it cannot survive goes on unscored. One hop: the
    requests themselves, a request that cannot be read refused on protege.requests.dlq with the
    decoder's reason (as ingestion refuses it), one the loop gave up on recorded on protege.dlq
    (the fallback answers or refuses it)."""
    topics = settings.topics
    one_hop = scorer.ingestion is not None
    return Processor(
        settings,
        "scorer",
        {topics.requests: Request} if one_hop else {topics.ingested: Ingested},
        scorer.handle,
        max_records=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        fallback=scorer.quarantined,
        tasks=scorer.verifier.tasks if scorer.verifier is not None else None,
        dead_letters=topics.requests_dlq if one_hop else None,
        quarantine_letters=topics.dlq,
        on_commit=scorer.ingestion.committed if scorer.ingestion is not None else None,
    )


if __name__ == "__main__":
    run_service("scorer", ScorerSettings, serve)
