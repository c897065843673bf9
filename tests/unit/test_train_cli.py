"""`protege train`: one gated version from a file of cases, on the real backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from protege.cli import app
from protege.generator import generate, write_jsonl

REPO = Path(__file__).resolve().parents[2]


def test_train_writes_a_gated_version(backbone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROTEGE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PROTEGE_TASKS_DIR", str(REPO / "tests" / "tasks"))
    rows = generate(500, seed=12)
    write_jsonl(rows[:400], tmp_path / "cases.jsonl")
    golden = rows[400:]
    write_jsonl(golden, tmp_path / "golden.jsonl")
    args = ["train", "--task", "ticket-triage", "--tenant", "acme", "--input", str(tmp_path / "cases.jsonl")]
    ok = CliRunner().invoke(app, [*args, "--golden", str(tmp_path / "golden.jsonl")])
    assert ok.exit_code == 0, ok.output
    out = json.loads(ok.stdout)
    assert out["promoted"] and out["metrics"]["golden_cases"] == 100 and out["metrics"]["golden_accuracy"] > 0.8
    manifest = json.loads((Path(out["folder"]) / "manifest.json").read_text())
    assert manifest["recipe"]["kind"] == "fast" and manifest["gates"]["passed"]
    # a golden set whose labels say otherwise: the version is kept, held back, and says why
    labels = sorted({r["label"] for r in golden})
    wrong = [{**r, "label": labels[(labels.index(r["label"]) + 1) % len(labels)]} for r in golden]
    write_jsonl(wrong, tmp_path / "wrong.jsonl")
    held = CliRunner().invoke(app, [*args, "--golden", str(tmp_path / "wrong.jsonl")])
    assert held.exit_code == 3
    out = json.loads(held.stdout)
    assert not out["promoted"] and "golden accuracy" in out["reason"]
    assert CliRunner().invoke(app, [*args, "--recipe", "nope"]).exit_code != 0
