"""Is this task worth distilling? The seeds' five signals, measured, and a recommendation.

    cases = cases_from_jsonl(path)                 # or cases_from_events(events) (recorded traffic)
    a = assess(task, cases, costs=Costs(...), curve=learning_curve(task, cases, recipe_for(...)))
    a["recommendation"], a["signals"]

- **narrow**: a closed label set a classifier can hold (label count), how the traffic spreads
  over it (label entropy, share in the top labels);
- **stable**: the label distribution's shift between the first and second half of the
  traffic in time (total variation distance), when the cases carry times;
- **high-volume**: requests per day and the break-even horizon of the seeds' formula
  N·c_t > D + T + M + N·((1-q)·c_s + q·c_r): q from the learning curve's coverage at the
  target, c_t and c_r per teacher call (measured from recorded results, else estimated
  from the task's prompt and price), c_s from the student's measured latency and a price per
  core-hour; D + T + M and the prices are inputs and reported as such;
- **program-like**: the student's learning curve at 10/30/100% of the cases: accuracy and
  coverage at the target on a fixed held-out set (fast recipe, in a scratch registry);
- **verifiable**: the share of traffic whose label the task's checks can verify.

The thresholds behind each pass/fail are constants here, printed beside the numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from protege.costs import gpu_request_usd
from protege.recorded import Events
from protege.student.train import DEFAULT_TARGET, Case, Recipe, train_version
from protege.task import Task

MAX_LABELS = 200  # beyond this the task is not one classifier's closed set
MAX_SHIFT = 0.15  # total variation distance between the halves' label distributions
MIN_COVERAGE = 0.3  # share of traffic the student must answer at the target, at 100% of the data
MIN_VERIFIABLE = 0.5  # share of traffic the checks must cover for distill + verify
FRACTIONS = (0.1, 0.3, 1.0)


@dataclass(frozen=True)
class Sample:
    """One request with the teacher's (or a person's) answer, and when it came."""

    request_id: str
    text: str
    label: str
    at_ms: int | None = None


@dataclass(frozen=True)
class Costs:
    """The break-even formula's inputs that are not measured here (reported as inputs)."""

    fixed_usd: float = 2000.0  # D + T + M: distillation, training, maintenance
    core_hour_usd: float = 0.05  # the student's hardware, per CPU core-hour
    horizon_days: float = 90.0  # a break-even later than this does not pay
    requests_per_day: float | None = None  # when the cases carry no times
    gpu_hour_usd: float = 3.0  # the student's hardware, per GPU-hour, where it serves on a GPU
    gpu_requests_per_s: float | None = None  # its throughput there, measured there (benchmarks/scorer.py)


def samples_from_jsonl(path: Path) -> list[Sample]:
    """``{"id", "text", "label"}`` per line, optionally ``"at"`` (epoch ms or ISO time)."""
    from datetime import datetime

    out = []
    for n, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        at = row.get("at")
        if isinstance(at, str):
            at = int(datetime.fromisoformat(at).timestamp() * 1000)
        out.append(Sample(str(row.get("id", n)), row["text"], row["label"], at))
    return out


def samples_from_events(events: Events) -> tuple[list[Sample], list[float], float | None]:
    """Recorded traffic: the teacher's answers (the last per request) with arrival times, the
    measured cost of each teacher call, and the requests per day (all of them, not only those
    the teacher answered)."""
    arrived = {s.request.request_id: s.request.received_at_ms for s in events.scored}
    answers = {r.request_id: r for r in events.teacher}
    samples = [Sample(rid, r.text, r.label, arrived.get(rid)) for rid, r in answers.items()]
    return samples, [r.cost_usd for r in events.teacher], per_day(list(arrived.values()))


def per_day(times_ms: Sequence[int]) -> float | None:
    """Arrivals per day over the span they cover (None: fewer than two, or no span)."""
    if len(times_ms) < 2 or max(times_ms) == min(times_ms):
        return None
    return (len(times_ms) - 1) / ((max(times_ms) - min(times_ms)) / 86_400_000)


def entropy_bits(counts: Sequence[int]) -> float:
    total = sum(counts)
    return -sum(c / total * math.log2(c / total) for c in counts if c) if total else 0.0


def total_variation(a: Counter[str], b: Counter[str]) -> float:
    na, nb = sum(a.values()), sum(b.values())
    if not na or not nb:
        return 0.0
    return 0.5 * sum(abs(a[k] / na - b[k] / nb) for k in set(a) | set(b))


def narrow(samples: Sequence[Sample]) -> dict[str, Any]:
    counts = Counter(s.label for s in samples)
    ordered = [n for _, n in counts.most_common()]
    bits = entropy_bits(ordered)
    top = max(1, math.ceil(len(ordered) * 0.1))
    return {
        "labels": len(counts),
        "entropy_bits": round(bits, 3),
        "entropy_of_uniform_bits": round(math.log2(len(counts)), 3) if counts else 0.0,
        "top_10pct_labels_share": round(sum(ordered[:top]) / len(samples), 3) if samples else None,
        "passes": 2 <= len(counts) <= MAX_LABELS,
        "rule": f"a closed set of 2 to {MAX_LABELS} labels",
    }


def stable(samples: Sequence[Sample]) -> dict[str, Any]:
    timed = sorted((s for s in samples if s.at_ms is not None), key=lambda s: s.at_ms or 0)
    if len(timed) < 20:
        return {"measured": False, "passes": None, "rule": "cases need times", "why": "the cases carry no times"}
    half = len(timed) // 2
    shift = total_variation(Counter(s.label for s in timed[:half]), Counter(s.label for s in timed[half:]))
    return {
        "measured": True,
        "windows": 2,
        "label_shift_tvd": round(shift, 3),
        "passes": shift <= MAX_SHIFT,
        "rule": f"label distribution shift between the halves (total variation) <= {MAX_SHIFT}",
    }


def verifiable(task: Task, samples: Sequence[Sample]) -> dict[str, Any]:
    checked = {c.label for c in task.policy.checks}
    covered = sum(("*" in checked) or (s.label in checked) for s in samples)
    share = covered / len(samples) if samples else 0.0
    return {
        "checks": len(task.policy.checks),
        "share_verifiable": round(share, 3),
        "passes": share >= MIN_VERIFIABLE,
        "rule": f"the task's checks cover >= {MIN_VERIFIABLE:.0%} of traffic",
    }


def split(samples: Sequence[Sample], held_out: float = 0.2) -> tuple[list[Sample], list[Sample]]:
    """(train, test) by a stable hash of the request id."""
    train: list[Sample] = []
    test: list[Sample] = []
    for s in samples:
        h = int(hashlib.sha256(s.request_id.encode()).hexdigest()[:8], 16) / 0x1_0000_0000
        (test if h < held_out else train).append(s)
    return train, test


def learning_curve(
    task: Task, samples: Sequence[Sample], recipe: Recipe, *, fractions: Sequence[float] = FRACTIONS, seed: int = 0
) -> list[dict[str, Any]]:
    """Train on growing shares of the cases (fast recipe), each judged on the same held-out set."""
    train, test = split(samples)
    if len(test) < 20 or len(train) < 20:
        raise ValueError(f"{len(samples)} cases are too few for a learning curve (20 held out and 20 to train)")
    golden = [Case(s.request_id, s.text, s.label) for s in test]
    order = sorted(train, key=lambda s: hashlib.sha256(f"{seed}:{s.request_id}".encode()).hexdigest())
    points = []
    with tempfile.TemporaryDirectory(prefix="protege-assess-") as scratch:
        for fraction in fractions:
            part = order[: max(20, int(len(order) * fraction))]
            with warnings.catch_warnings():
                # The curve's first point may hold more labels than half its cases: scikit-learn
                # then wonders whether the labels are a regression target (they are not). Seen in CI.
                warnings.filterwarnings("ignore", message="The number of unique classes", category=UserWarning)
                result = train_version(
                    [Case(s.request_id, s.text, s.label) for s in part],
                    recipe=recipe,
                    registry=Path(scratch),
                    tenant="assess",
                    task=task,
                    golden=golden,
                    seed=seed,
                )
            m = result.metrics
            points.append(
                {
                    "fraction": fraction,
                    "cases": len(part),
                    "accuracy": m["golden_accuracy"],
                    "coverage_at_target": m["golden_coverage"],
                    "latency_p50_ms": m["latency_p50_ms"],
                }
            )
    return points


def program_like(curve: Sequence[dict[str, Any]]) -> dict[str, Any]:
    last = curve[-1]
    return {
        "curve": list(curve),
        "passes": last["coverage_at_target"] >= MIN_COVERAGE,
        "rule": f"at 100% of the data the student answers >= {MIN_COVERAGE:.0%} of traffic at the target",
    }


def volume(
    samples: Sequence[Sample],
    costs: Costs,
    teacher_usd: float,
    teacher_measured: bool,
    curve: Sequence[dict[str, Any]],
    arrivals_per_day: float | None = None,
) -> dict[str, Any]:
    rate = costs.requests_per_day
    measured_rate = False
    if rate is None:
        rate = arrivals_per_day if arrivals_per_day is not None else per_day([s.at_ms for s in samples if s.at_ms])
        measured_rate = rate is not None
    q = 1 - curve[-1]["coverage_at_target"]
    # One request on one core, from the trainer's single-request p50: an upper bound on c_s
    # (batches are several times cheaper per request).
    student_usd = costs.core_hour_usd * curve[-1]["latency_p50_ms"] / 3_600_000
    c_s_source = "core-hour price (input) x one request's p50 latency on one core, measured (an upper bound)"
    if costs.gpu_requests_per_s is not None:
        student_usd, c_s_source = gpu_request_usd(costs.gpu_hour_usd, costs.gpu_requests_per_s)
    saving = teacher_usd - ((1 - q) * student_usd + q * teacher_usd)
    breakeven = costs.fixed_usd / saving if saving > 0 else None
    days = breakeven / rate if breakeven is not None and rate else None
    return {
        "requests_per_day": None if rate is None else round(rate, 1),
        "requests_per_day_source": "measured from arrival times" if measured_rate else "input",
        "q_escalation_rate": round(q, 3),
        "c_t_usd": teacher_usd,
        "c_t_source": "measured from recorded teacher results"
        if teacher_measured
        else "estimated (prompt size x price)",
        "c_r_usd": teacher_usd,
        "c_s_usd": student_usd,
        "c_s_source": c_s_source,
        "fixed_usd_input": costs.fixed_usd,
        "core_hour_usd_input": costs.core_hour_usd,
        "gpu_hour_usd_input": costs.gpu_hour_usd if costs.gpu_requests_per_s is not None else None,
        "breakeven_requests": None if breakeven is None else math.ceil(breakeven),
        "breakeven_days": None if days is None else round(days, 1),
        "passes": days is not None and days <= costs.horizon_days,
        "rule": f"break-even within {costs.horizon_days:g} days (an input)",
    }


def recommend(signals: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """distill with cascade / distill with verification / keep the teacher, and why."""
    if not signals["narrow"]["passes"]:
        return "keep the teacher", "not a closed label set a student can hold"
    if not signals["program_like"]["passes"]:
        return "keep the teacher", "the student does not reach the target on enough traffic"
    if not signals["high_volume"]["passes"]:
        return "keep the teacher", "too little volume to pay back the fixed cost within the horizon"
    if signals["stable"]["passes"] is False:
        why = "the label mix shifts: distill, but retrain often and watch drift"
    else:
        why = "narrow, learnable and paying back"
    if signals["verifiable"]["passes"]:
        return "distill with verification", why + "; the checks can verify most answers"
    return "distill with cascade", why


def assess(
    task: Task,
    samples: Sequence[Sample],
    *,
    costs: Costs,
    curve: Sequence[dict[str, Any]],
    teacher_costs: Sequence[float] = (),
    estimate: Callable[[str], float] | None = None,
    arrivals_per_day: float | None = None,
) -> dict[str, Any]:
    if teacher_costs:
        c_t, measured = sum(teacher_costs) / len(teacher_costs), True
    else:
        if estimate is None:
            raise ValueError("no recorded teacher costs and no estimate")
        c_t, measured = sum(estimate(s.text) for s in samples) / len(samples), False
    signals = {
        "narrow": narrow(samples),
        "stable": stable(samples),
        "high_volume": volume(samples, costs, c_t, measured, curve, arrivals_per_day),
        "program_like": program_like(curve),
        "verifiable": verifiable(task, samples),
    }
    verdict, why = recommend(signals)
    return {
        "task": task.name,
        "cases": len(samples),
        "target_accuracy": task.policy.target_accuracy or DEFAULT_TARGET,
        "inputs": asdict(costs),
        "signals": signals,
        "recommendation": verdict,
        "because": why,
    }
