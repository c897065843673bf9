"""`protege bench stream` end to end on generated tickets: a trusted golden set kept out of the
stream, intents left out of the task as out of scope, a target relative to the teacher."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from protege.generator import generate, write_jsonl

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_bench_stream_keeps_a_golden_set_apart_and_certifies_on_it(tmp_path: Path, backbone: Path) -> None:
    write_jsonl(generate(900, seed=11), tmp_path / "train.jsonl")
    write_jsonl(generate(200, seed=12), tmp_path / "test.jsonl")
    home, report = tmp_path / "bench", tmp_path / "report.json"
    argv = ["bench", "stream", "--train", str(tmp_path / "train.jsonl"), "--test", str(tmp_path / "test.jsonl")]
    argv += ["--report-json", str(report), "--home", str(home), "--golden", "400", "--unknown-intents", "2"]
    argv += ["--teacher-noise", "0.03", "--rate", "100", "--min-cases", "150", "--retrain-every", "200"]
    argv += ["--max-false-accepts", "0.05"]
    done = subprocess.run([sys.executable, "-m", "protege.cli", *argv], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    s = json.loads(report.read_text())
    config = s["config"]
    assert config["golden"] == 400 and len(config["unknown_intents"]) == 2 and config["target"] == "relative:0.01"
    assert (s["train"]["requests"], s["test"]["requests"]) == (500, 200)
    assert s["test"]["answered"] == 200 and s["test"]["duplicates"] == 0
    # The golden file: trusted labels with the intents out of scope relabelled, and the teacher's answers.
    task = (home / "tasks" / "bench.yaml").read_text()
    golden = [json.loads(line) for line in (home / "tasks" / "golden.jsonl").read_text().splitlines()]
    assert len(golden) == 400 and "golden: golden.jsonl" in task and "target_margin: 0.01" in task
    assert not {g["label"] for g in golden} & set(config["unknown_intents"])
    assert any(g["label"] == "oos" for g in golden) and all(g["teacher"] for g in golden)
    # none of them streamed, none harvested (request ids are <tenant>-<row id>)
    harvested = [json.loads(line) for line in (home / "harvest" / "bench" / "bench.jsonl").read_text().splitlines()]
    assert harvested and not {f"bench-{g['id']}" for g in golden} & {h["request_id"] for h in harvested}
    # Every version was measured against the golden set, with the teacher beside it.
    manifests = [json.loads(p.read_text()) for p in (home / "registry").glob("bench/bench/v*/manifest.json")]
    assert manifests and all(m["metrics"]["truth_cases"] == 400 for m in manifests)
    assert all(0.9 < m["metrics"]["truth_teacher_accuracy"] <= 1 for m in manifests)
    assert all(m["acceptance_target"]["target_margin"] == 0.01 for m in manifests)
    # The cap reaches every version's target (tests/unit/test_student.py trains one under it).
    assert all(m["acceptance_target"]["max_false_accepts"] == 0.05 for m in manifests)
    # The report lists every version the trainer wrote, with how long its fit and the whole version took.
    assert {t["version"] for t in s["trained"]} == {m["version"] for m in manifests}
    assert all(t["train_seconds"] >= t["fit_seconds"] > 0 for t in s["trained"] if t["recertified_from"] is None)


def test_the_scheduled_finetune_between_the_phases_and_retrains_on_its_encoder(tmp_path: Path, backbone: Path) -> None:
    """`--finetune-epochs`: the scheduled fine-tune (`protege train --recipe finetune --announce`,
    its own process, as the k8s CronJob runs it) between the phases; the trainer's retrains in
    the test phase refresh the head on its encoder rather than going back to the shared backbone."""
    write_jsonl(generate(700, seed=21), tmp_path / "train.jsonl")
    write_jsonl(generate(300, seed=22), tmp_path / "test.jsonl")
    home, report = tmp_path / "bench", tmp_path / "report.json"
    argv = ["bench", "stream", "--train", str(tmp_path / "train.jsonl"), "--test", str(tmp_path / "test.jsonl")]
    argv += ["--report-json", str(report), "--home", str(home), "--golden", "200", "--finetune-epochs", "1"]
    argv += ["--rate", "100", "--min-cases", "100", "--retrain-every", "40"]
    done = subprocess.run([sys.executable, "-m", "protege.cli", *argv], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    s = json.loads(report.read_text())
    tuned = s["finetune"]
    assert tuned["exit"] == 0 and tuned["promoted"], tuned  # gated against the serving version, announced
    versions = sorted((home / "registry" / "bench" / "bench").glob("v*"))
    made = next(v for v in versions if v.name == tuned["version"])
    meta = json.loads((made / "encoder" / "backbone.json").read_text())
    assert meta["finetuned_in"] == tuned["version"] and meta["finetune"]["config"]["epochs"] == 1
    # The trainer's versions before it fit heads on the shared backbone; those after it, on its encoder.
    before = [v for v in versions if v.name < made.name]
    after = [v for v in versions if v.name > made.name]
    assert before and not any((v / "encoder").exists() for v in before)
    assert after, "no retrain in the test phase"
    for v in after:
        assert json.loads((v / "encoder" / "backbone.json").read_text())["finetuned_in"] == tuned["version"]
        assert (v / "encoder" / "model.onnx").stat().st_ino == (made / "encoder" / "model.onnx").stat().st_ino


def test_the_review_sample_grows_the_golden_set_from_the_stream(tmp_path: Path, backbone: Path) -> None:
    """`--golden 0 --review-rate`: no golden file; the OFFLINE STAND-IN reviewer labels the review
    sample as it arrives, the trainer joins each label with the teacher's answer, the versions
    trained from min_golden reviewed rows on are measured on them, and no sampled request is
    ever a training case."""
    from protege.policy import in_review

    write_jsonl(generate(900, seed=31), tmp_path / "train.jsonl")
    write_jsonl(generate(200, seed=32), tmp_path / "test.jsonl")
    home, report = tmp_path / "bench", tmp_path / "report.json"
    argv = ["bench", "stream", "--train", str(tmp_path / "train.jsonl"), "--test", str(tmp_path / "test.jsonl")]
    argv += ["--report-json", str(report), "--home", str(home), "--golden", "0", "--review-rate", "0.3"]
    # Retrains 100 cases apart: the stream keeps the trainer retraining batch after batch, and
    # the serving rule is still judged (before stop 35 a batch that retrained checked nothing: no
    # check at all in one of two runs).
    argv += ["--rate", "100", "--min-cases", "100", "--retrain-every", "100", "--teacher-noise", "0.03"]
    argv += ["--export", str(tmp_path / "export")]
    done = subprocess.run([sys.executable, "-m", "protege.cli", *argv], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    s = json.loads(report.read_text())
    assert "OFFLINE STAND-IN" in s["review"]["reviewer"] and s["config"]["review_rate"] == 0.3
    # Each phase's record is left behind; the test phase's report measures what was served
    # against the reviewers' labels (here the data set's own), as the ground truth does.
    assert (s["exports"]["train"]["scored"], s["exports"]["test"]["scored"]) == (900, 200)
    import pyarrow.parquet as pq

    truth = {f"bench-test-{r['id']}": r["label"] for r in generate(200, seed=32)}
    rows = pq.read_table(tmp_path / "export" / "test" / "requests.parquet").to_pylist()
    assert {r["request_id"] for r in rows} == set(truth)
    people = json.loads((tmp_path / "export" / "test" / "report.json").read_text())["people"]
    assert people["sampled"] == sum(in_review(rid, 0.3) for rid in truth) == sum(bool(r["review"]) for r in rows)
    reviewed = [r for r in rows if r["review_label"] is not None]
    assert len(reviewed) == people["reviewed"] >= 0.9 * people["sampled"]
    assert all(r["review_label"] == truth[r["request_id"]] for r in reviewed)
    assert people["served"]["correct"] == sum(r["answer"] == truth[r["request_id"]] for r in reviewed)
    assert people["teacher"]["correct"] == sum(r["teacher_label"] == truth[r["request_id"]] for r in reviewed)
    assert "review_rate: 0.3" in (home / "tasks" / "bench.yaml").read_text()
    streamed = [f"bench-{r['id']}" for r in generate(900, seed=31)] + [
        f"bench-test-{r['id']}" for r in generate(200, seed=32)
    ]
    sampled = {rid for rid in streamed if in_review(rid, 0.3)}
    # every sampled request reviewed (the last few may still be on their way when the run stops)
    assert 0.95 * len(sampled) <= s["review"]["reviews_sent"] <= len(sampled)
    assert 100 <= s["review"]["completed_rows"] <= s["review"]["reviews_sent"]
    assert s["review"]["golden_rows"] <= s["review"]["completed_rows"] - s["review"]["shift_at"]
    harvested = [json.loads(line) for line in (home / "harvest" / "bench" / "bench.jsonl").read_text().splitlines()]
    assert harvested and not sampled & {h["request_id"] for h in harvested}
    manifests = [json.loads(p.read_text()) for p in sorted((home / "registry").glob("bench/bench/v*/manifest.json"))]
    reviewed = [m["metrics"].get("truth_reviewed", 0) for m in manifests]
    # the serving version's rule was judged again as reviewed rows came (PROTEGE_RECERTIFY_EVERY 100)
    logged = [json.loads(line) for line in (home / "logs" / "trainer.log").read_text().splitlines() if '"rule_' in line]
    assert logged and all(e["event"] in ("rule_kept", "rule_recertified") for e in logged)
    if not s["review"]["shift_at"]:  # (a shift the trainer saw would have dropped the rows before it)
        assert reviewed[-1] >= 100 and reviewed == sorted(reviewed), reviewed  # the set grows with the stream


def test_a_reviewer_with_the_teachers_blind_spots_repeats_its_mistakes(tmp_path: Path, backbone: Path) -> None:
    """`--reviewer-follows-teacher 1`: wherever the stand-in teacher is wrong, the stand-in
    reviewer gives the same wrong label (the bench computes the teacher's answers as its worker
    will), so against the reviewers the teacher is never wrong. `--review-overlap 0.5`: a second
    stand-in person labels half the sample too."""
    write_jsonl(generate(500, seed=33), tmp_path / "train.jsonl")
    write_jsonl(generate(150, seed=34), tmp_path / "test.jsonl")
    home, report = tmp_path / "bench", tmp_path / "report.json"
    argv = ["bench", "stream", "--train", str(tmp_path / "train.jsonl"), "--test", str(tmp_path / "test.jsonl")]
    argv += ["--report-json", str(report), "--home", str(home), "--golden", "0", "--review-rate", "0.3"]
    argv += ["--rate", "100", "--min-cases", "100", "--retrain-every", "200", "--teacher-noise", "0.1"]
    argv += ["--reviewer-follows-teacher", "1", "--export", str(tmp_path / "export"), "--review-overlap", "0.5"]
    done = subprocess.run([sys.executable, "-m", "protege.cli", *argv], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    s = json.loads(report.read_text())
    assert "repeating 100% of the teacher's mistakes" in s["review"]["reviewer"]
    assert s["review"]["followed_teacher"] == s["review"]["wrong"] > 0
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "export" / "test" / "requests.parquet").to_pylist()
    reviewed = [r for r in rows if r["review_label"] is not None and r["teacher_label"] is not None]
    assert len(reviewed) >= 30 and all(r["review_label"] == r["teacher_label"] for r in reviewed)
    people = json.loads((tmp_path / "export" / "test" / "report.json").read_text())["people"]
    assert people["teacher"]["accuracy"] == 1.0
    # A second stand-in person on half the sample, with the same blind spots: the two always agree,
    # so the report cannot tell their shared mistakes from the truth either.
    assert "a second person on 50% of them" in s["review"]["reviewer"] and s["review"]["second_opinions"] >= 20
    assert s["review"]["people"]["rows"] >= 20 and s["review"]["people"]["agreement"] == 1.0
    assert people["reviewers"]["rows"] >= 5 and people["reviewers"]["agreement"] == 1.0 and people["disputed"] == 0
