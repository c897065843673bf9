"""Canaries: a new version serves a share of requests beside the serving one, and the
audits of both decide whether it is promoted or rolled back.

    arm("acme-42", 0.1)          # "canary", "control" or None: which arm a request is in
    judge(config, canary, control, elapsed_s)   # a Verdict: promote, rollback, or None yet

A request's arm is a stable hash of its id (salted apart from the audit hash), so a request
always meets the same version. The canary arm (``share`` of requests) is scored by the
candidate, the control arm (the next ``share``) by the serving version; both are audited at
the canary's audit rate, so the two accuracies are measured on like samples. The serving
version's other audits (``policy.audit_rate``) count for it too: a uniform sample as well.

The test is sequential: at every look it compares the canary's audited accuracy with the
serving version's, difference d = p_canary - p_serving with a normal interval at a
confidence raised for repeated looks (``Canary.confidence``, 99% by default). Rolled back as
soon as d's upper bound is below -margin (worse by more than the margin, with that
confidence); promoted as soon as d's lower bound is above -margin (no worse than the
margin). At the volume or time limit it decides on the point estimate — and rolls back a
canary with fewer than ``min_audits`` audits (it answered too little to be judged).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

from protege.task import Canary

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
class Audits:
    n: int  # audited answers
    agreed: int  # the teacher gave the same label

    @property
    def accuracy(self) -> float | None:
        return self.agreed / self.n if self.n else None


@dataclass(frozen=True)
class Verdict:
    action: Literal["promote", "rollback"]
    reason: str
    evidence: dict[str, float]


def judge(config: Canary, canary: Audits, serving: Audits, elapsed_s: float) -> Verdict | None:
    """Promote, roll back, or None (keep gathering audits)."""
    at_limit = canary.n >= config.max_audits or elapsed_s >= config.max_minutes * 60
    evidence: dict[str, Any] = {
        "canary_audits": canary.n,
        "canary_agreed": canary.agreed,
        "serving_audits": serving.n,
        "serving_agreed": serving.agreed,
        "elapsed_s": round(elapsed_s, 1),
        "margin": config.margin,
    }
    if canary.n < config.min_audits or serving.n < config.min_audits:
        if at_limit:
            return Verdict(
                "rollback",
                f"limit reached with {canary.n} canary and {serving.n} serving audits (fewer than "
                f"{config.min_audits}): too little evidence to promote",
                evidence,
            )
        return None
    # Laplace-smoothed proportions for the standard error (no zero variance at 100%)
    pc, ps = canary.agreed / canary.n, serving.agreed / serving.n
    sc = (canary.agreed + 1) / (canary.n + 2)
    ss = (serving.agreed + 1) / (serving.n + 2)
    se = math.sqrt(sc * (1 - sc) / canary.n + ss * (1 - ss) / serving.n)
    z = NormalDist().inv_cdf(1 - (1 - config.confidence) / 2)
    d = pc - ps
    lo, hi = d - z * se, d + z * se
    evidence |= {
        "canary_accuracy": round(pc, 4),
        "serving_accuracy": round(ps, 4),
        "difference": round(d, 4),
        "low": round(lo, 4),
        "high": round(hi, 4),
        "confidence": config.confidence,
    }
    said = f"canary {pc:.1%} of {canary.n} audits vs serving {ps:.1%} of {serving.n}"
    if hi < -config.margin:
        return Verdict("rollback", f"{said}: worse by more than {config.margin:.1%} (upper bound {hi:+.3f})", evidence)
    if lo > -config.margin:
        return Verdict("promote", f"{said}: no worse than {config.margin:.1%} (lower bound {lo:+.3f})", evidence)
    if at_limit:
        if d >= -config.margin:
            return Verdict("promote", f"{said}: limit reached, within the margin on the point estimate", evidence)
        return Verdict("rollback", f"{said}: limit reached, worse than the margin on the point estimate", evidence)
    return None
