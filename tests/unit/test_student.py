"""The trainer's fast path on the real backbone (exported once per machine), and the
ONNX student it writes, run by ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from protege.generator import generate
from protege.student.runtime import Encoder, Student, softmax
from protege.student.train import Case, EmbeddingCache, ece, fit_temperature, macro_f1, train_version


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


@pytest.fixture(scope="module")
def version(backbone: Path, tmp_path_factory: pytest.TempPathFactory):
    rows = generate(700, seed=5)
    cases = [Case(r["id"], r["text"], r["label"]) for r in rows[:500]]
    embed = EmbeddingCache(Encoder(backbone / "model.onnx", backbone / "tokenizer.json"))
    result = train_version(cases, embed=embed, backbone=backbone, registry=tmp_path_factory.mktemp("reg"),
                           tenant="acme", task="ticket-triage", max_length=128)
    return result, rows[500:]


def test_trained_version_is_complete_and_checksummed(version) -> None:
    result, _ = version
    manifest = json.loads((result.folder / "manifest.json").read_text())
    assert manifest["version"] == result.version and result.version.startswith("v0001-")
    import hashlib

    for name, digest in manifest["files"].items():
        assert hashlib.sha256((result.folder / name).read_bytes()).hexdigest() == digest
    assert manifest["data"]["cases"] == 500 and manifest["calibration"]["temperature"] > 0
    assert result.promoted and result.metrics["holdout_accuracy"] > 0.8


def test_onnx_student_predicts_with_signals(version) -> None:
    result, held = version
    student = Student(result.folder, providers="cpu")
    assert student.providers == ["CPUExecutionProvider"]
    outs = student.predict([r["text"] for r in held])
    accuracy = np.mean([o.label == r["label"] for o, r in zip(outs, held, strict=True)])
    assert accuracy > 0.85
    for o in outs:
        assert o.model_version == result.version
        assert 0 <= o.confidence <= 1 and 0 <= o.margin <= o.confidence and len(o.top) == 3
    # batching and padding do not change a text's answer
    alone = student.predict([held[0]["text"]])[0]
    assert alone.label == outs[0].label and alone.confidence == pytest.approx(outs[0].confidence, abs=1e-4)
    # strange input is further from every label centroid than typical input
    weird = student.predict(["zxq vlorp 8812 ###", "the mitochondria is the powerhouse of the cell"])
    assert min(o.ood for o in weird) > np.median([o.ood for o in outs])
