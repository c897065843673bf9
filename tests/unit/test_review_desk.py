"""The review desk's page and form, apart from HTTP and the broker: blind, escaped, one label
per waiting request, the same checks as a submitted file, and nothing marked done that the
broker did not take. (tests/integration/test_review.py serves it on a real broker, in Chromium.)"""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from protege.events import Feedback, ReviewItem
from protege.generator import triage_task
from protege.policy import in_review
from protege.review_desk import MAX_FORM_BYTES, Desk

TASK = triage_task().model_copy(update={"review_rate": 0.5})
SAMPLED = [i for i in (f"acme-{n}" for n in range(40)) if in_review(i, TASK.review_rate)][:3]
OUTSIDE = next(i for i in (f"acme-{n}" for n in range(40)) if not in_review(i, TASK.review_rate))
HOST = "127.0.0.1:8077"


def item(request_id: str, text: str = "I was charged twice", tenant: str = "acme") -> ReviewItem:
    return ReviewItem(request_id=request_id, tenant=tenant, task=TASK.name, text=text, sampled_at_ms=0)


def desk(items: list[ReviewItem], sent: list[Feedback], fail: bool = False) -> Desk:
    def send(review: Feedback) -> None:
        if fail:
            raise ConnectionError("broker down")
        sent.append(review)

    return Desk(TASK, "acme", source="ana", waiting=lambda: items, send=send, hosts={HOST}, token="t0k")


def form(**fields: str) -> bytes:
    return urlencode({"token": "t0k", **fields}).encode()


def test_the_page_is_blind_and_escapes_the_customers_text() -> None:
    hostile = "<script>alert(1)</script> & 'quotes'"
    d = desk([item(SAMPLED[0], hostile), item(SAMPLED[1]), item("acme-x", tenant="other")], [])
    status, headers, body = d.get("/", host=HOST)
    page = body.decode()
    assert status == 200 and "default-src 'none'" in headers["Content-Security-Policy"]
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &#x27;quotes&#x27;" in page
    assert "2 waiting" in page  # another tenant's item is not this desk's
    for answer in TASK.answers:
        assert f"value='{answer}'" in page
    assert "teacher_label" not in page and "student" not in page.split("</h1>")[1].split("answers of")[0]


def test_a_label_is_sent_then_the_next_request_shows() -> None:
    sent: list[Feedback] = []
    d = desk([item(SAMPLED[0], "first"), item(SAMPLED[1], "second")], sent)
    status, headers, _ = d.post("/label", form(request_id=SAMPLED[0], label="billing"), host=HOST)
    assert status == 303 and headers["Location"] == f"/?done={SAMPLED[0]}"
    assert [(f.request_id, f.label, f.kind, f.source, f.text) for f in sent] == [
        (SAMPLED[0], "billing", "review", "ana", "first")
    ]
    page = d.get(headers["Location"], host=HOST)[2].decode()
    assert f"Sent: {SAMPLED[0]} labelled billing" in page and "second" in page and "1 waiting" in page
    again = d.post("/label", form(request_id=SAMPLED[0], label="refund"), host=HOST)  # a second click
    assert again[0] == 409 and b"labelled already" in again[2] and len(sent) == 1


@pytest.mark.parametrize(
    ("body", "host", "status", "says"),
    [
        (form(request_id="acme-0", label="billing").replace(b"t0k", b"bad"), HOST, 403, "not from this desk"),
        (form(request_id="acme-0", label="billing"), "evil.example:8077", 421, "does not serve the host"),
        (form(request_id="made-up", label="billing"), HOST, 409, "does not wait for a label"),
        (form(request_id="SAMPLED0", label="refunds please"), HOST, 400, "is not one of"),
        (form(request_id="SAMPLED0", label=""), HOST, 400, "is not one of"),
        (form(request_id="OUTSIDE", label="billing"), HOST, 400, "not in"),
        (b"token=t0k&request_id=%ff%fe&label=billing", HOST, 400, "not a form"),
        (b"x" * (MAX_FORM_BYTES + 1), HOST, 413, "at most"),
        (b"no form at all", HOST, 400, "not a form"),
    ],
)
def test_a_bad_form_is_refused_and_nothing_is_sent(body: bytes, host: str, status: int, says: str) -> None:
    body = body.replace(b"SAMPLED0", SAMPLED[0].encode()).replace(b"OUTSIDE", OUTSIDE.encode())
    sent: list[Feedback] = []
    d = desk([item(SAMPLED[0]), item(OUTSIDE)], sent)
    got, _, page = d.post("/label", body, host=host)
    assert (got, sent) == (status, []) and says in page.decode()
    assert d.get("/", host=HOST)[2].decode().count("waiting") == 1 and SAMPLED[0] in d.items


def test_a_label_the_broker_did_not_take_stays_waiting() -> None:
    d = desk([item(SAMPLED[0])], [], fail=True)
    status, _, page = d.post("/label", form(request_id=SAMPLED[0], label="billing"), host=HOST)
    assert status == 503 and b"not sent, try again" in page and SAMPLED[0] in d.items and not d.labelled


def test_skip_moves_a_request_to_the_end_and_an_empty_desk_says_so() -> None:
    items = [item(SAMPLED[0], "first"), item(SAMPLED[1], "second")]
    d = desk(items, [])
    page = d.get(f"/?skip={SAMPLED[0]}", host=HOST)[2].decode()
    assert page.index("second") < page.index("skip")
    assert list(d.items) == [SAMPLED[1], SAMPLED[0]]
    items.clear()
    assert "Nothing waits for a label" in d.get("/?refresh=1", host=HOST)[2].decode()
    assert d.get("/other", host=HOST)[0] == 404 and d.post("/", form(), host=HOST)[0] == 404


def test_looking_again_with_the_broker_away_says_so_and_keeps_the_queue() -> None:
    items = [item(SAMPLED[0])]

    def waiting() -> list[ReviewItem]:
        if not items:
            raise ConnectionError("broker down")
        return list(items)

    d = Desk(TASK, "acme", source="ana", waiting=waiting, send=lambda f: None, hosts={HOST}, token="t0k")
    items.clear()
    status, _, page = d.get("/?refresh=1", host=HOST)
    assert status == 503 and b"could not read what waits" in page and list(d.items) == [SAMPLED[0]]
