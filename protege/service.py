"""Running one service process: settings, logging, signals, topics, then its coroutines.

    python -m services.ingestion        # each service's __main__ calls ``run_service``

SIGTERM and SIGINT set the stop event; the service finishes its current transaction and
exits 0. An unexpected exception exits non-zero so the supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from protege import metrics
from protege.kafka import ensure_topics
from protege.logs import configure
from protege.settings import Settings

S = TypeVar("S", bound=Settings)


def run_service(name: str, settings_cls: type[S], serve: Callable[[S, asyncio.Event], Awaitable[None]]) -> None:
    settings = settings_cls()
    log = configure(settings.log_level, settings.log_format, service=name)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await ensure_topics(settings)
        metrics.serve(settings.metrics_port)
        log.info("starting", bootstrap=settings.bootstrap_servers, prefix=settings.topic_prefix)
        await serve(settings, stop)

    try:
        asyncio.run(main())
    except Exception:
        log.exception("crashed")
        sys.exit(1)
