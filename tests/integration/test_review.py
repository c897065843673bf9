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
from protege.policy import in_review, reviewers_wanted
from protege.registry import Registry
from protege.review import ReviewStore
from protege.settings import Settings
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
    spec["review_overlap"] = 0.5  # half the sample wants a second person's label
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

        def pull(source: str | None = None) -> list[dict]:
            who = ["--source", source] if source else []
            out = CliRunner().invoke(app, ["review", "pull", "--tenant", "rev", "--task", TASK, *who])
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
        said = " ".join(out.output.split())  # the console wraps its lines at the terminal's width
        assert out.exit_code == 1 and "line 1" in said and "no-such-queue" in said
        assert len(pull()) == len(sampled)  # nothing was sent
        labelled = tmp_path / "labelled.jsonl"
        labelled.write_text("\n".join(json.dumps(w | {"label": truth[w["request_id"]]}) for w in waiting) + "\n")
        out = CliRunner().invoke(app, ["review", "submit", str(labelled), "--source", "ann"])
        assert out.exit_code == 0, out.output
        # Half the sample wants a second opinion: from anyone but ann.
        twice = {rid for rid in sampled if reviewers_wanted(rid, task) == 2}
        assert twice and twice != sampled
        assert {w["request_id"] for w in pull()} == {w["request_id"] for w in pull("bo")} == twice
        assert pull("ann") == []
        second = [w for w in waiting if w["request_id"] in twice]
        split = second[0]["request_id"]  # bo sees this one differently: a disputed row
        wrong = next(a for a in task.answers if a != truth[split])
        labelled.write_text(
            "\n".join(json.dumps(w | {"label": wrong if w is second[0] else truth[w["request_id"]]}) for w in second)
        )
        assert CliRunner().invoke(app, ["review", "submit", str(labelled), "--source", "bo"]).exit_code == 0
        assert [w["request_id"] for w in pull()] == [w["request_id"] for w in pull("cy")] == [split]
        assert pull("ann") == pull("bo") == []
        labelled.write_text(json.dumps(second[0] | {"label": truth[split]}))  # a third person breaks the tie
        assert CliRunner().invoke(app, ["review", "submit", str(labelled), "--source", "cy"]).exit_code == 0
        assert pull() == []

        # The report reads it back: every sampled request, each with a person's label; the cold
        # start's teacher (the stand-in, right on every one) answered them all.
        page = tmp_path / "report.html"
        out = CliRunner().invoke(app, ["report", "--tenant", "rev", "--task", TASK, "--out", str(page)])
        assert out.exit_code == 0, out.output
        people = json.loads(page.with_suffix(".json").read_text())["people"]
        assert (people["sampled"], people["reviewed"], people["pending"]) == (len(sampled), len(sampled), 0)
        # per request two reviewers (one pair); cy's label on the split one broke the tie, asked for
        # because ann and bo split: it settles the row and is left out of the agreement
        assert people["reviewers"]["rows"] == len(twice) and people["disputed"] == 0
        assert people["reviewers"]["tie_breaks_left_out"] == 1
        assert people["reviewers"]["agreement"] == pytest.approx((len(twice) - 1) / len(twice))
        assert len(twice) == sum(p["n"] for p in people["reviewers"]["pairs"])
        assert "Second opinions" in page.read_text()
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


def test_the_review_desk_labels_the_sample_in_a_browser(settings: Settings, tmp_path: Path) -> None:
    """`protege review serve` on a real broker: the waiting requests shown in Chromium (the
    customer's text escaped), a label posted from the page's own form lands on protege.feedback
    as a review, the next request shows, and a forged form sends nothing."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import urllib.error
    import urllib.parse
    import urllib.request

    from protege.broker.embedded import free_port
    from protege.events import Feedback, ReviewItem
    from protege.kafka import Out, publish
    from tests.browser import has_colour, visit

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    spec = yaml.safe_load((REPO / "tests" / "tasks" / f"{TASK}.yaml").read_text())
    spec["review_rate"] = 1.0
    (tasks / f"{TASK}.yaml").write_text(yaml.safe_dump(spec))
    hostile = "<img src=x onerror=alert(1)> my card was charged twice"
    items = [
        ReviewItem(request_id=f"desk-{i}", tenant="acme", task=TASK, text=t, sampled_at_ms=0)
        for i, t in enumerate([hostile, "where is my parcel"])
    ]

    asyncio.run(publish(settings, [Out.of(settings.topics.review, item) for item in items]))
    port = free_port()
    env = os.environ | {
        "PROTEGE_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "PROTEGE_TOPIC_PREFIX": settings.topic_prefix,
        "PROTEGE_TASKS_DIR": str(tasks),
        "PROTEGE_HOME": str(tmp_path / "home"),
    }
    desk = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "protege.cli",
            "review",
            "serve",
            "--tenant",
            "acme",
            "--task",
            TASK,
            "--port",
            str(port),
            "--source",
            "ana",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:

        def up() -> bool:
            try:
                return urllib.request.urlopen(url, timeout=5).status == 200
            except OSError:
                return desk.poll() is not None and pytest.fail(desk.communicate()[0])  # it stopped

        until("the desk answers", up, timeout=60)
        dom, pixels = visit(chromium(), url, tmp_path)
        assert "2 waiting" in dom and "my card was charged twice" in dom
        assert "<img" not in dom.split("<blockquote")[1].split("</blockquote>")[0]  # shown, not run
        assert re.findall(r'<button[^>]*name="label"', dom) and 'value="oos"' in dom
        assert has_colour(pixels, "#2b6cb0") and has_colour(pixels, "#1a202c")  # buttons and text drawn

        token = re.search(r'name="token" value="([^"]+)"', dom)[1]  # type: ignore[index]
        label = next(iter(load_task(tasks / f"{TASK}.yaml").labels))

        def post(**fields: str) -> tuple[int, str]:
            data = urllib.parse.urlencode(fields).encode()
            try:
                with urllib.request.urlopen(url + "label", data=data, timeout=30) as r:  # follows the 303
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()

        assert post(token="forged", request_id="desk-0", label=label)[0] == 403
        assert post(token=token, request_id="desk-0", label="no-such-label")[0] == 400
        status, page = post(token=token, request_id="desk-0", label=label)
        assert status == 200 and f"Sent: desk-0 labelled {label}" in page and "where is my parcel" in page
        assert post(token=token, request_id="desk-0", label=label)[0] == 409  # once

        records = asyncio.run(read_all(settings, settings.topics.feedback))
        sent = [Feedback.model_validate_json(r.value or b"") for r in records]
        assert [(f.request_id, f.label, f.kind, f.source) for f in sent] == [("desk-0", label, "review", "ana")]
    finally:
        desk.send_signal(signal.SIGTERM)  # as a supervisor stops it (SIGINT may be ignored in a background job)
        try:
            out = desk.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            desk.kill()
            out = desk.communicate()[0]
            pytest.fail(f"the desk did not stop on SIGTERM: {out}")
    assert desk.returncode == 0 and "1 reviews sent" in out, out
