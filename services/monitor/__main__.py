"""Monitor service: protege.decisions + protege.teacher.results -> windowed statistics on
/metrics (faust-streaming tables, changelog-backed).

    python -m protege_services.monitor           (or: protege run monitor)
"""

from __future__ import annotations

import asyncio

import faust
from protege_services.monitor.app import make_app

from protege import metrics
from protege.kafka import ensure_topics
from protege.logs import configure
from protege.service import load_settings
from protege.settings import MonitorSettings, apply_to_process


def main() -> None:
    settings = load_settings("monitor", MonitorSettings)
    apply_to_process(settings)
    configure(settings.log_level, settings.log_format, service="monitor")
    asyncio.run(ensure_topics(settings, [*settings.topics.all(), settings.topics.monitor_keyed]))
    metrics.serve(settings.metrics_port)
    app = make_app(settings)
    faust.Worker(app, loglevel=settings.log_level.lower()).execute_from_commandline()


if __name__ == "__main__":
    main()
