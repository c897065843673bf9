"""Append-only JSON Lines files a service keeps as its own state (the trainer's cases and its
review rows), read back whole at start.

    rows = read_appended(path, repair=True)   # the writer, at start: a torn last line cut off
    rows = read_appended(path)                # anyone else: a torn last line skipped, nothing written
    append(path, {"request_id": ...})

A process killed in the middle of an append (kill -9, the machine's power, a full disk) can
leave a last line without its newline: the write it belonged to never finished, so the record
it carried was not acknowledged either (the harvest offset commits after the handler wrote it)
and comes again from the topic. Reading stops at such a line and cuts it off, so the next
append starts on a line of its own; a restarted trainer must not crash on the file it wrote
itself. Only the file's writer repairs it, before it appends again: to any other reader
(``protege review status``, the bench's summary) a last line without its newline may be a write
still in progress, so it is skipped and the file left alone. A damaged line *before* the last
one is not a torn append: that file was changed by something else, and reading it says which
line rather than guessing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger()


class DamagedFile(ValueError):
    """A line before the last one of an append-only file is not a JSON object."""


def read_appended(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """The records of ``path`` (none when it does not exist), in order. A last line without its
    newline is skipped when it does not decode; with ``repair`` (the writer, before it appends
    again) it is cut off the file (logged), and a whole last record gets its newline, so the next
    ``append`` starts a line of its own."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    rows: list[dict[str, Any]] = []
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        last = end < 0
        line = data[start:] if last else data[start:end]
        try:
            row = json.loads(line) if line.strip() else None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if last and not repair:  # perhaps a write in progress
                return rows
            if last:  # a torn append: its record comes again from the topic
                with open(path, "r+b") as f:
                    f.truncate(start)
                    os.fsync(f.fileno())
                log.warning("torn_line_cut", path=str(path), at_byte=start, length=len(line))
                return rows
            number = data.count(b"\n", 0, start) + 1
            raise DamagedFile(f"{path}:{number}: not a JSON line ({e}); the file was changed by hand?") from e
        if row is not None:
            if not isinstance(row, dict):
                number = data.count(b"\n", 0, start) + 1
                raise DamagedFile(f"{path}:{number}: a JSON {type(row).__name__}, not an object")
            rows.append(row)
        if last and not repair:  # a whole record, its newline perhaps on its way
            return rows
        if last:  # a whole record without its newline (cut just before it): give it one
            with open(path, "ab") as f:
                f.write(b"\n")
            return rows
        start = end + 1
    return rows


def append(path: Path, row: dict[str, Any]) -> None:
    """One record as one line at the end of ``path`` (its folder made when missing), in a single
    write: a crash leaves at most a torn last line, which ``read_appended`` cuts off."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write((json.dumps(row) + "\n").encode())
