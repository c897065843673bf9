"""The ``protege`` command line: the app, and what its commands share (console, signals,
where library logs go). Commands live by group in the modules beside this one."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

from protege import signals
from protege.settings import Settings, apply_to_process

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="protege: keep the teacher's quality, serve from the student.",
)
broker_app = typer.Typer(no_args_is_help=True, help="The embedded Apache Kafka broker (KRaft, one node).")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks.")
schemas_app = typer.Typer(no_args_is_help=True, help="The event schemas in schemas/.")
models_app = typer.Typer(no_args_is_help=True, help="Student versions: list, show, promote, pin, unpin, roll back.")
app.add_typer(broker_app, name="broker")
app.add_typer(bench_app, name="bench")
app.add_typer(schemas_app, name="schemas")
app.add_typer(models_app, name="models")
console = Console(stderr=True)

STANDIN_NOTE = "teacher: OFFLINE STAND-IN answering from labelled data (no ANTHROPIC_API_KEY); costs are estimates"
Tenant = Annotated[str, typer.Option(help="Tenant.")]
TaskName = Annotated[str, typer.Option("--task", help="Task name.")]


def home() -> Path:
    return Settings().home


@app.callback()
def _process() -> None:
    """protege: keep the teacher's quality, serve from the student."""
    apply_to_process(Settings())


@contextlib.contextmanager
def stops_on_signals(what: str) -> Iterator[None]:
    """Ctrl-C or SIGTERM, in any phase: unwind (stopping what was started), say so, exit 130."""
    try:
        with signals.interruptible():
            yield
    except KeyboardInterrupt:
        signals.forget_interrupt()
        console.print(f"[yellow]interrupted: {what}[/]")
        raise typer.Exit(signals.INTERRUPTED) from None


def library_logs_to(folder: Path) -> None:
    """Libraries' log lines (aiokafka retrying while a new topic elects its leader, ...) go to
    ``folder/cli.log``, beside the services' logs, not to the user's terminal."""
    folder.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        if isinstance(h, logging.FileHandler):
            h.close()  # an earlier command's cli.log, when commands run in one process (tests)
    handler = logging.FileHandler(folder / "cli.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)


class RateColumn(ProgressColumn):
    """Items per second, in the bar's unit (rich's own speed column counts bytes)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="progress.data.speed")


def progress_bar(unit: str, on: Console | None = None) -> Progress:
    """A bar with count, rate and ETA for long work, on a terminal; on anything else (a log
    file, CI, a pipe) it draws nothing, and the command's own summary lines say what happened."""
    on = on or console
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=on,
        disable=not on.is_terminal,
    )
