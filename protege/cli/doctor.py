"""``protege doctor``: checks what a first run needs and says how to fix what is missing."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from protege.cli.root import app
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
