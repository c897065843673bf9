"""Every Kafka topic protege uses, in one place.

A deployment may prefix them all (``PROTEGE_TOPIC_PREFIX``) to run several pipelines on
one cluster; tests use that to give each test its own topics.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    prefix: str = ""

    def _t(self, name: str) -> str:
        return f"{self.prefix}protege.{name}"

    @property
    def requests(self) -> str:
        return self._t("requests")

    @property
    def requests_dlq(self) -> str:
        return self._t("requests.dlq")

    @property
    def ingested(self) -> str:
        return self._t("ingested")

    @property
    def scored(self) -> str:
        return self._t("scored")

    @property
    def decisions(self) -> str:
        return self._t("decisions")

    @property
    def responses(self) -> str:
        return self._t("responses")

    @property
    def teacher_requests(self) -> str:
        return self._t("teacher.requests")

    @property
    def teacher_results(self) -> str:
        return self._t("teacher.results")

    @property
    def teacher_retry(self) -> str:
        """Escalations held while the teacher is unavailable or over budget."""
        return self._t("teacher.retry")

    @property
    def teacher_journal(self) -> str:
        """Teacher answers paid for and not yet committed (compacted; see services/teacher/journal.py)."""
        return self._t("teacher.journal")

    @property
    def corrections(self) -> str:
        return self._t("corrections")

    @property
    def alerts(self) -> str:
        return self._t("alerts")

    @property
    def feedback(self) -> str:
        return self._t("feedback")

    @property
    def review(self) -> str:
        """Requests of a task's review sample waiting for a person's label (``protege review``)."""
        return self._t("review")

    @property
    def harvest(self) -> str:
        return self._t("harvest")

    @property
    def models(self) -> str:
        return self._t("models")

    @property
    def dlq(self) -> str:
        """Internal events a service could not handle (never a request's only answer)."""
        return self._t("dlq")

    @property
    def monitor_keyed(self) -> str:
        """The monitor's sources re-keyed by task (one record per source record; written and
        read by the monitor alone, without transactions: see services/monitor/app.py)."""
        return self._t("monitor.keyed")

    def all(self) -> list[str]:
        names = [
            "requests",
            "requests_dlq",
            "ingested",
            "scored",
            "decisions",
            "responses",
            "teacher_requests",
            "teacher_retry",
            "teacher_results",
            "teacher_journal",
            "corrections",
            "feedback",
            "review",
            "harvest",
            "models",
            "alerts",
            "dlq",
        ]
        return [getattr(self, n) for n in names]

    def partitions(self, topic: str, default: int) -> int:
        """Model announcements are read in order from the beginning by every scorer: one
        partition. Everything else is keyed by request id and spreads over ``default``."""
        return 1 if topic == self.models else default

    def configs(self, topic: str) -> dict[str, str]:
        """Topic settings protege needs at creation: the journal keeps only each key's latest
        record (settled ones are tombstoned) and nothing older than a week, in case a settle
        was lost."""
        if topic == self.teacher_journal:
            return {"cleanup.policy": "compact,delete", "retention.ms": str(7 * 24 * 3600 * 1000)}
        return {}
