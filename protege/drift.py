"""The escalation rate of a task against its drift band: the leading indicator of drift.

The monitor service keeps one ``DriftMonitor`` per task over the live decisions of all its
tenants, in a changelog-backed table (its state is small and plain: ``state()`` and
``restore()``), and publishes the alerts on ``protege.alerts``; ``protege report`` runs the
same monitor over recorded or replayed decisions to draw the band and the alarms a
candidate would have raised.

The window is ``drift.window`` decisions, kept as ten blocks of counts rather than one entry
per decision, so the state written to the changelog per decision stays a few hundred bytes:
the rate is measured each time a block fills, over the last ten blocks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from protege.events import Alert, Decision
from protege.task import Drift

BLOCKS = 10  # per window


@dataclass
class Block:
    decided: int = 0
    escalated: int = 0
    reasons: Counter[str] = field(default_factory=Counter)  # escalations per reason

    def state(self) -> list[Any]:
        return [self.decided, self.escalated, dict(self.reasons)]

    @classmethod
    def of(cls, state: list[Any]) -> Block:
        return cls(state[0], state[1], Counter(state[2]))


@dataclass
class DriftMonitor:
    """Escalation rate over the last ``window`` decisions of a task, against a baseline.

    The baseline is the task's configured one, or learned: the rate of the first full
    window, and lower whenever the rate falls more than ``band`` below it (the student got
    better — each retrain on a cold start does this — which is not drift). An alert fires
    when the rate rises above ``baseline + band`` and resolves when it is back within half
    the band. Only decisions on a student's answer count: with no student
    serving, every request escalates, which says nothing about the traffic (a cold start
    would otherwise learn a baseline of 100% and alarm as soon as a student serves).
    """

    task: str
    policy_version: str
    config: Drift
    blocks: list[Block] = field(default_factory=list)  # full blocks, oldest first (at most BLOCKS)
    filling: Block = field(default_factory=Block)
    baseline: float | None = None
    firing: bool = False
    rate: float | None = None  # at the last full block

    def __post_init__(self) -> None:
        if self.baseline is None:
            self.baseline = self.config.baseline

    @property
    def block_size(self) -> int:
        return max(1, self.config.window // BLOCKS)

    @property
    def window(self) -> int:
        return self.block_size * BLOCKS

    def observe(self, decision: Decision) -> Alert | None:
        return self.see(decision.verdict, decision.reasons, decision.decided_at_ms, decision.model_version)

    def see(self, verdict: str, reasons: Sequence[str], at_ms: int, version: str | None) -> Alert | None:
        """One decision's verdict and reasons, and the student version it was about (a
        replayed one has no ``Decision`` event)."""
        if verdict == "shadow" or version is None:
            return None
        block = self.filling
        block.decided += 1
        if verdict == "escalate":
            block.escalated += 1
            block.reasons.update(r.split(":")[0] for r in reasons)
        if block.decided < self.block_size:
            return None
        self.blocks = [*self.blocks[-(BLOCKS - 1) :], block]
        self.filling = Block()
        if len(self.blocks) < BLOCKS:
            return None
        decided = sum(b.decided for b in self.blocks)
        rate = sum(b.escalated for b in self.blocks) / decided
        self.rate = rate
        if self.baseline is None:
            self.baseline = rate
            return None
        rise = rate - self.baseline
        if not self.firing and rise < -self.config.band and self.config.baseline is None:
            self.baseline = rate  # better than learned: the new normal
            return None
        # Hysteresis: fire beyond the band, resolve only back inside half of it, so a rate
        # hovering at the edge does not flap.
        outside = rise > self.config.band if not self.firing else rise > self.config.band / 2
        if outside == self.firing:
            return None
        self.firing = outside
        per_reason = sum((b.reasons for b in self.blocks), Counter[str]())
        return Alert(
            kind="drift",
            state="firing" if outside else "resolved",
            task=self.task,
            policy_version=self.policy_version,
            rate=round(rate, 4),
            baseline=round(self.baseline, 4),
            band=self.config.band,
            window=decided,
            reasons={r: round(n / decided, 4) for r, n in per_reason.items()},
            at_ms=at_ms,
        )

    def state(self) -> dict[str, Any]:
        """What the monitor keeps in its changelog: plain JSON."""
        return {
            "blocks": [b.state() for b in self.blocks],
            "filling": self.filling.state(),
            "baseline": self.baseline,
            "firing": self.firing,
            "rate": self.rate,
        }

    @classmethod
    def restore(cls, task: str, policy_version: str, config: Drift, state: dict[str, Any] | None) -> DriftMonitor:
        monitor = cls(task, policy_version, config)
        if state:
            monitor.blocks = [Block.of(b) for b in state["blocks"]]
            monitor.filling = Block.of(state["filling"])
            monitor.baseline = state["baseline"]
            monitor.firing = state["firing"]
            monitor.rate = state["rate"]
        return monitor
