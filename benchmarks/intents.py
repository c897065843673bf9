"""BANKING77 for the benchmarks: read from ../shared/data (never committed), or skip."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from protege.generator import read_jsonl

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "banking77"


def load(data: Path = DATA) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """(train, test) rows, or None after saying why the benchmark is skipped."""
    if not (data / "banking77_train.jsonl").exists():
        print(f"skipped: BANKING77 not found at {data}", file=sys.stderr)
        return None
    return read_jsonl(data / "banking77_train.jsonl"), read_jsonl(data / "banking77_test.jsonl")
