"""Which signal should hold back an in-scope answer to an out-of-scope request? Measured.

    python benchmarks/oos_signals.py --data benchmarks/.protege/data/clinc150-stationary

A data set with ``oos`` rows in both files (CLINC150 from ``benchmarks/clinc150.py
--stationary``). The student is the shipped fast recipe's scoring (frozen backbone embeddings,
logistic regression on the train file's true labels, temperature on a held-out 1,000 rows,
the kNN vote at the shipped weight), so ``oos`` is a class it learnt. Each signal gates the
student's in-scope answers beside the confidence threshold; for every signal the table gives
the fewest in-scope test rows deferred at which no more than ``--max-false-accepts`` of the
out-of-scope test rows are accepted with an in-scope label, the confidence threshold and the
signal's ceiling (a quantile of the in-scope rows' values) picked **on the test file itself**.
An oracle: it bounds what a rule with the signal could do, it is not a rule (a certified one
chooses on the golden set and pays for it). Signals (larger: more likely out of scope):

- ``none``: the confidence threshold alone.
- ``knn (all)``: the shipped OOD score, 1 - mean cosine to the 10 nearest fit rows (``oos`` rows included).
- ``knn (in scope)``: the same against the in-scope fit rows only; ``knn1 (in scope)``: the nearest one.
- ``mahalanobis``: the distance to the nearest intent's mean (tied covariance, in-scope rows).
- ``p(oos)``: the student's probability of ``oos`` (what ``AcceptRule.max_oos_probability`` gates).
- ``knn1 (in scope) + p(oos)``: both ceilings.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from certify import embeddings
from intents import load

from protege.harness import machine
from protege.student.runtime import blend, knn_ood_of, knn_vote, softmax
from protege.student.train import KNN_K, VOTE_K, fit_head, fit_temperature
from protege.task import OOS, StudentConfig


def signals(
    x_fit: np.ndarray, y_fit: np.ndarray, x_cal: np.ndarray, y_cal: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(confidence, predicted label, its name array, {signal: values}) of the test rows ``x``."""
    w, b, names = fit_head(x_fit, y_fit)
    index = {n: i for i, n in enumerate(names)}
    fit_y = np.asarray([index[v] for v in y_fit])
    temperature = fit_temperature(x_cal @ w + b, np.asarray([index[v] for v in y_cal]))
    sims = x @ x_fit.T
    probs = blend(softmax((x @ w + b) / temperature), knn_vote(sims, fit_y, len(names), VOTE_K), StudentConfig().vote)
    in_scope = fit_y != index[OOS]
    means = np.stack([x_fit[fit_y == c].mean(0) for c in np.unique(fit_y[in_scope])])
    centred = x_fit[in_scope] - means[np.searchsorted(np.unique(fit_y[in_scope]), fit_y[in_scope])]
    precision = np.linalg.inv(centred.T @ centred / len(centred) + 1e-3 * np.eye(x.shape[1]))
    d = x[:, None, :] - means[None]
    out = {
        "knn (all)": knn_ood_of(sims, KNN_K),
        "knn (in scope)": knn_ood_of(sims[:, in_scope], KNN_K),
        "knn1 (in scope)": knn_ood_of(sims[:, in_scope], 1),
        "mahalanobis": np.einsum("nkd,de,nke->nk", d, precision, d).min(1),
        "p(oos)": probs[:, index[OOS]],
    }
    return probs.max(1), probs.argmax(1), np.asarray(names), out


def best(
    conf: np.ndarray,
    gates: list[np.ndarray],
    pred: np.ndarray,
    truth: np.ndarray,
    cap: float,
    *,
    fine: bool = False,
) -> dict[str, Any] | None:
    """The fewest in-scope rows deferred with false accepts <= ``cap``, over confidence
    thresholds and each gate's ceilings (quantiles of its in-scope values). ``fine``: the first
    of two gates on the one-gate grid as well (eight times the work), so that the
    one-gate optimum is among the two-gate ones."""
    oos = truth == OOS
    answered_in_scope = pred != OOS
    found: dict[str, Any] | None = None
    # one gate: a fine grid; two: a coarse one for the first unless ``fine``
    coarse = np.asarray([0.9, 0.95, 0.98, 0.99, 1.0])
    quantiles = [np.arange(0.80, 1.0001, 0.005) if len(gates) == 1 or fine else coarse]
    quantiles = (quantiles + [np.arange(0.85, 1.0001, 0.005)] * (len(gates) - 1))[: len(gates)]
    grids = [[np.quantile(g[~oos], min(q, 1.0)) for q in qs] for g, qs in zip(gates, quantiles, strict=True)]
    for t in np.round(np.arange(0.0, 0.96, 0.05), 2):
        base = conf >= t
        for ceilings in np.array(np.meshgrid(*grids)).reshape(len(gates), -1).T if gates else [[]]:
            held = np.zeros(len(conf), bool)
            for g, c in zip(gates, ceilings, strict=True):
                held |= answered_in_scope & (g > c)
            accepted = base & ~held
            false_accepts = float((accepted & oos & answered_in_scope).sum() / oos.sum())
            deferred = float((~accepted & ~oos).sum() / (~oos).sum())
            if false_accepts <= cap and (found is None or deferred < found["in_scope_deferred"]):
                found = {
                    "in_scope_deferred": deferred,
                    "false_accepts": false_accepts,
                    "min_confidence": float(t),
                    "accepted_accuracy": float((pred[accepted] == truth[accepted]).mean()),
                }
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("benchmarks/.protege/data/clinc150-stationary"))
    ap.add_argument("--cache", type=Path, default=Path("benchmarks/.protege/cache"))
    ap.add_argument("--max-false-accepts", default="0.03,0.05")
    ap.add_argument("--json", type=Path, default=Path("reports/benchmark-oos-signals.json"))
    args = ap.parse_args()
    loaded = load(args.data)
    if loaded is None:
        return
    train, test = loaded
    truth = np.asarray([r["label"] for r in test])
    if not (truth == OOS).any():
        print(f"skipped: {args.data} has no out-of-scope test rows")
        return
    started = time.perf_counter()
    x_train, x_test = embeddings(train, args.cache), embeddings(test, args.cache)
    y_train = np.asarray([r["label"] for r in train])
    order = np.random.default_rng(0).permutation(len(train))
    cal, fit = order[:1000], order[1000:]
    conf, pred_i, names, found = signals(x_train[fit], y_train[fit], x_train[cal], y_train[cal], x_test)
    pred = names[pred_i]
    gated = {name: [values] for name, values in found.items()}
    gated["knn1 (in scope) + p(oos)"] = [found["knn1 (in scope)"], found["p(oos)"]]
    gated["none"] = []
    rows = []
    for cap in (float(c) for c in args.max_false_accepts.split(",")):
        for name, gates in gated.items():
            rows.append({"signal": name, "cap": cap} | (best(conf, gates, pred, truth, cap) or {}))
    in_scope = truth != OOS
    quantiles = {str(q): float(np.quantile(found["p(oos)"][in_scope], q)) for q in (0.5, 0.9, 0.95, 0.99)}
    print("P(oos) of the in-scope test rows: " + ", ".join(f"{q} quantile {v:.4f}" for q, v in quantiles.items()))
    m = machine()
    print(
        f"in-scope test rows deferred at the cap, oracle on {args.data.name}'s test file ({(truth == OOS).sum()} out of "
        f"scope of {len(truth)}); {m['cpu']}, {m['cores']} cores, {time.perf_counter() - started:.0f} s"
    )
    print(f"{'signal':<28}{'cap':>6}{'deferred':>10}{'false acc':>11}{'min conf':>10}{'accepted acc':>14}")
    for r in rows:
        if "in_scope_deferred" not in r:
            print(f"{r['signal']:<28}{r['cap']:>6.0%}{'-':>10}")
            continue
        print(
            f"{r['signal']:<28}{r['cap']:>6.0%}{r['in_scope_deferred']:>10.1%}{r['false_accepts']:>11.1%}"
            f"{r['min_confidence']:>10.2f}{r['accepted_accuracy']:>14.1%}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.json.write_text(
        json.dumps({"machine": m, "config": config, "in_scope_p_oos_quantiles": quantiles, "rows": rows}, indent=1)
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
