from __future__ import annotations

import asyncio
from pathlib import Path

from protege.generator import generate, triage_task, write_jsonl
from protege.task import OOS
from protege.teacher import StandinTeacher
from protege.text import normalize

TASK = triage_task()


def test_standin_answers_from_labels_and_says_so(tmp_path: Path) -> None:
    rows = generate(50, seed=1)
    write_jsonl(rows, tmp_path / "l.jsonl")
    t = StandinTeacher.from_jsonl(tmp_path / "l.jsonl")
    for row in rows:
        # ingestion normalises text; the stand-in must find it all the same
        a = asyncio.run(t.label(TASK, normalize("  " + row["text"] + "\t"), "r"))
        assert a.label == row["label"]
        assert a.standin and a.model.startswith("standin:") and a.usage.estimated and a.cost_usd > 0


def test_unknown_text_is_out_of_scope() -> None:
    a = asyncio.run(StandinTeacher({}).label(TASK, "something never seen", "r"))
    assert a.label == OOS


def test_noise_rate_is_honoured_and_deterministic() -> None:
    rows = generate(2000, seed=2)
    t = StandinTeacher({normalize(r["text"]): r["label"] for r in rows}, noise=0.2)
    answers = [asyncio.run(t.label(TASK, r["text"], f"id{i}")).label for i, r in enumerate(rows)]
    wrong = sum(a != r["label"] for a, r in zip(answers, rows, strict=True)) / len(rows)
    assert 0.16 < wrong < 0.24
    again = [asyncio.run(t.label(TASK, r["text"], f"id{i}")).label for i, r in enumerate(rows[:100])]
    assert again == answers[:100]


def test_confusable_noise_falls_on_the_labels_nearest_the_true_one() -> None:
    import numpy as np

    from protege.teacher import confusions

    # billing and invoice lie close together, shipping far from both
    rng = np.random.default_rng(0)
    centres = {"billing": [1.0, 0.1, 0.0], "invoice": [0.95, 0.2, 0.05], "shipping": [0.0, 0.1, 1.0]}
    labels = [label for label in centres for _ in range(20)]
    emb = np.asarray([np.asarray(centres[label]) + rng.normal(0, 0.02, 3) for label in labels])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    table = confusions(labels, emb, nearest=2)
    assert [other for other, _ in table["billing"]] == ["invoice", "shipping"]
    assert table["billing"][0][1] > 0.99 and abs(sum(w for _, w in table["billing"]) - 1) < 1e-5
    rows = [r for r in generate(3000, seed=3) if r["label"] in ("billing", "shipping")]
    labelled = {normalize(r["text"]): r["label"] for r in rows}
    confusable = StandinTeacher(labelled, noise=1.0, confused=table)
    uniform = StandinTeacher(labelled, noise=1.0)
    billing = [r for r in rows if r["label"] == "billing"][:200]
    wrong = [asyncio.run(confusable.label(TASK, r["text"], f"c{i}")).label for i, r in enumerate(billing)]
    assert "billing" not in wrong and wrong.count("invoice") / len(wrong) > 0.95
    spread = {asyncio.run(uniform.label(TASK, r["text"], f"u{i}")).label for i, r in enumerate(billing)}
    assert len(spread) > 5 and "billing" not in spread  # uniform: any other answer of the task


def test_the_bench_s_confusion_table_comes_from_the_backbone(backbone: Path) -> None:
    from protege.cli.stream import noise_confusions

    table = noise_confusions(generate(1500, seed=4), seed=0, per_label=15)
    labels = {r["label"] for r in generate(1500, seed=4)}
    assert set(table) == labels
    for label, near in table.items():
        assert len(near) == 5 and label not in {other for other, _ in near}
        assert abs(sum(w for _, w in near) - 1) < 1e-5 and near == sorted(near, key=lambda x: -x[1])
