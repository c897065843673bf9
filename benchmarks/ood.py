"""Which out-of-distribution score should the verifier trust? Measured, not assumed.

    python benchmarks/ood.py --json reports/benchmark-ood.json

BANKING77 has no out-of-scope queries, so some intents are held out of training and
their test queries play the unknown. The student is the fast path (frozen
all-MiniLM-L6-v2 embeddings from the exported ONNX backbone + logistic regression); each
score is computed on the same test embeddings in one run, and we report AUROC (unknown
vs known) and the share of known queries flagged when 95% of unknown ones are caught
(FPR@95TPR, lower is better). Needs the ``train`` extra and ../shared/data/banking77.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from intents import DATA, load

from protege.student.backbone import cached_backbone
from protege.student.runtime import Encoder, softmax
from protege.student.train import fit_head


def auroc(unknown: np.ndarray, known: np.ndarray) -> float:
    """P(score of an unknown > score of a known), ties counted half (Mann-Whitney U)."""
    scores = np.concatenate([unknown, known])
    ranks = scores.argsort().argsort().astype(float) + 1
    # average ranks for ties
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    sums = np.zeros(len(counts))
    np.add.at(sums, inverse, ranks)
    ranks = (sums / counts)[inverse]
    u = ranks[: len(unknown)].sum() - len(unknown) * (len(unknown) + 1) / 2
    return float(u / (len(unknown) * len(known)))


def fpr_at_95_tpr(unknown: np.ndarray, known: np.ndarray) -> float:
    threshold = np.quantile(unknown, 0.05)  # 95% of unknowns score at or above it
    return float(np.mean(known >= threshold))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--held-out", type=int, default=10, help="Intents held out of training.")
    ap.add_argument("--seeds", type=int, default=3, help="Different held-out sets, averaged.")
    ap.add_argument("--knn", type=int, default=10)
    ap.add_argument("--json", type=Path, default=Path("reports/benchmark-ood.json"))
    args = ap.parse_args()
    loaded = load(args.data)
    if loaded is None:
        return
    train, test = loaded
    backbone = cached_backbone()
    encoder = Encoder(backbone / "model.onnx", backbone / "tokenizer.json")
    started = time.perf_counter()
    x_train = encoder.embed([r["text"] for r in train])
    x_test = encoder.embed([r["text"] for r in test])
    embed_s = time.perf_counter() - started
    y_train = np.asarray([r["label"] for r in train])
    y_test = np.asarray([r["label"] for r in test])
    intents = sorted(set(y_train.tolist()))
    results: dict[str, list[dict[str, float]]] = {}
    accuracy = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        held = set(rng.choice(intents, size=args.held_out, replace=False).tolist())
        known_tr = ~np.isin(y_train, list(held))
        unknown_te = np.isin(y_test, list(held))
        w, b, labels = fit_head(x_train[known_tr], y_train[known_tr])
        logits = x_test @ w + b
        probs = softmax(logits)
        accuracy.append(float(np.mean(np.asarray(labels)[probs.argmax(1)][~unknown_te] == y_test[~unknown_te])))
        xk, yk = x_train[known_tr], y_train[known_tr]
        centroids = np.stack([xk[yk == label].mean(0) for label in labels])
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        cov = np.cov((xk - centroids[np.searchsorted(labels, yk)]).T) + 1e-3 * np.eye(xk.shape[1])
        precision = np.linalg.inv(cov)
        diff = x_test[:, None, :] - centroids[None, :, :]
        mahal = np.einsum("nkd,de,nke->nk", diff, precision, diff).min(1)
        sims = x_test @ xk.T
        knn = 1 - np.sort(sims, axis=1)[:, -args.knn :].mean(1)
        scores = {  # larger = stranger
            "max softmax probability (1 - MSP)": 1 - probs.max(1),
            "energy (-logsumexp logits)": -np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) - logits.max(1),
            "nearest-centroid cosine": 1 - (x_test @ centroids.T).max(1),
            "Mahalanobis (shared covariance)": mahal,
            f"kNN cosine (k={args.knn})": knn,
        }
        for name, s in scores.items():
            results.setdefault(name, []).append(
                {
                    "auroc": auroc(s[unknown_te], s[~unknown_te]),
                    "fpr_at_95_tpr": fpr_at_95_tpr(s[unknown_te], s[~unknown_te]),
                }
            )
    summary: dict[str, Any] = {
        "held_out_intents": args.held_out,
        "seeds": args.seeds,
        "embed_seconds": round(embed_s, 1),
        "known_intent_accuracy": round(float(np.mean(accuracy)), 4),
        "scores": {
            name: {k: round(float(np.mean([r[k] for r in rs])), 4) for k in ("auroc", "fpr_at_95_tpr")}
            for name, rs in results.items()
        },
    }
    print(f"{'score':42s} {'AUROC':>7s} {'FPR@95TPR':>10s}")
    for name, m in sorted(summary["scores"].items(), key=lambda kv: -kv[1]["auroc"]):
        print(f"{name:42s} {m['auroc']:7.3f} {m['fpr_at_95_tpr']:10.3f}")
    print(
        f"known-intent accuracy {summary['known_intent_accuracy']:.3f}; {args.held_out} intents held out, "
        f"{args.seeds} seeds; embedding {embed_s:.0f}s"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
