"""The escalation rate of a task against its drift band: the leading indicator of drift.

The verifier keeps one ``DriftMonitor`` per task over its live decisions and publishes the
alerts on ``protege.alerts``; ``protege report`` runs the same monitor over recorded or
replayed decisions to draw the band and the alarms a candidate would have raised.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from protege.events import Alert, Decision
from protege.task import Drift


@dataclass
class DriftMonitor:
    """Escalation rate over the last ``window`` decisions of a task, against a baseline.

    The baseline is the task's configured one, or the rate of the first full window. An
    alert fires when the rate leaves ``baseline ± band`` and resolves when it is back
    within half the band.
    """

    task: str
    policy_version: str
    config: Drift
    recent: deque[tuple[bool, tuple[str, ...]]] = field(default_factory=deque)
    escalated: int = 0  # escalations in ``recent``, kept as it slides (no sum per decision)
    baseline: float | None = None
    firing: bool = False

    def __post_init__(self) -> None:
        self.baseline = self.config.baseline
        self.recent = deque(maxlen=self.config.window)

    @property
    def rate(self) -> float | None:
        return self.escalated / len(self.recent) if self.recent else None

    def observe(self, decision: Decision) -> Alert | None:
        return self.see(decision.verdict, decision.reasons, decision.decided_at_ms)

    def see(self, verdict: str, reasons: Sequence[str], at_ms: int) -> Alert | None:
        """One decision's verdict and reasons (a replayed one has no ``Decision`` event)."""
        if verdict == "shadow":
            return None
        if len(self.recent) == self.recent.maxlen:
            self.escalated -= self.recent[0][0]
        escalate = verdict == "escalate"
        self.recent.append((escalate, tuple(reasons)))
        self.escalated += escalate
        if len(self.recent) < self.config.window:
            return None
        rate = self.escalated / len(self.recent)
        if self.baseline is None:
            self.baseline = rate
            return None
        distance = abs(rate - self.baseline)
        # Hysteresis: fire beyond the band, resolve only back inside half of it, so a rate
        # hovering at the edge does not flap.
        outside = distance > self.config.band if not self.firing else distance > self.config.band / 2
        if outside == self.firing:
            return None
        self.firing = outside
        per_reason = Counter(r.split(":")[0] for e, reasons in self.recent if e for r in reasons)
        return Alert(
            kind="drift",
            state="firing" if outside else "resolved",
            task=self.task,
            policy_version=self.policy_version,
            rate=round(rate, 4),
            baseline=round(self.baseline, 4),
            band=self.config.band,
            window=len(self.recent),
            reasons={r: round(n / len(self.recent), 4) for r, n in per_reason.items()},
            at_ms=at_ms,
        )
