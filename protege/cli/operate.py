"""Commands for the people who run protege: ``protege doctor`` (what a first run needs, and
how to fix what is missing) and ``protege ask`` (one request through the pipeline, its answer)."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from protege.cli.root import Tenant, app, console
from protege.client import Answer, Client, NoAnswer, Rejected
from protege.doctor import as_json, run_checks

MARK = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}


@app.command("doctor")
def doctor(
    as_json_: Annotated[bool, typer.Option("--json", help="One JSON array of checks on stdout.")] = False,
    broker_timeout: Annotated[float, typer.Option(help="Seconds to wait for PROTEGE_BOOTSTRAP_SERVERS.")] = 10.0,
) -> None:
    """Check Python, Java 17 and Maven, the Kafka jars, the broker, the Anthropic key (never
    printed), ONNX Runtime's providers, the task files and disk space. Exit 0 only when
    nothing failed (a warning passes: it works, with the caveat it names)."""
    checks = run_checks(broker_timeout)
    failed = [c for c in checks if c.status == "fail"]
    if as_json_:
        print(json.dumps(as_json(checks), indent=2))
    else:
        table = Table(show_lines=False)
        for col in ("", "check", "found", "fix"):
            table.add_column(col, overflow="fold")
        for c in checks:
            table.add_row(MARK[c.status], c.name, c.detail, c.fix)
        out = Console(width=max(120, Console().width))
        out.print(table)
        warned = sum(c.status == "warn" for c in checks)
        out.print(
            f"[red]{len(failed)} of {len(checks)} checks failed[/]"
            if failed
            else f"[green]all {len(checks)} checks passed[/]" + (f" ({warned} with a warning)" if warned else "")
        )
    if failed:
        raise typer.Exit(1)


@app.command("ask")
def ask(
    text: Annotated[str, typer.Argument(help="The text to classify.")],
    tenant: Tenant,
    task: Annotated[str, typer.Option("--task", help="Task name.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 60.0,
    request_id: Annotated[str | None, typer.Option(help="The request id (default: <tenant>-<uuid>).")] = None,
    as_json_: Annotated[bool, typer.Option("--json", help="The response event as JSON, and the latency.")] = False,
) -> None:
    """Publish one request to PROTEGE_BOOTSTRAP_SERVERS, wait for its answer, print it (label,
    route, version, latency). Exit 1 when it is refused or failed, 124 when no answer came, 2 when Kafka cannot be reached."""
    try:
        answer = asyncio.run(_ask(text, tenant, task, timeout, request_id))
    except Rejected as e:
        console.print(f"[red]rejected[/]: {e.reason}: {e.detail} (on the requests' dead-letter topic)")
        raise typer.Exit(1) from None
    except NoAnswer as e:
        console.print(f"[red]no answer[/]: {e}")
        raise typer.Exit(124) from None
    r = answer.response
    if as_json_:
        print(json.dumps({"response": r.model_dump(mode="json"), "latency_ms": round(answer.latency_ms, 1)}))
    else:
        by = f"{r.answered_by} (offline stand-in)" if r.standin else r.answered_by
        confidence = f", confidence {r.confidence:.3f}" if r.confidence is not None else ""
        print(
            f"{r.label}  [{r.route}: {by}{confidence}] {r.status}, {answer.latency_ms:.0f} ms, request {r.request_id}"
        )
        if r.error:
            print(f"error: {r.error}")
    if r.status == "failed":
        raise typer.Exit(1)


async def _ask(text: str, tenant: str, task: str, timeout: float, request_id: str | None) -> Answer:
    async with Client(tenant=tenant, task=task, timeout_s=timeout) as client:
        return await client.ask(text, request_id=request_id)
