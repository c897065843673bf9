"""Which student recipe, measured on BANKING77: frozen embeddings + logistic regression
(the fast path) against LP-FT (the head first, then the whole encoder fine-tuned).

    python benchmarks/recipe.py --json reports/benchmark-recipe.json

Labels come from the teacher: here the offline stand-in teacher (answers from
BANKING77's labels, with ``--teacher-noise`` of its answers replaced by a wrong label,
seeded), so the student never sees ground truth. Train is split by a stable hash into
fit (80%), val (10%: hyper-parameters, chosen by accuracy against the teacher's labels)
and calib (10%: temperature, acceptance rules); test is only reported, as agreement with
the teacher and as accuracy against ground truth. The fine-tuned model is exported with
Optimum and measured through ONNX Runtime fp32 and int8, beside PyTorch, on the same test
texts. Needs the ``train`` extra and ../shared/data/banking77.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from intents import DATA, load

from protege.certify import Evidence, Goal, choose_rule
from protege.student.backbone import cached_backbone, source_dir
from protege.student.export import append_head, export_encoder, quantize_int8
from protege.student.finetune import Classifier, FinetuneConfig, finetune
from protege.student.runtime import Encoder, knn_ood, softmax
from protege.student.train import KNN_K, Case, ece, fit_head, fit_temperature, macro_f1, split_cases
from protege.task import Task
from protege.teacher import StandinTeacher

TARGETS = (0.95, 0.97, 0.99)


def teacher_labels(rows: list[dict[str, Any]], labels: list[str], noise: float) -> list[str]:
    task = Task(name="banking77", labels={v: v for v in labels}, instructions="Classify the banking query.")
    teacher = StandinTeacher({r["text"]: r["label"] for r in rows}, noise=noise, seed=7)

    async def ask() -> list[str]:
        return [(await teacher.label(task, r["text"], str(r["id"]))).label for r in rows]

    return asyncio.run(ask())


def quality(logits: np.ndarray, names: list[str], teacher: list[str], truth: list[str]) -> dict[str, float]:
    pred = np.asarray(names)[logits.argmax(1)]
    index = {v: i for i, v in enumerate(names)}
    t_idx = np.asarray([index.get(v, -1) for v in teacher])
    return {
        "teacher_agreement": float(np.mean(pred == np.asarray(teacher))),
        "accuracy": float(np.mean(pred == np.asarray(truth))),
        "macro_f1": macro_f1(logits.argmax(1), t_idx),
    }


def calibrated(
    cal_logits: np.ndarray,
    cal_y: np.ndarray,
    cal_emb: np.ndarray,
    test_logits: np.ndarray,
    test_emb: np.ndarray,
    test_y: np.ndarray,
    truth_y: np.ndarray,
    bank: np.ndarray,
) -> dict[str, Any]:
    """Temperature and acceptance rules fitted on calib, judged on test."""
    known = cal_y >= 0
    t = fit_temperature(cal_logits[known], cal_y[known])
    cal_p, test_p = softmax(cal_logits / t), softmax(test_logits / t)
    cal_ood, test_ood = knn_ood(cal_emb, bank, KNN_K), knn_ood(test_emb, bank, KNN_K)
    rules: dict[str, Any] = {}
    for target in TARGETS:
        evidence = Evidence("agreement", cal_p.max(1), cal_ood, cal_p.argmax(1) == cal_y)
        rule = choose_rule(Goal(accuracy=target, confidence=0.95), evidence)
        if rule is None:
            rules[str(target)] = None
            continue
        acc = (test_p.max(1) >= rule.min_confidence) & (test_ood <= rule.max_ood)
        rules[str(target)] = {
            "min_confidence": rule.min_confidence,
            "max_ood": rule.max_ood,
            "calib_coverage": rule.coverage,
            "test_coverage": float(acc.mean()),
            "test_accepted_teacher_agreement": float((test_p.argmax(1) == test_y)[acc].mean()) if acc.any() else None,
            "test_accepted_accuracy": float((test_p.argmax(1) == truth_y)[acc].mean()) if acc.any() else None,
        }
    return {
        "temperature": t,
        "test_ece_before": ece(softmax(test_logits), test_y),
        "test_ece_after": ece(test_p, test_y),
        "rules": rules,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--teacher-noise", type=float, default=0.0)
    ap.add_argument("--cs", default="1,3,10,30,100", help="Logistic-regression C values tried on val.")
    ap.add_argument("--lrs", default="3e-5,1e-4", help="Encoder learning rates tried on val.")
    ap.add_argument("--epochs", type=int, default=4, help="Epochs per fine-tune; the best epoch on val is kept.")
    ap.add_argument("--limit", type=int, default=0, help="Use only this many train rows (smoke runs).")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", type=Path, default=Path("reports/benchmark-recipe.json"))
    args = ap.parse_args()
    loaded = load(args.data)
    if loaded is None:
        return
    train, test = loaded
    if args.limit:
        train = [train[i] for i in np.random.default_rng(0).permutation(len(train))[: args.limit]]
    names = sorted({r["label"] for r in train + test})
    t_train = teacher_labels(train, names, args.teacher_noise)
    t_test = teacher_labels(test, names, args.teacher_noise)
    if "oos" in t_train or "oos" in t_test:
        raise SystemExit("the stand-in teacher answered oos for a BANKING77 text: its lookup is broken")
    cases = [Case(str(r["id"]), r["text"], lab) for r, lab in zip(train, t_train, strict=True)]
    fit, calib, val = split_cases(cases, calib=0.1, golden=0.1)
    print(
        f"fit {len(fit)}, val {len(val)}, calib {len(calib)}, test {len(test)}; teacher = offline stand-in "
        f"(BANKING77 labels, {args.teacher_noise:.0%} noise)",
        flush=True,
    )
    report: dict[str, Any] = {
        "teacher": f"offline stand-in (BANKING77 labels, noise {args.teacher_noise})",
        "split": {"fit": len(fit), "val": len(val), "calib": len(calib), "test": len(test)},
        "teacher_test_accuracy": float(np.mean(np.asarray(t_test) == [r["label"] for r in test])),
    }
    test_texts, truth = [r["text"] for r in test], [r["label"] for r in test]

    # ---- fast path: frozen backbone (ONNX Runtime) + logistic regression
    backbone = cached_backbone()
    frozen = Encoder(backbone / "model.onnx", backbone / "tokenizer.json", max_length=64, threads=args.threads)
    started = time.perf_counter()
    x = {name: frozen.embed([c.text for c in part]) for name, part in (("fit", fit), ("val", val), ("calib", calib))}
    x["test"] = frozen.embed(test_texts)
    embed_s = time.perf_counter() - started
    y_fit = np.asarray([c.label for c in fit])
    sweep = {}
    for c in (float(v) for v in args.cs.split(",")):
        started = time.perf_counter()
        w, b, labels = fit_head(x["fit"], y_fit, c=c)
        sweep[c] = {
            "val_teacher_agreement": quality(x["val"] @ w + b, labels, [v.label for v in val], [v.label for v in val])[
                "teacher_agreement"
            ],
            "fit_seconds": time.perf_counter() - started,
        }
        print(f"fast C={c:g}: val agreement {sweep[c]['val_teacher_agreement']:.4f}", flush=True)
    best_c = max(sweep, key=lambda c: sweep[c]["val_teacher_agreement"])
    w, b, labels = fit_head(x["fit"], y_fit, c=best_c)
    index = {v: i for i, v in enumerate(labels)}
    y_cal = np.asarray([index.get(c.label, -1) for c in calib])
    y_test_t = np.asarray([index.get(v, -1) for v in t_test])
    y_test = np.asarray([index.get(v, -1) for v in truth])
    fast_logits = x["test"] @ w + b
    report["fast"] = {
        "C_sweep": {str(k): v for k, v in sweep.items()},
        "C": best_c,
        "embed_seconds": embed_s,
        "train_seconds": embed_s * len(fit) / (len(fit) + len(val) + len(calib) + len(test))
        + sweep[best_c]["fit_seconds"],
        "test": quality(fast_logits, labels, t_test, truth),
        "calibration": calibrated(
            x["calib"] @ w + b, y_cal, x["calib"], fast_logits, x["test"], y_test_t, y_test, x["fit"]
        ),
    }
    print(
        f"fast: C={best_c:g} test agreement {report['fast']['test']['teacher_agreement']:.4f} accuracy "
        f"{report['fast']['test']['accuracy']:.4f}",
        flush=True,
    )

    # ---- LP-FT: the fast head, then the whole encoder fine-tuned; epochs and lr chosen on val
    src = source_dir()
    y_fit_idx = np.asarray([index[c.label] for c in fit])
    val_texts, val_y = [c.text for c in val], np.asarray([index.get(c.label, -1) for c in val])
    runs: dict[str, Any] = {}
    best: tuple[float, str, int, Any] = (-1.0, "", 0, None)
    for lr in (float(v) for v in args.lrs.split(",")):
        cfg = FinetuneConfig(epochs=args.epochs, lr=lr, threads=args.threads)
        model = Classifier(src, w, b, cfg.max_length)
        curve: list[dict[str, float]] = []

        def after_epoch(epoch: int, m: Classifier, lr: float = lr, curve: list[dict[str, float]] = curve) -> None:
            nonlocal best
            acc = float(np.mean(m.predict(val_texts)[0].argmax(1) == val_y))
            curve.append({"epoch": epoch, "val_teacher_agreement": acc})
            print(f"lp-ft lr={lr:g} epoch {epoch}: val agreement {acc:.4f}", flush=True)
            if acc > best[0]:
                best = (acc, f"{lr:g}", epoch, copy.deepcopy((m.encoder.state_dict(), m.head.state_dict())))

        log = finetune(model, [c.text for c in fit], y_fit_idx, cfg, after_epoch=after_epoch)
        runs[f"{lr:g}"] = {"val_curve": curve, "seconds": log["seconds"], "epochs": log["epochs"]}
    model = Classifier(src, w, b, 64)
    model.encoder.load_state_dict(best[3][0])
    model.head.load_state_dict(best[3][1])
    torch_started = time.perf_counter()
    torch_logits, _ = model.predict(test_texts)
    torch_s = time.perf_counter() - torch_started
    ft_w, ft_b = model.head_arrays()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        enc = export_encoder(model.save_encoder(Path(tmp) / "hf"), Path(tmp) / "enc")
        append_head(enc / "model.onnx", ft_w, ft_b, Path(tmp) / "fp32.onnx")
        quantize_int8(Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx")
        export_s = time.perf_counter() - started
        outs = {}
        for kind in ("fp32", "int8"):
            e = Encoder(Path(tmp) / f"{kind}.onnx", enc / "tokenizer.json", max_length=64, threads=args.threads)
            outs[kind] = {p: e.run_all([c.text for c in part]) for p, part in (("fit", fit), ("calib", calib))}
            outs[kind]["test"] = e.run_all(test_texts)
    fp32, int8 = outs["fp32"], outs["int8"]
    ft: dict[str, Any] = {
        "runs": runs,
        "chosen": {"lr": best[1], "epoch": best[2], "val_teacher_agreement": best[0]},
        "train_seconds": runs[best[1]]["seconds"],
        "export_seconds": export_s,
        "test_pytorch": quality(torch_logits, labels, t_test, truth),
        "parity_max_abs_logit_diff_ort_fp32_vs_pytorch": float(np.abs(fp32["test"]["logits"] - torch_logits).max()),
        "test_ort_fp32": quality(fp32["test"]["logits"], labels, t_test, truth),
        "test_ort_int8": quality(int8["test"]["logits"], labels, t_test, truth),
        "int8_agreement_with_fp32": float(
            np.mean(int8["test"]["logits"].argmax(1) == fp32["test"]["logits"].argmax(1))
        ),
        "pytorch_test_seconds": torch_s,
    }
    for kind, o in (("calibration_fp32", fp32), ("calibration_int8", int8)):
        ft[kind] = calibrated(
            o["calib"]["logits"],
            y_cal,
            o["calib"]["embedding"],
            o["test"]["logits"],
            o["test"]["embedding"],
            y_test_t,
            y_test,
            o["fit"]["embedding"],
        )
    report["finetune"] = ft

    # ---- the table
    rows = [
        (
            "frozen MiniLM + logreg (fast)",
            report["fast"]["test"],
            report["fast"]["train_seconds"],
            report["fast"]["calibration"],
        ),
        ("LP-FT, PyTorch", ft["test_pytorch"], ft["train_seconds"], None),
        ("LP-FT, ONNX Runtime fp32", ft["test_ort_fp32"], ft["train_seconds"], ft["calibration_fp32"]),
        ("LP-FT, ONNX Runtime int8", ft["test_ort_int8"], ft["train_seconds"], ft["calibration_int8"]),
    ]
    print(
        f"\n{'recipe':32s} {'agree':>7s} {'acc':>7s} {'macroF1':>8s} {'ECE→':>13s} {'cov@.97':>8s} {'acc@.97':>8s}"
        f" {'train s':>8s}"
    )
    for name, q, secs, cal in rows:
        r97 = cal and cal["rules"].get("0.97")
        print(
            f"{name:32s} {q['teacher_agreement']:7.4f} {q['accuracy']:7.4f} {q['macro_f1']:8.4f} "
            + (f"{cal['test_ece_before']:.3f}→{cal['test_ece_after']:.3f}" if cal else "-").rjust(13)
            + (f" {r97['test_coverage']:8.3f} {r97['test_accepted_accuracy']:8.4f}" if r97 else f" {'-':>8s} {'-':>8s}")
            + f" {secs:8.0f}"
        )
    gain = ft["test_ort_fp32"]["accuracy"] - report["fast"]["test"]["accuracy"]
    print(
        f"\nLP-FT (ORT fp32) vs fast path: {gain * 100:+.2f} points of test accuracy; chosen lr {best[1]}, "
        f"epoch {best[2]}; parity max |logit diff| ORT vs PyTorch {ft['parity_max_abs_logit_diff_ort_fp32_vs_pytorch']:.2e}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=float))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
