"""structlog, configured once per process: JSON when not on a terminal, readable on one.

Services bind ``request_id`` (and tenant, task) on every line about a request, so one
request can be followed across services with ``grep``. Texts are never logged.
"""

from __future__ import annotations

import logging
import re
import sys

import structlog

from protege import metrics


def configure(level: str = "info", fmt: str = "auto", service: str | None = None) -> structlog.stdlib.BoundLogger:
    renderer: structlog.types.Processor
    if fmt == "json" or (fmt == "auto" and not sys.stderr.isatty()):
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # aiokafka logs through the standard library; keep its warnings, on stderr.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    sender = logging.getLogger("aiokafka.producer.sender")
    if not any(isinstance(f, ExpectedRetries) for f in sender.filters):
        sender.addFilter(ExpectedRetries())
    log: structlog.stdlib.BoundLogger = structlog.get_logger()
    return log.bind(service=service) if service else log


class ExpectedRetries(logging.Filter):
    """Counts, and keeps out of the log, the produce retries a transactional producer meets
    in normal operation.

    Since KIP-890, a broker checks that a transactional produce's partition was added to the
    transaction; while the coordinator is still writing the previous transaction's markers
    it answers CONCURRENT_TRANSACTIONS, which it reports to older produce versions (those
    aiokafka speaks) as NOT_ENOUGH_REPLICAS so that they retry (apache/kafka#14378,
    aio-libs/aiokafka#1172). aiokafka retries and the record lands, but it logs a warning
    each time, which on a one-node broker reads as a failure. They are counted in
    ``protege_kafka_produce_retries{error}``: an ISR really below ``min.insync.replicas``
    on a cluster shows there as a count that keeps climbing, and then as send timeouts.
    """

    PATTERN = re.compile(r"Got error produce response .*retrying\. Error: <class 'aiokafka\.errors\.(\w+)'>")
    EXPECTED = frozenset({"NotEnoughReplicasError"})

    def filter(self, record: logging.LogRecord) -> bool:
        match = self.PATTERN.search(record.getMessage())
        if match is None or match.group(1) not in self.EXPECTED:
            return True
        metrics.PRODUCE_RETRIES.labels(match.group(1)).inc()
        return False
