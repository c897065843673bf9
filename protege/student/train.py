"""Training a student version: a recipe, calibration, an OOD bank, an acceptance rule,
release gates, and one immutable registry folder.

Two recipes share everything after the fit:

- ``FastRecipe``: frozen backbone embeddings + logistic regression (seconds; the
  trainer service's frequent retrains from harvested cases).
- ``FinetuneRecipe``: LP-FT, the whole encoder fine-tuned from the fast head
  (``protege.student.finetune``; minutes; scheduled retrains, ``protege train``).

Cases are split by a stable hash of their request id, so a case stays on its side
across retrains: *fit* (75%), *calib* (15%: temperature, OOD quantile, acceptance rule)
and *golden* (10%: release gates; no version ever trains on it, so candidate and
serving version are compared on the same unseen cases). The student's own accepted answers
(label source ``student``) are always fit.

Every statistic is computed by the graph that will serve (fp32 or int8). A version folder
holds ``model.onnx`` (outputs ``logits`` and ``embedding``), ``tokenizer.json``,
``knn.npy`` (the embeddings of the fit cases the head learnt from, float16, for the kNN OOD
score and the kNN vote), ``knn_labels.npy`` (their labels, when the version votes) and
``manifest.json`` (labels, recipe, calibration, OOD, acceptance rule, metrics, gates, the
data it was trained on, and a checksum of every file).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from protege.certify import (
    RECERTIFY_GAIN,
    Evidence,
    Goal,
    Reconsidered,
    accepted_by,
    choose_rule,
    cp_upper,
    reconsider,
)
from protege.errors import ConfigError
from protege.events import AcceptRule
from protege.registry import Registry
from protege.student.export import append_head, quantized
from protege.student.manifest import (
    FILE,
    HELD_OUT,
    KNN_LABELS,
    TRAINED_ON,
    Calibration,
    Data,
    GateReport,
    Manifest,
    Ood,
    Target,
    Vote,
)
from protege.student.runtime import Bank, Encoder, softmax, sub_batch_for
from protege.task import OOS, Gates, Task

if TYPE_CHECKING:
    from protege.student.runtime import Student

HEAD_C = 30.0  # chosen on a split carved from BANKING77's train: C 1/3/10/30/100 -> val 0.913/0.924/0.924/0.927/0.927 (benchmarks/recipe.py)
KNN_K = 10  # at most; never more than the smallest label's cases in the bank (see knn_k)
VOTE_K = 5  # the kNN vote's neighbours (benchmarks/coverage_levers.py: k 3/5/7 alike, 10 and 20 worse)
MAX_BANK = 20_000
DEFAULT_TARGET = 0.97  # the target reported (coverage) when the task sets none


@dataclass(frozen=True)
class Case:
    request_id: str
    text: str
    label: str
    source: str = "teacher"  # who labelled it: teacher, standin, feedback, or student (its own accepted answer)


@dataclass(frozen=True)
class Trusted:
    """A golden case: a trusted label (a person's) and the teacher's own answer on it."""

    request_id: str
    text: str
    label: str
    teacher: str
    source: str = "file"  # the task's golden file, or "review": a person's label on the review sample


def read_golden(path: Path, task: Task) -> list[Trusted]:
    """A task's golden set (JSON Lines ``{id, text, label, teacher}``), every row checked: a
    file from outside says exactly which line is wrong rather than training on it."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"golden set {path}: {e}") from e
    out, seen, answers = [], set(), set(task.answers)
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"golden set {path}:{n}: not JSON ({e})") from e
        if not isinstance(row, dict):
            raise ConfigError(f"golden set {path}:{n}: a line is an object {{id, text, label, teacher}}")
        missing = [k for k in ("id", "text", "label", "teacher") if not isinstance(row.get(k), str | int)]
        if missing:
            raise ConfigError(
                f"golden set {path}:{n}: missing {', '.join(missing)} (the teacher's answers: protege label --golden)"
            )
        rid, text, label, teacher = str(row["id"]), str(row["text"]), str(row["label"]), str(row["teacher"])
        bad = [v for v in (label, teacher) if v not in answers]
        if bad:
            raise ConfigError(f"golden set {path}:{n}: {bad[0]!r} is not one of the task's answers")
        if rid in seen:
            raise ConfigError(f"golden set {path}:{n}: id {rid!r} twice")
        seen.add(rid)
        out.append(Trusted(rid, text, label, teacher))
    return out


@dataclass(frozen=True)
class TrainResult:
    version: str
    folder: Path
    metrics: dict[str, float]
    labels: list[str]
    promoted: bool
    reason: str
    failed_gates: list[str] = field(default_factory=list)


class EmbeddingCache:
    """Texts embed once per trainer process; retrains only embed what is new."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self._vectors: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if missing:
            for text, vec in zip(missing, self.encoder.embed(missing), strict=True):
                self._vectors[text] = vec
        return np.stack([self._vectors[t] for t in texts])


# ---------------------------------------------------------------- pure statistics


def fit_head(
    x: np.ndarray, y: np.ndarray, c: float = HEAD_C, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Multinomial logistic regression; returns (W [dim, k], b [k], labels)."""
    from sklearn.linear_model import LogisticRegression

    labels = sorted(set(y.tolist()))
    if len(labels) == 1:  # nothing to separate yet: a constant head
        return np.zeros((x.shape[1], 1), np.float32), np.zeros(1, np.float32), labels
    model = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit(x, y)
    coef, bias = model.coef_, model.intercept_
    if coef.shape[0] == 1:  # binary: sklearn keeps one row; spell out both logits
        coef, bias = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], bias])
    return coef.T.astype(np.float32), bias.astype(np.float32), [str(c) for c in model.classes_]


DENOISE_MIN_CASES = 200  # below this the folds are too thin to contradict anyone


def denoised(x: np.ndarray, y: np.ndarray, *, c: float = HEAD_C, seed: int = 0, folds: int = 3) -> np.ndarray:
    """Which labelled rows to fit on: all but those the student, fitted without them, confidently
    contradicts (the given label below 5% and its own answer above 80%, out of fold) — a teacher's
    slips, mostly. A label the fold's model never saw is kept; so is everything on fewer than
    ``DENOISE_MIN_CASES`` rows, and every ``oos`` (with it dropped, false accepts of unknown intents
    rose from 1.6% to 2.4%). Chosen by measurement (benchmarks/coverage_levers.py)."""
    keep = np.ones(len(y), bool)
    if len(y) < DENOISE_MIN_CASES:
        return keep
    fold = np.random.default_rng(seed).integers(0, folds, len(y))
    for f in range(folds):
        w, b, names = fit_head(x[fold != f], y[fold != f], c=c, seed=seed)
        if len(names) < 2:
            continue
        p = softmax(x[fold == f] @ w + b)
        index = {n: i for i, n in enumerate(names)}
        given = np.asarray([p[i, index[v]] if v in index else 1.0 for i, v in enumerate(y[fold == f])])
        keep[fold == f] = ~((given < 0.05) & (p.max(axis=1) > 0.8))
    return keep | (y == OOS)  # "out of scope" is kept: dropping it taught the student to accept unknown intents


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature minimising held-out negative log-likelihood (grid, then refine)."""

    def nll(t: float) -> float:
        p = softmax(logits / t)
        return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1)).mean())

    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 60))
    best = min(grid, key=nll)
    fine = np.linspace(best * 0.8, best * 1.25, 30)
    return float(min(fine, key=nll))


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error (equal-width confidence bins)."""
    if len(y) == 0:
        return 0.0
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            total += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(total)


def macro_f1(pred: np.ndarray, y: np.ndarray, unknown_classes: int = 0) -> float:
    """Mean F1 over the classes of ``y``. ``unknown_classes``: classes in the set that the
    model does not have (``y`` is -1 for their cases); each counts with F1 0 — else a model
    that knows fewer classes would average over fewer, and look better than one that learned
    them (a serving version against a candidate that learned new intents)."""
    scores = []
    for c in np.unique(y[y >= 0]):
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    n = len(scores) + unknown_classes
    return float(np.sum(scores) / n) if n else 0.0


def class_recall(pred: np.ndarray, y: np.ndarray, labels: Sequence[str], min_support: int) -> dict[str, float]:
    """Recall of each class with at least ``min_support`` cases."""
    out = {}
    for i, label in enumerate(labels):
        sel = y == i
        if sel.sum() >= min_support:
            out[label] = float((pred[sel] == i).mean())
    return out


@dataclass(frozen=True)
class Scores:
    """A model's calibrated view of a labelled set."""

    probs: np.ndarray
    ood: np.ndarray
    y: np.ndarray  # label indices; -1 for labels the model does not know
    oos: int = -1  # the index of the label ``oos`` (-1: the model does not know it)

    @property
    def pred(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def oos_probability(self) -> np.ndarray | None:
        return self.probs[:, self.oos] if self.oos >= 0 else None

    @property
    def answered_oos(self) -> np.ndarray:
        return self.pred == self.oos

    @property
    def correct(self) -> np.ndarray:
        return self.pred == self.y

    def accepted_by(self, rule: AcceptRule) -> np.ndarray:
        """The cases ``rule`` lets the student answer alone."""
        return accepted_by(rule, self.probs.max(axis=1), self.ood, self.oos_probability, self.answered_oos)


def evaluate(
    s: Scores, labels: Sequence[str], rule: AcceptRule | None, gates: Gates, truth: Sequence[str] = ()
) -> dict[str, Any]:
    """Golden-set metrics. ``truth``: the set's label names, so that classes the model does
    not have count against its macro-F1 (as their cases count as misses in its accuracy)."""
    known = s.y >= 0
    unknown = len(set(truth) - set(labels))
    out: dict[str, Any] = {
        "cases": len(s.y),
        "certified": rule is not None,  # a rule to answer under (a target's certification found one)
        "accuracy": float(s.correct.mean()) if len(s.y) else 0.0,  # unknown labels count as misses
        "macro_f1": macro_f1(s.pred, s.y, unknown),
        "ece": ece(s.probs[known], s.y[known]),
        "class_recall": class_recall(s.pred, s.y, labels, gates.min_class_support),
    }
    if rule is not None and len(s.y):
        accepted = s.accepted_by(rule)
        out["coverage"] = float(accepted.mean())
        out["accepted_accuracy"] = float(s.correct[accepted].mean()) if accepted.any() else None
    else:
        out["coverage"], out["accepted_accuracy"] = 0.0, None
    return out


def gate_failures(
    cand: dict[str, Any],
    serving: dict[str, Any] | None,
    latency_p95_ms: float,
    gates: Gates,
    *,
    targeted: bool = False,
) -> list[str]:
    """Why a candidate may not serve (empty: it may). ``targeted``: the task holds accepted
    answers to a certified target, so a version answers only under a rule certified for it.
    ``cand`` and ``serving`` are ``evaluate``'s metrics on the golden split, each with its
    metrics on the trusted rows under ``"trusted"`` where the task has them: the comparison with
    the serving version is then made on those (true labels, the same rows), else on the split."""
    failed = []
    if targeted and serving is not None and serving.get("certified") and not cand.get("certified"):
        # Whatever the size of the golden split: announced, it would answer nothing (on trial, its
        # share of the traffic would go to the teacher until the trial ran out of time).
        failed.append(
            "its rule certifies nothing for the target, where the serving version's certifies "
            f"{serving['coverage']:.1%} of the golden cases on the same trusted rows"
        )
    n = int(cand["cases"])
    big = n >= gates.min_golden
    # On a small golden set the accuracy floor fails only when the accuracy is below it with
    # 95% confidence (one-sided Clopper-Pearson upper bound); on a large one, the estimate itself.
    best_case = cand["accuracy"] if big else cp_upper(round(cand["accuracy"] * n), n, 0.95)
    if best_case < gates.min_accuracy:
        failed.append(
            f"golden accuracy {cand['accuracy']:.3f} < floor {gates.min_accuracy:.3f}"
            + ("" if big else f" (upper bound {best_case:.3f} on {n} cases)")
        )
    if big and cand["macro_f1"] < gates.min_macro_f1:
        failed.append(f"golden macro-F1 {cand['macro_f1']:.3f} < floor {gates.min_macro_f1:.3f}")
    low = {k: v for k, v in cand["class_recall"].items() if v < gates.min_class_recall}
    if low:
        worst = sorted(low.items(), key=lambda kv: kv[1])[:3]
        failed.append(
            f"recall below {gates.min_class_recall:.2f} for {len(low)} class(es): "
            + ", ".join(f"{k} {v:.2f}" for k, v in worst)
        )
    if big and cand["ece"] > gates.max_ece:
        failed.append(f"calibration error {cand['ece']:.3f} > ceiling {gates.max_ece:.3f}")
    if cand["coverage"] < gates.min_coverage:
        failed.append(f"coverage at target {cand['coverage']:.3f} < floor {gates.min_coverage:.3f}")
    if latency_p95_ms > gates.max_latency_ms:
        failed.append(f"latency p95 {latency_p95_ms:.0f} ms > ceiling {gates.max_latency_ms:.0f} ms")
    # Held to the serving version on the same rows: the trusted rows where both were scored on
    # them (true labels: against a teacher that errs alike on similar requests, a student right
    # where the teacher is wrong scores lower against its labels), else the golden split.
    mine, theirs, rows = cand, serving, "golden"
    if serving is not None and "trusted" in cand and "trusted" in serving:
        mine, theirs, rows = cand["trusted"], serving["trusted"], "trusted"
    if theirs is not None and int(mine["cases"]) >= gates.min_golden:
        for key, name in (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("coverage", "coverage at target")):
            if mine[key] < theirs[key] - gates.tolerance:
                failed.append(
                    f"{rows} {name} {mine[key]:.3f} is worse than the serving version's "
                    f"{theirs[key]:.3f} by more than {gates.tolerance:.3f} (the same {int(mine['cases'])} {rows} rows)"
                )
    return failed


CALIB, CALIB_WITH_TRUTH = 0.15, 0.05  # shares of the cases held out for calibration


def split_cases(cases: Sequence[Case], *, calib: float = CALIB, golden: float = 0.10) -> tuple[list[Case], ...]:
    """(fit, calib, golden) by a stable hash of the request id: a case never changes side. The
    student's own accepted answers are always fit: calibration and gates judge against labels
    the student did not give."""
    parts: tuple[list[Case], list[Case], list[Case]] = ([], [], [])
    for c in cases:
        h = int(hashlib.sha256(c.request_id.encode()).hexdigest()[:8], 16) / 0x1_0000_0000
        held = c.source != "student"
        parts[2 if held and h < golden else 1 if held and h < golden + calib else 0].append(c)
    return parts


# ---------------------------------------------------------------- recipes


@dataclass
class Fitted:
    """What a recipe hands over: an encoder graph (output ``embedding``) and a head."""

    encoder: Path  # folder with model.onnx and tokenizer.json
    w: np.ndarray
    b: np.ndarray
    labels: list[str]
    info: dict[str, Any]
    embed: Callable[[Sequence[str]], np.ndarray] | None = None  # the encoder's embeddings, when cached
    embed_int8: Callable[[Sequence[str]], np.ndarray] | None = None  # its int8 graph's, when cached
    # A fine-tuned encoder, not the shared backbone: the version keeps it (``ENCODER``), and the
    # trainer's fast retrains after it fit their heads on it (``kept_encoder``).
    own_encoder: bool = False
    kept: np.ndarray | None = None  # which of the cases the head was fit on (denoising drops some); None: all


class Recipe(Protocol):
    name: str

    def fit(self, cases: Sequence[Case], workdir: Path) -> Fitted: ...


@dataclass
class FastRecipe:
    """Frozen backbone + logistic regression."""

    embed: EmbeddingCache
    backbone: Path
    c: float = HEAD_C
    seed: int = 0
    denoise: bool = True  # drop the labels it confidently contradicts out of fold (denoised)
    name: str = "fast"
    _int8: EmbeddingCache | None = field(default=None, init=False, repr=False)

    def embed_int8(self, texts: Sequence[str]) -> np.ndarray:
        """The quantised backbone's embeddings, cached like the fp32 ones (made on first use)."""
        if self._int8 is None:
            threads = int(self.embed.encoder.session_info["intra_op_threads"])
            graph, tokenizer = quantized(self.backbone), self.backbone / "tokenizer.json"
            self._int8 = EmbeddingCache(Encoder(graph, tokenizer, threads=threads, sub_batch=sub_batch_for("int8", 0)))
        return self._int8(texts)

    def fit(self, cases: Sequence[Case], workdir: Path) -> Fitted:
        x, y = self.embed([c.text for c in cases]), np.asarray([c.label for c in cases])
        keep = denoised(x, y, c=self.c, seed=self.seed) if self.denoise else np.ones(len(y), bool)
        w, b, labels = fit_head(x[keep], y[keep], c=self.c, seed=self.seed)
        backbone = json.loads((self.backbone / "backbone.json").read_text())
        info = {
            "name": "frozen-embeddings+logreg",
            "C": self.c,
            "seed": self.seed,
            "denoised": int((~keep).sum()),
            "backbone": backbone,
        }
        own = "finetuned_in" in backbone  # a version's fine-tuned encoder: the new version keeps it too
        return Fitted(
            self.backbone, w, b, labels, info, embed=self.embed, embed_int8=self.embed_int8, own_encoder=own, kept=keep
        )


class HeadRefresh:
    """The trainer's fast recipe for a retrain: on the serving version's own encoder when it
    has one (a scheduled fine-tune made it: ``protege train --recipe finetune``), so the head is
    refreshed on the fine-tuned encoder rather than the retrain going back to the shared
    backbone and its lower accuracy; else ``base``, on the shared backbone. One kept encoder's
    embeddings are cached at a time (the serving one's)."""

    def __init__(self, base: FastRecipe, *, threads: int = 0) -> None:
        self.base = base
        self.threads = threads
        self.kept: dict[str, FastRecipe] = {}  # by the version whose fine-tune made the encoder

    def on(self, serving: Path | None) -> FastRecipe:
        encoder = kept_encoder(serving)
        if encoder is None:
            return self.base
        # The same encoder whichever version of its line serves (each keeps a link to it): its
        # embeddings are made once, not again after every refresh.
        made_in = str(json.loads((encoder / "backbone.json").read_text())["finetuned_in"])
        if made_in not in self.kept:
            self.kept.clear()
            model = Encoder(encoder / "model.onnx", encoder / "tokenizer.json", threads=self.threads)
            self.kept[made_in] = FastRecipe(EmbeddingCache(model), encoder, c=self.base.c, seed=self.base.seed)
        return self.kept[made_in]


@dataclass
class FinetuneRecipe:
    """LP-FT: the fast head first, then the whole encoder fine-tuned, exported with Optimum."""

    embed: EmbeddingCache
    backbone: Path
    source: Path  # the Hugging Face folder of the pretrained encoder
    config: Any = None  # FinetuneConfig; None: its defaults
    c: float = HEAD_C
    denoise: bool = True  # as the fast recipe: the teacher's labels its frozen head contradicts are dropped first
    name: str = "finetune"
    on_batch: Callable[[int, int, int], None] | None = None  # (epoch, examples done, examples planned)

    def fit(self, cases: Sequence[Case], workdir: Path) -> Fitted:
        from protege.student.export import export_encoder
        from protege.student.finetune import Classifier, FinetuneConfig, finetune

        cfg = self.config or FinetuneConfig()
        x, y_all = self.embed([c.text for c in cases]), np.asarray([c.label for c in cases])
        # A fine-tune learns a noisy teacher's wrong labels by heart: the ones the frozen head
        # contradicts confidently out of fold are dropped before either stage (the coverage
        # levers' LP-FT row, benchmarks/coverage_levers.py, fine-tuned on the denoised cases).
        keep = denoised(x, y_all, c=self.c, seed=cfg.seed) if self.denoise else np.ones(len(y_all), bool)
        texts = [c.text for c, k in zip(cases, keep, strict=True) if k]
        y_names = y_all[keep]
        w, b, labels = fit_head(x[keep], y_names, c=self.c, seed=cfg.seed)
        index = {label: i for i, label in enumerate(labels)}
        model = Classifier(self.source, w, b, cfg.max_length)
        weight = np.ones(len(labels))
        if OOS in index:  # a false accept costs more than a deferral: the fine-tune learns oos harder
            weight[index[OOS]] = cfg.oos_weight
        y = np.asarray([index[v] for v in y_names])
        log = finetune(model, texts, y, cfg, on_batch=self.on_batch, class_weight=weight)
        hf_dir = model.save_encoder(workdir / "hf")
        encoder = export_encoder(hf_dir, workdir / "encoder")
        w, b = model.head_arrays()
        base = json.loads((self.backbone / "backbone.json").read_text())
        info = {
            "name": "lp-ft (logreg head, then full fine-tune)",
            "C": self.c,
            "denoised": int((~keep).sum()),
            "finetune": log,
            "backbone": base,
        }
        # what the kept encoder is, for the fast retrains that fit heads on it (the version's
        # name is filled in by train_version)
        meta = {**base, "finetuned_in": None, "finetune": {k: v for k, v in log.items() if k != "epochs"}}
        (encoder / "backbone.json").write_text(json.dumps(meta, indent=2))
        return Fitted(encoder, w, b, labels, info, own_encoder=True, kept=keep)


# ---------------------------------------------------------------- one version


def knn_k(labels: Sequence[str], most: int = KNN_K) -> int:
    """k for the kNN OOD score: at most ``most``, and no more than the rarest label's cases in
    the bank, so a typical known case can find all k neighbours in its own label (with 4
    cases a label, k=10 would measure distance to other labels and flag known traffic)."""
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return max(1, min(most, min(counts.values(), default=1)))


def scores_of(
    encoder: Encoder,
    texts: Sequence[str],
    y_names: Sequence[str],
    labels: Sequence[str],
    temperature: float,
    bank: Bank,
    run: Callable[[list[str]], dict[str, np.ndarray]] | None = None,
) -> tuple[Scores, np.ndarray]:
    """(calibrated scores, raw logits) of a served graph on a labelled set (``run``: what runs the
    graph on the texts, ``encoder.run_all`` unless given, e.g. ``encoded``)."""
    index = {label: i for i, label in enumerate(labels)}
    y = np.asarray([index.get(v, -1) for v in y_names], dtype=np.int64)
    if not texts:
        return Scores(np.zeros((0, len(labels))), np.zeros(0), y), np.zeros((0, len(labels)))
    out = (run or encoder.run_all)(list(texts))
    probs, ood = bank.view(out["embedding"], out["logits"], temperature)
    return Scores(probs, ood, y, index.get(OOS, -1)), out["logits"]


ENCODED_MODELS = 3  # model files whose outputs ``encoded`` keeps
_encoded: OrderedDict[tuple[int, ...], dict[str, tuple[np.ndarray, np.ndarray]]] = OrderedDict()
_encoded_lock = threading.Lock()


def encoded(student: Student, folder: Path, texts: list[str]) -> dict[str, np.ndarray]:
    """``student.encoder.run_all(texts)`` (its embedding and logits), each text's outputs kept per
    model file (the newest ``ENCODED_MODELS``) and run once. The serving version is judged again
    every ``recertify_every`` reviewed rows on all of them — thousands of texts, seconds of CPU each
    time on the cores a retrain needs (CLINC150 with a review surge: a check every few seconds) —
    and its re-certified copies share its file (hard links): only the rows new since the last check
    run. A file is known by device, inode, size and modification time; an int8 graph scores one
    text per run, so a text's outputs do not depend on the others'."""
    with _encoded_lock:
        known = _outputs_of(folder, student.manifest.max_length)
        new = [t for t in dict.fromkeys(texts) if t not in known]
        if new:
            out = student.encoder.run_all(new)
            for i, text in enumerate(new):
                known[text] = (out["embedding"][i], out["logits"][i])
        return {
            "embedding": np.stack([known[t][0] for t in texts]),
            "logits": np.stack([known[t][1] for t in texts]),
        }


def _outputs_of(folder: Path, max_length: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The outputs ``encoded`` keeps of the model file in ``folder`` (under ``_encoded_lock``)."""
    st = (folder / "model.onnx").stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, max_length)
    known = _encoded.setdefault(key, {})
    _encoded.move_to_end(key)
    while len(_encoded) > ENCODED_MODELS:
        _encoded.popitem(last=False)
    return known


def remember(folder: Path, max_length: int, texts: Sequence[str], embedding: np.ndarray, logits: np.ndarray) -> None:
    """Keep the outputs of the model file in ``folder`` on ``texts`` for ``encoded``, as the
    retrain that made it computed them: its first check then runs the graph only on rows
    reviewed since (cold, a check took 5.3 s on 2,344 rows; warm 0.14 s: benchmarks/check_cost.py)."""
    with _encoded_lock:
        known = _outputs_of(folder, max_length)
        for i, text in enumerate(texts):
            known[text] = (embedding[i], logits[i])


PROBE_TEXTS = 4  # the longest truth texts a retrain runs its new graph on before it shares its outputs


def latency_ms(encoder: Encoder, texts: Sequence[str], runs: int = 40) -> tuple[float, float]:
    """(p50, p95) of scoring one text at a time, after two warm-up calls."""
    texts = list(texts)[:runs] or ["warm-up"]
    for t in texts[:2]:
        encoder.run([t])
    took = []
    for t in texts:
        started = time.perf_counter()
        encoder.run([t])
        took.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(took, 50)), float(np.percentile(took, 95))


def truth_evidence(trusted: Scores, truth: Sequence[Trusted]) -> Evidence:
    """What a rule is certified on when trusted labels exist: a model's scores on them, and
    whether the teacher was right on each."""
    return Evidence(
        "golden",
        trusted.probs.max(axis=1),
        trusted.ood,
        trusted.correct,
        np.asarray([t.teacher == t.label for t in truth], dtype=bool),
        out_of_scope=np.asarray([t.label == OOS for t in truth], dtype=bool),
        answered_oos=trusted.answered_oos,
        oos_probability=trusted.oos_probability,
    )


def brief(metrics: dict[str, Any]) -> dict[str, Any]:
    """``evaluate``'s metrics for a manifest: without the per-class recalls, here and on the
    trusted rows."""
    out = {k: v for k, v in metrics.items() if k != "class_recall"}
    if "trusted" in out:
        out["trusted"] = brief(out["trusted"])
    return out


def serving_metrics(
    folder: Path,
    golden: Sequence[Case],
    gates: Gates,
    threads: int,
    truth: Sequence[Trusted] = (),
    goal: Goal | None = None,
) -> dict[str, Any]:
    """The serving version's golden metrics under its own calibration and bank. Its rule: with
    trusted rows and a goal, the one the same certification gives it on those rows now — the
    candidate's was just certified on them, so both are judged alike, and a rule certified on
    the rows of months ago (which a shift may have made too loose) does not set the bar — else
    the rule it serves with."""
    from protege.student.runtime import Student

    s = Student(folder, providers="cpu", threads=threads)
    scores, _ = scores_of(
        s.encoder, [c.text for c in golden], [c.label for c in golden], s.labels, s.temperature, s.bank
    )
    rule, how, on_truth = s.rule, "as served", {}
    if truth and goal is not None:
        trusted, _ = scores_of(
            s.encoder, [t.text for t in truth], [t.label for t in truth], s.labels, s.temperature, s.bank
        )
        rule, how = choose_rule(goal, truth_evidence(trusted, truth)), f"re-certified on {len(truth)} trusted rows"
        on_truth = {"trusted": evaluate(trusted, s.labels, rule, gates, [t.label for t in truth])}
    return (
        evaluate(scores, s.labels, rule, gates, [c.label for c in golden])
        | {"version": s.version, "rule": how}
        | on_truth
    )


@dataclass(frozen=True)
class Recertified:
    """A serving version's files under the rule today's trusted rows certify: a new version."""

    version: str
    folder: Path
    source: str  # the version whose files it shares
    rule: AcceptRule | None
    broken: bool  # the source's rule no longer held on the rows: serve at once
    why: str
    metrics: dict[str, float]
    labels: list[str]
    trained_on: int
    shift_from: int | None = None  # broken: the place from which the rows are today's (``reconsider``)


def recertify_version(
    folder: Path,
    *,
    registry: Path,
    tenant: str,
    task: Task,
    truth: Sequence[Trusted],
    recent: Collection[str] | None = None,
    places: Mapping[str, int] | None = None,
    threads: int = 0,
    trigger: str | None = None,
    gain: float = RECERTIFY_GAIN,
    anew: bool = False,
    alarm: str | None = None,
) -> Recertified | None:
    """The serving version in ``folder`` judged again on the trusted rows ``truth``
    (``protege.certify.reconsider``; ``recent``: the request ids of the reviewed rows completed
    since its rule was certified, None: all of them; ``places``: each reviewed row's place in the
    order people completed them, so a broken rule's replacement starts at the shift, not at its
    certification, ``reconsider``): None when it keeps its rule, else a new
    version in the registry that shares its files (hard links where the file system allows)
    with the rule the rows certify — when the recent rows refute its rule, on them and the
    task's file rows alone — and a manifest that says so (``recertified_from``). A rule lives in
    a version's manifest, which is never edited: the decisions a version made stay tied to the
    rule it made them under, and replay can tell them apart.

    ``anew``: the version's own rule was certified on rows a shift has since ruled out (it
    trained while the trainer marked one): the rule ``truth`` certifies replaces it, whatever it
    was (none: it answers nothing), and the new version is a candidate like any retrain. ``alarm``:
    why the out-of-scope share of the recent rows rose (``protege.certify.out_of_scope_alarm``;
    ``reconsider``)."""
    from protege.student.runtime import Student

    if not truth:
        return None
    s = Student(folder, providers="cpu", threads=threads)
    goal = task.policy.goal(DEFAULT_TARGET)
    trusted, _ = scores_of(
        s.encoder,
        [t.text for t in truth],
        [t.label for t in truth],
        s.labels,
        s.temperature,
        s.bank,
        run=partial(encoded, s, folder),
    )
    after = None if recent is None else np.asarray([t.request_id in recent for t in truth], dtype=bool)
    reviewed = np.asarray([t.source == "review" for t in truth], dtype=bool)
    today = None if after is None else after | ~reviewed  # and the task's file
    before = None if after is None else ~after & reviewed  # samples of the traffic it was certified on
    evidence = truth_evidence(trusted, truth)
    order = None if places is None else np.asarray([places.get(t.request_id, -1) for t in truth], dtype=np.int64)
    if anew:
        rule = choose_rule(goal, evidence)
        now = "nothing" if rule is None else f"confidence >= {rule.min_confidence:.2f} ({rule.coverage:.1%})"
        verdict: Reconsidered | None = Reconsidered(
            rule, 0.0, False, f"certified when it started training; {len(truth)} trusted rows of today certify {now}"
        )
    else:
        verdict = reconsider(
            goal, evidence, s.rule, recent=after, today=today, before=before, order=order, gain=gain, alarm=alarm
        )
    if verdict is None:
        return None
    source = s.manifest
    home = Registry(registry).folder(tenant, task.name)
    tmp, number = claim_partial(home)
    version = f"v{number:04d}-{source.data.request_ids_sha256[:8]}"
    for path in sorted(folder.rglob("*")):
        if path.is_dir() or (path == folder / FILE):
            continue
        dest = tmp / path.relative_to(folder)
        dest.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(path, dest)
    rule = verdict.rule
    teacher_right = np.asarray([t.teacher == t.label for t in truth], dtype=bool)
    metrics = {
        k: v for k, v in source.metrics.items() if not k.startswith("truth_") and k != "golden_accepted_accuracy"
    }
    metrics |= truth_metrics(trusted, teacher_right, rule, agreement(trusted, s.labels, truth)) | {
        "truth_reviewed": float(sum(t.source == "review" for t in truth))
    }
    if rule is not None and (let_through := evidence.false_accepts(trusted.accepted_by(rule))) is not None:
        metrics["truth_false_accepts"] = round(let_through, 4)  # out of scope accepted in scope
    golden = dict(source.golden)
    held = np.load(folder / HELD_OUT) if (folder / HELD_OUT).exists() else None  # older versions keep none
    if rule is None:
        golden["coverage"], golden["accepted_accuracy"] = 0.0, None
    elif held is not None:
        taken = accepted_by(
            rule,
            held["confidence"],
            held["ood"],
            held.get("oos_probability"),
            held.get("answered_oos"),
        )
        golden["coverage"] = float(taken.mean()) if len(taken) else 0.0
        golden["accepted_accuracy"] = float(held["correct"][taken].mean()) if taken.any() else None
    metrics["golden_coverage"] = round(golden.get("coverage") or 0.0, 4)
    if golden.get("accepted_accuracy") is not None:
        metrics["golden_accepted_accuracy"] = round(golden["accepted_accuracy"], 4)
    manifest = source.model_copy(
        update={
            "version": version,
            "acceptance": rule,
            "acceptance_target": Target(
                target_accuracy=goal.accuracy,
                target_margin=goal.margin,
                confidence_level=goal.confidence,
                max_false_accepts=goal.max_false_accepts,
            ),
            "metrics": metrics,
            "golden": golden,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "trigger": trigger or f"re-certified: {verdict.why}",
            "recertified_from": source.version,
        }
    )
    manifest.save(tmp)
    dest_folder = home / version
    tmp.rename(dest_folder)
    return Recertified(
        version,
        dest_folder,
        source.version,
        rule,
        verdict.broken,
        verdict.why,
        metrics,
        source.labels,
        source.data.cases,
        verdict.shift_from,
    )


@dataclass(frozen=True)
class Precision:
    """Which graph a version serves, and why: with ``int8: auto`` the int8 graph when its
    held-out accuracy is within the gates' tolerance of the fp32 graph's (both heads fp32).
    Held out: the calibration and golden cases together, which the weights of neither graph
    saw; more cases than the golden set alone, so one flipped answer weighs less."""

    name: str  # fp32 | int8
    why: str
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        mode: bool | str,
        held_out: Sequence[Case],
        labels: Sequence[str],
        tolerance: float,
        logits: Callable[[str, list[str]], np.ndarray],
    ) -> Precision:
        """``logits(precision, texts)``: what each graph answers (the recipe's cached embeddings
        through the head where it has them: no graph run twice over thousands of cases)."""
        if mode is True:
            return cls("int8", "int8: asked for (student.int8: true)")
        if mode is False:
            return cls("fp32", "fp32: asked for (student.int8: false)")
        if not held_out:
            return cls("fp32", "fp32: no held-out cases to compare the int8 graph on")
        texts, index = [c.text for c in held_out], {label: i for i, label in enumerate(labels)}
        truth = np.asarray([index.get(c.label, -1) for c in held_out])
        answers = {name: logits(name, texts).argmax(axis=1) for name in ("fp32", "int8")}
        fp32, int8 = (float((answers[n] == truth).mean()) for n in ("fp32", "int8"))
        agreement = float((answers["fp32"] == answers["int8"]).mean())
        metrics = {
            "held_out_accuracy_fp32": round(fp32, 4),
            "held_out_accuracy_int8": round(int8, 4),
            "int8_agreement": round(agreement, 4),
        }
        within = int8 >= fp32 - tolerance
        why = (
            f"{'int8' if within else 'fp32'}: held-out accuracy int8 {int8:.3f}, fp32 {fp32:.3f} on {len(texts)} cases "
            f"({'within' if within else 'outside'} the tolerance {tolerance:.3f}; {100 * agreement:.1f}% same answers)"
        )
        return cls("int8" if within else "fp32", why, metrics)


def truth_metrics(
    s: Scores, teacher_right: np.ndarray, rule: AcceptRule | None, agrees: np.ndarray | None = None
) -> dict[str, float]:
    """A version against the trusted golden set: its accuracy and the teacher's, and on the
    cases its rule accepts, both again (empty without a golden set). ``agrees``: where the
    student's label is the teacher's; on the accepted rows, the share an audit of its accepted
    answers should find (``truth_agreement_on_accepted``, over ``truth_accepted_cases``: the
    yardstick a canary's audits are read against, ``protege.canary.expected``)."""
    n = len(s.y)
    if n == 0:
        return {}
    out = {
        "truth_cases": float(n),
        "truth_accuracy": round(float(s.correct.mean()), 4),
        "truth_teacher_accuracy": round(float(teacher_right.mean()), 4),
    }
    if rule is not None:
        accepted = s.accepted_by(rule)
        out["truth_coverage"] = round(float(accepted.mean()), 4)
        if accepted.any():
            out["truth_accepted_accuracy"] = round(float(s.correct[accepted].mean()), 4)
            out["truth_teacher_on_accepted"] = round(float(teacher_right[accepted].mean()), 4)
            out["truth_accepted_cases"] = float(accepted.sum())
            if agrees is not None:
                out["truth_agreement_on_accepted"] = round(float(agrees[accepted].mean()), 4)
    return out


def agreement(s: Scores, labels: Sequence[str], truth: Sequence[Any]) -> np.ndarray:
    """Where the student's label on each trusted row is the teacher's."""
    return np.asarray([labels[p] == t.teacher for p, t in zip(s.pred, truth, strict=True)], dtype=bool)


ENCODER = "encoder"  # a version's own (fine-tuned) encoder: model.onnx, tokenizer.json, backbone.json


def kept_encoder(folder: Path | None) -> Path | None:
    """The fine-tuned encoder a version keeps (``folder/encoder``), or None: a version of the
    fast recipe on the shared backbone keeps none."""
    if folder is None or not (folder / ENCODER / "model.onnx").exists():
        return None
    return folder / ENCODER


def link_or_copy(src: Path, dest: Path) -> None:
    """``dest`` as a hard link to ``src`` (versions share their large files), else a copy: another
    file system (a temporary folder), or no links there."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy(src, dest)


def keep_encoder(encoder: Path, dest: Path, version: str) -> None:
    """The encoder's graph, tokenizer and description in ``dest``: hard links where the file
    system allows (a head refresh on a kept encoder adds no copy of it), else copies. Its
    ``finetuned_in`` names the version whose fine-tune made it, set once."""
    dest.mkdir()
    for name in ("model.onnx", "tokenizer.json"):
        link_or_copy(encoder / name, dest / name)
    meta = json.loads((encoder / "backbone.json").read_text())
    meta["finetuned_in"] = meta.get("finetuned_in") or version
    (dest / "backbone.json").write_text(json.dumps(meta, indent=2))


def claim_partial(home: Path) -> tuple[Path, int]:
    """A new version's work folder, ``home/.vNNNN.partial``, with the next number, made
    exclusively: a scheduled fine-tune (its own process, minutes long) and the trainer's fast
    retrains write to one registry, and two versions must never share a number (the newest is
    the highest). A folder left by a crash keeps its number; the next version takes the one
    after."""
    taken = [int(m[1]) for p in home.iterdir() if (m := re.match(r"^\.?v(\d{4})", p.name))]
    number = max(taken, default=0) + 1
    while True:
        tmp = home / f".v{number:04d}.partial"
        try:
            tmp.mkdir()
            return tmp, number
        except FileExistsError:
            number += 1


def train_version(
    cases: Sequence[Case],
    *,
    recipe: Recipe,
    registry: Path,
    tenant: str,
    task: Task,
    serving: Path | None = None,
    golden: Sequence[Case] | None = None,
    threads: int = 0,
    seed: int = 0,
    trigger: str | None = None,
    truth: Sequence[Trusted] = (),
) -> TrainResult:
    """Train, calibrate, gate and write one version. ``golden``: a fixed golden set
    instead of the hash split's (then every case not in calib is fit); ``trigger``: why
    (recorded on the manifest); ``truth``: the task's trusted golden set (its texts never
    trained on): every version is measured on it and, when there is one, its rule is
    certified on it (``protege.certify``), else on agreement with the teacher's labels."""
    started = time.perf_counter()
    kept_apart = {t.text for t in truth}
    # In a canonical order: the trainer's store holds cases in the order they arrived, and the
    # denoising folds and the fit depend on the order (two bench runs trained the same 2,302
    # cases into versions 4 points of certified coverage apart). A version is its cases.
    cases = sorted((c for c in cases if c.text not in kept_apart), key=lambda c: c.request_id)
    # With trusted labels the rule is certified on them: calib only fits the temperature, and a
    # smaller one leaves more to fit (benchmarks/coverage_levers.py).
    fit, calib, hashed_golden = split_cases(cases, calib=CALIB_WITH_TRUTH if truth else CALIB)
    if golden is None:
        golden = hashed_golden or calib  # a handful of cases may leave no golden split: gate on calib then
    else:
        fit = fit + hashed_golden
    if len({c.label for c in fit}) < 2:
        raise ValueError(f"the fit split has fewer than two labels ({len(fit)} cases)")
    gates = task.student.gates
    goal = task.policy.goal(DEFAULT_TARGET)
    trained_on = "\n".join(sorted(c.request_id for c in cases))
    data_hash = hashlib.sha256(trained_on.encode()).hexdigest()
    home = Registry(registry).folder(tenant, task.name)
    home.mkdir(parents=True, exist_ok=True)
    tmp, number = claim_partial(home)
    version = f"v{number:04d}-{data_hash[:8]}"
    with tempfile.TemporaryDirectory(prefix="protege-train-") as work:
        fitted = recipe.fit(fit, Path(work))
        fit_seconds = time.perf_counter() - started
        append_head(fitted.encoder / "model.onnx", fitted.w, fitted.b, tmp / "model.onnx")
        if task.student.int8 is not False:  # the head stays fp32 (small; exact)
            append_head(quantized(fitted.encoder), fitted.w, fitted.b, tmp / "model.int8.onnx")
        shutil.copy(fitted.encoder / "tokenizer.json", tmp / "tokenizer.json")
        if fitted.own_encoder:
            keep_encoder(fitted.encoder, tmp / ENCODER, version)
    # Both graphs judged on every held-out case (calib and golden: neither graph's weights saw them).
    held_out = list({c.request_id: c for c in [*calib, *golden]}.values())

    def logits(name: str, texts: list[str]) -> np.ndarray:
        cached = fitted.embed_int8 if name == "int8" else fitted.embed
        if cached is not None:
            return np.asarray(cached(texts) @ fitted.w + fitted.b)
        graph = tmp / ("model.int8.onnx" if name == "int8" else "model.onnx")
        encoder = Encoder(
            graph,
            tmp / "tokenizer.json",
            max_length=task.student.max_length,
            providers="cpu",
            threads=threads,
            sub_batch=sub_batch_for(name, 0),
        )
        return encoder.run_all(texts)["logits"]

    precision = Precision.of(task.student.int8, held_out, fitted.labels, gates.tolerance, logits)
    if precision.name == "int8":
        (tmp / "model.int8.onnx").replace(tmp / "model.onnx")
    (tmp / "model.int8.onnx").unlink(missing_ok=True)
    served = Encoder(
        tmp / "model.onnx",
        tmp / "tokenizer.json",
        max_length=task.student.max_length,
        providers="cpu",
        threads=threads,
        sub_batch=sub_batch_for(precision.name, 0),  # as the scorer will run it
    )
    labels = fitted.labels

    rng = np.random.default_rng(seed)
    # the cases the head learnt from (not the labels denoising dropped as the teacher's slips)
    learnt = list(fit) if fitted.kept is None else [c for c, k in zip(fit, fitted.kept, strict=True) if k]
    bank_cases = learnt if len(learnt) <= MAX_BANK else [learnt[i] for i in rng.choice(len(learnt), MAX_BANK, False)]
    bank_texts = [c.text for c in bank_cases]
    # the recipe's cached embeddings of the graph that serves, if it has them
    cached = fitted.embed_int8 if precision.name == "int8" else fitted.embed
    embed = cached if cached is not None else served.embed
    # stored as float16: scored here as the scorer will read it back
    emb = embed(bank_texts).astype(np.float16)
    np.save(tmp / "knn.npy", emb)
    index = {label: i for i, label in enumerate(labels)}
    oos_i = index.get(OOS, -1)
    vote = Vote(k=VOTE_K, weight=task.student.vote) if task.student.vote > 0 else None
    bank_labels = np.asarray([index[c.label] for c in bank_cases], dtype=np.int32)  # the head learnt them all
    if vote is not None:
        np.save(tmp / KNN_LABELS, bank_labels)
    # Which requests it learnt from (their hash is the manifest's request_ids_sha256): replay
    # leaves them out when it measures this version against the labels on record.
    (tmp / TRAINED_ON).write_text(trained_on)
    k = knn_k([c.label for c in bank_cases])
    bank = Bank(emb.astype(np.float32), bank_labels, len(labels), k, vote)

    def outputs(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The served graph's (embeddings, logits), through the recipe's cached embeddings where it
        has them (the graph is the encoder plus this head: the same numbers, no graph run per retrain)."""
        if not texts:
            return np.zeros((0, bank.emb.shape[1]), np.float32), np.zeros((0, len(labels)), np.float32)
        if cached is None:
            out = served.run_all(texts)
            return out["embedding"], out["logits"]
        x = cached(texts)
        return x, np.asarray(x @ fitted.w + fitted.b)

    def score(
        texts: list[str], y_names: list[str], temperature: float, out: tuple[np.ndarray, np.ndarray] | None = None
    ) -> Scores:
        x, logits = out if out is not None else outputs(texts)
        probs, ood = bank.view(x, logits, temperature)
        return Scores(probs, ood, np.asarray([index.get(v, -1) for v in y_names], dtype=np.int64), oos_i)

    cal_x, cal_logits = outputs([c.text for c in calib])
    cal_y = np.asarray([index.get(c.label, -1) for c in calib], dtype=np.int64)
    known = cal_y >= 0
    temperature = fit_temperature(cal_logits[known], cal_y[known]) if known.sum() >= 10 else 1.0
    cal = Scores(*bank.view(cal_x, cal_logits, temperature), cal_y, oos_i)
    truth_texts = [t.text for t in truth]
    truth_out = outputs(truth_texts)  # scored once: the rule's certification, then its checks' cache
    trusted = score(truth_texts, [t.label for t in truth], temperature, truth_out)
    teacher_right = np.asarray([t.teacher == t.label for t in truth], dtype=bool)
    evidence = (
        truth_evidence(trusted, truth) if truth else Evidence("agreement", cal.probs.max(axis=1), cal.ood, cal.correct)
    )
    rule = choose_rule(goal, evidence)
    gold = score([c.text for c in golden], [c.label for c in golden], temperature)
    # The held-out view a report draws the coverage curve from (accuracy against share accepted).
    view: dict[str, np.ndarray] = {
        "confidence": gold.probs.max(axis=1).astype(np.float32),
        "ood": gold.ood.astype(np.float32),
        "correct": gold.correct,
    }
    if gold.oos_probability is not None:  # what the rule's ceiling on oos is applied with
        view |= {"oos_probability": gold.oos_probability.astype(np.float32), "answered_oos": gold.answered_oos}
    np.savez_compressed(tmp / HELD_OUT, **view)  # type: ignore[arg-type]
    gold_metrics = evaluate(gold, labels, rule, gates, [c.label for c in golden])
    if truth:  # what the release gate holds beside the serving version's on the same trusted rows
        gold_metrics["trusted"] = evaluate(trusted, labels, rule, gates, [t.label for t in truth])
    p50, p95 = latency_ms(served, [c.text for c in (golden or calib or fit)])
    serving_m = (
        serving_metrics(serving, golden, gates, threads, truth, goal) if serving is not None and golden else None
    )
    failed = gate_failures(gold_metrics, serving_m, p95, gates, targeted=task.policy.targeted)

    metrics = {
        "golden_accuracy": round(gold_metrics["accuracy"], 4),
        "golden_macro_f1": round(gold_metrics["macro_f1"], 4),
        "golden_ece": round(gold_metrics["ece"], 4),
        "golden_coverage": round(gold_metrics["coverage"], 4),
        "calib_ece_before": round(ece(softmax(cal_logits[known]), cal_y[known]), 4),
        "calib_ece_after": round(ece(cal.probs[known], cal.y[known]), 4),
        "temperature": round(temperature, 4),
        "fit_cases": float(len(fit)),
        "calib_cases": float(len(calib)),
        "golden_cases": float(len(golden)),
        "latency_p50_ms": round(p50, 2),
        "latency_p95_ms": round(p95, 2),
        "fit_seconds": round(fit_seconds, 2),
        "train_seconds": round(time.perf_counter() - started, 2),
    }
    metrics |= precision.metrics | truth_metrics(trusted, teacher_right, rule, agreement(trusted, labels, truth))
    if truth:
        metrics["truth_reviewed"] = float(sum(t.source == "review" for t in truth))  # from live traffic
    if truth and rule is not None and (let_through := evidence.false_accepts(trusted.accepted_by(rule))) is not None:
        metrics["truth_false_accepts"] = round(let_through, 4)  # out of scope accepted in scope
    if gold_metrics["accepted_accuracy"] is not None:
        metrics["golden_accepted_accuracy"] = round(gold_metrics["accepted_accuracy"], 4)
    manifest = Manifest(
        version=version,
        tenant=tenant,
        task=task.name,
        labels=labels,
        max_length=task.student.max_length,
        precision=precision.name,
        precision_choice=precision.why,
        recipe=fitted.info | {"kind": recipe.name},
        calibration=Calibration(temperature=temperature),
        ood=Ood(k=k, bank=len(bank_cases)),
        vote=vote,
        acceptance=rule,
        acceptance_target=Target(
            target_accuracy=goal.accuracy,
            target_margin=goal.margin,
            confidence_level=goal.confidence,
            max_false_accepts=goal.max_false_accepts,
        ),
        metrics=metrics,
        golden=brief(gold_metrics) | {"class_recall_min": min(gold_metrics["class_recall"].values(), default=None)},
        gates=GateReport(
            config=gates.model_dump(),
            failed=failed,
            passed=not failed,
            serving=serving_m and brief(serving_m),
        ),
        data=Data(
            cases=len(cases),
            request_ids_sha256=data_hash,
            split={"fit": len(fit), "calib": len(calib), "golden": len(golden)},
            label_counts={v: sum(1 for c in cases if c.label == v) for v in sorted({c.label for c in cases})},
            sources=dict(sorted(Counter(c.source for c in cases).items())),
        ),
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        trigger=trigger,
        files={
            str(p.relative_to(tmp)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        },
    )
    manifest.save(tmp)
    folder = home / version
    tmp.rename(folder)
    if truth and cached is not None:
        # The rows its rule was certified on are the ones its checks score first: the outputs
        # above, shared once the graph gives the same on the longest texts (where a tokeniser's
        # truncation would differ first).
        truth_x, truth_logits = truth_out
        longest = np.argsort([-len(t) for t in truth_texts], kind="stable")[:PROBE_TEXTS]
        graph = served.run_all([truth_texts[i] for i in longest])
        if np.allclose(graph["embedding"], truth_x[longest], atol=1e-4) and np.allclose(
            graph["logits"], truth_logits[longest], atol=1e-4
        ):
            remember(folder, task.student.max_length, truth_texts, truth_x, truth_logits)
    reason = "passed gates" if not failed else "; ".join(failed)
    return TrainResult(version, folder, metrics, labels, not failed, reason, failed)
