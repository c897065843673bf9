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
    whole, _, tail = data.rpartition(b"\n")  # tail: what follows the last newline
    rows = [row for number, line in enumerate(whole.split(b"\n"), 1) if (row := _record(path, number, line))]
    if not tail.strip():
        return rows
    try:
        json.loads(tail)
    except (json.JSONDecodeError, UnicodeDecodeError):
        if repair:  # a torn append: its record comes again from the topic
            with open(path, "r+b") as f:
                f.truncate(len(data) - len(tail))
                os.fsync(f.fileno())
            log.warning("torn_line_cut", path=str(path), at_byte=len(data) - len(tail), length=len(tail))
        return rows  # else perhaps a write in progress
    last = _record(path, data.count(b"\n") + 1, tail)
    if repair:  # a whole record cut just before its newline: give it one
        with open(path, "ab") as f:
            f.write(b"\n")
    return [*rows, last] if last else rows


def _record(path: Path, number: int, line: bytes) -> dict[str, Any] | None:
    """Line ``number`` of ``path`` as a record (None: a blank line)."""
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedFile(f"{path}:{number}: not a JSON line ({e}); the file was changed by hand?") from e
    if not isinstance(row, dict):
        raise DamagedFile(f"{path}:{number}: a JSON {type(row).__name__}, not an object")
    return row


def append(path: Path, row: dict[str, Any]) -> None:
    """One record as one line at the end of ``path`` (its folder made when missing), in a single
    write: a crash leaves at most a torn last line, which ``read_appended`` cuts off."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write((json.dumps(row) + "\n").encode())
