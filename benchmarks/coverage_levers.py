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
- ``shipped from 1 loss`` (2, 4): the fixed sequence's first test where a record with that many
  losses could still pass (``protege.certify.could_pass``), not where a flawless one could:
  counts alone decide it, so the guarantee holds; measured, not the default.
- ``shipped with the union bound``: the relative target tested as it was until stop 45, with two
  Clopper-Pearson bounds joined by a union bound (``certify.paired_lower_bound``) instead of the
  exact unconditional test (``certify.paired_exact_p``), the sequence starting where that bound
  passes a flawless record (``could_pass``), as it did.
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
  default; ``1,16``: unweighted beside it); ``--lpft-union``: each of its rules also certified
  with the union bound, as before stop 45.

The precision (``--int8``): each lever also with the int8 graph serving — the quantised
backbone's embeddings (one text per run, as the scorer runs it) through the head fit on the
fp32 graph's, with the temperature, the OOD bank and the rule on the int8 graph's own outputs,
as the trainer builds an int8 version — and two ways of choosing between the graphs: by
held-out accuracy on the teacher's labels (what ``protege.student.train.Precision`` does), and
by which graph's rule certifies more on the golden rows (two tries at the same rows).
``--cases N`` trains on N teacher-labelled rows only (a cold start's first versions).

Out-of-scope traffic (``--unknown-intents``: intents left out of the task whose rows the
teacher answers ``oos``; or a data set's own ``oos`` rows): the report adds the share of them
the student accepted with an in-scope label (false accepts) and the share of in-scope test rows
deferred to the teacher; ``--frontier`` both at every confidence threshold.
"""

from __future__ import annotations

import argparse
import hashlib
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

from protege.certify import Evidence, Goal, OutOfScope, PairedBound, accepted_by, choose_rule, paired_lower_bound
from protege.events import AcceptRule
from protege.harness import machine
from protege.student.finetune import FinetuneConfig
from protege.student.manifest import Vote
from protege.student.runtime import Bank
from protege.student.train import VOTE_K, denoised, fit_head, fit_temperature, knn_k
from protege.task import OOS, Gates, StudentConfig

GOAL = Goal(margin=0.01, confidence=0.95)
HALF = ", each at half the error budget"  # a rule certified at 1 - (1 - confidence) / 2
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
    # the sequence's first test where a record with 1 or 2 losses could pass (certify.could_pass)
    "shipped from 1 loss": {"fit_share": 0.85, "denoise": True, "vote": StudentConfig().vote, "losses": 1},
    "shipped from 2 losses": {"fit_share": 0.85, "denoise": True, "vote": StudentConfig().vote, "losses": 2},
    "shipped from 4 losses": {"fit_share": 0.85, "denoise": True, "vote": StudentConfig().vote, "losses": 4},
    # the relative target tested as before stop 45: two Clopper-Pearson bounds and a union bound
    "shipped with the union bound": {"fit_share": 0.85, "denoise": True, "vote": StudentConfig().vote, "union": True},
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
    int8: tuple[np.ndarray, np.ndarray] | None = None,
    golden_tail: int = 0,
) -> list[dict[str, Any]]:
    """``int8``: the int8 backbone's embeddings of the train and test rows: each lever also with
    that graph serving (the head fit on the fp32 graph's, as the trainer fits it).
    ``golden_tail``: the golden set is the last that many train rows (drawn from the test file,
    ``--golden-from test``), not a draw from the train file."""
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
    if golden_tail:  # as many train rows left out as the golden set has, so the fit is the same size
        gold_i = np.arange(len(train) - golden_tail, len(train))
        pool_i = rng.permutation(len(train) - golden_tail)[golden_tail:]
    else:
        order = rng.permutation(len(train))
        gold_i, pool_i = order[: args.golden], order[args.golden :]
    if args.cases:  # a cold start's few teacher-labelled rows
        pool_i = pool_i[: args.cases]
    rows = []
    near = nearest(x_train, x_test, gold_i, pool_i, truth_train[gold_i] != OOS, truth_test != OOS)
    levers = {name: opts for name, opts in LEVERS.items() if name in args.levers.split(",")}
    for pair in filter(None, args.votes.split(",")):  # the vote's weight and k, tried on the shipped recipe
        weight, k = pair.split(":")
        levers[f"shipped, vote {weight} k={k}"] = LEVERS["shipped"] | {"vote": float(weight), "vote_k": int(k)}
    for lever, opts in levers.items():
        cut = int(len(pool_i) * opts.get("fit_share", 0.75))
        fit_i, cal_i = pool_i[:cut], pool_i[cut:]
        if opts.get("denoise"):
            fit_i = fit_i[denoised(x_train[fit_i], t_train[fit_i], seed=rep)]
        w, b, names = fit_head(x_train[fit_i], t_train[fit_i], seed=rep)  # on the fp32 graph, as the trainer fits it
        index = {n: i for i, n in enumerate(names)}
        bank_y = np.asarray([index[v] for v in t_train[fit_i]])
        vote = Vote(k=opts.get("vote_k", VOTE_K), weight=opts["vote"]) if opts.get("vote") else None
        names_a = np.asarray(names)
        cal_y = np.asarray([index.get(v, -1) for v in t_train[cal_i]])
        known = cal_y >= 0
        oos_i = index.get(OOS)
        graphs = {"fp32": (x_train, x_test)} | ({"int8": int8} if int8 is not None else {})
        # Precision.of's test: each graph's plain answers on the held-out (calib) cases' teacher labels
        held_out = {
            g: float((names_a[(xs[0][cal_i] @ w + b).argmax(1)] == t_train[cal_i]).mean()) for g, xs in graphs.items()
        }
        budgets = {"": opts} | (
            {HALF: opts | {"confidence": 1 - (1 - GOAL.confidence) / 2}} if int8 is not None else {}
        )
        ranking: dict[str, float] = {}  # each graph's risk-coverage area on the held-out teacher labels
        for graph, (gx_train, gx_test) in graphs.items():
            # the served graph's embeddings for the OOD bank, the temperature and everything scored
            bank = Bank(gx_train[fit_i], bank_y, len(names), knn_k(t_train[fit_i].tolist()), vote)
            temperature = fit_temperature((gx_train[cal_i] @ w + b)[known], cal_y[known])

            def view(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
                p, ood = bank.view(x, x @ w + b, temperature)  # noqa: B023 (used within the iteration)
                p_oos = None if oos_i is None else p[:, oos_i]  # noqa: B023
                return p.max(1), ood, names_a[p.argmax(1)], p_oos  # noqa: B023

            c_conf, _, c_pred, _ = view(gx_train[cal_i])
            ranking[graph] = risk_coverage_area(c_conf, c_pred == t_train[cal_i])

            rows += [
                lever_row(
                    rep,
                    model,
                    (lever if graph == "fp32" else f"{lever}, int8 graph") + budget,
                    budget_opts,
                    args,
                    view,
                    gx_train,
                    gx_test,
                    gold_i,
                    cal_i,
                    fit_i,
                    truth_train,
                    t_train,
                    truth_test,
                    t_test,
                )
                | ({"held_out_accuracy": held_out} if len(graphs) > 1 else {})
                for budget, budget_opts in budgets.items()
            ]
        if int8 is not None:
            fp32_row, fp32_half, int8_row, int8_half = rows[-4:]
            # the trainer's choice (protege.student.train.Precision): int8 when its held-out
            # accuracy is within the gates' tolerance of fp32's; and the graph whose rule certifies
            # more on the golden rows (two tries at certification on the same rows)
            by_held_out = int8_row if trainers_choice(held_out) == "int8" else fp32_row
            by_coverage = max((int8_row, fp32_row), key=lambda r: r["certified_coverage"])
            # the same at half the error budget each (Bonferroni): whichever is kept holds at the goal's confidence
            by_half = max((int8_half, fp32_half), key=lambda r: r["certified_coverage"])
            # a choice that also leaves the golden rows alone: how well each graph's confidence
            # ranks its answers on the held-out teacher labels (int8 unless it ranks worse)
            by_ranking = int8_row if ranked_choice(ranking) == "int8" else fp32_row
            for how, row in (
                ("held-out accuracy (shipped)", by_held_out),
                ("held-out ranking", by_ranking),
                ("certified coverage", by_coverage),
                (f"certified coverage{HALF}", by_half),
            ):
                precision = "int8" if row in (int8_row, int8_half) else "fp32"
                rows.append(
                    row
                    | {"lever": f"{lever}, precision by {how}", "precision": precision, "held_out_risk_area": ranking}
                )
    rows = [r | near for r in rows]
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


def nearest(
    x_train: np.ndarray,
    x_test: np.ndarray,
    gold_i: np.ndarray,
    pool_i: np.ndarray,
    gold_in_scope: np.ndarray,
    test_in_scope: np.ndarray,
) -> dict[str, float]:
    """How close the in-scope golden rows and the in-scope test rows sit to the teacher-labelled
    rows the student learns from: the median cosine of each to its nearest one (backbone
    embeddings). A golden set drawn where the training rows were drawn (paraphrases written
    together) sits closer than the traffic, and the student is more often right on it."""
    bank = x_train[pool_i] / np.linalg.norm(x_train[pool_i], axis=1, keepdims=True)

    def median_nearest(x: np.ndarray) -> float:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return float(np.median(np.concatenate([(x[i : i + 1024] @ bank.T).max(1) for i in range(0, len(x), 1024)])))

    return {
        "golden_nearest_cosine": median_nearest(x_train[gold_i][gold_in_scope]),
        "test_nearest_cosine": median_nearest(x_test[test_in_scope]),
    }


def risk_coverage_area(confidence: np.ndarray, right: np.ndarray) -> float:
    """The area under the risk-coverage curve: the error rate among the k most confident
    answers, averaged over every k (lower: the confidence ranks the answers better; it weighs
    the confident end, where a rule's threshold sits, as much as the rest)."""
    if len(right) == 0:
        return 1.0
    wrong = ~right[np.argsort(-confidence, kind="stable")]
    return float(np.mean(np.cumsum(wrong) / np.arange(1, len(wrong) + 1)))


def ranked_choice(risk_area: dict[str, float]) -> str:
    """int8 unless its confidence ranks its held-out answers worse (``risk_coverage_area``)."""
    return "int8" if risk_area["int8"] <= risk_area["fp32"] else "fp32"


def trainers_choice(held_out: dict[str, float]) -> str:
    """The graph ``protege.student.train.Precision.of`` serves with ``int8: auto``: int8 when its
    held-out accuracy is within the gates' default tolerance of fp32's."""
    return "int8" if held_out["int8"] >= held_out["fp32"] - Gates().tolerance else "fp32"


def lever_row(
    rep: int,
    model: str,
    lever: str,
    opts: dict[str, Any],
    args: argparse.Namespace,
    view: Any,
    x_train: np.ndarray,
    x_test: np.ndarray,
    gold_i: np.ndarray,
    cal_i: np.ndarray,
    fit_i: np.ndarray,
    truth_train: np.ndarray,
    t_train: np.ndarray,
    truth_test: np.ndarray,
    t_test: np.ndarray,
) -> dict[str, Any]:
    """One lever's rule, certified on the golden rows as ``view`` scores them, met on the test file."""
    g_conf, g_ood, g_pred, g_oos = view(x_train[gold_i])
    x_conf, x_ood, x_pred, x_oos = view(x_test)
    gated = g_oos if opts.get("oos_gate", True) else None
    evidence = golden_evidence(g_conf, g_ood, g_pred, gated, truth_train[gold_i], t_train[gold_i])
    if opts.get("pool_teacher_oos"):
        said = cal_i[t_train[cal_i] == OOS]
        c_conf, c_ood, c_pred, c_oos = view(x_train[said])
        evidence = replace(evidence, teacher_oos=OutOfScope(c_conf, c_ood, c_pred == OOS, c_oos))
    goal = replace(
        GOAL, max_false_accepts=opts.get("max_false_accepts"), confidence=opts.get("confidence", GOAL.confidence)
    )
    rule = choose_rule(
        goal,
        evidence,
        ood_quantile=opts.get("ood_quantile", 0.95),
        losses=opts.get("losses", 0),
        paired=paired_lower_bound if opts.get("union") else None,
    )
    row = {"rep": rep, "noise_model": model, "lever": lever, "fit_cases": len(fit_i)}
    golden, scored = (g_conf, g_ood, g_pred, truth_train[gold_i]), (x_conf, x_ood, x_pred, x_oos)
    audits = (t_train[gold_i], g_oos)
    return row | met(
        rule, goal, golden, scored, truth_test, t_test, args.frontier and lever == "shipped", audits, seed=rep
    )


def met(
    rule: AcceptRule | None,
    goal: Goal,
    golden: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    scored: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None],
    truth_test: np.ndarray,
    t_test: np.ndarray,
    with_frontier: bool = False,
    audits: tuple[np.ndarray, np.ndarray | None] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """A certified rule met on the test file: what it certified, covered and let through, the
    student's and the all-teacher accuracy. ``golden``: the golden rows' confidence, OOD score,
    answer and truth; ``scored``: the test rows' confidence, OOD score, answer and P(oos);
    ``audits``: the golden rows' teacher answers and P(oos), for the audit check (``audit_check``)."""
    _, g_ood, g_pred, g_truth = golden
    x_conf, x_ood, x_pred, x_oos = scored
    s_right, t_right = x_pred == truth_test, t_test == truth_test
    # the student's accuracy on the golden rows beside the test file's: a golden set that is not a
    # sample of the traffic shows here first
    row: dict[str, Any] = {
        "certified_coverage": 0.0 if rule is None else rule.coverage,
        "golden_student_accuracy": float((g_pred == g_truth).mean()),
    }
    row |= judge(rule, goal, x_conf, x_ood, s_right, t_right, x_oos, x_pred == OOS)
    if rule is not None and audits is not None:
        row |= audit_check(rule, golden, audits, scored, t_test, seed)
    row["all_teacher_accuracy"] = float(t_right.mean())
    row["student_accuracy"] = float(s_right.mean())
    row |= scope(rule, x_conf, x_ood, x_pred, truth_test, x_oos)
    if rule is not None:
        row["rule"] = rule.model_dump(exclude_none=True)
        # the OOD gate passes 95% of the golden rows by construction (protege.certify.OOD_QUANTILE):
        # on traffic like them it stops about 5%; more says the traffic sits farther from the fit rows
        row["test_past_ood_gate"] = float((x_ood > rule.max_ood).mean())
    # without labels: how often a test row's OOD score is above a golden row's (0.5: alike)
    from scipy.stats import mannwhitneyu

    test_u = mannwhitneyu(x_ood, g_ood, alternative="greater")
    row["ood_test_above_golden"] = float(test_u.statistic / (len(x_ood) * len(g_ood)))
    row["ood_test_above_golden_p"] = float(test_u.pvalue)
    if with_frontier and goal.max_false_accepts is None and rule is not None and (truth_test == OOS).any():
        row["frontier"] = frontier(rule.max_ood, golden, (x_conf, x_ood, x_pred, truth_test))
    return row


AUDIT_COUNTS = (400, 1000)


def audit_check(
    rule: AcceptRule,
    golden: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    audits: tuple[np.ndarray, np.ndarray | None],
    scored: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None],
    t_test: np.ndarray,
    seed: int,
) -> dict[str, Any]:
    """What the audits of a served rule would find against what its golden rows predicted
    (``protege.audits.against_golden``): the student's agreement with the teacher on the golden
    rows the rule accepts, on the test rows it accepts (all of them: what endless audits find),
    and the check's verdict on ``AUDIT_COUNTS`` audits drawn from those test rows."""
    from protege.audits import against_golden

    g_conf, g_ood, g_pred, _ = golden
    g_teacher, g_oos = audits
    x_conf, x_ood, x_pred, x_oos = scored
    g_acc = accepted_by(rule, g_conf, g_ood, g_oos, g_pred == OOS)
    x_acc = np.flatnonzero(accepted_by(rule, x_conf, x_ood, x_oos, x_pred == OOS))
    if not g_acc.any() or not len(x_acc):
        return {}
    metrics = {
        "truth_agreement_on_accepted": float((g_pred[g_acc] == g_teacher[g_acc]).mean()),
        "truth_accepted_cases": float(g_acc.sum()),
    }
    agrees = x_pred[x_acc] == t_test[x_acc]
    out: dict[str, Any] = {
        "audit_predicted_agreement": metrics["truth_agreement_on_accepted"],
        "audit_golden_rows": int(g_acc.sum()),
        "audit_test_agreement": float(agrees.mean()),
    }
    rng = np.random.default_rng(seed)
    for n in AUDIT_COUNTS:
        if n > len(x_acc):
            continue
        drawn = agrees[rng.choice(len(x_acc), n, replace=False)]
        check = against_golden({"audits": n, "agreed": int(drawn.sum())}, metrics)
        out[f"audit_flag_{n}"] = None if check is None else bool(check["easier"])
    return out


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
    PyTorch (the ONNX export matches it to 1e-3 in logits: tests/unit/test_student.py); with
    ``--int8`` also through the exported encoder's fp32 and int8 graphs, and the graph the
    trainer's held-out accuracy test would choose. With
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
    texts = [train[i]["text"] for i in (*fit_i, *cal_i, *gold_i)] + [r["text"] for r in test]
    # the fine-tuned student's outputs on every row it is judged on, kept per split and setting:
    # other rules on the same student (caps, gates, bounds) then cost no second fine-tune
    setting = (args.data.name, rep, model, args.golden, args.golden_from, args.cases, args.unknown_intents)
    key = repr((*setting, args.noise, cfg, len(texts))).encode()
    cached = args.cache / f"lpft-{hashlib.sha256(key).hexdigest()[:16]}.npz"
    clf: Classifier | None = None  # fine-tuned here, not read back
    if cached.exists() and not args.int8:
        with np.load(cached) as z:
            all_logits, all_emb, trained_s = z["logits"], z["embedding"], float(z["train_seconds"])
    else:
        clf = Classifier(source_dir(), w, b, cfg.max_length)
        weights = np.ones(len(names))
        if OOS in index:  # as the trainer's LP-FT recipe weighs it
            weights[index[OOS]] = cfg.oos_weight
        fit_y = np.asarray([index[v] for v in t_train[fit_i]])
        finetune(clf, [train[i]["text"] for i in fit_i], fit_y, cfg, class_weight=weights)
        trained_s = time.perf_counter() - started
        all_logits, all_emb = clf.predict(texts)
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cached, logits=all_logits, embedding=all_emb, train_seconds=trained_s)
    row_of = {t: i for i, t in enumerate(texts)}  # a text's outputs are the same wherever it appears

    def predicted(some: list[str]) -> tuple[np.ndarray, np.ndarray]:
        at = np.asarray([row_of[t] for t in some], dtype=np.int64)
        return all_logits[at], all_emb[at]

    names_a, k = np.asarray(names), knn_k(t_train[fit_i].tolist())
    bank_y = np.asarray([index[v] for v in t_train[fit_i]])
    cal_y = np.asarray([index.get(v, -1) for v in t_train[cal_i]])
    known = cal_y >= 0
    oos_i = index.get(OOS)

    def rules_of(lever: str, scores: Any, half: bool = False) -> list[dict[str, Any]]:
        """The rows of one way of scoring the fine-tuned student (``scores(texts)``: logits and
        embeddings): calibration, OOD bank and rules on its outputs."""
        _, bank = scores([train[i]["text"] for i in fit_i])
        cal_logits, _ = scores([train[i]["text"] for i in cal_i])
        temperature = fit_temperature(cal_logits[known], cal_y[known])
        held_out_plain = float((names_a[cal_logits.argmax(1)] == t_train[cal_i]).mean())
        neighbours = Bank(bank, bank_y, len(names), k, Vote(k=VOTE_K, weight=StudentConfig().vote))

        def view(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
            return view_of(*scores(texts))

        def view_of(
            logits: np.ndarray, emb: np.ndarray
        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
            p, ood = neighbours.view(emb, logits, temperature)
            return p.max(1), ood, names_a[p.argmax(1)], None if oos_i is None else p[:, oos_i]

        c_conf, _, c_pred, _ = view([train[i]["text"] for i in cal_i])
        risk_area = risk_coverage_area(c_conf, c_pred == t_train[cal_i])

        g_conf, g_ood, g_pred, g_oos = view([train[i]["text"] for i in gold_i])
        x_out = scores([r["text"] for r in test])  # scored once: the rules' view and the oracle's second signal
        x_conf, x_ood, x_pred, x_oos = view_of(*x_out)
        golden = golden_evidence(g_conf, g_ood, g_pred, g_oos, truth_train[gold_i], t_train[gold_i])
        oracle_gates: dict[str, list[np.ndarray]] = {}
        if x_oos is not None and oos_i is not None:  # the oracle's second ceilings, on the fine-tuned embeddings
            x_emb, in_scope_bank = x_out[1], bank[bank_y != oos_i]
            nearest = 1.0 - (x_emb @ in_scope_bank.T).max(1)  # cosine distance to the nearest in-scope fit case
            oracle_gates = {"p_oos_and_ood": [x_oos, x_ood], "p_oos_and_nearest": [x_oos, nearest]}
        # name: (goal, the OOD gate's quantile, evidence, the paired bound: None for the exact test)
        goals: dict[str, tuple[Goal, float, Evidence, PairedBound | None]] = {lever: (GOAL, 0.95, golden, None)}
        if half:  # the same rule at half the error budget (beside another graph's, Bonferroni)
            goals[lever + HALF] = (replace(GOAL, confidence=1 - (1 - GOAL.confidence) / 2), 0.95, golden, None)
        if (truth_train[gold_i] == OOS).any():  # the same student under the cap, with the ceiling on oos
            for cap in map(float, args.lpft_caps.split(",")):
                capped = replace(GOAL, max_false_accepts=cap)
                goals[f"{lever} + false-accept cap {cap * 100:g}%"] = (capped, 0.95, golden, None)
                for q in map(float, filter(None, args.lpft_capped_ood.split(","))):  # the OOD gate's share of it
                    goals[f"{lever} + false-accept cap {cap * 100:g}% + ood {q:g}"] = (capped, q, golden, None)
            capped = replace(GOAL, max_false_accepts=0.03)
            said = cal_i[t_train[cal_i] == OOS]  # held-out cases the teacher answered oos
            c_conf, c_ood, c_pred, c_oos = view([train[i]["text"] for i in said])
            pooled = replace(golden, teacher_oos=OutOfScope(c_conf, c_ood, c_pred == OOS, c_oos))
            goals[f"{lever} + false-accept cap 3% pooled with teacher oos"] = (capped, 0.95, pooled, None)
        if args.lpft_oos_past:  # an answer oos judged on confidence alone, not held back by the OOD gate
            goals |= {
                f"{name} + oos past the OOD gate": (replace(goal, oos_past_ood_gate=True), quantile, evidence, None)
                for name, (goal, quantile, evidence, _) in goals.items()
                if evidence.teacher_oos is None  # not the pooled estimate's
            }
        if args.lpft_union:  # each rule also as stop 45 certified it: the union bound (not the half-budget ones)
            goals |= {
                f"{name} with the union bound": (goal, quantile, evidence, paired_lower_bound)
                for name, (goal, quantile, evidence, _) in goals.items()
                if goal.confidence == GOAL.confidence
            }
        rows = []
        for name, (goal, ood_quantile, evidence, paired) in goals.items():
            rule = choose_rule(goal, evidence, ood_quantile=ood_quantile, paired=paired)
            row = {"rep": rep, "noise_model": model, "lever": name, "held_out_plain": held_out_plain}
            row["held_out_risk_plain"] = risk_area
            row |= {"fit_cases": len(fit_i), "train_seconds": round(trained_s, 1)}
            gold = (g_conf, g_ood, g_pred, truth_train[gold_i])
            row |= met(rule, goal, gold, (x_conf, x_ood, x_pred, x_oos), truth_test, t_test, args.frontier)
            if goal.max_false_accepts is not None and x_oos is not None:
                oracle = best(x_conf, [x_oos], x_pred, truth_test, goal.max_false_accepts)
                row["oracle_in_scope_deferred"] = None if oracle is None else oracle["in_scope_deferred"]
                for signals, gates in oracle_gates.items():  # two ceilings: does another signal add to P(oos)?
                    both = best(x_conf, gates, x_pred, truth_test, goal.max_false_accepts, fine=True)
                    row[f"oracle_in_scope_deferred_{signals}"] = None if both is None else both["in_scope_deferred"]
            rows.append(row)
        return rows

    lever = f"shipped + LP-FT ({args.lpft_epochs} epochs{'' if oos_weight == 1 else f', oos x{oos_weight:g}'})"
    rows = rules_of(lever, predicted)
    if args.int8:  # the encoder itself is not kept: --int8 always fine-tunes
        assert clf is not None
        import tempfile

        from protege.student.export import export_encoder, quantized
        from protege.student.runtime import Encoder, sub_batch_for

        w_ft, b_ft = clf.head_arrays()
        with tempfile.TemporaryDirectory(prefix="lpft-") as work:
            encoder = export_encoder(clf.save_encoder(Path(work) / "hf"), Path(work) / "encoder")
            graphs = {"fp32": encoder / "model.onnx", "int8": quantized(encoder)}
            by_graph = {}
            for name, graph in graphs.items():
                run = Encoder(graph, encoder / "tokenizer.json", providers="cpu", sub_batch=sub_batch_for(name, 0))

                def onnx(texts: list[str], run: Encoder = run) -> tuple[np.ndarray, np.ndarray]:
                    emb = run.embed(texts)
                    return emb @ w_ft + b_ft, emb

                by_graph[name] = rules_of(f"{lever}, {name} graph", onnx, half=True)
        held_out = {name: graph_rows[0]["held_out_plain"] for name, graph_rows in by_graph.items()}
        ranking = {name: graph_rows[0]["held_out_risk_plain"] for name, graph_rows in by_graph.items()}
        ranked = ranked_choice(ranking)
        rows += [  # int8 unless its confidence ranks its held-out answers worse (the golden rows untouched)
            r
            | {
                "lever": r["lever"].replace(f"{lever}, {ranked} graph", f"{lever}, precision by held-out ranking"),
                "precision": ranked,
                "held_out_risk_area": ranking,
            }
            for r in by_graph[ranked]
            if not r["lever"].endswith(HALF)
        ]
        chosen = trainers_choice(held_out)
        for graph_rows in by_graph.values():
            rows += [r | {"held_out_accuracy": held_out} for r in graph_rows]
        halves = [r for graph_rows in by_graph.values() for r in graph_rows if r["lever"].endswith(HALF)]
        kept = max(halves, key=lambda r: r["certified_coverage"])
        rows.append(
            kept
            | {
                "lever": f"{lever}, precision by certified coverage{HALF}",
                "precision": "int8" if ", int8 graph" in kept["lever"] else "fp32",
                "held_out_accuracy": held_out,
            }
        )
        base = f"{lever}, {chosen} graph"
        rows += [  # the trainer's choice, goal by goal (the same choice for each)
            r
            | {
                "lever": r["lever"].replace(base, f"{lever}, precision by held-out accuracy (shipped)"),
                "precision": chosen,
                "held_out_accuracy": held_out,
            }
            for r in by_graph[chosen]
            if not r["lever"].endswith(HALF)
        ]
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
    """Out-of-scope rows ``accepted`` with an in-scope answer, out-of-scope rows the student
    answered ``oos`` itself (no teacher call), and in-scope rows not accepted."""
    oos = truth == OOS
    return {
        "oos_false_accepts": float((accepted & oos & (pred != OOS)).sum() / max(1, oos.sum())),
        "oos_by_student": float((accepted & oos & (pred == OOS)).sum() / max(1, oos.sum())),
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
    ap.add_argument(
        "--golden-from",
        choices=("train", "test"),
        default="train",
        help="Where the golden rows are drawn: the train file (default), or the test file, the rest of it then the "
        "test (a golden set that is a sample of the traffic the rule meets, whatever the data set's split did).",
    )
    ap.add_argument(
        "--cases",
        type=int,
        default=0,
        help="Teacher-labelled rows to train on (0: all the train file's but the golden).",
    )
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument(
        "--first-rep",
        type=int,
        default=0,
        help="The first repetition's number (each is seeded by it): more of them later.",
    )
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
    ap.add_argument(
        "--lpft-caps",
        default="0.03",
        help="The LP-FT student's rule under each of these false-accept caps (comma-separated shares).",
    )
    ap.add_argument(
        "--lpft-oos-past",
        action="store_true",
        help="Also each LP-FT rule with an answer oos judged on confidence alone (AcceptRule.oos_past_ood_gate).",
    )
    ap.add_argument(
        "--lpft-union",
        action="store_true",
        help="Also each LP-FT rule certified with the union bound (the relative target's test before stop 45).",
    )
    ap.add_argument("--levers", default=",".join(LEVERS), help="Which of the fast levers to run (comma-separated).")
    ap.add_argument(
        "--votes",
        default="",
        help="Also the shipped recipe with other kNN votes: weight:k pairs, comma-separated (e.g. 0.3:5,0.5:10).",
    )
    ap.add_argument(
        "--int8",
        action="store_true",
        help="Also each lever with the int8 graph serving (the precision choice: what it costs in certified coverage).",
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
    int8 = (embeddings(train, args.cache, int8=True), embeddings(test, args.cache, int8=True)) if args.int8 else None
    table = confusion_table(train, x_train)
    rows: list[dict[str, Any]] = []
    for model in args.noise_models.split(","):
        for rep in range(args.first_rep, args.first_rep + args.reps):
            if args.golden_from == "test":
                tr, x_tr, te, x_te, i8 = golden_from_test(rep, args.golden, train, test, x_train, x_test, int8)
                rows += one_rep(rep, model, args, tr, x_tr, te, x_te, table, i8, golden_tail=args.golden)
            else:
                rows += one_rep(rep, model, args, train, x_train, test, x_test, table, int8)
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


def golden_from_test(
    rep: int,
    golden: int,
    train: list[dict[str, Any]],
    test: list[dict[str, Any]],
    x_train: np.ndarray,
    x_test: np.ndarray,
    int8: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[list[dict[str, Any]], np.ndarray, list[dict[str, Any]], np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """``golden`` rows drawn from the test file (seeded by ``rep``) put after the train rows, the
    rest of the test file as the test: (train, x_train, test, x_test), each graph's alike."""
    drawn = np.random.default_rng(3000 + rep).permutation(len(test))
    gold, rest = drawn[:golden], drawn[golden:]

    def moved(xs: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return np.vstack([xs[0], xs[1][gold]]), xs[1][rest]

    x_tr, x_te = moved((x_train, x_test))
    return (
        train + [test[i] for i in gold],
        x_tr,
        [test[i] for i in rest],
        x_te,
        None if int8 is None else moved(int8),
    )


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["noise_model"], r["lever"]), []).append(r)
    keys = [
        "certified_coverage",
        "coverage",
        "accepted_accuracy",
        "teacher_on_accepted",
        "cascade_accuracy",
        "all_teacher_accuracy",
    ]
    keys += ["student_accuracy", "golden_student_accuracy", "oos_false_accepts", "in_scope_deferred"]
    keys += ["oracle_in_scope_deferred", "golden_nearest_cosine", "test_nearest_cosine", "test_past_ood_gate"]
    keys += ["oracle_in_scope_deferred_p_oos_and_ood", "oracle_in_scope_deferred_p_oos_and_nearest"]
    keys += ["ood_test_above_golden", "audit_predicted_agreement", "audit_test_agreement"]
    out = []
    for (model, lever), rs in groups.items():
        s: dict[str, Any] = {"noise_model": model, "lever": lever, "reps": len(rs), "held": sum(r["held"] for r in rs)}
        for key in keys:
            vals = [r[key] for r in rs if r.get(key) is not None]
            s[key] = float(np.mean(vals)) if vals else None
        for n in AUDIT_COUNTS:  # how often the audit check flags the golden rows as easier than the traffic
            flags = [r[f"audit_flag_{n}"] for r in rs if r.get(f"audit_flag_{n}") is not None]
            s[f"audit_flagged_{n}"] = f"{sum(flags)}/{len(flags)}" if flags else None
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
        title=f"coverage levers ({args.data.name} test; relative target 1 pt @ 95% on {args.golden} golden rows from "
        f"{args.golden_from}; noise "
        f"{args.noise:g}; {args.unknown_intents} unknown intents; {args.reps} reps; {m['cpu']}, {m['cores']} cores)"
    )
    cols = [
        "noise",
        "lever",
        "certified",
        "coverage",
        "accepted acc",
        "teacher on accepted",
        "cascade acc",
        "all-teacher acc",
    ]
    cols += ["student acc", "on golden", "oos false accepts", "in-scope deferred", "oracle deferred"]
    cols += ["oracle + ood", "oracle + nearest", "held", "rules"]
    for col in cols:
        table.add_column(col)

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    for s in summary:
        table.add_row(
            s["noise_model"],
            s["lever"],
            *(
                pct(s[k])
                for k in (
                    "certified_coverage",
                    "coverage",
                    "accepted_accuracy",
                    "teacher_on_accepted",
                    "cascade_accuracy",
                )
            ),
            *(
                pct(s[k])
                for k in (
                    "all_teacher_accuracy",
                    "student_accuracy",
                    "golden_student_accuracy",
                    "oos_false_accepts",
                    "in_scope_deferred",
                )
            ),
            *(pct(s[f"oracle_in_scope_deferred{k}"]) for k in ("", "_p_oos_and_ood", "_p_oos_and_nearest")),
            f"{s['held']}/{s['reps']}",
            " ".join(s["rules"]),
        )
    Console(width=200).print(table)
    audits = Table(
        title="the audit check (protege.audits.against_golden): the golden rows' prediction against the traffic"
    )
    for col in (
        "noise",
        "lever",
        "predicted agreement",
        "test agreement",
        *(f"flagged at {n} audits" for n in AUDIT_COUNTS),
    ):
        audits.add_column(col)
    for s in summary:
        audits.add_row(
            s["noise_model"],
            s["lever"],
            pct(s["audit_predicted_agreement"]),
            pct(s["audit_test_agreement"]),
            *(s[f"audit_flagged_{n}"] or "-" for n in AUDIT_COUNTS),
        )
    Console(width=200).print(audits)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
