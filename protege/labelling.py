"""Offline labelling of a golden or bootstrap set by the teacher through the Message
Batches API (half the price of live calls), with progress.

    rows = [{"id": "g1", "text": "..."}, ...]
    report = await label_with_batches(client, task, rows, model="claude-sonnet-4-6", progress=print)

One batch request per row (``custom_id`` = the row id), the same tool-use classification
as the live teacher, polled until the batch ends; results arrive in any order and are
matched back by ``custom_id``. A result that errored, expired or answered outside the
label set is reported, never silently dropped.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protege.costs import Price, cost_usd, price_for
from protege.events import Usage
from protege.task import Task
from protege.teacher import message_params, read_classification, usage_of

BATCH_DISCOUNT = 0.5  # Message Batches are billed at half the live price
MAX_BATCH = 100_000
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass
class BatchReport:
    batch_ids: list[str] = field(default_factory=list)
    labelled: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage = field(default_factory=lambda: Usage(input_tokens=0, output_tokens=0))
    cost_usd: float = 0.0


def _add(a: Usage, b: Usage) -> Usage:
    return Usage(
        input_tokens=a.input_tokens + b.input_tokens,
        output_tokens=a.output_tokens + b.output_tokens,
        cache_creation_input_tokens=a.cache_creation_input_tokens + b.cache_creation_input_tokens,
        cache_read_input_tokens=a.cache_read_input_tokens + b.cache_read_input_tokens,
    )


async def label_with_batches(
    client: Any,
    task: Task,
    rows: list[dict[str, Any]],
    *,
    model: str | None = None,
    poll_s: float = 30.0,
    prices: dict[str, Price] | None = None,
    progress: Callable[[str], None] | None = None,
    counts: Callable[[int, int], None] | None = None,
) -> BatchReport:
    model = model or task.teacher.model
    price = price_for(model, prices)
    bad = [r["id"] for r in rows if not _CUSTOM_ID.match(str(r["id"]))]
    if bad:
        raise ValueError(f"row ids must match {_CUSTOM_ID.pattern} to be batch custom_ids: {bad[:5]}")
    by_id = {str(r["id"]): r for r in rows}
    report = BatchReport()
    for start in range(0, len(rows), MAX_BATCH):
        chunk = rows[start : start + MAX_BATCH]
        requests = [
            {
                "custom_id": str(r["id"]),
                "params": message_params(task, [{"role": "user", "content": r["text"]}], model, str(r["id"])),
            }
            for r in chunk
        ]
        batch = await client.messages.batches.create(requests=requests)
        report.batch_ids.append(batch.id)
        while batch.processing_status != "ended":
            c = batch.request_counts
            done = c.succeeded + c.errored + c.canceled + c.expired
            if counts:
                counts(start + done, len(rows))
            if progress:
                progress(
                    f"batch {batch.id}: {done}/{len(chunk)} done ({c.succeeded} ok, {c.errored} errored), "
                    f"{c.processing} processing"
                )
            await asyncio.sleep(poll_s)
            batch = await client.messages.batches.retrieve(batch.id)
        async for item in await client.messages.batches.results(batch.id):
            row = by_id.get(item.custom_id)
            if row is None:
                continue
            result = item.result
            if result.type != "succeeded":
                report.failed.append({**row, "error": result.type})
                continue
            u = usage_of(result.message.usage)
            report.usage = _add(report.usage, u)
            report.cost_usd += cost_usd(u, price) * BATCH_DISCOUNT
            label, rationale, _ = read_classification(task, result.message.content)
            if label is None:
                report.failed.append({**row, "error": "invalid_label"})
                continue
            report.labelled.append({**row, "label": label, "rationale": rationale, "teacher": result.message.model})
        if counts:
            counts(start + len(chunk), len(rows))
        if progress:
            progress(f"batch {batch.id}: ended; {len(report.labelled)} labelled, {len(report.failed)} failed so far")
    missing = set(by_id) - {r["id"] for r in report.labelled} - {r["id"] for r in report.failed}
    report.failed += [{**by_id[m], "error": "no_result"} for m in sorted(missing)]
    return report
