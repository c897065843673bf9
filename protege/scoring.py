"""One micro-batch of one tenant's task through its student: the scorer's path, and replay's.

    scored = score_batch(student, requests, clean=redact)   # one Scored per request, in order

A student that fails on the batch is reported on each event as ``student_error`` (the
requests escalate); ``student=None`` (cold start: no version serves) passes them on
unscored. Replay calls the same function, so a replayed decision is made on exactly what
the scorer would have computed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import structlog

from protege import metrics
from protege.events import Ingested, Scored, StudentOutput, now_ms
from protege.student.runtime import Student

log = structlog.get_logger()


def score_batch(
    student: Student | None, requests: Sequence[Ingested], clean: Callable[[str], str] = str
) -> list[Scored]:
    """Score ``requests`` (one tenant and task) in one batch; blocking (ONNX Runtime)."""
    answers: list[StudentOutput | None] = [None] * len(requests)
    error = None
    if student is not None and requests:
        task = requests[0].task
        try:
            started = time.perf_counter()
            answers = list(student.predict([clean(q.text) for q in requests]))
            metrics.INFERENCE_SECONDS.labels(task).observe(time.perf_counter() - started)
            metrics.INFERENCE_BATCH.labels(task).observe(len(requests))
        except Exception as e:  # fail safe: escalate, say why
            error = f"{type(e).__name__}: {e}"[:300]
            log.error("student_failed", version=student.version, error=error, batch=len(requests))
    at = now_ms()
    return [
        Scored(request=req, student=answer, student_error=error, scored_at_ms=at, batch_size=len(requests))
        for req, answer in zip(requests, answers, strict=True)
    ]
