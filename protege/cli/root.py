"""The ``protege`` command line: the app, and what its commands share (console, signals,
where library logs go). Commands live by group in the modules beside this one."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
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
# The layouts of the student path (docs/architecture.md, "Three layouts of the student path"),
# for the commands that start the services.
Fused = Annotated[
    bool,
    typer.Option(
        help="The fused layout: the scorer also decides, in its own transaction, and no verifier runs "
        "(PROTEGE_FUSED=1: one hop fewer on the student path)."
    ),
]
OneHop = Annotated[
    bool,
    typer.Option(
        help="The one-hop layout: the scorer also ingests and decides, reading protege.requests, and neither "
        "ingestion nor a verifier runs (PROTEGE_ONE_HOP=1: one transaction from request to answer)."
    ),
]


def layout_env(fused: bool, one_hop: bool) -> dict[str, str]:
    """The services' environment for the layout ``--fused`` / ``--one-hop`` chose."""
    return {**({"PROTEGE_FUSED": "1"} if fused else {}), **({"PROTEGE_ONE_HOP": "1"} if one_hop else {})}


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


class _Lines(Progress):
    """Progress off a terminal (a log file, CI, a pipe): no bar, a plain line per task at most
    every ``every`` seconds while it moves, so a log shows the work going on."""

    def __init__(self, *columns: ProgressColumn | str, unit: str, every: float, console: Console) -> None:
        super().__init__(*columns, console=console, disable=True)
        self.unit = unit
        self.every = every
        self._said: dict[TaskID, float] = {}

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> TaskID:
        job = super().add_task(description, *args, **kwargs)
        self._said[job] = time.monotonic()
        return job

    def update(self, task_id: TaskID, *args: Any, **kwargs: Any) -> None:
        super().update(task_id, *args, **kwargs)
        self._maybe_say(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_say(task_id)

    def _maybe_say(self, job: TaskID) -> None:
        now = time.monotonic()
        task = self._tasks[job]
        if not task.visible or now - self._said.get(job, now) < self.every:
            return
        self._said[job] = now
        of = f"/{task.total:,.0f}" if task.total is not None else ""
        speed = task.speed
        rate = f", {speed:,.1f} {self.unit}/s" if speed else ""
        self.console.print(
            f"[{task.elapsed or 0:5.0f}s] {task.description}: {task.completed:,.0f}{of} {self.unit}{rate}",
            highlight=False,
            markup=False,
            soft_wrap=True,  # one line in the log, however long
        )


def progress_bar(unit: str, on: Console | None = None, *, every: float | None = 10.0) -> Progress:
    """A bar with count, rate and ETA for long work, on a terminal; on anything else (a log
    file, CI, a pipe) a plain line every ``every`` seconds instead (none with ``every=None``,
    where the command prints its own lines)."""
    on = on or console
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    if on.is_terminal:
        return Progress(*columns, console=on)
    if every is None:
        return Progress(*columns, console=on, disable=True)
    return _Lines(*columns, unit=unit, every=every, console=on)
