"""Logs a machine reads: with ``PROTEGE_LOG_FORMAT=json`` every line a service writes is JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SERVICES = sorted(p.parent.name for p in (Path(__file__).parents[2] / "services").glob("*/__main__.py"))

PROBE = """
import importlib, sys
modules = [importlib.import_module(f"protege_services.{name}.__main__") for name in sys.argv[1:]]
from protege.logs import configure
configure(fmt="json")
for m in modules:
    if hasattr(m, "log"):
        m.log.info("probe", module=m.__name__)
"""


def test_a_services_module_logger_writes_json_once_logging_is_configured() -> None:
    """A logger made at import (``log = structlog.get_logger(...)`` at module level) stays lazy
    until its first line, so it renders as ``configure`` says: bound at import, the scorer's and
    the trainer's ``blas`` line came out in the console format among JSON lines (stop 40)."""
    assert {"scorer", "trainer"} <= set(SERVICES)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *SERVICES], capture_output=True, text=True, timeout=120, check=True
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    probes = [json.loads(line) for line in lines if "probe" in line]  # a console line fails to parse here
    assert {p["module"] for p in probes} >= {"protege_services.scorer.__main__", "protege_services.trainer.__main__"}
    assert all(p["event"] == "probe" and "service" in p for p in probes)
