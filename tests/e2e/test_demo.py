"""`protege demo` end to end, as a user runs it: its own embedded broker, seven service
processes (the live loop's monitor among them), a few hundred generated tickets, a summary
with the versions' steps, and everything stopped after."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_demo_on_generated_tickets(tmp_path: Path, backbone: Path) -> None:
    report = tmp_path / "demo.json"
    home = tmp_path / "demo"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "protege.cli",
            "demo",
            "--tickets",
            "2000",
            "--rate",
            "30",
            "--home",
            str(home),
            "--report-json",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "OFFLINE STAND-IN" in done.stderr + done.stdout  # the stand-in is named in the output
    # Library log lines (aiokafka's retries while a new topic elects its leader) go to the run's
    # logs, not to the user's terminal.
    assert "aiokafka" not in done.stderr + done.stdout and "Error" not in done.stderr + done.stdout
    s = json.loads(report.read_text())
    t = s["traffic"]
    assert (t["requests"], t["answered"], t["duplicates"]) == (2000, 2000, 0)
    assert t["accuracy"] > 0.9 and t["teacher_standin"]
    assert t["student_share"] > 0.1, "the trainer should have produced a serving student mid-run"
    assert s["models_trained"] >= 1
    # The live loop: audits behind the student's answers, and every version after the first
    # on trial until the monitor's verdict, shown step by step.
    assert t["audits"] > 0 and t["audit_cost_usd"] > 0
    steps = s["steps"]
    assert steps[0]["action"] == "serve" and steps[0]["source"] == "trainer"  # nothing to compare the first with
    # (or serves at once where the version serving certifies nothing for the target: no trial against it)
    assert all(
        st["action"] == "canary" or "certifies nothing for the target" in st["reason"]
        for st in steps[1:]
        if st["source"] == "trainer"
    ), steps
    for trial, after in itertools.pairwise(steps):
        if trial["action"] == "canary":  # the next step is its verdict
            assert after["version"] == trial["version"] and after["source"] == "monitor", steps
            assert after["action"] in ("serve", "abort") and after["reason"].startswith("canary ")
    assert "versions (protege.models)" in done.stdout
    assert s["dead_letters"]["count"] == 7
    assert {"invalid_json", "not_an_object", "schema_violation", "unknown_task", "text_too_long", "too_deep"} <= set(
        s["dead_letters"]["reasons"]
    )
    # Nothing left running: no broker, no service.
    left = subprocess.run(["pgrep", "-f", str(home)], capture_output=True, text=True).stdout.split()
    # Seen once in CI (one pid, under load, phase "start"): say what it was when it happens.
    said = subprocess.run(["ps", "-o", "pid,stat,etime,args", "-p", ",".join(left)], capture_output=True, text=True)
    assert left == [], said.stdout[-2000:]
    pids = json.loads((home / "logs" / "pids.json").read_text())
    assert set(pids) == {"ingestion", "scorer", "verifier", "teacher", "harvester", "trainer", "monitor"}
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# A command started in the background by a script, or by a CI runner, inherits SIGINT
# ignored; Python then keeps ignoring it, and asyncio.run installs no handler of its own.
# That is how the demo once ran to its end after a Ctrl-C and exited 0.
INHERITED = {"sigint-default": None, "sigint-ignored": _ignore_sigint}
PHASES = {"traffic": "] traffic: sent", "start": "starting the embedded Apache Kafka broker"}


@pytest.mark.parametrize("phase", list(PHASES))
@pytest.mark.parametrize("inherited", list(INHERITED))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_interrupted_stops_everything(tmp_path: Path, sig: signal.Signals, inherited: str, phase: str) -> None:
    """Ctrl-C or SIGTERM stops the demo within seconds with exit code 130, in the traffic
    phase or while the broker and services are starting, whatever the shell handed down."""
    home = tmp_path / "demo"
    log = tmp_path / "demo.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "protege.cli", "demo", "--home", str(home)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=INHERITED[inherited],
        )
    deadline = time.monotonic() + 180
    while PHASES[phase] not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert PHASES[phase] in log.read_text(), log.read_text()[-2000:]
    proc.send_signal(sig)
    sent = time.monotonic()
    assert proc.wait(timeout=60) == 130, log.read_text()[-2000:]
    assert time.monotonic() - sent < 30
    assert "interrupted: the services and the broker were stopped" in log.read_text()
    pids_file = home / "logs" / "pids.json"
    pids = json.loads(pids_file.read_text()) if pids_file.exists() else {}
    assert [name for name, pid in pids.items() if Path(f"/proc/{pid}").exists()] == []
    left = subprocess.run(["pgrep", "-f", str(home)], capture_output=True, text=True).stdout.split()
    # Seen once in CI (one pid, under load, phase "start"): say what it was when it happens.
    said = subprocess.run(["ps", "-o", "pid,stat,etime,args", "-p", ",".join(left)], capture_output=True, text=True)
    assert left == [], said.stdout[-2000:]
