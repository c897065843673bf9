"""Training students on the real backbone (exported once per machine with Optimum), the
versions they become, and the ONNX graphs ONNX Runtime serves."""

from __future__ import annotations

import hashlib
import json
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from protege.certify import Evidence, Goal, cp_lower
from protege.errors import StudentError
from protege.events import AcceptRule
from protege.generator import generate
from protege.student.runtime import Encoder, Student, blend, knn_vote, softmax
from protege.student.train import (
    Case,
    EmbeddingCache,
    FastRecipe,
    Scores,
    Trusted,
    agreement,
    choose_rule,
    ece,
    encoded,
    fit_temperature,
    gate_failures,
    macro_f1,
    recertify_version,
    serving_metrics,
    split_cases,
    train_version,
    truth_metrics,
)
from protege.task import Gates, Task, load_task

REPO = Path(__file__).resolve().parents[2]


def test_temperature_scaling_fixes_overconfidence() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 4000)
    logits = rng.normal(size=(4000, 5))
    logits[np.arange(4000), y] += 1.0
    over = logits * 4  # an overconfident model
    t = fit_temperature(over, y)
    assert 3.0 < t < 5.5
    assert ece(softmax(over / t), y) < ece(softmax(over), y) / 2


def test_macro_f1() -> None:
    assert macro_f1(np.array([0, 1, 1]), np.array([0, 1, 1])) == 1.0
    assert macro_f1(np.array([0, 0, 0]), np.array([0, 1, 1])) == pytest.approx((0.5 + 0) / 2)


def test_macro_f1_counts_the_classes_a_model_does_not_have() -> None:
    """The golden set holds a new intent: the serving version has no such class (its cases are
    -1 for it), the candidate learned it, imperfectly. Averaged over the classes each knows, the
    serving version looked better (1.0 against 0.8) and the regression gate held the candidate
    back; with the new class counted as F1 0 for the serving version, the candidate is ahead."""
    truth = np.array([0] * 10 + [1] * 10 + [2, 2])  # 2: the new intent, two golden cases
    candidate = macro_f1(np.array([0] * 10 + [1] * 10 + [2, 0]), truth)  # learned it, misses one
    serving_y = np.array([0] * 10 + [1] * 10 + [-1, -1])
    serving_pred = np.array([0] * 10 + [1] * 10 + [0, 0])
    assert macro_f1(serving_pred, serving_y) > candidate  # the old comparison: 0.955 against 0.873
    assert macro_f1(serving_pred, serving_y, unknown_classes=1) < candidate


def test_clopper_pearson_lower_bound() -> None:
    # all n correct: the bound is (1 - confidence) ** (1 / n)
    assert cp_lower(100, 100, 0.95) == pytest.approx(0.05 ** (1 / 100))
    assert cp_lower(0, 10, 0.95) == 0.0
    assert cp_lower(90, 100, 0.95) < 0.9 < cp_lower(90, 100, 0.5) + 0.01


def _calibrated_sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Confidence that means what it says: a case is right with probability = its confidence."""
    rng = np.random.default_rng(seed)
    conf = rng.beta(5, 1, n)
    return conf, rng.uniform(0, 1, n), rng.uniform(0, 1, n) < conf


def test_rule_meets_its_target_on_fresh_data() -> None:
    conf, ood, correct = _calibrated_sample(4000, 1)
    rule = choose_rule(Goal(accuracy=0.95), Evidence("agreement", conf, ood, correct))
    assert rule is not None and 0 < rule.coverage < 1 and rule.max_ood == pytest.approx(np.quantile(ood, 0.95), 1e-5)
    held = 0
    for seed in range(2, 22):  # the guarantee is on fresh data from the same distribution
        c, o, ok = _calibrated_sample(4000, seed)
        accepted = (c >= rule.min_confidence) & (o <= rule.max_ood)
        held += ok[accepted].mean() >= 0.95
    assert held >= 19
    # a stricter target buys less coverage; an impossible one gets no rule
    strict = choose_rule(Goal(accuracy=0.975), Evidence("agreement", conf, ood, correct))
    assert strict is not None and strict.coverage < rule.coverage
    assert choose_rule(Goal(accuracy=0.97), Evidence("agreement", conf[:20], ood[:20], correct[:20])) is None


def test_the_knn_vote_counts_the_nearest_labels() -> None:
    bank = np.asarray([[1, 0], [0.8, 0.6], [0, 1], [-1, 0]], np.float32)
    labels = np.asarray([0, 1, 1, 2])
    sims = np.asarray([[1, 0]], np.float32) @ bank.T  # nearest: rows 0 (a), 1 (b), then 2 (b)
    assert knn_vote(sims, labels, 3, 1).tolist() == [[1, 0, 0]]
    assert knn_vote(sims, labels, 3, 3) == pytest.approx(np.asarray([[1 / 3, 2 / 3, 0]]))
    assert knn_vote(sims, labels, 3, 99).sum() == pytest.approx(1)  # k above the bank: all of it
    head = np.asarray([[0.9, 0.05, 0.05]])
    assert blend(head, knn_vote(sims, labels, 3, 1), 0.5) == pytest.approx(np.asarray([[0.95, 0.025, 0.025]]))
    assert blend(head, knn_vote(sims, labels, 3, 3), 0.0) is head  # weight 0: the head's alone
    assert knn_vote(np.zeros((0, 4)), labels, 3, 2).shape == (0, 3)


def test_split_is_stable_and_disjoint() -> None:
    cases = [Case(f"r{i}", f"text {i}", "a") for i in range(2000)]
    fit, calib, golden = split_cases(cases)
    assert len(fit) + len(calib) + len(golden) == 2000
    assert 0.05 < len(golden) / 2000 < 0.15 and 0.1 < len(calib) / 2000 < 0.2
    # adding cases never moves an old case to another side
    fit2, calib2, golden2 = split_cases([*cases, *(Case(f"n{i}", "x", "a") for i in range(500))])
    assert {c.request_id for c in golden} <= {c.request_id for c in golden2}
    assert {c.request_id for c in fit} <= {c.request_id for c in fit2}
    assert {c.request_id for c in calib} <= {c.request_id for c in calib2}


def test_the_students_own_answers_are_fit_never_calibration_or_golden() -> None:
    cases = [Case(f"r{i}", f"text {i}", "a", "student" if i % 2 else "teacher") for i in range(2000)]
    fit, calib, golden = split_cases(cases)
    assert {c.source for c in [*calib, *golden]} == {"teacher"}
    assert sum(c.source == "student" for c in fit) == 1000
    # a teacher case keeps the side it had without the student's cases beside it
    alone = split_cases([c for c in cases if c.source == "teacher"])
    assert [len(p) for p in alone] == [len(fit) - 1000, len(calib), len(golden)]


def test_gates_say_why() -> None:
    good = {
        "cases": 500,
        "accuracy": 0.95,
        "macro_f1": 0.94,
        "ece": 0.03,
        "coverage": 0.7,
        "class_recall": {"a": 0.9, "b": 0.95},
    }
    gates = Gates(min_accuracy=0.8, min_class_recall=0.5, max_ece=0.1, max_latency_ms=100)
    assert gate_failures(good, None, 20, gates) == []
    assert gate_failures(good, good, 20, gates) == []
    worse = good | {"accuracy": 0.90, "class_recall": {"a": 0.2, "b": 0.95}, "ece": 0.2}
    reasons = gate_failures(worse, good, 150, gates)
    assert any("worse than the serving version" in r and "accuracy" in r for r in reasons)
    assert any("recall below 0.50 for 1 class(es): a 0.20" in r for r in reasons)
    assert any("calibration error" in r for r in reasons) and any("latency" in r for r in reasons)
    # too few golden cases for the statistical gates: only the floors apply, and the accuracy floor
    # only when the accuracy is significantly below it
    assert gate_failures(worse | {"cases": 50, "class_recall": {}}, good, 20, gates) == []
    assert gate_failures(good | {"cases": 12, "accuracy": 5 / 12}, None, 20, Gates(min_accuracy=0.5)) == []
    low = gate_failures(good | {"cases": 12, "accuracy": 1 / 12}, None, 20, Gates(min_accuracy=0.5))
    assert len(low) == 1 and "upper bound" in low[0]
    # under a target, a candidate whose rule certifies nothing does not replace one that answers,
    # however few the golden cases (announced, it would answer nothing)
    certified, nothing = good | {"certified": True}, good | {"certified": False, "coverage": 0.0}
    [why] = gate_failures(nothing | {"cases": 12}, certified, 20, gates, targeted=True)
    assert "certifies nothing for the target" in why and "70.0%" in why
    assert gate_failures(nothing | {"cases": 12}, certified, 20, gates) == []  # fixed thresholds: no rule needed
    assert gate_failures(nothing | {"cases": 12}, nothing, 20, gates, targeted=True) == []  # neither answers
    assert gate_failures(nothing | {"cases": 12}, None, 20, gates, targeted=True) == []  # the first version


def test_with_trusted_rows_the_candidate_is_held_to_the_serving_version_on_them() -> None:
    """Where both versions were scored on the trusted rows, the comparison is made there (true
    labels), not on the golden split of teacher labels: a fine-tuned student that is right where
    a teacher errs alike on similar requests scores lower against that teacher's labels (BANKING77,
    confusable noise, stop 47: macro-F1 0.793 against 0.815 on 411 teacher-labelled cases, while
    its rule certified 91.2% of the trusted rows against 87.9%)."""
    on_golden = {"cases": 411, "accuracy": 0.81, "macro_f1": 0.79, "ece": 0.04, "coverage": 0.82, "class_recall": {}}
    on_truth = {"cases": 1000, "accuracy": 0.92, "macro_f1": 0.91, "ece": 0.04, "coverage": 0.91, "class_recall": {}}
    serving = on_golden | {"macro_f1": 0.815, "trusted": on_truth | {"coverage": 0.879}}
    gates = Gates()
    assert gate_failures(on_golden | {"trusted": on_truth}, serving, 20, gates) == []
    # without the trusted rows on either side, the golden split decides, as before
    [why] = gate_failures(on_golden, serving, 20, gates)
    assert why.startswith("golden macro-F1 0.790 is worse") and "the same 411 golden rows" in why
    [why] = gate_failures(
        on_golden | {"trusted": on_truth}, {k: v for k, v in serving.items() if k != "trusted"}, 20, gates
    )
    assert why.startswith("golden macro-F1")
    # worse on the trusted rows: held back, and the reason names them
    worse = on_truth | {"coverage": 0.85}
    [why] = gate_failures(on_golden | {"trusted": worse}, serving | {"macro_f1": 0.7}, 20, gates)
    assert why.startswith("trusted coverage at target 0.850 is worse than the serving version's 0.879")
    assert "the same 1000 trusted rows" in why
    # too few trusted rows for the comparison: none is made (the floors still apply)
    assert gate_failures(on_golden | {"trusted": worse | {"cases": 50}}, serving, 20, gates) == []


@pytest.fixture(scope="module")
def task() -> Task:
    return load_task(REPO / "tests" / "tasks" / "ticket-triage.yaml")


@pytest.fixture(scope="module")
def embed(backbone: Path) -> EmbeddingCache:
    return EmbeddingCache(Encoder(backbone / "model.onnx", backbone / "tokenizer.json"))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reg")


@pytest.fixture(scope="module")
def version(backbone: Path, embed: EmbeddingCache, registry: Path, task: Task):
    rows = generate(900, seed=5)
    cases = [Case(r["id"], r["text"], r["label"]) for r in rows[:700]]
    result = train_version(cases, recipe=FastRecipe(embed, backbone), registry=registry, tenant="acme", task=task)
    return result, rows[700:]


def test_trained_version_is_complete_and_checksummed(version) -> None:
    result, _ = version
    manifest = json.loads((result.folder / "manifest.json").read_text())
    assert manifest["version"] == result.version and result.version.startswith("v0001-")
    assert set(manifest["files"]) == {
        "model.onnx",
        "tokenizer.json",
        "knn.npy",
        "knn_labels.npy",
        "trained_on.txt",
        "held_out.npz",
    }
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((result.folder / name).read_bytes()).hexdigest() == digest
    split = manifest["data"]["split"]
    assert manifest["data"]["cases"] == 700 == split["fit"] + split["calib"] + split["golden"]
    trained_on = (result.folder / "trained_on.txt").read_bytes()  # the ids replay leaves out, as hashed
    assert hashlib.sha256(trained_on).hexdigest() == manifest["data"]["request_ids_sha256"]
    assert len(trained_on.split(b"\n")) == 700
    held_out = np.load(result.folder / "held_out.npz")  # what the golden metrics were computed from
    assert len(held_out["confidence"]) == len(held_out["ood"]) == split["golden"]
    assert held_out["correct"].mean() == pytest.approx(manifest["metrics"]["golden_accuracy"], abs=1e-4)
    assert manifest["calibration"]["temperature"] > 0 and manifest["ood"]["method"] == "knn"
    assert manifest["vote"] == {"method": "knn", "k": 5, "weight": 0.3}  # the task's default (student.vote)
    assert (
        len(np.load(result.folder / "knn_labels.npy"))
        == manifest["ood"]["bank"]
        == len(np.load(result.folder / "knn.npy"))
    )
    assert manifest["gates"]["passed"] and result.promoted and result.failed_gates == []
    assert result.metrics["golden_accuracy"] > 0.8 and result.metrics["latency_p95_ms"] > 0
    assert manifest["recipe"]["kind"] == "fast"
    # int8: auto (the default): the int8 graph serves when its accuracy on the held-out cases
    # (calib and golden) is within the gates' tolerance of the fp32 graph's
    m, tolerance = manifest["metrics"], manifest["gates"]["config"]["tolerance"]
    chosen = "int8" if m["held_out_accuracy_int8"] >= m["held_out_accuracy_fp32"] - tolerance else "fp32"
    held = split["calib"] + split["golden"]
    assert manifest["precision"] == chosen
    assert (
        manifest["precision_choice"].startswith(f"{chosen}: held-out accuracy")
        and f"on {held} cases" in manifest["precision_choice"]
    )
    assert 0.9 <= m["int8_agreement"] <= 1 and m["held_out_accuracy_fp32"] > 0.8


def test_the_same_cases_in_another_order_train_the_same_version(
    version, backbone: Path, embed: EmbeddingCache, registry: Path, task: Task
) -> None:
    """A version is its cases: the store's order (their arrival) changes no file of it."""
    result, _ = version
    rows = generate(900, seed=5)
    cases = [Case(r["id"], r["text"], r["label"]) for r in rows[:700]][::-1]
    again = train_version(cases, recipe=FastRecipe(embed, backbone), registry=registry, tenant="acme-order", task=task)
    first, second = (json.loads((r.folder / "manifest.json").read_text()) for r in (result, again))
    assert again.version.split("-")[1] == result.version.split("-")[1]  # the data hash
    assert second["files"] == first["files"] and second["acceptance"] == first["acceptance"]


def test_onnx_student_predicts_with_signals(version) -> None:
    result, held = version
    student = Student(result.folder, providers="cpu")
    assert student.providers == ["CPUExecutionProvider"]
    outs = student.predict([r["text"] for r in held])
    accuracy = np.mean([o.label == r["label"] for o, r in zip(outs, held, strict=True)])
    assert accuracy > 0.85
    for o in outs:
        assert o.model_version == result.version and o.rule == student.rule
        assert 0 <= o.confidence <= 1 and 0 <= o.margin <= o.confidence and len(o.top) == 3
    # batching and padding do not change a text's answer
    alone = student.predict([held[0]["text"]])[0]
    assert alone.label == outs[0].label and alone.confidence == pytest.approx(outs[0].confidence, abs=1e-4)
    # the served probabilities are the calibrated head's mixed with the kNN vote, as trained
    out = student.encoder.run([held[0]["text"]])
    head = softmax(out["logits"] / student.temperature)[0]
    votes = knn_vote(out["embedding"] @ student.bank.emb.T, student.bank.labels, len(student.labels), 5)[0]
    weight = student.manifest.vote.weight  # type: ignore[union-attr]
    assert alone.confidence == pytest.approx(float(np.max((1 - weight) * head + weight * votes)), abs=1e-5)
    # a version that knows "oos" gives its probability with every answer
    oos = student.labels.index("oos")
    assert alone.oos_probability == pytest.approx(float(((1 - weight) * head + weight * votes)[oos]), abs=1e-5)
    assert all(o.oos_probability is not None for o in outs)
    # strange input is further from its nearest training cases than typical input
    weird = student.predict(["zxq vlorp 8812 ###", "the mitochondria is the powerhouse of the cell"])
    assert min(o.ood for o in weird) > np.quantile([o.ood for o in outs], 0.9)


def test_candidate_worse_than_serving_is_held_back(
    version, backbone: Path, embed: EmbeddingCache, registry: Path, task: Task
) -> None:
    result, _ = version
    rows = generate(900, seed=5)[:700]
    rng = np.random.default_rng(3)
    labels = [r["label"] for r in rows]
    noisy = [
        Case(r["id"], r["text"], labels[rng.integers(len(labels))] if rng.random() < 0.6 else r["label"]) for r in rows
    ]
    lenient = task.model_copy(
        update={"student": task.student.model_copy(update={"gates": Gates(min_accuracy=0.2, min_golden=20)})}
    )
    cand = train_version(
        noisy, recipe=FastRecipe(embed, backbone), registry=registry, tenant="acme", task=lenient, serving=result.folder
    )
    assert not cand.promoted
    assert any("worse than the serving version" in r for r in cand.failed_gates), cand.failed_gates
    manifest = json.loads((cand.folder / "manifest.json").read_text())
    assert manifest["gates"]["serving"]["version"] == result.version and not manifest["gates"]["passed"]
    # with trusted rows, both versions are scored on them and compared there
    _, held = version
    truth = [Trusted(r["id"], r["text"], r["label"], r["label"]) for r in held[:150]]
    judged = train_version(
        noisy,
        recipe=FastRecipe(embed, backbone),
        registry=registry,
        tenant="acme",
        task=lenient,
        serving=result.folder,
        truth=truth,
    )
    assert not judged.promoted
    assert any(r.startswith("trusted ") and "the same 150 trusted rows" in r for r in judged.failed_gates)
    manifest = json.loads((judged.folder / "manifest.json").read_text())
    assert manifest["gates"]["serving"]["trusted"]["cases"] == manifest["golden"]["trusted"]["cases"] == 150
    assert "class_recall" not in manifest["gates"]["serving"]["trusted"]


def test_int8_version_keeps_its_answers(
    version, backbone: Path, embed: EmbeddingCache, registry: Path, task: Task
) -> None:
    _, held = version
    cases = [Case(r["id"], r["text"], r["label"]) for r in generate(900, seed=5)[:700]]
    trained = {}
    for int8 in (True, False):  # asked for, either way
        asked = task.model_copy(update={"student": task.student.model_copy(update={"int8": int8})})
        trained[int8] = train_version(
            cases, recipe=FastRecipe(embed, backbone), registry=registry, tenant=f"acme-{int8}", task=asked
        )
    q, f = trained[True], trained[False]
    assert json.loads((q.folder / "manifest.json").read_text())["precision"] == "int8"
    manifest = json.loads((f.folder / "manifest.json").read_text())
    assert manifest["precision"] == "fp32" and "held_out_accuracy_int8" not in manifest["metrics"]
    assert (q.folder / "model.onnx").stat().st_size < (f.folder / "model.onnx").stat().st_size / 2
    assert not (f.folder / "model.int8.onnx").exists() and not (q.folder / "model.int8.onnx").exists()
    texts = [r["text"] for r in held]
    fp32 = [o.label for o in Student(f.folder, providers="cpu").predict(texts)]
    int8 = Student(q.folder, providers="cpu")
    assert int8.encoder.session_info["intra_op_threads"] == 1  # one text per run: one thread (threads_for)
    q8 = int8.predict(texts)
    assert np.mean(np.asarray(fp32) == np.asarray([o.label for o in q8])) >= 0.97
    # one text per run: an int8 answer does not depend on its batch-mates (float32 noise aside, as fp32's)
    for alone, batched in zip(int8.predict(texts[:1]) + int8.predict(texts[5:9]), q8[:1] + q8[5:9], strict=True):
        assert alone.label == batched.label
        for signal in ("confidence", "margin", "ood"):
            assert getattr(alone, signal) == pytest.approx(getattr(batched, signal), abs=2e-6)


def test_finetuned_onnx_matches_pytorch(backbone: Path, embed: EmbeddingCache, tmp_path: Path) -> None:
    """Parity: the Optimum-exported, fused graph + head gives PyTorch's logits."""
    from protege.student.backbone import source_dir
    from protege.student.export import append_head, export_encoder
    from protege.student.finetune import Classifier, FinetuneConfig, finetune
    from protege.student.train import fit_head

    rows = generate(160, seed=9)
    texts, names = [r["text"] for r in rows], np.asarray([r["label"] for r in rows])
    w, b, labels = fit_head(embed(texts), names)
    model = Classifier(source_dir(), w, b, max_length=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        heard: list[tuple[int, int, int]] = []
        log = finetune(
            model,
            texts,
            np.asarray([labels.index(v) for v in names]),
            FinetuneConfig(epochs=1),
            on_batch=lambda *a: heard.append(a),
        )
        torch_logits, torch_emb = model.predict(texts)
        enc = export_encoder(model.save_encoder(tmp_path / "hf"), tmp_path / "enc")
    assert log["epochs"][0]["loss"] > 0
    assert heard[-1] == (1, 160, 160) and [d for _, d, _ in heard] == sorted({d for _, d, _ in heard})  # the bar's feed
    fw, fb = model.head_arrays()
    append_head(enc / "model.onnx", fw, fb, tmp_path / "model.onnx")
    out = Encoder(tmp_path / "model.onnx", enc / "tokenizer.json", max_length=32).run_all(texts)
    assert np.abs(out["logits"] - torch_logits).max() < 1e-3
    assert np.abs(out["embedding"] - torch_emb).max() < 1e-4
    assert not np.allclose(fw, w)  # the head moved: it was trained, not just copied


def test_knn_k_fits_the_rarest_label() -> None:
    from protege.student.train import knn_k

    assert knn_k(["a"] * 50 + ["b"] * 40) == 10
    assert knn_k(["a"] * 50 + ["b"] * 3) == 3
    assert knn_k([]) == 1


def test_the_session_fits_the_cores_the_process_has() -> None:
    import os

    from protege.student.runtime import cpu_budget, session_options

    assert 1 <= cpu_budget() <= len(os.sched_getaffinity(0))
    opts = session_options(0, spinning=False)
    assert opts.intra_op_num_threads == cpu_budget() and opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options(3, spinning=True).intra_op_num_threads == 3
    assert session_options(3, spinning=True).get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_an_int8_graph_runs_on_one_thread_unless_told() -> None:
    """An int8 graph scores one text per run (``sub_batch_for``): too little work to split, so the
    scorer's default (``PROTEGE_THREADS`` 0) gives it one thread; fp32 sub-batches get the cores;
    a thread count asked for is kept."""
    from protege.student.runtime import cpu_budget, sub_batch_for, threads_for

    assert sub_batch_for("int8", 8) == 1 and threads_for("int8", 0) == 1
    assert threads_for("fp32", 0) == cpu_budget()
    assert threads_for("int8", 2) == 2 and threads_for("fp32", 3) == 3


def test_denoising_drops_the_labels_the_student_confidently_contradicts() -> None:
    """Well separated classes, 5% of the labels flipped: what is dropped is mostly the flips,
    most flips are dropped, and nothing is dropped from a set too small to have folds."""
    from protege.student.train import DENOISE_MIN_CASES, denoised

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 16)) * 4
    truth = rng.integers(0, 6, 1200)
    x = centres[truth] + rng.normal(size=(1200, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    flipped = rng.uniform(size=1200) < 0.05
    given = np.where(flipped, (truth + 1 + rng.integers(0, 5, 1200)) % 6, truth)
    names = np.asarray([f"c{v}" for v in given])
    keep = denoised(x, names)
    dropped = ~keep
    assert dropped.sum() > 0 and flipped[dropped].mean() > 0.9 and dropped[flipped].mean() > 0.5
    assert denoised(x[: DENOISE_MIN_CASES - 1], names[: DENOISE_MIN_CASES - 1]).all()
    # the teacher's "out of scope" is never dropped, however sure the student is
    oos = names.astype("<U8")  # room for the longer label
    oos[:60] = "oos"
    assert denoised(x, oos)[:60].all()


def test_a_label_weighted_in_the_finetune_is_learnt_harder(backbone: Path, embed: EmbeddingCache) -> None:
    """``class_weight`` (how the LP-FT recipe weighs ``oos``, FinetuneConfig.oos_weight): from the
    same start and seed, the weighted label's probability on its own texts ends higher."""
    from protege.student.backbone import source_dir
    from protege.student.finetune import Classifier, FinetuneConfig, finetune
    from protege.student.train import fit_head

    rows = generate(160, seed=9)
    texts, names = [r["text"] for r in rows], np.asarray([r["label"] for r in rows])
    w, b, labels = fit_head(embed(texts), names)
    y = np.asarray([labels.index(v) for v in names])
    ends = []
    for weight in (np.ones(len(labels)), np.where(np.arange(len(labels)) == 0, 16.0, 1.0)):
        model = Classifier(source_dir(), w, b, max_length=32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            finetune(model, texts, y, FinetuneConfig(epochs=1), class_weight=weight)
        logits, _ = model.predict([t for t, k in zip(texts, y, strict=True) if k == 0])
        p = np.exp(logits - logits.max(1, keepdims=True))
        ends.append(float((p[:, 0] / p.sum(1)).mean()))
    plain, weighted = ends
    assert 1 - weighted < (1 - plain) / 2, ends  # measured: 0.959 -> 0.987


def test_a_finetuned_version_keeps_its_encoder_and_retrains_refresh_the_head_on_it(
    backbone: Path, embed: EmbeddingCache, tmp_path: Path, task: Task
) -> None:
    """A version of the LP-FT recipe keeps its fine-tuned encoder; the trainer's fast retrains
    while it serves fit their heads on that encoder (``HeadRefresh``), not on the shared
    backbone, and keep a link to it, so the line goes on from each refreshed version."""
    from protege.student.backbone import source_dir
    from protege.student.finetune import FinetuneConfig
    from protege.student.train import ENCODER, FinetuneRecipe, HeadRefresh, kept_encoder

    rows = generate(400, seed=11)
    cases = [Case(r["id"], r["text"], r["label"]) for r in rows]
    registry = tmp_path / "reg"
    config = FinetuneConfig(epochs=1, max_length=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuned = train_version(
            cases[:240],
            recipe=FinetuneRecipe(embed, backbone, source_dir(), config),
            registry=registry,
            tenant="acme",
            task=task,
        )
    kept = kept_encoder(tuned.folder)
    assert kept == tuned.folder / ENCODER and kept_encoder(None) is None
    assert json.loads((kept / "backbone.json").read_text())["finetuned_in"] == tuned.version
    manifest = json.loads((tuned.folder / "manifest.json").read_text())
    assert "encoder/model.onnx" in manifest["files"]  # checksummed with the rest

    refresh = HeadRefresh(FastRecipe(embed, backbone))
    assert refresh.on(None) is refresh.base  # nothing serves: the shared backbone
    recipe = refresh.on(tuned.folder)
    assert recipe.backbone == kept
    fresh = train_version(cases, recipe=recipe, registry=registry, tenant="acme", task=task, serving=tuned.folder)
    assert fresh.version.startswith("v0002-")
    again = kept_encoder(fresh.folder)
    assert again is not None and (again / "model.onnx").stat().st_ino == (kept / "model.onnx").stat().st_ino  # a link
    assert json.loads((again / "backbone.json").read_text())["finetuned_in"] == tuned.version
    assert refresh.on(fresh.folder) is recipe  # the same encoder: its embeddings are not made again

    # The refreshed version runs the fine-tuned encoder, not the shared backbone.
    texts = [r["text"] for r in rows[:20]]
    served = Encoder(fresh.folder / "model.onnx", fresh.folder / "tokenizer.json").run_all(texts)["embedding"]
    precision = json.loads((fresh.folder / "manifest.json").read_text())["precision"]
    graph = kept / ("model.int8.onnx" if precision == "int8" else "model.onnx")  # int8: quantised for the refresh
    tuned_emb = Encoder(graph, kept / "tokenizer.json").run_all(texts)["embedding"]
    assert np.abs(served - tuned_emb).max() < 1e-4 and np.abs(tuned_emb - embed(texts)).max() > 1e-2
    # A base-backbone version keeps no encoder.
    base = train_version(cases, recipe=FastRecipe(embed, backbone), registry=registry, tenant="acme", task=task)
    assert kept_encoder(base.folder) is None and base.version.startswith("v0003-")


def test_versions_never_share_a_number(tmp_path: Path) -> None:
    """Two trainings at once (a scheduled fine-tune beside the trainer) take distinct numbers;
    a crash's leftover folder keeps its number."""
    from protege.student.train import claim_partial

    (tmp_path / "v0004-aaaaaaaa").mkdir()
    first, n1 = claim_partial(tmp_path)
    second, n2 = claim_partial(tmp_path)
    assert (n1, n2) == (5, 6) and first.name == ".v0005.partial" and second.is_dir()
    assert claim_partial(tmp_path)[1] == 7


def test_a_version_without_the_vote_serves_the_head_alone_and_a_broken_label_file_is_refused(
    backbone: Path, embed: EmbeddingCache, task: Task, tmp_path: Path, version
) -> None:
    rows = generate(500, seed=6)
    plain = task.model_copy(update={"student": task.student.model_copy(update={"vote": 0.0})})
    cases = [Case(r["id"], r["text"], r["label"]) for r in rows]
    result = train_version(cases, recipe=FastRecipe(embed, backbone), registry=tmp_path, tenant="acme", task=plain)
    manifest = json.loads((result.folder / "manifest.json").read_text())
    assert manifest["vote"] is None and not (result.folder / "knn_labels.npy").exists()
    student = Student(result.folder, providers="cpu")
    out = student.encoder.run([rows[0]["text"]])
    head = softmax(out["logits"] / student.temperature)[0]
    assert student.predict([rows[0]["text"]])[0].confidence == pytest.approx(float(head.max()), abs=1e-5)
    # a voting version whose label file does not label its bank is not served
    voting, _ = version
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in voting.folder.iterdir():
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    labels = np.load(broken / "knn_labels.npy")
    np.save(broken / "knn_labels.npy", labels[:-1])
    with pytest.raises(StudentError, match=r"knn_labels\.npy does not label"):
        Student(broken, providers="cpu")
    np.save(broken / "knn_labels.npy", labels + 1000)
    with pytest.raises(StudentError, match=r"knn_labels\.npy does not label"):
        Student(broken, providers="cpu")


def test_a_version_certified_under_a_false_accept_cap_keeps_its_view_of_oos(
    backbone: Path, embed: EmbeddingCache, registry: Path, task: Task
) -> None:
    """Certified on a golden set with out-of-scope cases and a false-accept cap: the rule lets
    through no more of them than the cap, and held_out.npz keeps each golden case's probability
    of ``oos`` and whether the student answered it (the report applies the rule's ceiling with
    them)."""
    from protege.student.train import Trusted

    rows = generate(1400, seed=9)
    labels = sorted({r["label"] for r in rows})
    cases = [Case(r["id"], r["text"], r["label"]) for r in rows[:800]]
    # a teacher wrong on every tenth golden case
    wrong = {r["id"]: labels[(labels.index(r["label"]) + 1) % len(labels)] for r in rows[800::10]}
    truth = [Trusted(r["id"], r["text"], r["label"], wrong.get(r["id"], r["label"])) for r in rows[800:]]
    policy = task.policy.model_copy(update={"target_margin": 0.01, "max_false_accepts": 0.03})
    capped = task.model_copy(update={"policy": policy})
    result = train_version(
        cases, recipe=FastRecipe(embed, backbone), registry=registry, tenant="acme-cap", task=capped, truth=truth
    )
    manifest = json.loads((result.folder / "manifest.json").read_text())
    assert manifest["acceptance"]["evidence"] == "golden"
    assert manifest["acceptance_target"]["max_false_accepts"] == 0.03
    assert manifest["metrics"]["truth_false_accepts"] <= 0.03
    held = np.load(result.folder / "held_out.npz")
    assert len(held["oos_probability"]) == len(held["answered_oos"]) == len(held["confidence"])
    assert held["answered_oos"].any() and (held["oos_probability"][held["answered_oos"]] > 0.3).all()


def test_a_new_versions_first_check_scores_only_rows_its_retrain_did_not(
    backbone: Path, embed: EmbeddingCache, registry: Path, task: Task
) -> None:
    """A retrain scores the trusted rows to certify its rule; its version's checks read those
    outputs back (``encoded``) instead of running the new graph on every row again, and they are
    what the graph gives."""
    from protege.student.train import Trusted

    rows = generate(700, seed=13)
    cases = [Case(r["id"], r["text"], r["label"]) for r in rows[:500]]
    truth = [Trusted(r["id"], r["text"], r["label"], r["label"]) for r in rows[500:]]
    result = train_version(
        cases, recipe=FastRecipe(embed, backbone), registry=registry, tenant="acme-first-check", task=task, truth=truth
    )
    s = Student(result.folder, providers="cpu")
    texts = [t.text for t in truth] + ["a row reviewed after the retrain ended"]
    direct = s.encoder.run_all(texts)
    ran: list[int] = []
    run_all = s.encoder.run_all
    s.encoder.run_all = lambda batch: ran.append(len(batch)) or run_all(batch)  # type: ignore[method-assign]
    kept = encoded(s, result.folder, texts)
    assert ran == [1]  # the new row only
    for key in ("embedding", "logits"):
        np.testing.assert_allclose(kept[key], direct[key], atol=1e-4)


def test_the_serving_version_is_held_to_the_rule_todays_rows_certify(version, task: Task) -> None:
    """The release gate compares a candidate's certified coverage with the serving version's.
    With trusted rows, the serving version's rule is the one the same certification gives it on
    them now, not the one it certified when it was trained: on rows like its training data it
    certifies what they allow (here more than its own rule, certified on agreement for 0.97,
    which is none); after a shift (every label moved to another queue, the teacher's with it)
    it certifies nothing, so an old rule does not hold back a candidate certified on today's rows."""
    result, held = version
    golden = [Case(r["id"], r["text"], r["label"]) for r in held[:100]]
    queues = sorted({r["label"] for r in held})

    def moved(label: str) -> str:
        return queues[(queues.index(label) + 1) % len(queues)]

    gates, goal = task.student.gates, Goal(accuracy=0.8, confidence=0.95)
    as_served = serving_metrics(result.folder, golden, gates, 1)
    manifest = json.loads((result.folder / "manifest.json").read_text())
    assert as_served["rule"] == "as served" and manifest["acceptance"] is None and as_served["coverage"] == 0
    unchanged = [Trusted(r["id"], r["text"], r["label"], r["label"]) for r in held]
    now = serving_metrics(result.folder, golden, gates, 1, unchanged, goal)
    assert now["rule"] == f"re-certified on {len(held)} trusted rows" and now["coverage"] > 0.3 and now["certified"]
    assert now["accuracy"] == as_served["accuracy"]  # the same answers on the same golden cases: only the rule moved
    # and scored on the trusted rows themselves, where a candidate is held to it
    assert now["trusted"]["cases"] == len(held) and now["trusted"]["coverage"] > 0.3 and "trusted" not in as_served
    shifted = [Trusted(r["id"], r["text"], moved(r["label"]), moved(r["label"])) for r in held]
    after = serving_metrics(result.folder, golden, gates, 1, shifted, goal)
    assert after["coverage"] == 0 and not after["certified"]  # a candidate that certifies nothing may replace it


def test_the_serving_version_is_certified_again_on_todays_rows_as_a_new_version(
    version, registry: Path, task: Task
) -> None:
    """A version that certified nothing gets the rule later trusted rows certify — a new version
    sharing its files; on the same rows that version keeps its rule; after a shift that makes
    it wrong (every label moved to another queue) its rule falls short and the rows certify
    nothing: the next version answers nothing."""
    result, held = version
    targeted = task.model_copy(update={"policy": task.policy.model_copy(update={"target_accuracy": 0.8})})
    rows = [Trusted(r["id"], r["text"], r["label"], r["label"], "review") for r in held]
    again = recertify_version(result.folder, registry=registry, tenant="acme", task=targeted, truth=rows)
    assert again is not None and again.source == result.version and not again.broken and again.rule is not None
    assert again.version.endswith(result.version.split("-")[1]) and again.version != result.version  # same cases
    first, second = (json.loads((f / "manifest.json").read_text()) for f in (result.folder, again.folder))
    assert first["acceptance"] is None and second["acceptance"]["min_confidence"] == again.rule.min_confidence
    assert second["recertified_from"] == result.version and "certified nothing" in second["trigger"]
    assert second["files"] == first["files"]  # the same graph, bank and labels: only the rule moved
    for name in first["files"]:
        assert (again.folder / name).stat().st_ino == (result.folder / name).stat().st_ino  # linked, not copied
    assert second["metrics"]["truth_cases"] == len(rows) and second["metrics"]["truth_coverage"] > 0.3
    m = second["metrics"]  # the teacher's label is the truth on these rows: agreement is accuracy
    assert m["truth_agreement_on_accepted"] == m["truth_accepted_accuracy"]
    assert m["truth_accepted_cases"] == round(m["truth_coverage"] * len(rows))
    assert 0 < second["metrics"]["golden_coverage"] == pytest.approx(second["golden"]["coverage"], abs=1e-4)
    texts = [r["text"] for r in held[:20]]
    old, new = (
        Student(result.folder, providers="cpu").predict(texts),
        Student(again.folder, providers="cpu").predict(texts),
    )
    assert [(o.label, o.confidence) for o in old] == [(n.label, n.confidence) for n in new]
    assert all(o.rule is None and n.rule == again.rule for o, n in zip(old, new, strict=True))
    assert all(n.model_version == again.version for n in new)
    # the same rows again: its rule holds, nothing to do
    assert recertify_version(again.folder, registry=registry, tenant="acme", task=targeted, truth=rows) is None
    # reviewed rows since it was certified, out of scope one in three (one in twenty before): a shift
    more = generate(3000, seed=9)
    outside = [r for r in more if r["label"] == "oos"][:50] + [r for r in more if r["label"] != "oos"][:100]
    since = [Trusted(r["id"], r["text"], r["label"], r["label"], "review") for r in outside]
    filed = [Trusted(f"f{i}", r["text"], "oos", "oos", "file") for i, r in enumerate(outside[:50])]
    judge = partial(
        recertify_version,
        again.folder,
        registry=registry,
        tenant="acme",
        task=targeted,
        truth=filed + rows + since,
        recent={t.request_id for t in since},
    )
    moved = judge()
    assert moved is not None and moved.broken and "the 150 trusted rows since it was certified" in moved.why
    # compared with the 200 reviewed rows of before, not with the file's 50 (all out of scope)
    assert "out-of-scope share rose from 8.0% (16 of 200 rows) to 33.3% (50 of 150)" in moved.why, moved.why
    assert moved.shift_from is None  # no order given: every row since it was certified
    # in the order people completed them, the first 60 since were yesterday's traffic (in scope):
    # today's rows start after them
    ordered = [t for t in since if t.label != "oos"][:60] + [t for t in since if t.label == "oos"]
    ordered += [t for t in since if t.label != "oos"][60:]
    places = {t.request_id: i for i, t in enumerate(rows + ordered)}
    placed = judge(places=places)
    assert placed is not None and placed.broken and placed.shift_from is not None, placed
    assert len(rows) + 40 <= placed.shift_from <= len(rows) + 80 and "of them are today's" in placed.why, placed.why
    # the file's rows (all out of scope here) are not traffic of before: without the shift, nothing moved
    steady = [t for t in rows if t.label != "oos"][:60] + [t for t in since if t.label != "oos"][:60]
    kept = recertify_version(
        again.folder,
        registry=registry,
        tenant="acme",
        task=targeted,
        truth=filed + steady,
        recent={t.request_id for t in steady[60:]},
    )
    assert kept is None or not kept.broken, kept.why
    queues = sorted({r["label"] for r in held})
    shifted = [
        Trusted(t.request_id, t.text, queues[(queues.index(t.label) + 1) % len(queues)], t.teacher, "review")
        for t in rows
    ]
    broken = recertify_version(again.folder, registry=registry, tenant="acme", task=targeted, truth=shifted)
    assert broken is not None and broken.broken and broken.rule is None and "falls short" in broken.why
    assert Student(broken.folder, providers="cpu").rule is None


def test_a_version_from_before_held_out_npz_is_certified_again_too(
    version, registry: Path, task: Task, tmp_path: Path
) -> None:
    import shutil

    result, held = version
    old = tmp_path / "registry" / "acme" / task.name / result.version
    shutil.copytree(result.folder, old)
    (old / "held_out.npz").unlink()  # versions trained before it was kept
    targeted = task.model_copy(update={"policy": task.policy.model_copy(update={"target_accuracy": 0.8})})
    rows = [Trusted(r["id"], r["text"], r["label"], r["label"], "review") for r in held]
    again = recertify_version(old, registry=tmp_path / "registry", tenant="acme", task=targeted, truth=rows)
    assert again is not None and again.rule is not None and not (again.folder / "held_out.npz").exists()
    assert again.metrics["truth_coverage"] > 0.3 and 0 <= again.metrics["truth_false_accepts"] <= 1
    assert again.metrics["golden_coverage"] == 0  # the hash-split golden set's view is gone with the file: as it was


def test_the_scorer_caps_numpys_blas_threads_and_says_so() -> None:
    """``limit_blas`` (the scorer at start, PROTEGE_BLAS_THREADS): numpy's BLAS at the threads
    asked for, reported per library for the log; 0 leaves the library's choice alone."""
    from threadpoolctl import threadpool_limits

    from protege.student.runtime import limit_blas

    with threadpool_limits(limits=None, user_api="blas"):  # the test process's own limits come back after
        assert limit_blas(0)  # numpy's BLAS is one threadpoolctl finds: else the cap would do nothing, unseen
        capped = limit_blas(1)
        assert capped and set(capped.values()) == {1}
        assert limit_blas(0) == capped


def test_a_checked_version_runs_its_graph_only_on_texts_it_has_not_scored(version, tmp_path: Path) -> None:
    """The serving rule is judged again every so many reviewed rows on all of them: each text's
    outputs are kept per model file (a re-certified copy shares it by a hard link), and equal
    what the graph gives."""
    from protege.student.runtime import Student
    from protege.student.train import link_or_copy

    result, held = version
    texts = [f"{r['text']} (a text no other test scores)" for r in held[:40]]
    s = Student(result.folder, providers="cpu")
    direct = s.encoder.run_all(texts)
    ran: list[int] = []
    run_all = s.encoder.run_all
    s.encoder.run_all = lambda batch: ran.append(len(batch)) or run_all(batch)  # type: ignore[method-assign]
    first = encoded(s, result.folder, texts[:25])
    both = encoded(s, result.folder, texts)
    assert ran == [25, 15]  # the 15 new ones only
    for key in ("embedding", "logits"):
        np.testing.assert_allclose(first[key], direct[key][:25], atol=1e-5)
        np.testing.assert_allclose(both[key], direct[key], atol=1e-5)
    copy = tmp_path / "copy"
    copy.mkdir()
    link_or_copy(result.folder / "model.onnx", copy / "model.onnx")
    if (copy / "model.onnx").stat().st_ino == (result.folder / "model.onnx").stat().st_ino:
        encoded(s, copy, texts)
        assert ran == [25, 15]  # the same file: nothing to run


def test_truth_metrics_say_what_an_audit_of_the_accepted_answers_should_find() -> None:
    """Audits compare the student with the teacher, not with the truth: on the trusted rows the
    rule accepts, the share where the student gave the teacher's label is what a canary's
    audits are read against (``protege.canary.expected``)."""
    labels = ["a", "b"]
    probs = np.asarray([[0.99, 0.01], [0.98, 0.02], [0.97, 0.03], [0.1, 0.9], [0.55, 0.45]])
    s = Scores(probs, np.zeros(5), np.asarray([0, 0, 0, 1, 1]))  # truth: a a a b b
    rows = [Trusted(str(i), "t", "ab"[y], t) for i, (y, t) in enumerate(zip(s.y, "abbba", strict=True))]
    teacher_right = np.asarray([r.teacher == r.label for r in rows])
    rule = AcceptRule(
        target_margin=0.01, confidence_level=0.95, evidence="golden", min_confidence=0.9, max_ood=1.0, coverage=0.8
    )
    m = truth_metrics(s, teacher_right, rule, agreement(s, labels, rows))
    # accepted: rows 0-3 (the fifth is unsure); the student is right on all four, the teacher on 0 and 3
    assert m["truth_accepted_cases"] == 4 and m["truth_accepted_accuracy"] == 1.0
    assert m["truth_agreement_on_accepted"] == 0.5 and m["truth_teacher_on_accepted"] == 0.5
