"""Intent data sets for the benchmarks, read from outside the repository (never committed), or skip.

A data set is a folder holding ``<name>_train.jsonl`` and ``<name>_test.jsonl``, one
``{"id", "text", "label", "split"}`` row a line; a label ``oos`` marks an out-of-scope request.
BANKING77 sits in ../shared/data/banking77 (``DATA``, the default); ``benchmarks/clinc150.py``
writes CLINC150 in the same form from a checkout of its authors' repository.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from protege.generator import read_jsonl

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "banking77"


def split_files(data: Path) -> tuple[Path, Path] | None:
    """The data set's train and test files, or None when ``data`` holds no such pair."""
    trains = sorted(data.glob("*_train.jsonl"))
    if len(trains) != 1:
        return None
    test = trains[0].with_name(trains[0].name.removesuffix("_train.jsonl") + "_test.jsonl")
    return (trains[0], test) if test.exists() else None


def load(data: Path = DATA) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """(train, test) rows, or None after saying why the benchmark is skipped."""
    files = split_files(data)
    if files is None:
        print(f"skipped: no <name>_train.jsonl and <name>_test.jsonl pair at {data}", file=sys.stderr)
        return None
    return read_jsonl(files[0]), read_jsonl(files[1])
