"""The review sample on the live pipeline: a task with ``review_rate`` sends that share of its
requests (whatever answers them) to people on protege.review, blind; ``protege review pull``
lists what waits, ``protege review submit`` sends the labels (a bad line stops the file and
sends nothing); ``protege report`` measures what was served against them; the trainer joins each label with the teacher's answer into a golden row, no
reviewed request is ever a training case, and the next version is measured on those rows."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from protege.broker.embedded import EmbeddedBroker
from protege.cli import app
from protege.events import HarvestCase
from protege.generator import generate, write_jsonl
from protege.harness import drive, summarize
from protege.pipeline import LocalPipeline
from protege.policy import in_review
from protege.registry import Registry
from protege.review import ReviewStore
from protege.state import read_all
from protege.task import load_task
from tests.browser import chromium, look
from tests.helpers import pipeline_env

pytestmark = pytest.mark.kafka
REPO = Path(__file__).resolve().parents[2]
TASK = "ticket-triage"
RATE = 0.25


def until(what: str, check, timeout: float = 180):  # type: ignore[no-untyped-def]
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def test_reviewed_requests_become_golden_rows_and_never_train(
    kafka: EmbeddedBroker, backbone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    spec = yaml.safe_load((REPO / "tests" / "tasks" / f"{TASK}.yaml").read_text())
    spec["review_rate"] = RATE
    spec.setdefault("student", {}).setdefault("gates", {})["min_golden"] = 10  # reviewed rows alone: a golden set
    (tasks / f"{TASK}.yaml").write_text(yaml.safe_dump(spec))
    task = load_task(tasks / f"{TASK}.yaml")
    rows = generate(320, seed=41)
    write_jsonl(rows, tmp_path / "labels.jsonl")
    # No student until 200 cases: the first one is trained after the reviews are in.
    env = pipeline_env(tmp_path / "labels.jsonl", backbone, PROTEGE_TASKS_DIR=str(tasks), PROTEGE_MIN_CASES="200")
    with LocalPipeline(
        tmp_path / "home", env=env, bootstrap=kafka.bootstrap, topic_prefix=f"rev{int(time.time())}."
    ) as p:
        settings = p.settings
        for name, value in (
            ("PROTEGE_BOOTSTRAP_SERVERS", settings.bootstrap_servers),
            ("PROTEGE_TOPIC_PREFIX", settings.topic_prefix),
            ("PROTEGE_TASKS_DIR", str(tasks)),
        ):
            monkeypatch.setenv(name, value)
        first = summarize(asyncio.run(drive(settings, rows[:120], tenant="rev", task=TASK, timeout=180, linger=2.0)))
        assert (first["answered"], first["duplicates"]) == (120, 0)
        truth = {f"rev-{r['id']}": r["label"] for r in rows}
        sampled = {rid for rid in list(truth)[:120] if in_review(rid, RATE)}
        assert 15 <= len(sampled) <= 45

        def pull() -> list[dict]:
            out = CliRunner().invoke(app, ["review", "pull", "--tenant", "rev", "--task", TASK])
            assert out.exit_code == 0, out.output
            return [json.loads(line) for line in out.stdout.splitlines()]

        waiting = until(
            "every sampled request on protege.review", lambda: (w := pull()) and len(w) == len(sampled) and w
        )
        assert {w["request_id"] for w in waiting} == sampled
        assert all(set(w) == {"request_id", "tenant", "task", "text", "label"} and w["label"] is None for w in waiting)

        bad = tmp_path / "bad.jsonl"
        bad.write_text("\n".join(json.dumps(w | {"label": "no-such-queue"}) for w in waiting[:2]) + "\n")
        out = CliRunner().invoke(app, ["review", "submit", str(bad)])
        assert out.exit_code == 1 and "line 1" in out.output and "no-such-queue" in out.output
        assert len(pull()) == len(sampled)  # nothing was sent
        labelled = tmp_path / "labelled.jsonl"
        labelled.write_text("\n".join(json.dumps(w | {"label": truth[w["request_id"]]}) for w in waiting) + "\n")
        out = CliRunner().invoke(app, ["review", "submit", str(labelled), "--source", "ann"])
        assert out.exit_code == 0, out.output
        assert pull() == []

        # The report reads it back: every sampled request, each with a person's label; the cold
        # start's teacher (the stand-in, right on every one) answered them all.
        page = tmp_path / "report.html"
        out = CliRunner().invoke(app, ["report", "--tenant", "rev", "--task", TASK, "--out", str(page)])
        assert out.exit_code == 0, out.output
        people = json.loads(page.with_suffix(".json").read_text())["people"]
        assert (people["sampled"], people["reviewed"], people["pending"]) == (len(sampled), len(sampled), 0)
        assert people["served"]["correct"] == people["teacher"]["correct"] == len(sampled)
        assert f"{len(sampled)} labelled by a person, 0 waiting" in page.read_text()
        people_plot = look(chromium(), page, tmp_path).plots["people"]
        assert people_plot.ink > 0.02 and people_plot.colours >= 2, people_plot  # its bars, in the report's colours

        reviews = ReviewStore(settings.home / "review")

        def joined() -> int:
            reviews.halves.clear()  # re-read what the trainer wrote
            return len(reviews.golden("rev", task))

        until("the trainer's golden rows", lambda: joined() == len(sampled))
        assert {t.request_id: t.label for t in reviews.golden("rev", task)} == {rid: truth[rid] for rid in sampled}

        # More traffic: the first student is trained, and measured on the reviewed rows.
        second = summarize(asyncio.run(drive(settings, rows[120:], tenant="rev", task=TASK, timeout=180, linger=2.0)))
        assert (second["answered"], second["duplicates"]) == (200, 0)
        registry = Registry.of(settings)
        version = until("a first student", lambda: registry.versions("rev", TASK))[0]
        metrics = version.manifest.metrics
        assert metrics["truth_reviewed"] >= len(sampled) and metrics["truth_cases"] == metrics["truth_reviewed"]

        harvested = [
            HarvestCase.model_validate_json(r.value) for r in asyncio.run(read_all(settings, settings.topics.harvest))
        ]
        learnt = {c.request_id for c in harvested if c.reason != "review"}
        every_sampled = {rid for rid in truth if in_review(rid, RATE)}
        assert learnt and not learnt & every_sampled  # a reviewed request never trains
        assert {c.request_id for c in harvested if c.reason == "review"} <= every_sampled
