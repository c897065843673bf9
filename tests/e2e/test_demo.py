"""`protege demo` end to end, as a user runs it: its own embedded broker, six service
processes, a few hundred generated tickets, a summary, and everything stopped after."""

from __future__ import annotations

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
        [sys.executable, "-m", "protege.cli", "demo", "--tickets", "1200", "--rate", "30", "--home", str(home),
         "--report-json", str(report)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "OFFLINE STAND-IN" in done.stderr + done.stdout  # the stand-in is named in the output
    s = json.loads(report.read_text())
    t = s["traffic"]
    assert (t["requests"], t["answered"], t["duplicates"]) == (1200, 1200, 0)
    assert t["accuracy"] > 0.9 and t["teacher_standin"]
    assert t["student_share"] > 0.1, "the trainer should have produced a serving student mid-run"
    assert s["models_trained"] >= 1
    assert s["dead_letters"]["count"] == 6
    assert {"invalid_json", "not_an_object", "schema_violation", "unknown_task", "text_too_long"} <= set(
        s["dead_letters"]["reasons"])
    # Nothing left running: no broker, no service.
    assert subprocess.run(["pgrep", "-f", str(home)], capture_output=True, text=True).stdout.strip() == ""
    pids = json.loads((home / "logs" / "pids.json").read_text())
    assert set(pids) == {"ingestion", "scorer", "verifier", "teacher", "harvester", "trainer"}
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_interrupted_stops_everything(tmp_path: Path, sig: signal.Signals) -> None:
    home = tmp_path / "demo"
    log = tmp_path / "demo.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "protege.cli", "demo", "--home", str(home)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while "answered" not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert "answered" in log.read_text(), log.read_text()[-2000:]
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 130
    assert "interrupted: the services and the broker were stopped" in log.read_text()
    pids = json.loads((home / "logs" / "pids.json").read_text())
    assert [name for name, pid in pids.items() if Path(f"/proc/{pid}").exists()] == []
    assert subprocess.run(["pgrep", "-f", str(home)], capture_output=True, text=True).stdout.strip() == ""
