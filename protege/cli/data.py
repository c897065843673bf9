"""Data commands: labelling through the Message Batches API, the event schemas, the demo's
ticket generator."""

from __future__ import annotations

# ONNX Runtime, scikit-learn, torch and the Anthropic SDK are imported by the commands that use them:
# every other command starts without them.
import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

from protege.cli.root import app, console, schemas_app
from protege.costs import price_table
from protege.events import EVENTS, schema_of
from protege.generator import generate, read_jsonl, write_jsonl
from protege.labelling import label_with_batches
from protege.settings import REPO, TeacherSettings
from protege.task import load_tasks

# -- offline labelling ----------------------------------------------------------------


@app.command("label")
def label_cmd(
    task_name: Annotated[str, typer.Option("--task", help="Task name (a file in PROTEGE_TASKS_DIR).")],
    input: Annotated[Path, typer.Option(help="JSON Lines with id and text.")],
    output: Annotated[Path, typer.Option(help="Labelled JSON Lines (id, text, label, rationale, teacher).")],
    poll: Annotated[float, typer.Option(help="Seconds between progress polls.")] = 30.0,
    model: Annotated[str | None, typer.Option(help="Teacher model (default: the task's).")] = None,
) -> None:
    """Label a golden or bootstrap set with the teacher through the Message Batches API (half price)."""
    import anthropic

    settings = TeacherSettings()
    key = settings.api_key()
    if not key:
        raise typer.BadParameter("labelling calls the Message Batches API: set ANTHROPIC_API_KEY (no stand-in here)")
    task = load_tasks(settings.tasks_dir)[task_name]
    rows = read_jsonl(input)
    client = anthropic.AsyncAnthropic(
        api_key=key, base_url=settings.anthropic_base_url, max_retries=settings.max_retries, timeout=settings.timeout_s
    )
    report = asyncio.run(
        label_with_batches(
            client,
            task,
            rows,
            model=model,
            poll_s=poll,
            prices=price_table(settings.prices),
            progress=lambda line: console.print(line, highlight=False),
        )
    )
    write_jsonl(report.labelled, output)
    errors = output.with_suffix(".errors.jsonl")
    write_jsonl(report.failed, errors)
    console.print(
        f"labelled {len(report.labelled)}/{len(rows)} into {output}; {len(report.failed)} failed "
        f"({errors}); cost ${report.cost_usd:.4f} at the batch price; batches {report.batch_ids}"
    )


# -- schemas ------------------------------------------------------------------------


@schemas_app.command("export")
def schemas_export(out: Path = REPO / "schemas") -> None:
    """Write schemas/<event>.v1.schema.json from the event models."""

    out.mkdir(parents=True, exist_ok=True)
    for name in EVENTS:
        (out / f"{name}.v1.schema.json").write_text(json.dumps(schema_of(name), indent=2) + "\n")
    typer.echo(f"wrote {len(EVENTS)} schemas to {out}")


@app.command("generate")
def generate_cmd(n: int = 600, seed: int = 7, out: Path = Path("tickets.jsonl")) -> None:
    """Write generated, labelled support tickets as JSON Lines."""

    write_jsonl(generate(n, seed), out)
    typer.echo(f"wrote {n} tickets to {out}")
