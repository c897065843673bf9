"""Running one service process: settings, logging, signals, topics, then its coroutines.

    python -m protege_services.ingestion        # each service's __main__ calls ``run_service``

SIGTERM and SIGINT set the stop event; the service finishes its current transaction and
exits 0. An unexpected exception exits non-zero so the supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import ValidationError

from protege import metrics
from protege.kafka import ensure_topics
from protege.logs import configure
from protege.settings import Settings, apply_to_process, settings_error
from protege.signals import stop_on_signals

S = TypeVar("S", bound=Settings)


def load_settings(name: str, settings_cls: type[S]) -> S:
    """The service's settings from the environment; ones that do not parse are one line on
    stderr that names the variable (never its value) and exit status 2."""
    try:
        return settings_cls()
    except ValidationError as e:
        sys.stderr.write(f"{name}: {settings_error(e) or e}\n")
        sys.exit(2)


def run_service(name: str, settings_cls: type[S], serve: Callable[[S, asyncio.Event], Awaitable[None]]) -> None:
    settings = load_settings(name, settings_cls)
    apply_to_process(settings)
    log = configure(settings.log_level, settings.log_format, service=name)

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(asyncio.get_running_loop(), stop)
        await ensure_topics(settings)
        metrics.serve(settings.metrics_port)
        log.info("starting", bootstrap=settings.bootstrap_servers, prefix=settings.topic_prefix)
        await serve(settings, stop)

    try:
        asyncio.run(main())
    except Exception:
        log.exception("crashed")
        sys.exit(1)
