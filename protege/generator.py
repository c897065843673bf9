"""The demo's own data: labelled support tickets, generated, deterministic for a seed.

A dozen categories; plain, short, angry and typo-ridden phrasings; tickets that mention
two intents (labelled by the one they lead with); and out-of-scope messages labelled
``oos``. Nothing here comes from a public data set.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from protege.task import Canary, Policy, StudentConfig, Task, Thresholds

CATEGORIES: dict[str, tuple[str, list[str]]] = {
    "billing": (
        "questions about charges on an account or card",
        [
            "I was charged twice for my {plan} plan this month",
            "why is there a charge of {amount} on my statement",
            "my card was billed {amount} but I never upgraded",
            "the price I paid is higher than what the website said",
            "can you explain the extra fee on my last bill",
            "I see an unknown payment of {amount} from your company",
        ],
    ),
    "refund": (
        "asking for money back",
        [
            "I want a refund for order {order}",
            "please give me my money back for the {item}, it was not what I expected",
            "how long does a refund take to reach my account",
            "I returned the {item} two weeks ago and still have no refund",
            "requesting a full refund of {amount}",
            "the refund for {order} never arrived",
        ],
    ),
    "login": (
        "cannot sign in, locked account, two-factor problems",
        [
            "I can't log in to my account",
            "my account is locked after too many attempts",
            "the two factor code never arrives so I cannot sign in",
            "login page keeps saying invalid credentials even though they are right",
            "I get logged out every few minutes on the app",
            "sign in with google stopped working for me",
        ],
    ),
    "password_reset": (
        "resetting or changing a password",
        [
            "how do I reset my password",
            "the password reset email never shows up",
            "the reset link says it has expired",
            "I forgot my password and the security questions",
            "I need to change my password, where is that setting",
            "password reset link goes to a blank page",
        ],
    ),
    "shipping": (
        "where an order is, late deliveries, tracking",
        [
            "where is my order {order}",
            "my package was supposed to arrive {day} and it still is not here",
            "the tracking number for {order} does not work",
            "it has been {n} days and my {item} has not shipped",
            "delivery shows delivered but I never got the {item}",
            "can you send it by express shipping instead",
        ],
    ),
    "cancel_order": (
        "cancelling an order before it ships",
        [
            "please cancel order {order}",
            "I ordered the wrong {item}, cancel it before it ships",
            "how can I cancel my order",
            "I want to cancel the {item} I bought {day}",
            "cancel my last purchase please",
            "is it too late to cancel order {order}",
        ],
    ),
    "damaged_item": (
        "an item arrived broken, defective or wrong",
        [
            "my {item} arrived broken",
            "the box was crushed and the {item} inside is damaged",
            "I received the wrong {item}",
            "the {item} stopped working after one day",
            "parts are missing from my {item}",
            "the screen of the {item} came cracked",
        ],
    ),
    "account_closure": (
        "closing an account or deleting personal data",
        [
            "delete my account",
            "I want to close my account and remove all my data",
            "how do I permanently delete my profile",
            "please erase my personal information under GDPR",
            "close my account, I no longer use it",
            "remove me from your system completely",
        ],
    ),
    "technical_bug": (
        "the app or website misbehaves",
        [
            "the app crashes when I open the {page} page",
            "I get error {code} when I try to save",
            "the website is very slow and pages do not load",
            "buttons on the {page} page do nothing when I click them",
            "the app shows a blank screen after the update",
            "search returns no results even for things I know exist",
        ],
    ),
    "feature_request": (
        "suggestions for new features",
        [
            "it would be great if you added a dark mode",
            "please add an export to CSV option",
            "can you support {pay} as a payment method",
            "I would love a way to share lists with my family",
            "suggestion: let us schedule orders in advance",
            "please add more languages to the app",
        ],
    ),
    "subscription": (
        "changing, pausing or upgrading a plan",
        [
            "I want to upgrade to the {plan} plan",
            "how do I downgrade my subscription",
            "can I pause my membership for a month",
            "switch me from monthly to yearly billing",
            "what is the difference between basic and {plan}",
            "my plan renewed automatically and I want to change it",
        ],
    ),
    "invoice": (
        "asking for invoices or receipts",
        [
            "I need an invoice for order {order}",
            "please send me a receipt with my company VAT number",
            "where can I download my invoices",
            "the invoice has the wrong billing address",
            "can you resend the invoice for {amount}",
            "I need all invoices from last year for my accountant",
        ],
    ),
}

OUT_OF_SCOPE = [
    "what is the weather like tomorrow",
    "tell me a joke",
    "who won the football game last night",
    "can you recommend a good pizza place",
    "what is the capital of australia",
    "write me a poem about the sea",
    "how many calories are in a banana",
    "translate good morning into french",
]

FILL = {
    "plan": ["premium", "pro", "family", "business", "plus"],
    "amount": ["$19.99", "$45", "EUR 120", "$5.00", "$249"],
    "order": ["#48213", "A-99120", "#10077", "ORD-5521", "#3310"],
    "item": ["headphones", "blender", "phone case", "jacket", "lamp", "keyboard"],
    "day": ["on monday", "yesterday", "last week", "on friday"],
    "n": ["5", "10", "12", "21"],
    "page": ["checkout", "settings", "profile", "orders"],
    "code": ["500", "E-102", "403", "0x80004005"],
    "pay": ["PayPal", "Apple Pay", "bank transfer", "crypto"],
}

OPENERS = ["", "", "", "hi, ", "hello, ", "good morning, ", "hey team, ", "dear support, "]
CLOSERS = ["", "", "", " thanks", " thank you!", " please help", " asap", ". regards, sam"]
ANGER = [
    " THIS IS RIDICULOUS!!!",
    " I am so angry right now.",
    " worst service ever!!",
    " fix this NOW",
    " I will leave a terrible review.",
]


def _fill(template: str, rng: random.Random) -> str:
    return template.format(**{k: rng.choice(v) for k, v in FILL.items()})


def _typos(text: str, rng: random.Random, rate: float = 0.04) -> str:
    chars = list(text)
    out = []
    i = 0
    while i < len(chars):
        c = chars[i]
        r = rng.random()
        if c.isalpha() and r < rate / 3:
            pass  # drop
        elif c.isalpha() and r < 2 * rate / 3 and i + 1 < len(chars):
            out += [chars[i + 1], c]  # swap
            i += 1
        elif c.isalpha() and r < rate:
            out += [c, c]  # double
        else:
            out.append(c)
        i += 1
    return "".join(out)


def ticket(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.06:
        text, label = rng.choice(OUT_OF_SCOPE), "oos"
    else:
        label = rng.choice(list(CATEGORIES))
        text = _fill(rng.choice(CATEGORIES[label][1]), rng)
        if rng.random() < 0.12:  # two intents; the label is the one it leads with
            other = rng.choice([c for c in CATEGORIES if c != label])
            text += " and also " + _fill(rng.choice(CATEGORIES[other][1]), rng)
    style = rng.random()
    if style < 0.15:
        text = " ".join(text.split()[:4])  # short
    elif style < 0.30:
        text = text + rng.choice(ANGER)
    text = rng.choice(OPENERS) + text + rng.choice(CLOSERS)
    if rng.random() < 0.35:
        text = _typos(text, rng)
    if rng.random() < 0.3:
        text = text.lower()
    return text.strip(), label


def generate(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {"id": f"t{seed}-{i:06d}", "text": t, "label": label} for i, (t, label) in ((i, ticket(rng)) for i in range(n))
    ]


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def triage_task() -> Task:
    """The ticket-triage task with fixed thresholds and no target: what the tests' pipelines
    run (``tests/tasks/``), where a student must answer from its first few dozen cases."""
    return Task(
        name="ticket-triage",
        description="Route incoming customer support tickets to the right queue.",
        labels={name: desc for name, (desc, _) in CATEGORIES.items()},
        instructions=(
            "You triage customer support tickets for an online shop. Read the ticket and choose the "
            "queue it belongs to. When a ticket mentions several issues, choose the one it leads with."
        ),
        policy=Policy(
            thresholds=Thresholds(min_confidence=0.6, min_margin=0.2, max_ood=0.5),
            escalate_patterns=[r"\b(lawyer|lawsuit|sue|court)\b"],
        ),
    )


def template_task() -> Task:
    """The shipped template, ``tasks/ticket-triage.yaml``: the guarantee by default. Accepted
    student answers must be certified at least 95% accurate at 95% confidence (on agreement
    with the teacher's labels: the template names no golden set; add one, from
    ``protege label --golden``, and a relative ``target_margin`` for a guarantee against
    ground truth), so a version too young to show it serves nothing; 5% of accepted answers
    are audited, the live accuracy ``protege models list`` shows. A new version that passes its
    gates goes on trial for 10% of requests against the serving one until the monitor's verdict
    on both arms' audits (``student.canary``): versions ship gradually."""
    task = triage_task()
    policy = task.policy.model_copy(update={"target_accuracy": 0.95, "audit_rate": 0.05})
    student = task.student.model_copy(update={"canary": Canary(share=0.1)})
    return task.model_copy(
        update={
            "policy": Policy.model_validate(policy.model_dump()),
            "student": StudentConfig.model_validate(student.model_dump()),
        }
    )


def task_from_labels(name: str, labels: list[str], description: str = "") -> Task:
    """A task for a labelled data set whose labels need no description (e.g. BANKING77)."""
    return Task(
        name=name,
        description=description,
        labels={label: label.replace("_", " ") for label in labels if label != "oos"},
        instructions="Classify the customer's banking support message into its intent.",
    )
