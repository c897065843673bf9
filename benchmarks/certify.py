"""How should a rule be certified when the teacher errs? Measured on fresh samples, not assumed.

    python benchmarks/certify.py --json reports/benchmark-certify.json

BANKING77's train file plays the traffic: a trusted golden set of ``--golden`` rows keeps its
true labels (as a person would give them) plus the teacher's answer on each; every other row
gets only the teacher's label — the offline stand-in with ``--noise`` wrong answers, uniform
or confusable (``protege.teacher``), the same noise the bench streams. The student is the
fast recipe (frozen backbone + logistic regression on the fit split's teacher labels), with
the trainer's temperature, kNN OOD score and split (fit 75% / calib 25% of the teacher-labelled
rows). Each method chooses a rule for each goal; the rule then meets BANKING77's test file
(fresh samples, true labels, the teacher's noisy answers) and the report says what it covered,
how accurate the accepted answers were, and whether the guarantee held — over ``--reps``
repetitions with new golden sets, splits and teacher noise.

Methods:
- ``agreement``: the calib split's teacher labels only (what the trainer did before golden truth).
- ``golden``: the trusted golden set only (``protege.certify``; for relative goals the exact
  unconditional test on the discordant cases, ``paired_exact_p``, since stop 45).
- ``golden, union bound``: the same with the paired bound it replaced (``paired_lower_bound``:
  two Clopper-Pearson bounds joined by a union bound; relative goals only).
- ``golden, two proportions``: the same, with the two proportions bounded separately
  (``paired_union_bound``; relative goals only).
- ``golden, score at half the error``: the same, with Tango's asymptotic score bound at half the
  error (``paired_score_half``; relative goals only): tighter, not exact.
- ``corrected``: agreement on calib, corrected by the teacher's error rate measured on the golden
  set, assuming the student's mistakes are independent of the teacher's: acc = A / (1 - e),
  bounded with LB(A) and UB(e). Not shipped; measured to see whether its assumption holds.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from intents import DATA, load

from protege.certify import (
    Evidence,
    Goal,
    accepted_by,
    choose_rule,
    cp_lower,
    cp_upper,
    paired_lower_bound,
    paired_score_half,
    paired_union_bound,
)
from protege.events import AcceptRule
from protege.generator import task_from_labels
from protege.harness import machine
from protege.student.backbone import cached_backbone
from protege.student.export import quantized
from protege.student.runtime import Encoder, knn_ood, softmax, sub_batch_for
from protege.student.train import fit_head, fit_temperature, knn_k
from protege.teacher import StandinTeacher, confusions

GOALS = {"absolute 0.97": Goal(accuracy=0.97), "relative -1pt": Goal(margin=0.01)}


def embeddings(rows: list[dict[str, Any]], cache: Path, *, int8: bool = False) -> np.ndarray:
    """Backbone embeddings of every row, cached on disk by the texts' hash (minutes on 2 cores);
    ``int8``: the quantised backbone's, run as the scorer runs an int8 graph (one text per run)."""
    key = hashlib.sha256("\n".join(r["text"] for r in rows).encode()).hexdigest()[:16]
    path = cache / f"certify-{key}{'-int8' if int8 else ''}.npy"
    if path.exists():
        return np.load(path)
    backbone = cached_backbone()
    graph = quantized(backbone) if int8 else backbone / "model.onnx"
    encoder = Encoder(
        graph, backbone / "tokenizer.json", providers="cpu", sub_batch=sub_batch_for("int8" if int8 else "fp32", 0)
    )
    x = encoder.embed([r["text"] for r in rows])
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    return x


def confusion_table(train: list[dict[str, Any]], x_train: np.ndarray) -> Any:
    """The confusable noise model's table: each label's nearest labels by the backbone's mean
    embedding of 40 of its texts (seeded)."""
    picked = np.random.default_rng(0).permutation(len(train))
    by_label: dict[str, list[int]] = {}
    for i in picked:
        by_label.setdefault(train[i]["label"], []).append(int(i))
    sample = [i for ids in by_label.values() for i in ids[:40]]
    return confusions([train[i]["label"] for i in sample], x_train[sample])


def teacher_answers(rows: list[dict[str, Any]], labels: list[str], noise: float, table: Any, seed: int) -> np.ndarray:
    task = task_from_labels("certify", labels, "benchmark")
    teacher = StandinTeacher({r["text"]: r["label"] for r in rows}, noise=noise, confused=table, seed=seed)

    async def all_of() -> list[str]:
        return [(await teacher.label(task, r["text"], r["id"])).label for r in rows]

    return np.asarray(asyncio.run(all_of()))


def corrected_rule(
    goal: Goal, conf: np.ndarray, ood: np.ndarray, agree: np.ndarray, teacher_wrong: int, n_golden: int
) -> AcceptRule | None:
    """Agreement corrected for the teacher's golden error rate (independence assumed)."""
    max_ood = float(np.quantile(ood, 0.95))
    half = 1 - (1 - goal.confidence) / 2
    e_up = cp_upper(teacher_wrong, n_golden, half)
    best = None
    for t in np.round(np.arange(0.99, -0.005, -0.01), 2):
        acc = (conf >= t) & (ood <= max_ood)
        if not acc.any():
            continue
        lb_agree = cp_lower(int(agree[acc].sum()), int(acc.sum()), half)
        # A = acc_S (1 - e) + P(both wrong, same answer) ~ acc_S (1 - e): acc_S ~ A / (1 - e)
        lb = min(1.0, lb_agree / (1 - e_up))
        target = goal.accuracy if goal.accuracy is not None else (1 - e_up) - (goal.margin or 0)
        if lb < target:
            break
        best = AcceptRule(
            target_accuracy=goal.accuracy,
            target_margin=goal.margin,
            confidence_level=goal.confidence,
            min_confidence=float(t),
            max_ood=max_ood,
            coverage=float(acc.mean()),
        )
    return best


def judge(
    rule: AcceptRule | None,
    goal: Goal,
    conf: np.ndarray,
    ood: np.ndarray,
    s_right: np.ndarray,
    t_right: np.ndarray,
    oos_probability: np.ndarray | None = None,
    answered_oos: np.ndarray | None = None,
) -> dict[str, Any]:
    """The rule on the test file: coverage, accuracy of accepted answers and the teacher's on them,
    the cascade's accuracy (student where accepted, teacher elsewhere), and whether it held."""
    accepted = (
        np.zeros(len(conf), bool) if rule is None else accepted_by(rule, conf, ood, oos_probability, answered_oos)
    )
    n = int(accepted.sum())
    acc_s = float(s_right[accepted].mean()) if n else None
    acc_t = float(t_right[accepted].mean()) if n else None
    if n == 0:
        held = True
    elif goal.relative:
        held = acc_s - acc_t >= -(goal.margin or 0) - 1e-12  # type: ignore[operator]
    else:
        held = acc_s >= (goal.accuracy or 0)  # type: ignore[operator]
    cascade = float(np.where(accepted, s_right, t_right).mean())
    return {
        "coverage": n / len(conf),
        "accepted_accuracy": acc_s,
        "teacher_on_accepted": acc_t,
        "cascade_accuracy": cascade,
        "held": held,
    }


def one_rep(
    rep: int,
    noise: float,
    model: str,
    golden_n: int,
    train: list[dict[str, Any]],
    x_train: np.ndarray,
    test: list[dict[str, Any]],
    x_test: np.ndarray,
    labels: list[str],
    table: Any,
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(1000 + rep)
    order = rng.permutation(len(train))
    gold_i, pool_i = order[:golden_n], order[golden_n:]
    conf_table = table if model == "confusable" else None
    t_train = teacher_answers(train, labels, noise, conf_table, seed=rep)
    t_test = teacher_answers(test, labels, noise, conf_table, seed=rep)
    y_train = np.asarray([r["label"] for r in train])
    y_test = np.asarray([r["label"] for r in test])
    cut = int(len(pool_i) * 0.75)
    fit_i, cal_i = pool_i[:cut], pool_i[cut:]
    w, b, names = fit_head(x_train[fit_i], t_train[fit_i], seed=rep)
    names_a = np.asarray(names)
    bank = x_train[fit_i]
    k = knn_k(t_train[fit_i].tolist())

    def view(x: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = softmax((x @ w + b) / temperature)
        return p.max(1), knn_ood(x, bank, k), names_a[p.argmax(1)]

    index = {n: i for i, n in enumerate(names)}
    cal_y = np.asarray([index.get(v, -1) for v in t_train[cal_i]])
    known = cal_y >= 0
    temperature = fit_temperature((x_train[cal_i] @ w + b)[known], cal_y[known])
    c_conf, c_ood, c_pred = view(x_train[cal_i], temperature)
    g_conf, g_ood, g_pred = view(x_train[gold_i], temperature)
    x_conf, x_ood, x_pred = view(x_test, temperature)
    s_right_test, t_right_test = x_pred == y_test, t_test == y_test
    g_s, g_t = g_pred == y_train[gold_i], t_train[gold_i] == y_train[gold_i]
    rows = []
    for goal_name, goal in GOALS.items():
        rules = {
            "agreement": choose_rule(goal, Evidence("agreement", c_conf, c_ood, c_pred == t_train[cal_i])),
            "golden": choose_rule(goal, Evidence("golden", g_conf, g_ood, g_s, g_t)),
            "golden, union bound": choose_rule(
                goal, Evidence("golden", g_conf, g_ood, g_s, g_t), paired=paired_lower_bound
            )
            if goal.relative
            else None,
            "golden, two proportions": choose_rule(
                goal, Evidence("golden", g_conf, g_ood, g_s, g_t), paired=paired_union_bound
            )
            if goal.relative
            else None,
            "golden, score at half the error": choose_rule(
                goal, Evidence("golden", g_conf, g_ood, g_s, g_t), paired=paired_score_half
            )
            if goal.relative
            else None,
            "corrected": corrected_rule(goal, c_conf, c_ood, c_pred == t_train[cal_i], int((~g_t).sum()), len(g_t)),
        }
        for method, rule in rules.items():
            if (
                method in ("golden, union bound", "golden, two proportions", "golden, score at half the error")
                and not goal.relative
            ):
                continue
            rows.append(
                {
                    "rep": rep,
                    "noise": noise,
                    "noise_model": model,
                    "golden": golden_n,
                    "goal": goal_name,
                    "method": method,
                    "certified_coverage": rule.coverage if rule else 0.0,
                    "all_teacher_accuracy": float(t_right_test.mean()),
                    "student_accuracy": float(s_right_test.mean()),
                    "teacher_golden_accuracy": float(g_t.mean()),
                }
                | judge(rule, goal, x_conf, x_ood, s_right_test, t_right_test)
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--noise-models", default="none,uniform,confusable")
    ap.add_argument("--golden", default="300,1000", help="Trusted golden set sizes (comma-separated).")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=Path(".protege/cache"))
    ap.add_argument("--json", type=Path, default=Path("reports/benchmark-certify.json"))
    args = ap.parse_args()
    loaded = load(args.data)
    if loaded is None:
        return
    train, test = loaded
    started = time.perf_counter()
    x_train, x_test = embeddings(train, args.cache), embeddings(test, args.cache)
    labels = sorted({r["label"] for r in train})
    table = confusion_table(train, x_train)
    rows: list[dict[str, Any]] = []
    for model in args.noise_models.split(","):
        noise = 0.0 if model == "none" else args.noise
        for golden_n in (int(g) for g in args.golden.split(",")):
            for rep in range(args.reps):
                rows += one_rep(rep, noise, model, golden_n, train, x_train, test, x_test, labels, table)
                print(f"{model} golden {golden_n} rep {rep}: done ({time.perf_counter() - started:.0f} s)", flush=True)
    summary = summarise(rows)
    print_table(summary, args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "machine": machine(),
                "config": vars(args) | {"data": str(args.data), "cache": str(args.cache), "json": str(args.json)},
                "summary": summary,
                "rows": rows,
            },
            indent=1,
        )
    )
    print(f"wrote {args.json}")


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["noise_model"], r["golden"], r["goal"], r["method"]), []).append(r)
    out = []

    def mean(rs: list[dict[str, Any]], key: str) -> float | None:
        vals = [r[key] for r in rs if r[key] is not None]
        return float(np.mean(vals)) if vals else None

    for (model, golden_n, goal, method), rs in groups.items():
        out.append(
            {
                "noise_model": model,
                "golden": golden_n,
                "goal": goal,
                "method": method,
                "reps": len(rs),
                "coverage": mean(rs, "coverage"),
                "accepted_accuracy": mean(rs, "accepted_accuracy"),
                "teacher_on_accepted": mean(rs, "teacher_on_accepted"),
                "cascade_accuracy": mean(rs, "cascade_accuracy"),
                "all_teacher_accuracy": mean(rs, "all_teacher_accuracy"),
                "held": sum(r["held"] for r in rs),
            }
        )
    return out


def print_table(summary: list[dict[str, Any]], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    m = machine()
    table = Table(
        title=f"certification on fresh samples (BANKING77 test; noise {args.noise:g}; {args.reps} reps; {m['cpu']}, {m['cores']} cores)"
    )
    for col in (
        "noise",
        "golden",
        "goal",
        "method",
        "coverage",
        "accepted acc",
        "teacher on accepted",
        "cascade acc",
        "all-teacher acc",
        "held",
    ):
        table.add_column(col)
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    for s in summary:
        table.add_row(
            s["noise_model"],
            str(s["golden"]),
            s["goal"],
            s["method"],
            pct(s["coverage"]),
            pct(s["accepted_accuracy"]),
            pct(s["teacher_on_accepted"]),
            pct(s["cascade_accuracy"]),
            pct(s["all_teacher_accuracy"]),
            f"{s['held']}/{s['reps']}",
        )
    Console().print(table)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
