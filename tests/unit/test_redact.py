"""Personal data is replaced before harvest: a corpus of e-mails, phone numbers, Luhn-valid
card numbers and IBANs, and the look-alikes that must survive."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protege.redact import iban_ok, luhn_ok, redact

PERSONAL = [
    ("write to ann.smith+orders@example.co.uk please", "write to [EMAIL] please"),
    ("my email is JOHN_DOE@mail.example.com", "my email is [EMAIL]"),
    ("call me on +44 20 7946 0958 after 5", "call me on [PHONE] after 5"),
    ("phone (555) 123-4567 or 555.123.4567", "phone [PHONE] or [PHONE]"),
    ("reach me at +1-415-555-0100", "reach me at [PHONE]"),
    ("my number is 07700 900123", "my number is [PHONE]"),
    ("card 4111 1111 1111 1111 was charged twice", "card [CARD] was charged twice"),
    ("charged on 5500-0000-0000-0004 yesterday", "charged on [CARD] yesterday"),
    ("amex 378282246310005 declined", "amex [CARD] declined"),
    ("visa 4012888888881881", "visa [CARD]"),
    ("refund to GB82 WEST 1234 5698 7654 32 please", "refund to [IBAN] please"),
    ("IBAN DE89370400440532013000", "IBAN [IBAN]"),
    ("send it to FR1420041010050500013M02606 OK", "send it to [IBAN] OK"),
    ("NL91ABNA0417164300, thanks", "[IBAN], thanks"),
]

KEPT = [
    "where is my order #48213",
    "order A-99120 arrived broken",
    "ORD-5521 was cancelled on 2026-11-23",
    "I paid $49.99 on 12/11/2026",
    "card 1234 5678 9012 3456 is not a real card",  # fails Luhn and is too long for a phone
    "the app crashes on version 4.12.1",
]


@pytest.mark.parametrize(("text", "expected"), PERSONAL)
def test_personal_data_is_replaced(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("text", KEPT)
def test_look_alikes_survive(text: str) -> None:
    assert redact(text) == text


def test_checksum_failures_are_not_typed_as_cards_or_ibans() -> None:
    # an IBAN with a bad checksum is not an IBAN; its digit run still reads as a phone number (kept out, too)
    assert redact("GB00 WEST 1234 5698 7654 32 has a bad checksum") == "GB00 WEST [PHONE] has a bad checksum"


def test_checksums() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82WEST12345698765432") and not iban_ok("GB83WEST12345698765432")


@given(st.text(max_size=300))
def test_redaction_is_idempotent_and_total(text: str) -> None:
    once = redact(text)
    assert redact(once) == once


@given(st.sampled_from([p[0] for p in PERSONAL]), st.text(alphabet="abc xyz.,!?", max_size=40))
def test_personal_data_never_survives_in_context(personal: str, noise: str) -> None:
    out = redact(f"{noise} {personal} {noise}")
    for needle in ("@example", "4111 1111", "7946 0958", "WEST 1234", "DE8937", "378282246310005"):
        assert needle not in out
