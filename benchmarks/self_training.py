"""What the loop's next version learns from: the escalations alone, or the student's own accepted answers too.

In the live loop the harvester keeps what the teacher answered — escalations, disagreements,
audits — so a student that accepts more traffic hands its next version fewer cases: with the
kNN vote, ``protege bench stream`` trained its last version on 3,810 cases instead of 5,799,
and the coverage the vote bought was eaten. This benchmark asks, offline on BANKING77, what
the next version would be if it learnt as well from the answers the serving student gave
under its certified rule (self-training on pseudo-labels), against learning from escalations
only, and against the ceiling where the teacher had labelled everything.

Each repetition: a golden set (1,000 rows, true labels, kept apart), the rest the pool. A
first version learns from the first ``--seed-share`` of the pool (teacher labels), with the
shipped fast recipe (denoised, 85% fit / 15% calibration, the kNN vote) and its rule chosen
on the golden set (relative target: the teacher's accuracy minus 1 point, 95% confidence).
The rest of the pool streams past it: what the rule accepts gets the student's answer, the
rest the teacher's. The next version then learns, with the same recipe, from

- ``escalated``: the seed cases and the escalations (what the loop does now);
- ``self-trained``: those and the accepted answers with the student's labels;
- ``all teacher``: the seed cases and the whole stream with teacher labels (the ceiling).

Each next version's rule is chosen on the golden set and judged on BANKING77's test file:
coverage, whether the rule held, the student's and the cascade's accuracy against truth.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from certify import confusion_table, embeddings, judge, teacher_answers
from intents import DATA, load

from protege.certify import Evidence, Goal, choose_rule
from protege.events import AcceptRule
from protege.harness import machine
from protege.student.manifest import Vote
from protege.student.runtime import Bank
from protege.student.train import VOTE_K, denoised, fit_head, fit_temperature, knn_k
from protege.task import StudentConfig

GOAL = Goal(margin=0.01, confidence=0.95)
View = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def shipped(x: np.ndarray, labels: np.ndarray, pseudo: np.ndarray, seed: int) -> View:
    """The trainer's fast recipe on these cases: denoise, fit 85%, the temperature on the rest,
    the kNN bank (OOD and vote) of the cases the head learnt from. Pseudo-labelled cases (the
    student's own answers) are always fit, never calibration, as the trainer keeps them. Returns
    the student's view: confidence, OOD score and answer per embedding."""
    held = np.random.default_rng(seed).random(len(x)) >= 0.85
    fit_i, cal_i = np.flatnonzero(~held | pseudo), np.flatnonzero(held & ~pseudo)
    fit_i = fit_i[denoised(x[fit_i], labels[fit_i], seed=seed)]
    w, b, names = fit_head(x[fit_i], labels[fit_i], seed=seed)
    index = {n: i for i, n in enumerate(names)}
    bank_y = np.asarray([index[v] for v in labels[fit_i]])
    bank = Bank(
        x[fit_i], bank_y, len(names), knn_k(labels[fit_i].tolist()), Vote(k=VOTE_K, weight=StudentConfig().vote)
    )
    cal_y = np.asarray([index.get(v, -1) for v in labels[cal_i]])
    known = cal_y >= 0
    temperature = fit_temperature((x[cal_i] @ w + b)[known], cal_y[known])
    names_a = np.asarray(names)

    def view(e: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p, ood = bank.view(e, e @ w + b, temperature)
        return p.max(1), ood, names_a[p.argmax(1)]

    return view


def ruled(view: View, x_gold: np.ndarray, truth_gold: np.ndarray, teacher_gold: np.ndarray) -> AcceptRule | None:
    conf, ood, pred = view(x_gold)
    return choose_rule(GOAL, Evidence("golden", conf, ood, pred == truth_gold, teacher_gold == truth_gold))


def accepted_by(rule: AcceptRule | None, conf: np.ndarray, ood: np.ndarray) -> np.ndarray:
    if rule is None:
        return np.zeros(len(conf), bool)
    return (conf >= rule.min_confidence) & (ood <= rule.max_ood)


def one_rep(
    rep: int,
    model: str,
    args: argparse.Namespace,
    train: list[dict[str, Any]],
    x_train: np.ndarray,
    test: list[dict[str, Any]],
    x_test: np.ndarray,
    table: Any,
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(3000 + rep)
    labels = sorted({r["label"] for r in train})
    truth_train = np.asarray([r["label"] for r in train])
    truth_test = np.asarray([r["label"] for r in test])
    conf_table = table if model == "confusable" else None
    t_train = teacher_answers(train, labels, args.noise, conf_table, seed=rep)
    t_test = teacher_answers(test, labels, args.noise, conf_table, seed=rep)
    order = rng.permutation(len(train))
    gold_i, pool_i = order[: args.golden], order[args.golden :]
    seed_i, stream_i = pool_i[: int(len(pool_i) * args.seed_share)], pool_i[int(len(pool_i) * args.seed_share) :]
    gold = (x_train[gold_i], truth_train[gold_i], t_train[gold_i])

    first = shipped(x_train[seed_i], t_train[seed_i], np.zeros(len(seed_i), bool), seed=rep)
    rule = ruled(first, *gold)
    conf, ood, pred = first(x_train[stream_i])
    took = accepted_by(rule, conf, ood)
    pseudo = np.where(took, pred, t_train[stream_i])  # what the loop answered each streamed request with
    base = {"rep": rep, "noise_model": model, "seed_cases": len(seed_i), "streamed": len(stream_i)}
    base |= {
        "first_coverage": float(took.mean()),
        "pseudo_label_accuracy": float((pred[took] == truth_train[stream_i][took]).mean()) if took.any() else None,
        "teacher_label_accuracy": float((t_train[stream_i] == truth_train[stream_i]).mean()),
    }
    plans = {
        "escalated": (
            np.concatenate([seed_i, stream_i[~took]]),
            np.concatenate([t_train[seed_i], t_train[stream_i][~took]]),
            np.zeros(len(seed_i) + int((~took).sum()), bool),
        ),
        "self-trained": (
            np.concatenate([seed_i, stream_i]),
            np.concatenate([t_train[seed_i], pseudo]),
            np.concatenate([np.zeros(len(seed_i), bool), took]),
        ),
    }
    for share in (float(s) for s in filter(None, args.shares.split(","))):
        kept = ~took | (rng.random(len(stream_i)) < share)  # a sample of the accepted answers
        plans[f"self-trained, {share:.0%} of accepted"] = (
            np.concatenate([seed_i, stream_i[kept]]),
            np.concatenate([t_train[seed_i], pseudo[kept]]),
            np.concatenate([np.zeros(len(seed_i), bool), took[kept]]),
        )
    plans |= {
        "all teacher": (
            np.concatenate([seed_i, stream_i]),
            np.concatenate([t_train[seed_i], t_train[stream_i]]),
            np.zeros(len(seed_i) + len(stream_i), bool),
        ),
    }
    rows = []
    for plan, (ids, learnt, by_student) in plans.items():
        nxt = shipped(x_train[ids], learnt, by_student, seed=rep)
        r = ruled(nxt, *gold)
        x_conf, x_ood, x_pred = nxt(x_test)
        row = base | {"plan": plan, "cases": len(ids), "teacher_labelled": int(len(seed_i) + (~took).sum())}
        if plan == "all teacher":
            row["teacher_labelled"] = len(ids)
        row |= judge(r, GOAL, x_conf, x_ood, x_pred == truth_test, t_test == truth_test)
        row["student_accuracy"] = float((x_pred == truth_test).mean())
        row["all_teacher_accuracy"] = float((t_test == truth_test).mean())
        rows.append(row)
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for model in dict.fromkeys(r["noise_model"] for r in rows):
        for plan in dict.fromkeys(r["plan"] for r in rows):
            these = [r for r in rows if r["noise_model"] == model and r["plan"] == plan]
            mean = {
                k: float(np.mean([r[k] for r in these]))
                for k in (
                    "coverage",
                    "student_accuracy",
                    "cascade_accuracy",
                    "all_teacher_accuracy",
                    "cases",
                    "teacher_labelled",
                    "first_coverage",
                    "pseudo_label_accuracy",
                    "teacher_label_accuracy",
                )
            }
            out.append(
                {"noise_model": model, "plan": plan, "reps": len(these), "held": sum(r["held"] for r in these)} | mean
            )
    return out


def print_table(summary: list[dict[str, Any]]) -> None:
    print(
        f"{'noise':<11}{'next version learns from':<34}{'cases':>7}{'teacher':>9}{'coverage':>10}"
        f"{'student':>9}{'cascade':>9}{'held':>6}"
    )
    for s in summary:
        print(
            f"{s['noise_model']:<11}{s['plan']:<34}{s['cases']:>7.0f}{s['teacher_labelled']:>9.0f}"
            f"{s['coverage']:>10.1%}{s['student_accuracy']:>9.1%}{s['cascade_accuracy']:>9.1%}"
            f"{s['held']:>4}/{s['reps']}"
        )
    for s in summary:
        if s["plan"] == "escalated":
            print(
                f"{s['noise_model']}: the first version accepted {s['first_coverage']:.1%} of the stream, its answers "
                f"{s['pseudo_label_accuracy']:.1%} right; the teacher's labels {s['teacher_label_accuracy']:.1%} right"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--noise-models", default="uniform,confusable")
    ap.add_argument("--golden", type=int, default=1000)
    ap.add_argument("--seed-share", type=float, default=0.25, help="Share of the pool the first version learns from.")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--shares", default="0.25", help="Also self-trained on these samples of the accepted answers.")
    ap.add_argument("--cache", type=Path, default=Path(".protege/cache"))
    ap.add_argument("--json", type=Path, default=Path("reports/benchmark-self-training.json"))
    args = ap.parse_args()
    loaded = load(args.data)
    if loaded is None:
        return
    train, test = loaded
    started = time.perf_counter()
    x_train, x_test = embeddings(train, args.cache), embeddings(test, args.cache)
    table = confusion_table(train, x_train)
    rows: list[dict[str, Any]] = []
    for model in args.noise_models.split(","):
        for rep in range(args.reps):
            rows += one_rep(rep, model, args, train, x_train, test, x_test, table)
            print(f"{model} rep {rep}: done ({time.perf_counter() - started:.0f} s)", flush=True)
    summary = summarise(rows)
    print(machine())
    print_table(summary)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.json.write_text(
        json.dumps({"machine": machine(), "config": config, "summary": summary, "rows": rows}, indent=1)
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
