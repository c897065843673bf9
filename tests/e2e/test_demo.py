"""`protege demo` end to end, as a user runs it: its own embedded broker, six service
processes, a few hundred generated tickets, a summary, and everything stopped after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_demo_on_generated_tickets(tmp_path: Path) -> None:
    report = tmp_path / "demo.json"
    home = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "protege.cli", "demo", "--tickets", "400", "--rate", "30", "--home", str(home),
         "--report-json", str(report)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "OFFLINE STAND-IN" in done.stderr + done.stdout  # the stand-in is named in the output
    s = json.loads(report.read_text())
    t = s["traffic"]
    assert (t["requests"], t["answered"], t["duplicates"]) == (400, 400, 0)
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
