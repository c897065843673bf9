"""Personal data out of what protege keeps: e-mail addresses, phone numbers, payment card
numbers (Luhn-valid) and IBANs (mod-97-valid) become typed placeholders.

    redact("mail me at ann@example.com or +44 20 7946 0958")
    -> "mail me at [EMAIL] or [PHONE]"

Applied before a case is harvested (so the case store, the trainer and every student
version only ever hold placeholders) and, the same way, to the text the scorer gives the
student, so a student sees at serving what it saw in training. The teacher still reads the
request as sent: it must understand it to answer. Logs never carry texts at all.

Cards and IBANs are only replaced when their checksum holds, so order numbers and other
long digit runs survive; a long digit run that is not a valid card can still be a phone.
"""

from __future__ import annotations

import re

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
# 13-19 digits, optionally grouped by single spaces or dashes
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
# country code, two check digits, 11-30 alphanumerics, optionally grouped by spaces
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
# optional +country, then 7-15 digits in groups separated by spaces, dots, dashes or (area)
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}(?![\w])")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    s = candidate.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    number = "".join(str(int(ch, 36)) for ch in moved)
    return int(number) % 97 == 1


def _card(m: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", m.group())
    return "[CARD]" if luhn_ok(digits) else m.group()


def _iban(m: re.Match[str]) -> str:
    """The longest valid IBAN at the start of the match (it may have run into a next word)."""
    text = m.group()
    for end in range(len(text), 14, -1):
        if text[end - 1] != " " and iban_ok(text[:end]):
            return "[IBAN]" + text[end:]
    return text


DATE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}")


def _phone(m: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", m.group())
    if DATE.fullmatch(m.group()) or not 7 <= len(digits) <= 15:
        return m.group()
    return "[PHONE]"


def redact(text: str) -> str:
    text = EMAIL.sub("[EMAIL]", text)
    text = IBAN.sub(_iban, text)
    text = CARD.sub(_card, text)
    return PHONE.sub(_phone, text)
