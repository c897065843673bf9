"""``protege doctor``'s checks, each on what it reads (no broker here: tests/integration/test_doctor.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from protege import doctor
from protege.task import load_task, write_task

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("banner", "major"),
    [
        ('openjdk version "17.0.9" 2023-10-17\nOpenJDK Runtime Environment', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_392"', 8),
        ("something else", None),
    ],
)
def test_java_major_reads_both_version_schemes(banner: str, major: int | None) -> None:
    assert doctor.java_major(banner) == major


def test_a_folder_that_does_not_exist_yet_is_judged_by_its_nearest_parent(tmp_path: Path) -> None:
    check = doctor.check_disk(tmp_path / "not" / "yet" / "home")
    assert check.status in ("ok", "warn") and "GB free" in check.detail


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in any folder")
def test_a_home_nobody_may_write_fails(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        check = doctor.check_disk(locked / "home")
        assert check.status == "fail" and "not writable" in check.detail
    finally:
        locked.chmod(0o700)


def test_the_shipped_tasks_pass(tmp_path: Path) -> None:
    checks = doctor.check_tasks(REPO / "tasks")
    assert checks and all(c.status == "ok" for c in checks)
    assert any("labels, policy cascade" in c.detail for c in checks)


def test_a_broken_task_file_fails_with_its_path(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("name: bad\nlabels: {a: x}\n")
    (check,) = doctor.check_tasks(tmp_path)
    assert check.status == "fail" and "bad.yaml" in check.detail and check.fix


def test_an_empty_tasks_folder_fails(tmp_path: Path) -> None:
    (check,) = doctor.check_tasks(tmp_path)
    assert check.status == "fail" and "no task files" in check.detail


def test_a_golden_set_is_read_and_the_teachers_accuracy_shown(tmp_path: Path) -> None:
    task = load_task(REPO / "tasks" / "ticket-triage.yaml").model_copy(update={"golden": "golden.jsonl"})
    write_task(task, tmp_path / "t.yaml")
    label, other = list(task.labels)[:2]
    rows = [{"id": i, "text": f"ticket {i}", "label": label, "teacher": label if i < 3 else other} for i in range(4)]
    (tmp_path / "golden.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (check,) = doctor.check_tasks(tmp_path)
    assert check.status == "ok" and "golden set of 4 (the teacher 75.0% right on it)" in check.detail
    (tmp_path / "golden.jsonl").write_text('{"id": 1, "text": "x", "label": "no such label", "teacher": "x"}\n')
    (check,) = doctor.check_tasks(tmp_path)
    assert check.status == "fail" and "golden.jsonl:1" in check.detail


def test_the_key_is_never_printed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("PROTEGE_ANTHROPIC_API_KEY", raising=False)
    assert doctor.check_api_key().status == "warn"  # the stand-in answers: works, with a caveat
    secret = "sk-ant-api03-" + "x7" * 20
    monkeypatch.setenv("ANTHROPIC_API_KEY", secret)
    check = doctor.check_api_key()
    assert check.status == "ok" and f"{len(secret)} characters" in check.detail
    assert secret not in json.dumps(doctor.as_json([check])) and "x7x7" not in check.detail
    key_file = tmp_path / "key"
    key_file.write_text("not-an-anthropic-key\n")
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.setenv("PROTEGE_ANTHROPIC_API_KEY_FILE", str(key_file))
    check = doctor.check_api_key()
    assert check.status == "warn" and "does not start with sk-ant-" in check.detail and "not-an" not in check.detail
    monkeypatch.setenv("PROTEGE_ANTHROPIC_API_KEY_FILE", str(tmp_path / "missing"))
    assert doctor.check_api_key().status == "fail"


def test_onnx_runtime_really_loads_a_provider() -> None:
    check = doctor.check_onnxruntime("cpu")
    assert check.status == "ok" and "CPUExecutionProvider loaded" in check.detail


def test_asking_for_cuda_without_it_fails() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has a CUDA provider")
    check = doctor.check_onnxruntime("cuda")
    assert check.status == "fail" and "onnxruntime-gpu" in check.fix


def test_the_embedded_broker_needs_java_and_maven_but_a_named_one_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROTEGE_BOOTSTRAP_SERVERS", "kafka.example:9092")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert doctor.check_java().status == "ok" and "not needed" in doctor.check_java().detail
    monkeypatch.delenv("PROTEGE_BOOTSTRAP_SERVERS")
    java = doctor.check_java()
    assert java.status == "fail" and "Java 17" in java.fix
