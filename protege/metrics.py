"""Prometheus metrics, one registry per process, served on ``PROTEGE_METRICS_PORT``.

Names are prefixed ``protege_``. Every service exports the processing loop's figures
(records in and out per topic, batch sizes, handling time, consumer lag); each adds its
own: routing share and escalation reasons (verifier), latency per route and per hop
(verifier, teacher), teacher calls, tokens and cost (teacher), the model version serving
and inference time (scorer), dead letters by reason (all). Labels are tasks, tenants,
routes and reasons, never request ids or texts.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry()
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# -- the processing loop (every service)
RECORDS_IN = Counter("protege_records_in", "Records consumed and committed.", ["service", "topic"], registry=REGISTRY)
RECORDS_OUT = Counter("protege_records_out", "Records produced and committed.", ["service", "topic"], registry=REGISTRY)
BATCH_SIZE = Histogram(
    "protege_batch_size", "Records per processed batch.", ["service"], buckets=BATCH_BUCKETS, registry=REGISTRY
)
HANDLE_SECONDS = Histogram(
    "protege_batch_seconds",
    "Time to handle and commit one batch.",
    ["service"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "protege_consumer_lag",
    "Records behind the end of the partition.",
    ["service", "topic", "partition"],
    registry=REGISTRY,
)
PRODUCE_RETRIES = Counter(
    "protege_kafka_produce_retries",
    "Produce requests the broker asked to retry (see protege.logs.ExpectedRetries).",
    ["error"],
    registry=REGISTRY,
)
FENCED = Counter(
    "protege_fenced",
    "Transactions aborted because another replica took the partition (a zombie fenced).",
    ["service"],
    registry=REGISTRY,
)
QUARANTINED = Counter(
    "protege_quarantined",
    "Records whose handling kept failing, dead-lettered and skipped.",
    ["service"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "protege_dead_letters", "Inputs sent to the dead-letter topic.", ["service", "reason"], registry=REGISTRY
)

# -- routing (verifier)
DECISIONS = Counter("protege_decisions", "Routing decisions.", ["task", "policy", "verdict"], registry=REGISTRY)
ESCALATIONS = Counter(
    "protege_escalations", "Escalations by reason (a decision may have several).", ["task", "reason"], registry=REGISTRY
)
ESCALATION_RATE = Gauge(  # the monitor's
    "protege_escalation_rate", "Escalation rate over the task's drift window.", ["task"], registry=REGISTRY
)
DRIFT_ALARM = Gauge(
    "protege_drift_alarm", "1 while the escalation rate is outside its band.", ["task"], registry=REGISTRY
)

# -- latency
ANSWERS = Counter(
    "protege_answers",
    "Responses by route and status (the response's: answered, degraded, failed).",
    ["task", "route", "status"],
    registry=REGISTRY,
)
ANSWER_SECONDS = Histogram(
    "protege_answer_seconds",
    "Ingestion to response, per route.",
    ["task", "route"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
HOP_SECONDS = Histogram(
    "protege_hop_seconds", "Time between two stages of a request.", ["hop"], buckets=LATENCY_BUCKETS, registry=REGISTRY
)

# -- the student (scorer)
SERVING = Gauge(
    "protege_model_serving",
    "1 for the version serving each tenant's task.",
    ["tenant", "task", "version"],
    registry=REGISTRY,
)
INFERENCE_SECONDS = Histogram(
    "protege_inference_seconds",
    "One micro-batch through the student.",
    ["task"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
INFERENCE_BATCH = Histogram(
    "protege_inference_batch_size",
    "Requests per student micro-batch.",
    ["task"],
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)

# -- the teacher
TEACHER_CALLS = Counter(
    "protege_teacher_calls", "Teacher answers by mode.", ["task", "model", "mode"], registry=REGISTRY
)
TEACHER_TOKENS = Counter(
    "protege_teacher_tokens", "Teacher tokens by kind.", ["task", "model", "kind"], registry=REGISTRY
)
TEACHER_COST = Counter(
    "protege_teacher_cost_usd",
    "Teacher spend in USD, by mode (audits apart).",
    ["tenant", "task", "mode"],
    registry=REGISTRY,
)
# Live accuracy of a version: sum(rate(protege_audits_agreed_total)) / sum(rate(protege_audits_total))
# by (tenant, task, version), over all teacher replicas; `protege models show` prints it with its interval.
AUDITS = Counter(
    "protege_audits", "Audited accepted answers the teacher answered.", ["tenant", "task", "version"], registry=REGISTRY
)
AUDITS_AGREED = Counter(
    "protege_audits_agreed",
    "Audited accepted answers the teacher agreed with.",
    ["tenant", "task", "version"],
    registry=REGISTRY,
)
# The review sample (Task.review_rate): sent to people by the harvester; joined into golden rows by
# the trainer, where the teacher's accuracy on them is what people say of it on live traffic.
REVIEW_SAMPLED = Counter(
    "protege_review_sampled",
    "Requests of the review sample sent to people (protege.review).",
    ["task"],
    registry=REGISTRY,
)
REVIEWS = Counter(
    "protege_reviews", "Review labels people sent (protege.feedback, kind review).", ["task"], registry=REGISTRY
)
REVIEWED_ROWS = Gauge(
    "protege_reviewed_golden_rows",
    "Golden rows from the review sample: the teacher's answer and a person's label both in (since the last shift "
    "the trainer saw: ReviewStore.mark_shift).",
    ["tenant", "task"],
    registry=REGISTRY,
)
REVIEWED_TEACHER_ACCURACY = Gauge(
    "protege_reviewed_teacher_accuracy",
    "The teacher's accuracy on the reviewed golden rows (people's labels on a uniform sample of live traffic).",
    ["tenant", "task"],
    registry=REGISTRY,
)
REVIEWERS_AGREEMENT = Gauge(
    "protege_reviewers_agreement",
    "How often two people who labelled the same request agreed (Task.review_overlap; rows two or more labelled).",
    ["tenant", "task"],
    registry=REGISTRY,
)
REVIEWED_DISPUTED = Gauge(
    "protege_reviewed_disputed_rows",
    "Reviewed rows whose people disagree with no majority: kept out of the golden set until a third label.",
    ["tenant", "task"],
    registry=REGISTRY,
)
OUT_OF_SCOPE_ALARMS = Counter(
    "protege_trainer_out_of_scope_alarms",
    "Out-of-scope alarms that called a check of the serving rule before its turn: the share of out-of-scope "
    "requests among the rows people reviewed since the rule was certified rose (protege.certify.out_of_scope_alarm).",
    ["tenant", "task"],
    registry=REGISTRY,
)
RECERTIFIED = Counter(
    "protege_trainer_recertifications",
    "The serving version's rule judged again on today's trusted rows (outcome: kept, tightened — it no longer "
    "held —, loosened, failed — the check raised; the rule stands).",
    ["tenant", "task", "outcome"],
    registry=REGISTRY,
)
TEACHER_SECONDS = Histogram(
    "protege_teacher_call_seconds",
    "One teacher call, retries included.",
    ["task"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
TEACHER_IN_FLIGHT = Gauge(
    "protege_teacher_in_flight", "Requests the teacher worker is handling now.", ["service"], registry=REGISTRY
)
TEACHER_HELD = Counter("protege_teacher_held", "Requests held for later by reason.", ["task", "why"], registry=REGISTRY)
BREAKER_OPEN = Gauge("protege_teacher_breaker_open", "1 while the circuit breaker is open.", registry=REGISTRY)


def observe_answer(task: str, route: str, status: str, received_at_ms: int, answered_at_ms: int) -> None:
    ANSWERS.labels(task, route, status).inc()
    ANSWER_SECONDS.labels(task, route).observe(max(0, answered_at_ms - received_at_ms) / 1000)


def observe_hop(hop: str, start_ms: int | None, end_ms: int) -> None:
    if start_ms is not None:
        HOP_SECONDS.labels(hop).observe(max(0, end_ms - start_ms) / 1000)


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (0: do not serve)."""
    if port:
        start_http_server(port, registry=REGISTRY)


# -- the monitor (windowed, from changelog-backed tables; the current window)
MONITOR_DECIDED = Gauge(
    "protege_monitor_decided", "Decisions in the current window.", ["tenant", "task", "version"], registry=REGISTRY
)
MONITOR_ESCALATED = Gauge(
    "protege_monitor_escalated", "Escalations in the current window.", ["tenant", "task", "version"], registry=REGISTRY
)
MONITOR_STUDENT_SHARE = Gauge(
    "protege_monitor_student_share",
    "Share answered by the student in the current window.",
    ["tenant", "task", "version"],
    registry=REGISTRY,
)
MONITOR_AUDITS = Gauge(
    "protege_monitor_audits", "Audits in the current window.", ["tenant", "task", "version"], registry=REGISTRY
)
MONITOR_AUDITED_ACCURACY = Gauge(
    "protege_monitor_audited_accuracy",
    "Share of audits the teacher agreed with, current window.",
    ["tenant", "task", "version"],
    registry=REGISTRY,
)
MONITOR_SPEND = Gauge(
    "protege_monitor_teacher_spend_usd",
    "Teacher spend in the current hour (per tenant: sum by tenant).",
    ["tenant", "task"],
    registry=REGISTRY,
)
MONITOR_REREAD = Gauge(
    "protege_monitor_reread",
    "Decisions read again after a restart and not counted twice (current window).",
    ["tenant", "task", "version"],
    registry=REGISTRY,
)
CANARY_ON_TRIAL = Gauge(
    "protege_canary_on_trial", "1 while a version is on trial (canary).", ["tenant", "task"], registry=REGISTRY
)
CANARY_VERDICTS = Counter(
    "protege_canary_verdicts",
    "The monitor's canary verdicts: serve (promoted) or abort (rolled back).",
    ["tenant", "task", "action"],
    registry=REGISTRY,
)
MONITOR_SKIPPED = Counter(
    "protege_monitor_skipped",
    "Records the monitor could not read, by topic and reason.",
    ["topic", "reason"],
    registry=REGISTRY,
)
