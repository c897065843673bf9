"""Canaries: a new version serves a share of requests beside the serving one, and the
audits of both decide whether it is promoted or rolled back.

    arm("acme-42", 0.1)          # "canary", "control" or None: which arm a request is in
    judge(config, canary, serving, elapsed_s)   # a Verdict: promote, rollback, or None yet

A request's arm is a stable hash of its id (salted apart from the audit hash), so a request
always meets the same version. The canary arm (``share`` of requests) is scored by the
candidate, the control arm (the next ``share``) by the serving version; both are audited at
the canary's audit rate, so the two accuracies are measured on like samples. The serving
version's other audits (``policy.audit_rate``) count for it too: a uniform sample as well.

The test is sequential: at every look it compares the canary's audited accuracy and its
escalation rate with the serving version's since the trial began, each difference with a
normal interval at a confidence raised for repeated looks (``Canary.confidence``, 99% by
default). Rolled back as soon as the canary is surely less accurate by more than ``margin``
or surely escalates more by more than ``escalation_margin``; promoted as soon as it is surely
within both. At the volume or time limit it decides on the point estimates — and rolls back
a canary with fewer than ``min_audits`` audits (it answered too little to be judged).

Under a target, each version answers what its own certified rule accepts, and a version that
accepts more is expected to be right less often on what it accepts: a candidate certified for
91% of the traffic would lose a plain comparison with a first version certified for 62% even
when both keep the target. So where both announcements carry what the trusted golden rows
predict an audit of their accepted answers finds (``expected``: the student's agreement with
the teacher on the golden rows its rule accepts), the accuracy difference is read against the
difference they predict — did the canary do on live traffic as well, against the serving
version, as the golden rows said it would — with those estimates' own sampling error in the
interval.

The monitor service judges: ``Trial`` is one tenant's task as it sees it (what serves, the
version on trial, the tallies since the trial began), plain JSON in a changelog-backed
table, fed the announcements, decisions and audits, and says the verdict once.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any, Literal

from protege.events import ModelAnnouncement, now_ms
from protege.serving import Serving
from protege.student.manifest import Manifest
from protege.task import Canary, Task

Arm = Literal["canary", "control"]


def _point(request_id: str) -> float:
    digest = hashlib.sha256(b"canary:" + request_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def arm(request_id: str, share: float) -> Arm | None:
    """The canary arm is the first ``share`` of the hash space, the control arm the next."""
    if share <= 0:
        return None
    p = _point(request_id)
    return "canary" if p < share else "control" if p < 2 * share else None


@dataclass(frozen=True)
class Tally:
    """One version's numbers since the trial began."""

    audits: int = 0  # audited answers
    agreed: int = 0  # the teacher gave the same label
    decided: int = 0  # decisions on its answers
    escalated: int = 0  # of them, sent to the teacher

    @property
    def accuracy(self) -> float | None:
        return self.agreed / self.audits if self.audits else None

    @property
    def escalation(self) -> float | None:
        return self.escalated / self.decided if self.decided else None


@dataclass(frozen=True)
class Expected:
    """What an audit of a version's accepted answers should find, from its golden rows: the
    share of them on which the student gave the teacher's label, over ``cases`` rows."""

    agreement: float
    cases: int

    def variance(self) -> float:
        """The sampling variance of ``agreement`` (Laplace-smoothed, as the audits' own)."""
        p = (self.agreement * self.cases + 1) / (self.cases + 2)
        return p * (1 - p) / self.cases


MIN_EXPECTED_CASES = 50  # fewer accepted golden rows: too loose an estimate to read audits against


def expected(metrics: Mapping[str, float]) -> Expected | None:
    """From a version's announced metrics (``truth_agreement_on_accepted`` over
    ``truth_accepted_cases``, the trusted golden rows its rule accepts), or None."""
    agreement, cases = metrics.get("truth_agreement_on_accepted"), metrics.get("truth_accepted_cases")
    if agreement is None or cases is None or cases < MIN_EXPECTED_CASES:
        return None
    return Expected(float(agreement), int(cases))


@dataclass(frozen=True)
class Verdict:
    action: Literal["promote", "rollback"]
    reason: str
    evidence: dict[str, float]


def _difference(a: int, n: int, b: int, m: int, z: float) -> tuple[float, float, float]:
    """a/n - b/m and its normal interval (Laplace-smoothed proportions for the standard
    error: no zero variance at 0% or 100%)."""
    sa, sb = (a + 1) / (n + 2), (b + 1) / (m + 2)
    se = math.sqrt(sa * (1 - sa) / n + sb * (1 - sb) / m)
    d = a / n - b / m
    return d, d - z * se, d + z * se


def judge(
    config: Canary,
    canary: Tally,
    serving: Tally,
    elapsed_s: float,
    expect: tuple[Expected, Expected] | None = None,
) -> Verdict | None:
    """Promote, roll back, or None (keep gathering evidence).

    Two differences, canary minus serving, each with an interval at ``config.confidence``:
    audited accuracy (it may be at most ``margin`` lower) and escalation rate (it may be at
    most ``escalation_margin`` higher: escalations are what the student costs). Rolled back
    as soon as either is surely outside its margin; promoted as soon as both are surely
    inside; at the limit, on the point estimates. ``expect`` (canary, serving): what their
    golden rows predict their audits find; the accuracy difference is then read against the
    predicted one, its interval widened by the predictions' own error.
    """
    at_limit = canary.audits >= config.max_audits or elapsed_s >= config.max_minutes * 60
    evidence: dict[str, Any] = {
        "canary_audits": canary.audits,
        "canary_agreed": canary.agreed,
        "serving_audits": serving.audits,
        "serving_agreed": serving.agreed,
        "canary_decided": canary.decided,
        "canary_escalated": canary.escalated,
        "serving_decided": serving.decided,
        "serving_escalated": serving.escalated,
        "elapsed_s": round(elapsed_s, 1),
        "margin": config.margin,
        "escalation_margin": config.escalation_margin,
    }
    if canary.audits < config.min_audits or serving.audits < config.min_audits or not canary.decided * serving.decided:
        if at_limit:
            return Verdict(
                "rollback",
                f"limit reached with {canary.audits} canary and {serving.audits} serving audits (fewer than "
                f"{config.min_audits}): too little evidence to promote",
                evidence,
            )
        return None
    z = NormalDist().inv_cdf(1 - (1 - config.confidence) / 2)
    d, lo, hi = _difference(canary.agreed, canary.audits, serving.agreed, serving.audits, z)
    if expect is not None:
        c, s = expect
        gap = c.agreement - s.agreement  # what the golden rows predict: negative when the canary accepts more
        half = (hi - lo) / 2
        half = math.sqrt(half**2 + z**2 * (c.variance() + s.variance()))
        d -= gap
        lo, hi = d - half, d + half
        evidence |= {
            "canary_expected": c.agreement,
            "canary_expected_cases": c.cases,
            "serving_expected": s.agreement,
            "serving_expected_cases": s.cases,
            "expected_difference": round(gap, 4),
        }
    e, e_lo, e_hi = _difference(canary.escalated, canary.decided, serving.escalated, serving.decided, z)
    evidence |= {
        "canary_accuracy": round(canary.agreed / canary.audits, 4),
        "serving_accuracy": round(serving.agreed / serving.audits, 4),
        "difference": round(d, 4),
        "low": round(lo, 4),
        "high": round(hi, 4),
        "canary_escalation": round(canary.escalated / canary.decided, 4),
        "serving_escalation": round(serving.escalated / serving.decided, 4),
        "escalation_difference": round(e, 4),
        "escalation_low": round(e_lo, 4),
        "escalation_high": round(e_hi, 4),
        "confidence": config.confidence,
    }
    said = (
        f"canary {canary.agreed / canary.audits:.1%} of {canary.audits} audits right, "
        f"{canary.escalated / canary.decided:.1%} of {canary.decided} escalated; serving "
        f"{serving.agreed / serving.audits:.1%} of {serving.audits}, {serving.escalated / serving.decided:.1%} "
        f"of {serving.decided}"
    )
    if expect is not None:
        said += (
            f"; golden rows predicted {expect[0].agreement:.1%} and {expect[1].agreement:.1%} (accuracy difference "
            f"read against {expect[0].agreement - expect[1].agreement:+.3f})"
        )
    if hi < -config.margin:
        return Verdict(
            "rollback", f"{said}: less accurate by more than {config.margin:.1%} (upper bound {hi:+.3f})", evidence
        )
    if e_lo > config.escalation_margin:
        return Verdict(
            "rollback",
            f"{said}: escalates more by more than {config.escalation_margin:.1%} (lower bound {e_lo:+.3f})",
            evidence,
        )
    if lo > -config.margin and e_hi < config.escalation_margin:
        return Verdict(
            "promote",
            f"{said}: accuracy no worse than {config.margin:.1%} (lower bound {lo:+.3f}), escalations no more "
            f"than {config.escalation_margin:.1%} above (upper bound {e_hi:+.3f})",
            evidence,
        )
    if at_limit:
        if d >= -config.margin and e <= config.escalation_margin:
            return Verdict("promote", f"{said}: limit reached, within both margins on the point estimates", evidence)
        return Verdict("rollback", f"{said}: limit reached, outside a margin on the point estimates", evidence)
    return None


class Trial:
    """One tenant's task as the monitor sees it: what serves (``Serving``'s rules, applied to
    the announcements in order), the version on trial, and each version's tally since the
    trial began. ``state()`` is plain JSON for a changelog-backed table; ``Trial(state)``
    restores it. The announcements stay plain JSON until one is needed whole (a new
    announcement, a verdict): a decision or an audit reads three of their fields."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        state = state or {}
        self._serving: dict[str, Any] | None = state.get("serving")
        self._canary: dict[str, Any] | None = state.get("canary")
        self.pinned: bool = state.get("pinned", False)
        self.tallies: dict[str, dict[str, int]] = state.get("tallies", {})
        self.judged: bool = state.get("judged", False)

    @property
    def serving(self) -> ModelAnnouncement | None:
        return _announcement(self._serving)

    @property
    def canary(self) -> ModelAnnouncement | None:
        return _announcement(self._canary)

    @property
    def on_trial(self) -> bool:
        """A version is on trial and its verdict is not said yet."""
        return self._canary is not None and self._serving is not None and not self.judged

    def state(self) -> dict[str, Any]:
        return {
            "serving": self._serving,
            "canary": self._canary,
            "pinned": self.pinned,
            "tallies": self.tallies,
            "judged": self.judged,
        }

    def announced(self, ann: ModelAnnouncement) -> None:
        key = (ann.tenant, ann.task)
        s = Serving(pinned={key} if self.pinned else set())
        serving, canary = self.serving, self.canary
        if serving is not None:
            s.current[key] = serving
        if canary is not None:
            s.canaries[key] = canary
        s.apply(ann)
        after = s.canaries.get(key)
        self._serving = _plain(s.current.get(key))
        self._canary = _plain(after)
        self.pinned = key in s.pinned
        if after is not canary:  # a trial began or ended: count afresh
            self.tallies, self.judged = {}, False

    def _tally(self, version: str | None, at_ms: int) -> dict[str, int] | None:
        if not self.on_trial:
            return None
        assert self._canary is not None and self._serving is not None
        if at_ms < self._canary["announced_at_ms"]:
            return None
        if version is None or version not in (self._canary["version"], self._serving["version"]):
            return None
        return self.tallies.setdefault(version, {})

    def decided(self, version: str | None, escalated: bool, at_ms: int) -> bool:
        """Count a decision on ``version``'s answer; False when it is not part of a trial."""
        tally = self._tally(version, at_ms)
        if tally is None:
            return False
        tally["decided"] = tally.get("decided", 0) + 1
        tally["escalated"] = tally.get("escalated", 0) + int(escalated)
        return True

    def audited(self, version: str | None, agreed: bool, at_ms: int) -> bool:
        """Count an audit of ``version``'s answer; False when it is not part of a trial."""
        tally = self._tally(version, at_ms)
        if tally is None:
            return False
        tally["audits"] = tally.get("audits", 0) + 1
        tally["agreed"] = tally.get("agreed", 0) + int(agreed)
        return True

    def tally(self, version: str) -> Tally:
        return Tally(**self.tallies.get(version, {}))

    def verdict(self, config: Canary, at_ms: int, targeted: bool = False) -> ModelAnnouncement | None:
        """The verdict as an announcement (``serve``: promoted, ``abort``: rolled back), once,
        when the evidence suffices or a limit passed at ``at_ms`` (event time). ``targeted``: the
        task certifies a target, so each version's audits are read against what its golden
        rows predict (``judge``'s ``expect``) where both announcements carry it."""
        canary, serving = self.canary, self.serving
        if canary is None or serving is None or self.judged:
            return None
        since = canary.announced_at_ms
        c, s = expected(canary.metrics), expected(serving.metrics)
        expect = (c, s) if targeted and c is not None and s is not None else None
        v = judge(config, self.tally(canary.version), self.tally(serving.version), (at_ms - since) / 1000, expect)
        if v is None:
            return None
        self.judged = True
        promoted = v.action == "promote"
        return canary.model_copy(
            update={
                "action": "serve" if promoted else "abort",
                "share": None,
                "reason": f"canary {'promoted' if promoted else 'rolled back'}: {v.reason}",
                "evidence": v.evidence,
                "source": "monitor",
                "announced_at_ms": at_ms,
            }
        )


def _announcement(state: dict[str, Any] | None) -> ModelAnnouncement | None:
    return ModelAnnouncement.model_validate(state) if state else None


def _plain(ann: ModelAnnouncement | None) -> dict[str, Any] | None:
    return ann.model_dump(mode="json") if ann is not None else None


def certifies(folder: Path, task: Task) -> bool:
    """Whether the version in ``folder`` may answer anything under the task's policy: without a
    target, always (its fixed thresholds); with one, when its rule certifies that target."""
    return not task.policy.targeted or task.policy.certified_by(Manifest.load(folder).acceptance)


def candidate(
    tenant: str,
    task: Task,
    version: str,
    folder: Path,
    *,
    serving: Path | None,
    trigger: str,
    made: str | None = None,
    **fields: Any,
) -> ModelAnnouncement:
    """A version that passed its gates, announced: on trial for the task's canary share against
    the serving version when canaries are on (``student.canary.share``), else serving at once.
    A serving version that certifies nothing for the task's target answers no request: there is
    nothing to put the candidate on trial against (no audits on either side, a trial that could
    only end at its limit), so the candidate serves at once. ``fields``: the announcement's
    labels, metrics and trained_on; ``made``: how the version came to be, where it was not
    trained on ``trigger`` (a rule re-certified). The trainer's retrains and ``protege train
    --announce`` (the scheduled fine-tune) announce the same way."""
    share = task.student.canary.share
    idle = serving is not None and not certifies(serving, task)
    trial = share > 0 and serving is not None and not idle
    made = made or f"trained on {trigger}; passed its gates"
    if trial and serving is not None:
        reason = f"{made}; on trial for {share:.0%} of requests against {serving.name}"
    else:
        reason = made
        reason += f"; {serving.name} certifies nothing for the target, so no trial" if idle and serving else ""
    return ModelAnnouncement(
        tenant=tenant,
        task=task.name,
        version=version,
        path=str(folder.resolve()),
        action="canary" if trial else "serve",
        share=share if trial else None,
        reason=reason,
        announced_at_ms=now_ms(),
        **fields,
    )
