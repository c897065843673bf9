"""Golden rows grown from live traffic: the review sample (``Task.review_rate``).

A request of the sample has two halves that reach the trainer as harvest cases with reason
``review``, in either order: the teacher's answer (escalated, or audited when the student
answered) and a person's label (``protege review submit``: a ``Feedback`` of kind review).
With both, it is a golden row — a ``Trusted`` case like a line of the task's golden file —
that no version ever trains on. ``ReviewStore`` keeps them; the trainer service and
``protege train`` measure and certify every version on ``ReviewStore.truth``.

    reviews = ReviewStore(settings.home / "review")
    truth = reviews.truth("acme", task, read_golden(...))   # the file's rows and the reviewed ones
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from protege.agreement import agreement, consensus
from protege.events import HarvestCase
from protege.jsonl import append, read_appended
from protege.student.train import Trusted
from protege.task import Task

DONE = "done"  # a row's place in the order people completed the rows (both halves in)
PEOPLE = "people"  # a row's reviewers and the label each gave
SHIFT = "shift"  # a line of the file that is no half: rows from this place on are today's (``mark_shift``)

P = ParamSpec("P")
R = TypeVar("R")


def locked(method: Callable[Concatenate[ReviewStore, P], R]) -> Callable[Concatenate[ReviewStore, P], R]:
    """One thread at a time in the store: the trainer retrains in a worker thread (its golden rows
    read there) while its loop adds halves and marks shifts."""

    @functools.wraps(method)
    def inner(self: ReviewStore, *args: P.args, **kwargs: P.kwargs) -> R:
        with self.lock:
            return method(self, *args, **kwargs)

    return inner


class ReviewStore:
    """The golden rows grown from live traffic: per (tenant, task), the teacher's answer and a
    person's label on each request of the review sample (``Task.review_rate``), arriving in
    either order as harvest cases with reason ``review``; a row is golden once it has both.
    One JSON Lines file per (tenant, task) under ``root``, each half appended as it arrives
    (a reviewer's last label counts: they may change their mind; two people's labels are a
    second opinion, ``Task.review_overlap``, and a row they split on is left out until a third
    label gives one a majority). Never trained on. A shift the trainer has seen (``mark_shift``)
    is a line of the same file: the rows people completed before it no longer count."""

    def __init__(self, root: Path, *, writer: bool = True) -> None:
        """``writer``: the trainer, which appends to the files and repairs a torn last line at
        start (``protege.jsonl``); False for anyone who only reads them while it runs."""
        self.root = root
        self.writer = writer
        self.lock = threading.RLock()
        self.halves: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self.completed: dict[tuple[str, str], int] = {}  # rows with both halves so far
        self.marks: dict[tuple[str, str], list[dict[str, Any]]] = {}  # every shift marked (mark_shift)

    def _merge(self, key: tuple[str, str], half: dict[str, str]) -> None:
        """One half into its row; a row that now has both gets the next place in ``DONE``. A
        person's label is one reviewer's (``by``; a reviewer's last counts): the row's label is
        what most of its reviewers gave, none while they are split (a disputed row)."""
        row = self.halves[key].setdefault(half["request_id"], {})
        if "label" in half:
            people = row.setdefault(PEOPLE, {})
            people[half.get("by", "")] = half["label"]
            row["text"] = half["text"]
            agreed = consensus(people)
            if agreed is None:
                row.pop("label", None)
            else:
                row["label"] = agreed
        else:
            row.update(half)
        if DONE not in row and "label" in row and "teacher" in row:
            row[DONE] = self.completed[key]
            self.completed[key] += 1

    def _path(self, tenant: str, task: str) -> Path:
        return self.root / tenant / f"{task}.jsonl"

    @locked
    def load(self, tenant: str, task: str) -> dict[str, dict[str, Any]]:
        key = (tenant, task)
        if key not in self.halves:
            self.halves[key], self.completed[key] = {}, 0
            for half in read_appended(self._path(tenant, task), repair=self.writer):
                if SHIFT in half:
                    self.marks.setdefault(key, []).append(half)
                else:
                    self._merge(key, half)
        return self.halves[key]

    @locked
    def done(self, tenant: str, task: str) -> int:
        """Rows people have completed so far (both halves in; disputed ones too): each row's
        place in that order is fixed once it is complete, so a count of them marks a moment."""
        self.load(tenant, task)
        return self.completed[(tenant, task)]

    @locked
    def shift(self, tenant: str, task: str) -> int:
        """The place from which rows count (0: every row): rows completed before the last shift
        the trainer saw are yesterday's traffic."""
        self.load(tenant, task)
        return max((int(m[SHIFT]) for m in self.marks.get((tenant, task), [])), default=0)

    @locked
    def mark_shift(self, tenant: str, task: str, place: int, why: str) -> None:
        """From now on, only the rows completed from ``place`` on count (``golden``, ``truth``):
        the rows since then showed the serving rule falls short, so the traffic they sample is
        not the traffic of the rows before. Kept on disk with the rows: a restarted trainer
        certifies on the same rows."""
        self.load(tenant, task)
        key = (tenant, task)
        if place <= self.shift(tenant, task):
            return
        mark = {SHIFT: place, "why": why, "at_ms": int(time.time() * 1000)}
        self.marks.setdefault(key, []).append(mark)
        append(self._path(tenant, task), mark)

    @locked
    def add(self, case: HarvestCase) -> None:
        """One half of a golden row: the teacher's answer or a person's label."""
        half = {"request_id": case.request_id, "text": case.text}
        if case.label_source == "feedback":
            half["label"] = case.label
            half["by"] = case.labelled_by or ""
        else:
            half["teacher"] = case.label
        self.load(case.tenant, case.task)
        self._merge((case.tenant, case.task), half)
        append(self._path(case.tenant, case.task), half)

    @locked
    def golden(self, tenant: str, task: Task, newest: int = 0, since: int | None = None) -> list[Trusted]:
        """The reviewed rows with both halves, each label one of the task's answers (by request
        id), completed since the last shift the trainer saw (``since``: from that place in the
        order people completed them instead); with ``newest``, only that many, the last that
        people completed."""
        first = self.shift(tenant, task.name) if since is None else since
        done = [(row[DONE], rid, row) for rid, row in self._golden_rows(tenant, task, first)]
        if newest:
            done = sorted(done)[-newest:]
        return [
            Trusted(rid, row["text"], row["label"], row["teacher"], source="review")
            for _, rid, row in sorted(done, key=lambda d: d[1])
        ]

    @locked
    def sequence(self, tenant: str, task: Task) -> list[tuple[int, str]]:
        """The golden rows completed since the last shift the trainer saw as (place, label), in
        the order people completed them: what ``Trainer.out_of_scope_alarm`` counts, row by row,
        without a model."""
        return sorted(
            (row[DONE], row["label"]) for _, row in self._golden_rows(tenant, task, self.shift(tenant, task.name))
        )

    def _golden_rows(self, tenant: str, task: Task, first: int) -> Iterator[tuple[str, dict[str, Any]]]:
        """(request id, row) of every row with both halves, each label one of the task's answers,
        completed from place ``first`` on (the lock held by the caller)."""
        answers = set(task.answers)
        for rid, row in self.load(tenant, task.name).items():
            if row.get("label") in answers and row.get("teacher") in answers and row[DONE] >= first:
                yield rid, row

    @locked
    def places(self, tenant: str, task: str) -> dict[str, int]:
        """Each completed row's place in the order people completed them (request id to place)."""
        return {rid: row[DONE] for rid, row in self.load(tenant, task).items() if DONE in row}

    @locked
    def truth(self, tenant: str, task: Task, file: Sequence[Trusted] = ()) -> list[Trusted]:
        """The golden set a version of (tenant, task) is measured and certified on: the task's
        golden file and the reviewed rows (a file row wins an id both hold) completed since the
        last shift the trainer saw, the newest ``task.review_window`` of them when it is set.
        Without a file, the reviewed rows count
        from ``gates.min_golden`` of them: until then the version is certified as before (on
        agreement), not on a handful of rows that certify nothing."""
        reviewed = self.golden(tenant, task, newest=task.review_window)
        if not file and len(reviewed) < task.student.gates.min_golden:
            return []
        return list(({t.request_id: t for t in reviewed} | {t.request_id: t for t in file}).values())

    @locked
    def opinions(self, tenant: str, task: str) -> dict[str, dict[str, str]]:
        """Each reviewed request's people and their labels (``agreement`` measures them)."""
        return {rid: row[PEOPLE] for rid, row in self.load(tenant, task).items() if PEOPLE in row}

    @locked
    def waiting(self, tenant: str, task: str) -> int:
        """Sampled requests without a person's label yet."""
        return sum(PEOPLE not in row for row in self.load(tenant, task).values())

    @locked
    def shifts_marked(self, tenant: str, task: str) -> list[dict[str, Any]]:
        """Every shift the trainer marked, in order: ``shift`` (the place from which rows count),
        ``why``, and ``at_ms`` (when; absent in files of stop 33)."""
        self.load(tenant, task)
        return list(self.marks.get((tenant, task), []))

    @locked
    def status(self, tenant: str, task: Task) -> dict[str, Any]:
        """What the review sample has grown for (tenant, task), for a person: rows people
        completed (both halves), those that count now (since the last shift marked, labelled with
        one of the task's answers), halves still waiting, disputed rows, agreement between
        people, and every shift marked."""
        rows = self.load(tenant, task.name)
        people = agreement(self.opinions(tenant, task.name))
        return {
            "tenant": tenant,
            "task": task.name,
            "completed": self.done(tenant, task.name),
            "counting": len(self.golden(tenant, task)),
            "counting_from": self.shift(tenant, task.name),
            "review_window": task.review_window,
            "waiting_for_a_label": self.waiting(tenant, task.name),
            "waiting_for_the_teacher": sum("teacher" not in row and PEOPLE in row for row in rows.values()),
            "disputed": people["disputed"],
            "agreement": people["agreement"],
            "kappa": people["kappa"],
            "shifts": self.shifts_marked(tenant, task.name),
        }
