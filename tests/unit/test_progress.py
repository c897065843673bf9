"""Long work shows a bar with count, rate and ETA on a terminal, and a plain line now and
then elsewhere."""

from __future__ import annotations

import io
import time

from rich.console import Console

from protege.cli.root import progress_bar


def test_the_bar_draws_count_rate_and_eta_on_a_terminal() -> None:
    out = io.StringIO()
    on = Console(file=out, force_terminal=True, width=120)
    with progress_bar("rows", on) as bar:
        job = bar.add_task("labelling", total=200)
        for _ in range(4):
            bar.advance(job, 25)
            time.sleep(0.05)
    text = out.getvalue()
    assert "labelling" in text and "100/200" in text and "rows/s" in text and "eta" in text


def test_a_line_now_and_then_when_not_on_a_terminal() -> None:
    out = io.StringIO()
    on = Console(file=out, force_terminal=False, width=200)
    with progress_bar("rows", on, every=0.1) as bar:
        job = bar.add_task("labelling", total=200)
        bar.advance(job, 50)  # too soon for a line
        assert out.getvalue() == ""
        time.sleep(0.15)
        bar.advance(job, 50)
        bar.advance(job, 50)  # too soon after the first line
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "labelling: 100/200 rows" in lines[0], lines
    assert "\x1b" not in out.getvalue()  # no bar, no cursor moves in a log


def test_quiet_when_not_on_a_terminal_and_asked_to_be() -> None:
    out = io.StringIO()
    on = Console(file=out, force_terminal=False)
    with progress_bar("rows", on, every=None) as bar:
        job = bar.add_task("labelling", total=10)
        bar.advance(job, 10)
    assert bar.disable and out.getvalue() == ""
