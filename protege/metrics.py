"""Prometheus metrics, one registry per process, served on ``PROTEGE_METRICS_PORT``.

Names are prefixed ``protege_``. The verifier's routing metrics are the leading indicator
of drift: escalations per task and reason, and the escalation rate over the drift window.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

REGISTRY = CollectorRegistry()

DECISIONS = Counter("protege_decisions", "Routing decisions.", ["task", "policy", "verdict"], registry=REGISTRY)
ESCALATIONS = Counter("protege_escalations", "Escalations by reason (a decision may have several).",
                      ["task", "reason"], registry=REGISTRY)
ESCALATION_RATE = Gauge("protege_escalation_rate", "Escalation rate over the task's drift window.", ["task"],
                        registry=REGISTRY)
DRIFT_ALARM = Gauge("protege_drift_alarm", "1 while the escalation rate is outside its band.", ["task"],
                    registry=REGISTRY)


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (0: do not serve)."""
    if port:
        start_http_server(port, registry=REGISTRY)
