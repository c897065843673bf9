"""Which lever earns the student more certified coverage against a noisy teacher? Measured.

    python benchmarks/coverage_levers.py --json reports/benchmark-coverage-levers.json

The setting of ``benchmarks/certify.py`` (BANKING77's train file as traffic with a noisy
stand-in teacher, a trusted golden set of ``--golden`` rows, the fast recipe, the relative
target "at most 1 point below the teacher on the same requests" at 95%, certified on the golden
set), with one lever changed at a time; every rule then meets BANKING77's test file (``--data``:
another data set's, e.g. CLINC150 from ``benchmarks/clinc150.py``). Levers:

- ``base``: as the trainer does it (fit 75% / calib 25% of the teacher-labelled rows; the OOD
  gate passes 95% of the golden cases).
- ``ood 0.99``: the OOD gate passes 99% of the golden cases (the gate alone defers 5% of
  in-scope traffic at 0.95).
- ``fit 90%``: with a golden set the calib split only fits the temperature: 10% is kept for it.
- ``denoise``: teacher labels the student contradicts confidently out of fold (3 folds: the
  teacher's label below 5% and the student's answer above 80%) are dropped before the fit
  (``protege.student.train.denoised``, what the fast recipe now does).
- ``all three``.
- ``knn vote``: the student's probabilities half the head's, half the vote of its 5 nearest fit
  cases' labels (``protege.student.runtime.blend``; ``student.vote``).
- ``shipped before``: what the trainer did with a golden set before the vote — denoised,
  fitting 85% of the cases (calib 5% and the 10% golden split it keeps for the release gates;
  here the rest fits the temperature), the OOD gate at 95%.
- ``shipped``: the same with the kNN vote (``student.vote``, the default: 0.3; 0.5 until CLINC150
  measured it); ``--votes`` adds
  it with other weights and k (``--votes 0.3:5,0.5:3,0.5:10``).
- ``shipped + false-accept cap 3%``: the same with ``policy.max_false_accepts: 0.03``: the rule
  stops where more than 3% of the golden set's out-of-scope rows would be accepted in scope, and
  may defer in-scope answers with too much probability of ``oos`` (``protege.certify.OOS_GATES``);
  ``shipped + cap 3% without oos gate`` without that ceiling (as before it),
  ``shipped + cap 3% + ood 0.99`` with the OOD gate at 99%; ``shipped + cap 3% pooled with
  teacher oos`` estimates the false accepts over the golden out-of-scope rows and the calibration
  rows the teacher answered ``oos`` together (``Evidence.teacher_oos``; so does the LP-FT lever's
  ``... pooled with teacher oos`` row).
- ``shipped + LP-FT`` (``--lpft``, slow): the same, then the whole encoder fine-tuned from that
  head (the LP-FT recipe, ``protege train --recipe finetune``); with out-of-scope rows also its
  rule under the 3% cap (with the ceiling on ``oos``) and the oracle's deferral at that cap;
  once per weight of the ``oos`` label's loss in ``--lpft-oos-weights`` (the trainer's 16 by
  default; ``1,16``: unweighted beside it).

Out-of-scope traffic (``--unknown-intents``: intents left out of the task whose rows the
teacher answers ``oos``; or a data set's own ``oos`` rows): the report adds the share of them
the student accepted with an in-scope label (false accepts) and the share of in-scope test rows
deferred to the teacher; ``--frontier`` both at every confidence threshold.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from certify import confusion_table, embeddings, judge, teacher_answers
from intents import DATA, load
from oos_signals import best

from protege.certify import Evidence, Goal, OutOfScope, accepted_by, choose_rule
from protege.harness import machine
from protege.student.finetune import FinetuneConfig
from protege.student.manifest import Vote
from protege.student.runtime import Bank
from protege.student.train import VOTE_K, denoised, fit_head, fit_temperature, knn_k
from protege.task import OOS, StudentConfig

GOAL = Goal(margin=0.01, confidence=0.95)
LEVERS: dict[str, dict[str, Any]] = {
    "base": {},
    "ood 0.99": {"ood_quantile": 0.99},
    "fit 90%": {"fit_share": 0.9},
    "denoise": {"denoise": True},
    "all three": {"ood_quantile": 0.99, "fit_share": 0.9, "denoise": True},
    "knn vote": {"vote": 0.5},
    # what the trainer did before the vote: calib 5% beside its 10% golden split, denoised
    "shipped before": {"fit_share": 0.85, "denoise": True},
    # what it does now (student.vote)
    "shipped": {"fit_share": 0.85, "denoise": True, "vote": StudentConfig().vote},
    # the same with policy.max_false_accepts 0.03 (the golden set's out-of-scope cases), a
    # confidence threshold alone (as before the ceiling on oos) or with the ceiling (shipped)
    "shipped + cap 3% without oos gate": {
        "fit_share": 0.85,
        "denoise": True,
        "vote": StudentConfig().vote,
        "max_false_accepts": 0.03,
        "oos_gate": False,
    },
    "shipped + false-accept cap 3%": {
        "fit_share": 0.85,
        "denoise": True,
        "vote": StudentConfig().vote,
        "max_false_accepts": 0.03,
    },
    # the cap's estimate over the golden out-of-scope cases and the held-out ones the teacher
    # answered oos (Evidence.teacher_oos): twice the cases or more, the teacher's label on half
    "shipped + cap 3% pooled with teacher oos": {
        "fit_share": 0.85,
        "denoise": True,
        "vote": StudentConfig().vote,
        "max_false_accepts": 0.03,
        "pool_teacher_oos": True,
    },
    # the same with the OOD gate at 99%: the ceiling on oos takes over part of its work
    "shipped + cap 3% + ood 0.99": {
        "fit_share": 0.85,
        "denoise": True,
        "vote": StudentConfig().vote,
        "max_false_accepts": 0.03,
        "ood_quantile": 0.99,
    },
}


def golden_evidence(
    conf: np.ndarray,
    ood: np.ndarray,
    pred: np.ndarray,
    oos_probability: np.ndarray | None,
    truth: np.ndarray,
    teacher: np.ndarray,
) -> Evidence:
    """The golden rows as a rule is certified on them: the student's signals and answers, the
    true labels and the teacher's answers."""
    return Evidence(
        "golden",
        conf,
        ood,
        pred == truth,
        teacher == truth,
        out_of_scope=truth == OOS,
        answered_oos=pred == OOS,
        oos_probability=oos_probability,
    )


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
    rng = np.random.default_rng(2000 + rep)
    intents = sorted({r["label"] for r in train} - {OOS})
    unknown = set(rng.choice(intents, args.unknown_intents, replace=False).tolist()) if args.unknown_intents else set()
    labels = [x for x in intents if x not in unknown]
    truth_train = np.asarray([OOS if r["label"] in unknown else r["label"] for r in train])
    truth_test = np.asarray([OOS if r["label"] in unknown else r["label"] for r in test])
    relabel = [dict(r, label=t) for r, t in zip(train, truth_train, strict=True)]
    relabel_test = [dict(r, label=t) for r, t in zip(test, truth_test, strict=True)]
    noise = 0.0 if model == "none" else args.noise
    conf_table = table if model == "confusable" else None
    t_train = teacher_answers(relabel, labels, noise, conf_table, seed=rep)
    t_test = teacher_answers(relabel_test, labels, noise, conf_table, seed=rep)
    order = rng.permutation(len(train))
    gold_i, pool_i = order[: args.golden], order[args.golden :]
    rows = []
    levers = {name: opts for name, opts in LEVERS.items() if name in args.levers.split(",")}
    for pair in filter(None, args.votes.split(",")):  # the vote's weight and k, tried on the shipped recipe
        weight, k = pair.split(":")
        levers[f"shipped, vote {weight} k={k}"] = LEVERS["shipped"] | {"vote": float(weight), "vote_k": int(k)}
    for lever, opts in levers.items():
        cut = int(len(pool_i) * opts.get("fit_share", 0.75))
        fit_i, cal_i = pool_i[:cut], pool_i[cut:]
        if opts.get("denoise"):
            fit_i = fit_i[denoised(x_train[fit_i], t_train[fit_i], seed=rep)]
        w, b, names = fit_head(x_train[fit_i], t_train[fit_i], seed=rep)
        index = {n: i for i, n in enumerate(names)}
        bank_y = np.asarray([index[v] for v in t_train[fit_i]])
        vote = Vote(k=opts.get("vote_k", VOTE_K), weight=opts["vote"]) if opts.get("vote") else None
        bank = Bank(x_train[fit_i], bank_y, len(names), knn_k(t_train[fit_i].tolist()), vote)
        names_a = np.asarray(names)
        cal_y = np.asarray([index.get(v, -1) for v in t_train[cal_i]])
        known = cal_y >= 0
        temperature = fit_temperature((x_train[cal_i] @ w + b)[known], cal_y[known])

        oos_i = index.get(OOS)

        def view(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
            p, ood = bank.view(x, x @ w + b, temperature)  # noqa: B023 (used within the iteration)
            p_oos = None if oos_i is None else p[:, oos_i]  # noqa: B023
            return p.max(1), ood, names_a[p.argmax(1)], p_oos  # noqa: B023

        g_conf, g_ood, g_pred, g_oos = view(x_train[gold_i])
        x_conf, x_ood, x_pred, x_oos = view(x_test)
        gated = g_oos if opts.get("oos_gate", True) else None
        evidence = golden_evidence(g_conf, g_ood, g_pred, gated, truth_train[gold_i], t_train[gold_i])
        if opts.get("pool_teacher_oos"):
            said = cal_i[t_train[cal_i] == OOS]
            c_conf, c_ood, c_pred, c_oos = view(x_train[said])
            evidence = replace(evidence, teacher_oos=OutOfScope(c_conf, c_ood, c_pred == OOS, c_oos))
        goal = replace(GOAL, max_false_accepts=opts.get("max_false_accepts"))
        rule = choose_rule(goal, evidence, ood_quantile=opts.get("ood_quantile", 0.95))
        s_right, t_right = x_pred == truth_test, t_test == truth_test
        row = {"rep": rep, "noise_model": model, "lever": lever, "fit_cases": len(fit_i)}
        row |= judge(rule, goal, x_conf, x_ood, s_right, t_right, x_oos, x_pred == OOS)
        row["all_teacher_accuracy"] = float(t_right.mean())
        row["student_accuracy"] = float(s_right.mean())
        row |= scope(rule, x_conf, x_ood, x_pred, truth_test, x_oos)
        if rule is not None:
            row["rule"] = rule.model_dump(exclude_none=True)
        if args.frontier and lever == "shipped" and rule is not None and (truth_test == OOS).any():
            gold = (g_conf, g_ood, g_pred, truth_train[gold_i])
            row["frontier"] = frontier(rule.max_ood, gold, (x_conf, x_ood, x_pred, truth_test))
        rows.append(row)
    if args.lpft:
        for oos_weight in map(float, args.lpft_oos_weights.split(",")):
            rows += lpft_rows(
                rep,
                model,
                args,
                train,
                x_train,
                test,
                pool_i,
                gold_i,
                t_train,
                truth_train,
                t_test,
                truth_test,
                oos_weight,
            )
    return rows


def lpft_rows(
    rep: int,
    model: str,
    args: argparse.Namespace,
    train: list[dict[str, Any]],
    x_train: np.ndarray,
    test: list[dict[str, Any]],
    pool_i: np.ndarray,
    gold_i: np.ndarray,
    t_train: np.ndarray,
    truth_train: np.ndarray,
    t_test: np.ndarray,
    truth_test: np.ndarray,
    oos_weight: float,
) -> list[dict[str, Any]]:
    """``shipped`` + LP-FT: the same denoised 85% split (and the kNN vote), its logreg head as the
    start, then the whole encoder fine-tuned (``protege.student.finetune``, 4 epochs); calibration, the OOD bank
    (the fine-tuned embeddings of the fit cases) and the rule as for the other levers. Scored in
    PyTorch (the ONNX export matches it to 1e-3 in logits: tests/unit/test_student.py). With
    out-of-scope golden rows, a second row: the same student's rule under the 3% cap, and the
    oracle's figure (``oos_signals.best``: the fewest in-scope test rows deferred at <= 3% false
    accepts over every confidence threshold and ceiling on P(oos), chosen on the test file: a
    bound on what this student can do, not a rule). ``oos_weight`` weighs the ``oos`` label's
    loss in the fine-tune."""
    from protege.student.backbone import source_dir
    from protege.student.finetune import Classifier, finetune

    started = time.perf_counter()
    cut = int(len(pool_i) * 0.85)
    fit_i, cal_i = pool_i[:cut], pool_i[cut:]
    fit_i = fit_i[denoised(x_train[fit_i], t_train[fit_i], seed=rep)]
    w, b, names = fit_head(x_train[fit_i], t_train[fit_i], seed=rep)
    index = {n: i for i, n in enumerate(names)}
    cfg = FinetuneConfig(epochs=args.lpft_epochs, oos_weight=oos_weight)
    clf = Classifier(source_dir(), w, b, cfg.max_length)
    weights = np.ones(len(names))
    if OOS in index:  # as the trainer's LP-FT recipe weighs it
        weights[index[OOS]] = cfg.oos_weight
    fit_y = np.asarray([index[v] for v in t_train[fit_i]])
    finetune(clf, [train[i]["text"] for i in fit_i], fit_y, cfg, class_weight=weights)
    trained_s = time.perf_counter() - started

    def scores(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        logits, emb = clf.predict(texts)
        return logits, emb

    _, bank = scores([train[i]["text"] for i in fit_i])
    cal_logits, _ = scores([train[i]["text"] for i in cal_i])
    cal_y = np.asarray([index.get(v, -1) for v in t_train[cal_i]])
    known = cal_y >= 0
    temperature = fit_temperature(cal_logits[known], cal_y[known])
    names_a, k = np.asarray(names), knn_k(t_train[fit_i].tolist())
    bank_y = np.asarray([index[v] for v in t_train[fit_i]])
    neighbours = Bank(bank, bank_y, len(names), k, Vote(k=VOTE_K, weight=StudentConfig().vote))

    oos_i = index.get(OOS)

    def view(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        logits, emb = scores(texts)
        p, ood = neighbours.view(emb, logits, temperature)
        return p.max(1), ood, names_a[p.argmax(1)], None if oos_i is None else p[:, oos_i]

    g_conf, g_ood, g_pred, g_oos = view([train[i]["text"] for i in gold_i])
    x_conf, x_ood, x_pred, x_oos = view([r["text"] for r in test])
    s_right, t_right = x_pred == truth_test, t_test == truth_test
    lever = f"shipped + LP-FT ({args.lpft_epochs} epochs{'' if oos_weight == 1 else f', oos x{oos_weight:g}'})"
    golden = golden_evidence(g_conf, g_ood, g_pred, g_oos, truth_train[gold_i], t_train[gold_i])
    goals = {lever: (GOAL, 0.95, golden)}  # name: (goal, the OOD gate's quantile, evidence)
    if (truth_train[gold_i] == OOS).any():  # the same student under the cap, with the ceiling on oos
        capped = replace(GOAL, max_false_accepts=0.03)
        goals[f"{lever} + false-accept cap 3%"] = (capped, 0.95, golden)
        for q in map(float, filter(None, args.lpft_capped_ood.split(","))):  # the OOD gate's share of it
            goals[f"{lever} + false-accept cap 3% + ood {q:g}"] = (capped, q, golden)
        said = cal_i[t_train[cal_i] == OOS]  # held-out cases the teacher answered oos
        c_conf, c_ood, c_pred, c_oos = view([train[i]["text"] for i in said])
        pooled = replace(golden, teacher_oos=OutOfScope(c_conf, c_ood, c_pred == OOS, c_oos))
        goals[f"{lever} + false-accept cap 3% pooled with teacher oos"] = (capped, 0.95, pooled)
    rows = []
    for name, (goal, ood_quantile, evidence) in goals.items():
        rule = choose_rule(goal, evidence, ood_quantile=ood_quantile)
        row = {"rep": rep, "noise_model": model, "lever": name}
        row |= {"fit_cases": len(fit_i), "train_seconds": round(trained_s, 1)}
        row |= judge(rule, goal, x_conf, x_ood, s_right, t_right, x_oos, x_pred == OOS)
        row["all_teacher_accuracy"] = float(t_right.mean())
        row["student_accuracy"] = float(s_right.mean())
        if rule is not None:
            row["rule"] = rule.model_dump(exclude_none=True)
        if args.frontier and goal.max_false_accepts is None and rule is not None and (truth_test == OOS).any():
            gold = (g_conf, g_ood, g_pred, truth_train[gold_i])
            row["frontier"] = frontier(rule.max_ood, gold, (x_conf, x_ood, x_pred, truth_test))
        if goal.max_false_accepts is not None and x_oos is not None:
            oracle = best(x_conf, [x_oos], x_pred, truth_test, goal.max_false_accepts)
            row["oracle_in_scope_deferred"] = None if oracle is None else oracle["in_scope_deferred"]
        rows.append(row | scope(rule, x_conf, x_ood, x_pred, truth_test, x_oos))
    return rows


def scope(
    rule: Any,
    conf: np.ndarray,
    ood: np.ndarray,
    pred: np.ndarray,
    truth: np.ndarray,
    oos_probability: np.ndarray | None = None,
) -> dict[str, float]:
    """With out-of-scope rows in the test file: the share of them the rule let the student
    answer with an in-scope label (false accepts), and the share of in-scope rows it deferred."""
    if not (truth == OOS).any():
        return {}
    accepted = (
        np.zeros(len(truth), bool) if rule is None else accepted_by(rule, conf, ood, oos_probability, pred == OOS)
    )
    return scope_of(accepted, pred, truth)


def scope_of(accepted: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Out-of-scope rows ``accepted`` with an in-scope answer, and in-scope rows not accepted."""
    oos = truth == OOS
    return {
        "oos_false_accepts": float((accepted & oos & (pred != OOS)).sum() / max(1, oos.sum())),
        "in_scope_deferred": float((~accepted & ~oos).sum() / max(1, (~oos).sum())),
    }


def frontier(max_ood: float, gold: tuple[np.ndarray, ...], test: tuple[np.ndarray, ...]) -> list[dict[str, float]]:
    """What each confidence threshold would cost and let through, at the rule's OOD gate: the
    out-of-scope false accepts on the golden rows and on the test file, the in-scope test rows
    deferred, the coverage and the accepted answers' accuracy. The rule maximises coverage for
    accuracy; this is the trade a user who also caps false accepts would make."""
    out = []
    for t in np.round(np.arange(0.9, 0.0, -0.1), 1):
        point: dict[str, float] = {"min_confidence": float(t)}
        for name, (conf, ood, pred, truth) in (("golden", gold), ("test", test)):
            accepted = (conf >= t) & (ood <= max_ood)
            shares = scope_of(accepted, pred, truth)
            point[f"{name}_false_accepts"] = shares["oos_false_accepts"]
            if name == "test":
                point["in_scope_deferred"] = shares["in_scope_deferred"]
                point["coverage"] = float(accepted.mean())
                point["accepted_accuracy"] = float((pred[accepted] == truth[accepted]).mean())
        out.append(point)
    return out


def print_frontier(rows: list[dict[str, Any]]) -> None:
    for model, lever in dict.fromkeys((r["noise_model"], r["lever"]) for r in rows if "frontier" in r):
        these = [r["frontier"] for r in rows if (r["noise_model"], r["lever"]) == (model, lever) and "frontier" in r]
        print(f"{model}: {lever}, every threshold at the rule's OOD gate (mean of {len(these)} reps)")
        print(f"{'min conf':>9}{'golden FA':>11}{'test FA':>9}{'deferred':>10}{'coverage':>10}{'accepted acc':>14}")
        for i, point in enumerate(these[0]):
            m = {k: float(np.mean([f[i][k] for f in these])) for k in point}
            print(
                f"{m['min_confidence']:>9.1f}{m['golden_false_accepts']:>11.1%}{m['test_false_accepts']:>9.1%}"
                f"{m['in_scope_deferred']:>10.1%}{m['coverage']:>10.1%}{m['accepted_accuracy']:>14.1%}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--noise-models", default="uniform,confusable")
    ap.add_argument("--golden", type=int, default=1000)
    ap.add_argument("--unknown-intents", type=int, default=0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path(".protege/cache"))
    ap.add_argument("--json", type=Path, default=Path("reports/benchmark-coverage-levers.json"))
    ap.add_argument(
        "--lpft", action="store_true", help="Also the LP-FT lever (the encoder fine-tuned: ~10 min a rep on 2 cores)."
    )
    ap.add_argument("--lpft-epochs", type=int, default=4)
    ap.add_argument(
        "--lpft-oos-weights",
        default=f"{FinetuneConfig.oos_weight:g}",
        help="LP-FT once per weight of the oos label's loss (comma-separated; 1: unweighted; default: the "
        "trainer's, FinetuneConfig.oos_weight).",
    )
    ap.add_argument(
        "--lpft-capped-ood",
        default="",
        help="Also the LP-FT student's capped rule with the OOD gate passing these shares of the golden set "
        "(comma-separated, e.g. 0.99,1: 1 gates at the golden set's largest score; the trainer's is 0.95).",
    )
    ap.add_argument("--levers", default=",".join(LEVERS), help="Which of the fast levers to run (comma-separated).")
    ap.add_argument(
        "--votes",
        default="",
        help="Also the shipped recipe with other kNN votes: weight:k pairs, comma-separated (e.g. 0.3:5,0.5:10).",
    )
    ap.add_argument(
        "--frontier",
        action="store_true",
        help="With out-of-scope rows: the shipped recipe's (and LP-FT's) false accepts and in-scope deferrals at "
        "every threshold.",
    )
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
    print_table(summary, args)
    print_frontier(rows)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.json.write_text(
        json.dumps({"machine": machine(), "config": config, "summary": summary, "rows": rows}, indent=1)
    )
    print(f"wrote {args.json}")


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["noise_model"], r["lever"]), []).append(r)
    keys = ["coverage", "accepted_accuracy", "teacher_on_accepted", "cascade_accuracy", "all_teacher_accuracy"]
    keys += ["student_accuracy", "oos_false_accepts", "in_scope_deferred", "oracle_in_scope_deferred"]
    out = []
    for (model, lever), rs in groups.items():
        s: dict[str, Any] = {"noise_model": model, "lever": lever, "reps": len(rs), "held": sum(r["held"] for r in rs)}
        for key in keys:
            vals = [r[key] for r in rs if r.get(key) is not None]
            s[key] = float(np.mean(vals)) if vals else None
        s["rules"] = [rule_text(r.get("rule")) for r in rs]
        out.append(s)
    return out


def rule_text(rule: dict[str, Any] | None) -> str:
    """A rule's thresholds in a few characters: ``0.55`` or ``0.55/oos<=0.05``."""
    if rule is None:
        return "none"
    gate = rule.get("max_oos_probability")
    return f"{rule['min_confidence']:.2f}" + ("" if gate is None else f"/oos<={gate:g}")


def print_table(summary: list[dict[str, Any]], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    m = machine()
    table = Table(
        title=f"coverage levers ({args.data.name} test; relative target 1 pt @ 95% on {args.golden} golden rows; noise "
        f"{args.noise:g}; {args.unknown_intents} unknown intents; {args.reps} reps; {m['cpu']}, {m['cores']} cores)"
    )
    cols = ["noise", "lever", "coverage", "accepted acc", "teacher on accepted", "cascade acc", "all-teacher acc"]
    cols += ["student acc", "oos false accepts", "in-scope deferred", "oracle deferred", "held", "rules"]
    for col in cols:
        table.add_column(col)

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    for s in summary:
        table.add_row(
            s["noise_model"],
            s["lever"],
            *(pct(s[k]) for k in ("coverage", "accepted_accuracy", "teacher_on_accepted", "cascade_accuracy")),
            *(
                pct(s[k])
                for k in ("all_teacher_accuracy", "student_accuracy", "oos_false_accepts", "in_scope_deferred")
            ),
            pct(s["oracle_in_scope_deferred"]),
            f"{s['held']}/{s['reps']}",
            " ".join(s["rules"]),
        )
    Console(width=200).print(table)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
