"""``protege doctor`` as a user runs it, against the session's real broker: exit 0 when every
check passes, 1 with the failing check and its fix otherwise; the key is never printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from protege.broker.embedded import EmbeddedBroker, free_port

pytestmark = pytest.mark.kafka
REPO = Path(__file__).resolve().parents[2]


def doctor(env: dict[str, str], tmp_path: Path) -> tuple[int, dict[str, dict[str, str]], str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PROTEGE_", "ANTHROPIC_"))}
    base.update(PROTEGE_HOME=str(tmp_path / "home"), **env)
    done = subprocess.run(
        [sys.executable, "-m", "protege.cli", "doctor", "--json", "--broker-timeout", "8"],
        capture_output=True,
        text=True,
        env=base,
        cwd=tmp_path,
        timeout=120,
    )
    checks = {c["name"]: c for c in json.loads(done.stdout)} if done.stdout.strip() else {}
    return done.returncode, checks, done.stdout + done.stderr


def test_doctor_passes_against_a_reachable_broker(kafka: EmbeddedBroker, tmp_path: Path) -> None:
    secret = "sk-ant-api03-doctor-" + "q" * 30
    rc, checks, out = doctor({"PROTEGE_BOOTSTRAP_SERVERS": kafka.bootstrap, "ANTHROPIC_API_KEY": secret}, tmp_path)
    assert rc == 0, out
    assert checks["broker"]["status"] == "ok" and "1 broker(s)" in checks["broker"]["detail"]
    assert checks["java"]["detail"].startswith("not needed")  # a named broker: no embedded one to run
    assert checks["anthropic key"]["status"] == "ok" and secret not in out
    assert {"python", "onnx runtime", "disk", "task ticket-triage"} <= set(checks)


def test_doctor_fails_on_a_broker_that_does_not_answer(tmp_path: Path) -> None:
    closed = f"127.0.0.1:{free_port()}"
    rc, checks, out = doctor({"PROTEGE_BOOTSTRAP_SERVERS": closed}, tmp_path)
    assert rc == 1, out
    broker = checks["broker"]
    assert broker["status"] == "fail" and closed in broker["detail"] and "PROTEGE_SECURITY_PROTOCOL" in broker["fix"]
    assert all(c["status"] != "fail" for name, c in checks.items() if name != "broker")


def test_doctor_fails_on_a_broken_task_and_says_which(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "mine.yaml").write_text("name: mine\nlabels: [not, a, mapping]\ninstructions: x\n")
    rc, checks, out = doctor({"PROTEGE_TASKS_DIR": str(tasks)}, tmp_path)
    assert rc == 1, out
    assert checks["tasks"]["status"] == "fail" and "mine.yaml" in checks["tasks"]["detail"]
    assert checks["broker"]["status"] == "ok" and "embedded" in checks["broker"]["detail"]


def test_the_table_for_people(kafka: EmbeddedBroker, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROTEGE_", "ANTHROPIC_"))}
    env.update(PROTEGE_BOOTSTRAP_SERVERS=kafka.bootstrap, PROTEGE_HOME=str(tmp_path / "home"))
    done = subprocess.run(
        [sys.executable, "-m", "protege.cli", "doctor"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all 10 checks passed (1 with a warning)" in done.stdout  # the warning: no key, the stand-in answers
    assert "OFFLINE STAND-IN" in done.stdout
