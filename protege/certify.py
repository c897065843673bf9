"""Certifying an acceptance rule: which answers the student may give alone, with a stated
guarantee on fresh traffic.

    goal = Goal(accuracy=0.97, confidence=0.95)             # absolute: accepted answers >= 97% right
    goal = Goal(margin=0.01, confidence=0.95)               # relative: no more than 1 point below
    rule = choose_rule(goal, evidence)                      #   the teacher's on the same requests

The rule is a confidence threshold from a grid fixed in advance (0.99, 0.98, ..., 0.00) and an
OOD ceiling (the 95th percentile of the held-out cases' OOD scores); under a false-accept cap,
for a student that knows the label ``oos``, also a ceiling on the probability it gives ``oos``
when it answers in scope (``OOS_GATES``; see ``choose_rule``). Thresholds are tested in
turn from the strictest (fixed-sequence testing, Learn-then-Test): a threshold passes when the
test that the goal is missed on the cases it accepts rejects at ``1 - confidence`` (the lower
confidence bound of the goal's slack is at least zero); the first
failure stops; the lowest threshold that passed is the rule. The family-wise error of the whole
sequence stays at ``1 - confidence`` without correction.

What a case's "right" means depends on the evidence (``Evidence.kind``):

- ``golden``: trusted labels (a person's, or a labelled file), with the teacher's own answer on
  each. Absolute: the student's accuracy against the truth, one-sided Clopper-Pearson. Relative:
  the paired difference ``acc_S - acc_T`` on the same cases, read from the cases where exactly
  one of them is right: an exact unconditional test of non-inferiority for matched pairs
  (``paired_exact_p``; Tango's score statistic, its p-value the largest over the nuisance
  parameter, Berger-Boos). Assumption: the golden cases are a random sample of the traffic the
  rule will meet (as for every held-out estimate).
- ``agreement``: only the teacher's labels. Absolute: agreement with the teacher read as
  accuracy (assumes the teacher is right; a teacher that errs makes it conservative for a
  student that does not copy its errors, and optimistic for one that does). Relative: the
  student is never more than its disagreement rate below the teacher on the same requests
  (``acc_S - acc_T >= -P(S != T)``, true for any teacher), so the bound is ``-UB(P(S != T))``.

Measured on fresh samples in ``benchmarks/certify.py`` (BANKING77, a noisy stand-in teacher):
against agreement alone, against bounding the two proportions separately, and against
correcting agreement by the teacher's golden error rate under an independence assumption.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal

import numpy as np

from protege.events import AcceptRule

OOD_QUANTILE = 0.95  # the OOD gate passes this share of held-out cases
# Under a false-accept cap: the ceilings tried on the probability of ``oos`` behind an in-scope
# answer (None: no ceiling). Chosen on CLINC150 (benchmarks/oos_signals.py, coverage_levers.py): out-of-scope
# requests the student answers in scope mostly carry some probability of oos, in-scope ones
# little (median 0.0004, 90th percentile 0.045), so the ceiling lets through less out of scope
# per in-scope request deferred than a higher confidence threshold does.
# Each with its share of the error budget (weighted Bonferroni; the shares sum to 1): half to
# no ceiling, so a cap the plain rule already meets costs less than an even split would.
OOS_GATES: tuple[tuple[float | None, float], ...] = (
    (None, 0.5),
    (0.2, 0.125),
    (0.1, 0.125),
    (0.05, 0.125),
    (0.03, 0.125),
)
GRID = tuple(float(t) for t in np.round(np.arange(0.99, -0.005, -0.01), 2))


def cp_lower(k: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson lower bound on a binomial proportion."""
    if n == 0 or k == 0:
        return 0.0
    from scipy.stats import beta

    return float(beta.ppf(1 - confidence, k, n - k + 1))


def cp_upper(k: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper bound on a binomial proportion."""
    if n == 0 or k == n:
        return 1.0
    return 1.0 - cp_lower(n - k, n, confidence)


@dataclass(frozen=True)
class Goal:
    """What accepted answers must be: at least ``accuracy`` right (absolute), or no more than
    ``margin`` below the teacher's accuracy on the same requests (relative); with ``confidence``."""

    accuracy: float | None = None
    margin: float | None = None
    confidence: float = 0.95
    # Out-of-scope requests accepted with an in-scope label, at most this share of them on the
    # evidence (a point estimate: ``choose_rule``); None: no cap.
    max_false_accepts: float | None = None
    # An answer ``oos`` is not held back by the OOD gate (``AcceptRule.oos_past_ood_gate``).
    oos_past_ood_gate: bool = False

    def __post_init__(self) -> None:
        if (self.accuracy is None) == (self.margin is None):
            raise ValueError("a goal is absolute (accuracy) or relative to the teacher (margin), one of them")

    @property
    def relative(self) -> bool:
        return self.margin is not None

    def describe(self) -> str:
        cap = "" if self.max_false_accepts is None else f"; out of scope accepted <= {self.max_false_accepts:.1%}"
        if self.margin is not None:
            return f"at most {self.margin:.3f} below the teacher on the same requests @ {self.confidence:.0%}{cap}"
        return f"accuracy >= {self.accuracy:.3f} @ {self.confidence:.0%}{cap}"


@dataclass(frozen=True)
class OutOfScope:
    """Held-out cases the teacher answered ``oos``, as the student scored them."""

    confidence: np.ndarray
    ood: np.ndarray
    answered_oos: np.ndarray
    oos_probability: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.confidence)


@dataclass(frozen=True)
class Evidence:
    """Held-out cases the rule is certified on: the student's signals and, per case, whether the
    student was right and (golden only) whether the teacher was."""

    kind: Literal["golden", "agreement"]
    confidence: np.ndarray
    ood: np.ndarray
    student_right: np.ndarray  # against the truth (golden) or the teacher's label (agreement)
    teacher_right: np.ndarray | None = None  # golden: the teacher's own answer against the truth
    # Per case: out of scope (its label is ``oos``), and whether the student answered ``oos``.
    out_of_scope: np.ndarray | None = None
    answered_oos: np.ndarray | None = None
    # Per case: the student's probability of ``oos`` (None: the student does not know the label).
    oos_probability: np.ndarray | None = None
    # More out-of-scope cases for the false-accept cap's estimate: held-out cases the teacher
    # answered ``oos`` (its label, not the truth), pooled with the golden ones (``false_accepts``).
    # Measured, not used by the trainer: on CLINC150 it deferred less only by letting more out of
    # scope through (benchmarks/coverage_levers.py, "pooled with teacher oos"; docs/benchmarks.md).
    teacher_oos: OutOfScope | None = None

    def false_accepts(self, accepted: np.ndarray, rule: AcceptRule | None = None) -> float | None:
        """The share of out-of-scope cases ``accepted`` with an in-scope answer (None: none here).
        With ``rule`` and ``teacher_oos``, the teacher's out-of-scope cases count as well: what
        ``rule`` lets through of them over the golden ones and them together."""
        through = n = 0
        if self.out_of_scope is not None and self.answered_oos is not None:
            through, n = int((accepted & self.out_of_scope & ~self.answered_oos).sum()), int(self.out_of_scope.sum())
        if rule is not None and (extra := self.teacher_oos) is not None:
            let = accepted_by(rule, extra.confidence, extra.ood, extra.oos_probability, extra.answered_oos)
            through, n = through + int((let & ~extra.answered_oos).sum()), n + len(extra)
        return through / n if n else None

    def take(self, rows: np.ndarray) -> Evidence:
        """The cases ``rows`` selects (a boolean mask), every per-case array cut alike."""

        def cut(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[rows]

        return replace(
            self,
            confidence=self.confidence[rows],
            ood=self.ood[rows],
            student_right=self.student_right[rows],
            teacher_right=cut(self.teacher_right),
            out_of_scope=cut(self.out_of_scope),
            answered_oos=cut(self.answered_oos),
            oos_probability=cut(self.oos_probability),
        )

    def __post_init__(self) -> None:
        if self.kind == "golden" and self.teacher_right is None:
            raise ValueError("golden evidence needs the teacher's answer on each case")

    def __len__(self) -> int:
        return len(self.confidence)


PairedBound = Callable[[int, int, int, float], float]  # (wins, losses, n, confidence) -> LB of acc_S - acc_T


def slack_lower_bound(goal: Goal, evidence: Evidence, accepted: np.ndarray, paired: PairedBound | None = None) -> float:
    """Lower confidence bound (at ``goal.confidence``) of how far the accepted cases are above the
    goal: accuracy - target (absolute), or (student - teacher accuracy) + margin (relative)."""
    n = int(accepted.sum())
    right = evidence.student_right[accepted]
    if not goal.relative:
        assert goal.accuracy is not None
        return cp_lower(int(right.sum()), n, goal.confidence) - goal.accuracy
    assert goal.margin is not None
    if evidence.kind == "agreement":  # acc_S - acc_T >= -P(S != T), for any teacher
        return goal.margin - cp_upper(int((~right).sum()), n, goal.confidence)
    return goal.margin + (paired or paired_exact_bound)(*discordant(evidence, accepted), n, goal.confidence)


def discordant(evidence: Evidence, accepted: np.ndarray) -> tuple[int, int]:
    """(wins, losses) among the accepted trusted rows: the student right and the teacher wrong,
    and the reverse."""
    assert evidence.teacher_right is not None
    right, teacher = evidence.student_right[accepted], evidence.teacher_right[accepted]
    return int((right & ~teacher).sum()), int((~right & teacher).sum())


def slack_passes(goal: Goal, evidence: Evidence, accepted: np.ndarray, paired: PairedBound | None = None) -> bool:
    """Whether the accepted cases meet the goal at its confidence: ``slack_lower_bound >= 0``,
    decided for trusted rows under a relative goal by the exact test at the margin itself
    (``paired_exact_p``), without the bisection that the bound's value needs."""
    if paired is None and goal.relative and evidence.kind == "golden":
        assert goal.margin is not None
        return paired_exact_p(*discordant(evidence, accepted), int(accepted.sum()), -goal.margin) <= 1 - goal.confidence
    return slack_lower_bound(goal, evidence, accepted, paired) >= 0


def paired_lower_bound(wins: int, losses: int, n: int, confidence: float) -> float:
    """Lower confidence bound of ``acc_S - acc_T`` from ``n`` paired cases: the student right
    and the teacher wrong on ``wins``, the reverse on ``losses``.

    The difference is ``d (2q - 1)``: ``d`` the share of cases where exactly one is right,
    ``q`` the student's share of those (McNemar's view: only the discordant cases say who is
    better). ``q`` is bounded below given the discordant count, ``d`` on both sides, each
    Clopper-Pearson at half the error (a union bound): the bound is ``d_U (2 q_L - 1)`` when
    the student may be the worse one, else ``d_L (2 q_L - 1)``. Measured against bounding the
    two proportions separately (``LB(wins/n) - UB(losses/n)``) in benchmarks/certify.py. Exact and
    conservative: what relative targets were certified with until stop 45, when the exact
    unconditional test (``paired_exact_p``, ``paired_exact_bound``) replaced it; kept to measure
    against (``choose_rule(..., paired=paired_lower_bound)``)."""
    discordant = wins + losses
    half = 1 - (1 - confidence) / 2
    if discordant == 0:
        return -cp_upper(0, n, half)  # no case told them apart: at most d below
    q = cp_lower(wins, discordant, half)
    d = cp_lower(discordant, n, half) if q >= 0.5 else cp_upper(discordant, n, half)
    return d * (2 * q - 1)


# Berger-Boos: the nuisance parameter (the share of losses) is searched over its confidence
# interval at 1 - BERGER_BOOS rather than over [0, 1], and the p-value pays that much for it.
BERGER_BOOS = 1e-3
NUISANCE_GRID = 40  # points of that interval the supremum is taken over
TAIL = 1e-12  # counts beyond each binomial's 1 - TAIL quantile are left out, their mass added to the p-value


def paired_score(wins: np.ndarray | int, losses: np.ndarray | int, n: int, delta: float) -> np.ndarray:
    """Tango's score statistic (Stat. Med. 1998) for ``acc_S - acc_T = delta`` from ``n`` paired
    cases, vectorised over ``wins`` and ``losses``: large when the student is better than
    ``delta`` says. Its variance is taken under ``delta`` (the restricted maximum-likelihood share
    of losses), so it stays honest near zero discordant cases."""
    w, lo = np.asarray(wins, dtype=float), np.asarray(losses, dtype=float)
    a, b, c = 2 * n, -(w + lo) + (2 * n - w + lo) * delta, -lo * delta * (1 - delta)
    share = (-b + np.sqrt(np.maximum(b * b - 4 * a * c, 0.0))) / (2 * a)
    var = n * (2 * share - delta * delta + delta)
    safe = np.where(var > 0, var, 1.0)
    return np.where(var > 0, (w - lo - n * delta) / np.sqrt(safe), 0.0)


@lru_cache(maxsize=65536)
def paired_exact_p(wins: int, losses: int, n: int, delta: float) -> float:
    """The exact unconditional p-value of "``acc_S - acc_T <= delta``" from ``n`` paired cases
    (the student right and the teacher wrong on ``wins``, the reverse on ``losses``): the
    largest probability, over the share of losses the data leave plausible, of a score
    (``paired_score``) at least as large as the one seen, when the difference is ``delta``
    itself (the boundary of the null, where that probability is largest) — Berger and Boos
    (JASA 1994), as Sidik (Biometrical J. 2003) tests non-inferiority on matched pairs.

    Exact, not asymptotic: the probabilities are the multinomial's own, so the test rejects a
    true null at most ``1 - confidence`` of the time up to the grid the supremum is read on
    (tests/unit/test_certify.py measures it at the boundary). Against ``paired_lower_bound``
    (two Clopper-Pearson bounds joined by a union bound, which rejects a null at its boundary
    well under 1% of the time at a stated 5%) it is 0.3 to 0.9 points tighter at 400-1,000
    cases, so a relative target certifies more of what the student knows."""
    if n <= 0:
        return 1.0
    if delta <= -1.0:
        return 0.0
    if delta >= 1.0:
        return 1.0
    seen = float(paired_score(wins, losses, n, delta))
    lo = max(cp_lower(losses, n, 1 - BERGER_BOOS / 2), -delta, 0.0)
    hi = min(cp_upper(losses, n, 1 - BERGER_BOOS / 2), (1 - delta) / 2)
    if lo > hi:  # no share of losses the data leave plausible is on the null's boundary
        return BERGER_BOOS
    from scipy.stats import binom

    loss_share = np.linspace(lo, hi, NUISANCE_GRID)
    win_share = np.maximum(loss_share + delta, 0.0)
    most_wins = int(binom.isf(TAIL, n, win_share.max())) + 1 if win_share.max() > 0 else 0
    most_losses = min(int(binom.isf(TAIL, n, loss_share.max())) + 1, n)
    # For each count of losses the scores at least as large as the one seen are the counts of wins
    # from some least one up (the score rises with the wins): the region is a binomial's tail.
    w, k = np.arange(most_wins + 1)[:, None], np.arange(most_losses + 1)[None, :]  # counts of wins, of losses
    extreme = paired_score(w, k, n, delta) >= seen - 1e-9
    least = np.where(extreme.any(axis=0), extreme.argmax(axis=0), most_wins + 1)[None, :]  # per count of losses
    if not (extreme == (w >= least))[w + k <= n].all():  # never seen; if it were, no tail would do
        raise ArithmeticError(f"the score is not monotone in the wins ({wins}, {losses}, {n}, {delta})")
    given = np.minimum(win_share / np.maximum(1 - loss_share, 1e-300), 1.0)[:, None]  # P(win | not a loss)
    p_losses = binom.pmf(k, n, loss_share[:, None])
    p_tail = binom.sf(least - 1, n - k, given)
    tail = (p_losses * p_tail).sum(axis=1) + binom.sf(most_losses, n, loss_share)  # losses past the table: counted
    return float(min(1.0, tail.max() + BERGER_BOOS))


@lru_cache(maxsize=16384)
def paired_exact_bound(wins: int, losses: int, n: int, confidence: float) -> float:
    """Lower confidence bound of ``acc_S - acc_T``: the largest ``delta`` that
    ``paired_exact_p`` rejects at ``1 - confidence`` (bisection to 1e-5; -1 when none is)."""
    alpha = 1 - confidence
    if n <= 0:
        return -1.0
    hi = (wins - losses) / n
    step = 0.02
    lo = hi - step
    while paired_exact_p(wins, losses, n, lo) > alpha:  # widen: at -1 it rejects (p = 0)
        hi, step = lo, step * 2
        lo = max(hi - step, -1.0)
    while hi - lo > 1e-5:
        mid = (lo + hi) / 2
        if paired_exact_p(wins, losses, n, mid) <= alpha:
            lo = mid
        else:
            hi = mid
    return lo


def paired_union_bound(wins: int, losses: int, n: int, confidence: float) -> float:
    """The plain alternative to ``paired_lower_bound``: ``LB(wins / n) - UB(losses / n)``, each
    Clopper-Pearson at half the error. Valid, and looser (kept to measure against)."""
    half = 1 - (1 - confidence) / 2
    return cp_lower(wins, n, half) - cp_upper(losses, n, half)


def paired_score_bound(wins: int, losses: int, n: int, confidence: float) -> float:
    """Tango's score bound (Stat. Med. 1998) of ``acc_S - acc_T`` from ``n`` paired cases: the
    lowest difference ``d`` the score test at ``d`` does not reject, one-sided. The test's
    variance is taken under ``d`` itself (the restricted maximum-likelihood share of losses),
    which keeps it honest near zero discordant cases where the plain Wald interval is not.
    Asymptotic, not exact: on simulated worlds (300 and 1,000 cases, 0.5 to 10% discordant) it
    covered the true difference in as few as 92.5% of samples at a stated 95%
    (tests/unit/test_certify.py), so it is not a bound at the goal's confidence; at half the
    error (``paired_score_half``) it covered >= 95% there and was still 0.3 to 1.9 points tighter
    than ``paired_lower_bound`` (exact: two Clopper-Pearson bounds at half the error each, which
    covered 98 to 100%). Measured in benchmarks/certify.py; not used by the trainer."""
    from scipy.stats import norm

    if n == 0:
        return -1.0
    z = float(norm.ppf(confidence))

    def score(d: float) -> float:
        # the restricted MLE of P(student wrong, teacher right) given acc_S - acc_T = d
        a, b, c = 2 * n, -(wins + losses) + (2 * n - wins + losses) * d, -losses * d * (1 - d)
        p21 = (-b + np.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a)
        var = n * (2 * p21 - d * d + d)
        return float((wins - losses - n * d) / np.sqrt(var)) if var > 0 else 0.0

    hi = (wins - losses) / n
    if score(-1.0 + 1e-12) <= z:
        return -1.0
    lo = -1.0 + 1e-12
    for _ in range(60):  # score falls as d rises: the d where it crosses z
        mid = (lo + hi) / 2
        if score(mid) > z:
            lo = mid
        else:
            hi = mid
    return lo


def paired_score_half(wins: int, losses: int, n: int, confidence: float) -> float:
    """``paired_score_bound`` at half the error of ``confidence`` (the price the exact bound pays
    for its union bound): what benchmarks/certify.py measures as a candidate."""
    return paired_score_bound(wins, losses, n, 1 - (1 - confidence) / 2)


def could_pass(goal: Goal, n: int, losses: int = 0, paired: PairedBound | None = None) -> bool:
    """Whether ``n`` accepted cases with a flawless record (every answer right, no disagreement
    with the teacher) would pass: a threshold that accepts fewer is skipped, not tested. Which
    thresholds are skipped depends on the students' signals only, never on the labels, as the
    empty ones were before; testing them would end the sequence at its strictest, emptiest
    steps. ``losses``: the record may hold that many wrong answers (relative: answers wrong
    where the teacher was right, none the other way) and still pass. ``paired``: the bound the
    sequence tests with, when not the exact test."""
    if n <= losses:
        return False
    if goal.relative:
        assert goal.margin is not None
        if paired is not None:
            return goal.margin + paired(0, losses, n, goal.confidence) >= 0
        return paired_exact_p(0, losses, n, -goal.margin) <= 1 - goal.confidence
    assert goal.accuracy is not None
    return cp_lower(n - losses, n, goal.confidence) >= goal.accuracy


def accepted_by(
    rule: AcceptRule,
    confidence: np.ndarray,
    ood: np.ndarray,
    oos_probability: np.ndarray | None = None,
    answered_oos: np.ndarray | None = None,
) -> np.ndarray:
    """Which answers ``rule`` lets the student give alone (the verifier's test, vectorised): its
    confidence threshold and its gates (``through_gates``)."""
    return (confidence >= rule.min_confidence) & through_gates(
        ood,
        rule.max_ood,
        oos_probability,
        rule.max_oos_probability,
        answered_oos,
        oos_past_ood_gate=rule.oos_past_ood_gate,
    )


def through_gates(
    ood: np.ndarray,
    max_ood: float,
    oos_probability: np.ndarray | None = None,
    max_oos_probability: float | None = None,
    answered_oos: np.ndarray | None = None,
    *,
    oos_past_ood_gate: bool = False,
) -> np.ndarray:
    """Which answers a rule's gates let through, whatever their confidence: the OOD gate (behind
    answers in scope only, with ``oos_past_ood_gate``), and the ceiling on ``oos`` behind an
    answer in scope (an answer ``oos`` itself is never held back for its probability of oos)."""
    answered = None if answered_oos is None else np.asarray(answered_oos, bool)
    through = ood <= max_ood
    if oos_past_ood_gate and answered is not None:
        through |= answered
    if max_oos_probability is not None and oos_probability is not None:
        below = oos_probability <= max_oos_probability
        through &= below if answered is None else answered | below
    return through


def choose_rule(
    goal: Goal,
    evidence: Evidence,
    *,
    ood_quantile: float = OOD_QUANTILE,
    paired: PairedBound | None = None,
    losses: int = 0,
) -> AcceptRule | None:
    """The rule with the most coverage whose every step down the grid passed (None: not even the
    strictest threshold could be certified on this evidence). With ``goal.max_false_accepts``
    and out-of-scope cases in the evidence, the sequence also stops where the share of them
    accepted with an in-scope answer would exceed the cap: a point estimate, not a bound (a
    golden set holds few of them: 0 of 90 bounds the rate only at 3.3% with 95% confidence).
    Stopping earlier keeps the accuracy guarantee: every threshold before the first failure is
    covered by it.

    Under a cap, a student that gives a probability of ``oos`` (``evidence.oos_probability``)
    runs one sequence per ceiling in ``OOS_GATES`` and keeps the rule that covers most. Each
    sequence is tested at ``1 - (1 - confidence) * share``, its share of the error budget
    (weighted Bonferroni: the shares sum to 1), so whichever rule is kept holds at the goal's
    confidence. ``losses``: the sequence starts where that many losses could still pass
    (``could_pass``).

    ``goal.oos_past_ood_gate``: an answer ``oos`` is not held back by the OOD gate (an unfamiliar
    request is what it names); such answers are tested with the rest, an ``oos`` given to a
    request in scope counting as a wrong answer. On CLINC150 the student then answers 83-89% of
    the out-of-scope requests itself instead of 42-44%, with the same false accepts; but those
    easy answers also leave the rule room for more wrong answers in scope, and in the loop, on
    golden rows easier than the traffic, that broke the accuracy target (docs/benchmarks.md, "The
    cap under the exact test, and answers oos past the OOD gate", stop 46). Off by default."""
    if len(evidence) == 0:
        return None
    max_ood = float(np.quantile(evidence.ood, ood_quantile))
    gated = (
        goal.max_false_accepts is not None
        and evidence.oos_probability is not None
        and evidence.out_of_scope is not None
        and bool(evidence.out_of_scope.any())
    )
    if not gated:
        return fixed_sequence(goal, evidence, max_ood, None, paired, losses)
    rules = [
        fixed_sequence(
            replace(goal, confidence=1 - (1 - goal.confidence) * share), evidence, max_ood, gate, paired, losses
        )
        for gate, share in OOS_GATES
    ]
    best = max((r for r in rules if r is not None), key=lambda r: r.coverage, default=None)
    return best and best.model_copy(update={"confidence_level": goal.confidence})


def fixed_sequence(
    goal: Goal,
    evidence: Evidence,
    max_ood: float,
    max_oos: float | None,
    paired: PairedBound | None,
    losses: int = 0,
) -> AcceptRule | None:
    """The fixed sequence down ``GRID`` at one OOD ceiling and one ceiling on ``oos``."""
    best: AcceptRule | None = None
    for t in GRID:
        rule = AcceptRule(
            target_accuracy=goal.accuracy,
            target_margin=goal.margin,
            confidence_level=goal.confidence,
            evidence=evidence.kind,
            min_confidence=t,
            max_ood=round(max_ood, 6),
            max_oos_probability=max_oos,
            oos_past_ood_gate=goal.oos_past_ood_gate,
            coverage=0.0,
        )
        accepted = accepted_by(rule, evidence.confidence, evidence.ood, evidence.oos_probability, evidence.answered_oos)
        if not could_pass(goal, int(accepted.sum()), losses, paired):
            continue  # too few cases for even a flawless record to pass: not a test yet; the sequence goes on
        if not slack_passes(goal, evidence, accepted, paired):
            break
        cap = goal.max_false_accepts
        if (
            cap is not None
            and (let_through := evidence.false_accepts(accepted, rule)) is not None
            and let_through > cap
        ):
            break
        best = rule.model_copy(update={"coverage": round(float(accepted.mean()), 4)})
    return best


# A looser rule replaces a serving rule that still holds only when it covers this much more of
# today's rows: re-certifying on every few new rows would otherwise flap between near-equal rules.
RECERTIFY_GAIN = 0.05


def surely_short(goal: Goal, evidence: Evidence, accepted: np.ndarray) -> bool:
    """Whether the accepted trusted cases show, at ``goal.confidence``, that the goal is not met:
    the upper confidence bound of the slack is below zero (relative: the exact test, roles
    swapped, rejects "the student at most ``margin`` below the teacher")."""
    n = int(accepted.sum())
    if not goal.relative:
        assert goal.accuracy is not None
        return cp_upper(int(evidence.student_right[accepted].sum()), n, goal.confidence) < goal.accuracy
    assert goal.margin is not None
    wins, losses = discordant(evidence, accepted)
    return paired_exact_p(losses, wins, n, goal.margin) <= 1 - goal.confidence


def falls_short(goal: Goal, evidence: Evidence, rule: AcceptRule) -> bool:
    """Whether ``evidence`` shows that ``rule`` no longer meets the goal, at the goal's confidence:
    the upper bound of the slack on the cases it accepts is below zero, or (under a cap) the lower
    bound of the share of out-of-scope cases it lets through in scope is above the cap. Not the
    test a rule passes to be certified (the lower bound at least zero): a rule certified at the
    edge of what its rows allowed would fail that one on about half of any fresh rows from the
    same traffic and be replaced back and forth; this one fails on at most ``1 - confidence`` of
    them, and on rows that show a shift. A rule that accepts none of the rows does not fall
    short: nothing it answers is here to err."""
    if evidence.kind != "golden":
        raise ValueError("only trusted rows can show that a rule falls short")
    accepted = accepted_by(rule, evidence.confidence, evidence.ood, evidence.oos_probability, evidence.answered_oos)
    if not accepted.any():
        return False
    if surely_short(goal, evidence, accepted):
        return True
    if goal.max_false_accepts is None or evidence.out_of_scope is None or evidence.answered_oos is None:
        return False
    through = int((accepted & evidence.out_of_scope & ~evidence.answered_oos).sum())
    return cp_lower(through, int(evidence.out_of_scope.sum()), goal.confidence) > goal.max_false_accepts


def out_of_scope_rose(evidence: Evidence, before: np.ndarray, after: np.ndarray, confidence: float) -> str | None:
    """Whether the share of out-of-scope cases among the rows ``after`` is above that among the
    rows ``before`` (boolean masks, each a sample of traffic: reviewed rows, not a curated file),
    at ``confidence``: the Clopper-Pearson lower bound of the one above the upper bound of the
    other, each at half the error. None when it did not rise (or nothing says which cases are
    out of scope); else what rose, for a log line.

    A rule is certified on the rows of its day and holds for traffic like them. The accuracy a
    goal asks for is a mix over the requests the rule accepts; when out-of-scope traffic grows
    (new products, a new client, abuse), more of the mix comes from the cases the rule was
    certified on the fewest of, and a loss of a few points can stay inside what a few hundred
    rows can refute (``falls_short``; CLINC150 as published: out of scope 1.3% of train traffic,
    18% of test, the accuracy 2 to 3 points below the teacher's never refuted). A share that moved
    is visible on far fewer rows, and says the rule's rows no longer sample today's traffic."""
    if evidence.out_of_scope is None or not before.any() or not after.any():
        return None
    half = 1 - (1 - confidence) / 2
    k0, n0 = int(evidence.out_of_scope[before].sum()), int(before.sum())
    k1, n1 = int(evidence.out_of_scope[after].sum()), int(after.sum())
    if cp_lower(k1, n1, half) <= cp_upper(k0, n0, half):
        return None
    return f"the out-of-scope share rose from {k0 / n0:.1%} ({k0} of {n0} rows) to {k1 / n1:.1%} ({k1} of {n1})"


SHIFT_STEP = 0.05  # the rise an out-of-scope alarm is fitted to, at least (``out_of_scope_alarm``)


@dataclass(frozen=True)
class Alarm:
    """An out-of-scope alarm (``out_of_scope_alarm``): the row of ``after`` it rang at, and why."""

    at: int
    why: str


def out_of_scope_alarm(
    before: np.ndarray, after: np.ndarray, confidence: float, rows_per_false_alarm: float
) -> Alarm | None:
    """Whether the out-of-scope share rose in ``after`` (booleans in time order: which reviewed
    rows since a rule was certified are out of scope) above its share in ``before`` (the reviewed
    rows it was certified beside): a Bernoulli CUSUM, row by row, None when it does not ring.

    The checks a trainer runs every ``recertify_every`` reviewed rows see a shift late: the rule
    serves today's traffic until the next check, and that check's test (``out_of_scope_rose``)
    needs its rows on top (CLINC150 as published: 39 to 104 of them, the old rule serving for up
    to 29 s, stop 38). This test costs a count per row and rings as soon as the rows say so.

    The in-control share p0 is the Clopper-Pearson upper bound of the share ``before`` at
    ``confidence``; the alarm is fitted to a rise to p1 = p0 + max(p0, ``SHIFT_STEP``) (double, or
    five points, whichever is more; a bigger rise rings sooner). Each row adds the log-likelihood
    ratio of p1 to p0; the sum, floored at zero, rings at h = log(``rows_per_false_alarm``). When
    the true share is at most p0 — with probability ``confidence``, traffic like ``before`` —
    exp(sum) is a supermartingale, and the reviewed rows between false alarms average at least
    ``rows_per_false_alarm`` (Lorden's bound for the CUSUM). With fewer than ``CHANGE_LEAST`` rows
    before there is no share to compare with."""
    n0 = len(before)
    if n0 < CHANGE_LEAST or not len(after):
        return None
    k0 = int(np.count_nonzero(before))
    p0 = cp_upper(k0, n0, confidence)
    p1 = min(p0 + max(p0, SHIFT_STEP), 1 - 1e-9)
    if p1 <= p0:
        return None
    up, down = math.log(p1 / p0), math.log((1 - p1) / (1 - p0))
    h = math.log(rows_per_false_alarm)
    total = 0.0
    for i, hit in enumerate(np.asarray(after, dtype=bool)):
        total = max(0.0, total + (up if hit else down))
        if total >= h:
            k1 = int(np.count_nonzero(after[: i + 1]))
            return Alarm(
                i,
                f"the out-of-scope share rose from {k0 / n0:.1%} ({k0} of {n0} rows) to {k1} of the {i + 1} rows since "
                f"(a CUSUM rang: at most {p0:.1%} before, fitted to a rise to {p1:.1%}, one false alarm per "
                f"{rows_per_false_alarm:,.0f} rows at most)",
            )
    return None


CHANGE_LEAST = 20  # rows on each side of a change point (``change_point``)


def change_point(hits: np.ndarray, first: int, confidence: float, least: int = CHANGE_LEAST) -> int | None:
    """Where in ``hits`` (a boolean sequence in time order) its rate rose, at a place from
    ``first`` on: the split into two Bernoulli segments of the highest likelihood among those
    with at least ``least`` rows on either side and a higher rate after, kept when the
    Clopper-Pearson lower bound after is above the upper bound before (each at half the error).
    None when no such split shows (too few rows, or no rise).

    A check that refutes a rule sees the rows since it was certified: yesterday's traffic up to
    the shift and today's after it. Certifying the next rule on all of them mixes the two (a
    CLINC150 run marked a second shift on such rows 60 s later, stop 36); the split starts
    today's rows where the sequence changed. The split is the best of many, so the test after
    it is optimistic: a split placed too late drops rows of today's traffic (a later rule, never
    a looser one), one placed too early keeps rows of yesterday's, as all of them did before."""
    n = len(hits)
    first = max(first, least)
    if n - first < least:
        return None
    up_to = np.concatenate([[0], np.cumsum(hits, dtype=np.int64)])
    k = np.arange(first, n - least + 1)
    k0, k1 = up_to[k], up_to[n] - up_to[k]
    n0, n1 = k, n - k

    def loglik(h: np.ndarray, m: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            p = h / m
            return np.nan_to_num(h * np.log(p)) + np.nan_to_num((m - h) * np.log1p(-p))

    fit = np.where(k1 * n0 > k0 * n1, loglik(k0, n0) + loglik(k1, n1), -np.inf)
    if not np.isfinite(fit).any():
        return None
    best = int(np.argmax(fit))
    half = 1 - (1 - confidence) / 2
    if cp_lower(int(k1[best]), int(n1[best]), half) <= cp_upper(int(k0[best]), int(n0[best]), half):
        return None
    return int(k[best])


@dataclass(frozen=True)
class Reconsidered:
    """A serving version's rule judged again on today's trusted rows (``reconsider``)."""

    rule: AcceptRule | None  # what the same certification gives the version on them (None: nothing)
    served_coverage: float  # the share of today's rows the rule it serves with accepts
    broken: bool  # the rows show the rule it serves with falls short: replace it at once
    why: str
    # Broken, with the rows' order: the place (``order``'s value) from which the rows are today's
    # traffic (``change_point``); None: every row since it was certified.
    shift_from: int | None = None


def reconsider(
    goal: Goal,
    evidence: Evidence,
    served: AcceptRule | None,
    *,
    recent: np.ndarray | None = None,
    today: np.ndarray | None = None,
    before: np.ndarray | None = None,
    order: np.ndarray | None = None,
    gain: float = RECERTIFY_GAIN,
    alarm: str | None = None,
) -> Reconsidered | None:
    """Whether a serving version should serve with another rule, judged on trusted rows (None:
    keep the one it has). A rule is certified once, when its version is trained, on the rows of
    that day; a shift (more out-of-scope traffic, new phrasings) can make it too loose, and rows
    that come later can certify a rule for a version that had too few.

    ``evidence``: the trusted rows a rule is certified on. ``recent`` (a mask; None: all): those
    that came after the served rule was certified — out of sample for it, so the ones that can
    refute it without the choice of the rule biasing the test. ``today`` (a mask; None:
    ``recent``): what a replacement is certified on when they do — the rows before them sample
    traffic that is gone. ``before`` (a mask; None: no such test): the rows that sampled traffic
    before them (reviewed, not a file), to compare the out-of-scope share with. ``order`` (None:
    not known): each row's place in time (the reviewed ones: before and recent); with it, a
    broken rule's replacement is certified on the recent rows from where the sequence changed
    (``change_point``: of the served rule's wrong answers when it fell short, of out-of-scope
    cases when their share rose), not on all of them. Three cases:

    - the recent rows show the served rule falls short (``falls_short``), or that the share of
      out-of-scope traffic rose since it was certified (``out_of_scope_rose``): the rule ``today``
      certifies replaces it (None, answer nothing, when nothing certifies), ``broken``;
    - the version serves with no rule and the rows certify one: it replaces nothing;
    - the served rule is not refuted and the rows certify one that covers at least ``gain`` more
      of them.

    ``alarm``: why a sequential test on the recent rows (``out_of_scope_alarm``, run by the
    trainer between checks) saw the out-of-scope share rise: taken as the rise, as the
    fixed-sample test's would be.

    Each check is a test at the goal's confidence on the rows of that moment; a version checked
    again and again on rows that grow is not covered by one test's error rate (the checks are
    not a sequential test; the alarm is, and states its rate of false alarms). A rule that falls
    short only a little, on few rows, is not refuted: what the checks catch is a shift the rows
    can show."""
    if len(evidence) == 0:
        return None
    n = len(evidence)

    def certify(rows: Evidence) -> tuple[AcceptRule | None, str]:
        rule = choose_rule(goal, rows)
        return rule, "nothing" if rule is None else f"confidence >= {rule.min_confidence:.2f} ({rule.coverage:.1%})"

    if served is None:
        fresh, now = certify(evidence)
        if fresh is None:
            return None
        return Reconsidered(fresh, 0.0, False, f"{n} trusted rows now certify {now}; it certified nothing")
    was = f"confidence >= {served.min_confidence:.2f}"
    recent = np.ones(n, bool) if recent is None else recent
    if recent.any():
        newer = evidence.take(recent)
        short = falls_short(goal, newer, served)
        rose = None
        if not short and alarm is not None:
            rose = alarm
        elif not short and before is not None:
            rose = out_of_scope_rose(evidence, before, recent, goal.confidence)
        if short or rose:
            covered = float(
                accepted_by(served, newer.confidence, newer.ood, newer.oos_probability, newer.answered_oos).mean()
            )
            rows = recent if today is None else today
            shift_from, moved = None, ""
            if order is not None:
                if short:
                    taken = accepted_by(
                        served, evidence.confidence, evidence.ood, evidence.oos_probability, evidence.answered_oos
                    )
                    hits, kind = taken & ~evidence.student_right, "its wrong answers"
                else:
                    assert evidence.out_of_scope is not None  # the share rose
                    hits, kind = evidence.out_of_scope, "out of scope"
                seq = recent if before is None else before | recent
                places = np.flatnonzero(seq)[np.argsort(order[seq], kind="stable")]
                first = int((seq & ~recent).sum())
                at = change_point(hits[places], first, goal.confidence)
                if at is not None and at > first:
                    later = np.zeros(n, bool)
                    later[places[at:]] = True
                    rows = later | (rows & ~seq)  # today's rows, and the file's
                    shift_from = int(order[places[at]])
                    was_rate, now_rate = hits[places[first:at]].mean(), hits[places[at:]].mean()
                    moved = (
                        f"; the last {len(places) - at} of them are today's ({kind} {was_rate:.1%} of the "
                        f"{at - first} before, {now_rate:.1%} since)"
                    )
            fresh, now = certify(evidence.take(rows))
            what = "falls short of the target on" if short else f"was certified on other traffic ({rose}) in"
            return Reconsidered(
                fresh,
                covered,
                True,
                f"its rule ({was}, {covered:.1%} of them) {what} the {int(recent.sum())} trusted rows since it was "
                f"certified{moved}; {int(rows.sum())} rows of today certify {now}",
                shift_from,
            )
    covered = float(
        accepted_by(served, evidence.confidence, evidence.ood, evidence.oos_probability, evidence.answered_oos).mean()
    )
    fresh, now = certify(evidence)
    if fresh is not None and fresh.coverage >= covered + gain:
        return Reconsidered(
            fresh, covered, False, f"{n} trusted rows certify {now} against its rule's {covered:.1%} ({was})"
        )
    return None
