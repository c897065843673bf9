"""The benchmarks' OFFLINE STAND-IN reviewer on a real broker: it answers every review item on
protege.review with a review on protege.feedback; with ``noise`` that share of its labels is
wrong (seeded, another of the data set's labels), with ``delay_s`` it holds each label that long
and what is still held when it stops is never sent (a reviewer who is late); with ``overlap`` a
second person labels the requests the task wants two labels on, and a third where they split."""

from __future__ import annotations

import asyncio
import time

import pytest

from protege.events import Feedback, ReviewItem
from protege.generator import triage_task
from protege.harness import StandinReviewer
from protege.kafka import Out, producer
from protege.policy import reviewers_wanted
from protege.settings import Settings
from protege.state import read_all

pytestmark = pytest.mark.kafka
LABELS = ("billing", "refund", "login", "shipping")


async def send_items(settings: Settings, n: int) -> None:
    prod = producer(settings)
    await prod.start()
    try:
        for i in range(n):
            item = ReviewItem(request_id=f"r{i}", tenant="acme", task="ticket-triage", text=f"t{i}", sampled_at_ms=i)
            out = Out.of(settings.topics.review, item)
            await prod.send(out.topic, out.value, key=out.key)
        await prod.flush()
    finally:
        await prod.stop()


def reviews(settings: Settings) -> list[Feedback]:
    return [Feedback.model_validate_json(r.value) for r in asyncio.run(read_all(settings, settings.topics.feedback))]


def until(check, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.2)


def test_a_noisy_reviewer_sends_every_label_some_of_them_wrong(settings: Settings) -> None:
    truth = {f"r{i}": LABELS[i % len(LABELS)] for i in range(200)}
    asyncio.run(send_items(settings, 200))
    with StandinReviewer(settings, truth, noise=0.2, seed=3) as reviewer:
        until(lambda: reviewer.reviewed == 200)
    sent = reviews(settings)
    assert len(sent) == 200 and all(f.kind == "review" and f.source == StandinReviewer.SOURCE for f in sent)
    wrong = [f for f in sent if f.label != truth[f.request_id]]
    assert len(wrong) == reviewer.wrong and 20 <= len(wrong) <= 60  # 20% of 200, binomial sd ~5.7
    assert all(f.label in LABELS for f in wrong)
    assert "20% of its labels wrong" in reviewer.describe()


def test_a_late_reviewer_holds_its_labels_and_sends_none_it_still_holds(settings: Settings) -> None:
    truth = {f"r{i}": "billing" for i in range(30)}
    asyncio.run(send_items(settings, 30))
    with StandinReviewer(settings, truth, delay_s=3600) as reviewer:
        until(lambda: len(reviewer.held) == 30)
    assert reviewer.reviewed == 0 and reviews(settings) == []
    assert "3600 s after each item" in reviewer.describe()


def test_a_second_person_labels_the_overlap_and_a_third_breaks_their_ties(settings: Settings) -> None:
    truth = {f"r{i}": LABELS[i % len(LABELS)] for i in range(200)}
    asyncio.run(send_items(settings, 200))
    overlap = triage_task().model_copy(update={"review_rate": 1, "review_overlap": 0.5})
    twice = {rid for rid in truth if reviewers_wanted(rid, overlap) == 2}
    probe = StandinReviewer(settings, truth, noise=0.3, seed=3, overlap=overlap)
    split = {rid for rid in twice if probe.label_for(rid) != probe.label_for(rid, person=2)}
    assert 60 <= len(twice) <= 140 and split
    with StandinReviewer(settings, truth, noise=0.3, seed=3, overlap=overlap) as reviewer:
        until(lambda: reviewer.reviewed == 200 + len(twice) + len(split))
    sent = reviews(settings)
    by = {who: {f.request_id: f.label for f in sent if f.source == who} for who in (reviewer.SECOND, reviewer.THIRD)}
    assert by[reviewer.SECOND].keys() == twice and by[reviewer.THIRD].keys() == split
    assert reviewer.second_opinions == len(twice) and reviewer.third_opinions == len(split)
    assert all(by[reviewer.THIRD][rid] == probe.label_for(rid, person=3) for rid in split)
