"""Second opinions: how often the people who label the review sample agree with each other.

A share of the review sample (``Task.review_overlap``) is labelled by two people. Their
labels say how much a reviewed row can be trusted: a golden set whose reviewers agree on 97%
of the rows cannot certify a student to a point, and reviewers who agree with the teacher far
more than with each other share its blind spots (a relative target then shuts the student
out, stop 31). Pure functions over ``{request id: {reviewer: label}}``:

    consensus({"ana": "refund", "bo": "refund"})       # 'refund'
    consensus({"ana": "refund", "bo": "card_lost"})    # None: disputed, a third label decides
    agreement(opinions)["kappa"]                       # Fleiss' kappa over the rows two or more labelled
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping
from typing import Any

Opinions = Mapping[str, Mapping[str, str]]  # request id -> reviewer -> label (a reviewer's last)


def consensus(labels: Mapping[str, str]) -> str | None:
    """The row's label: what more than half of its reviewers gave; None when no label has a
    majority (two people who disagree: the row is disputed until a third label breaks the tie)."""
    if not labels:
        return None
    (label, votes), *_ = Counter(labels.values()).most_common(1)
    return label if votes * 2 > len(labels) else None


def before_the_split(labels: Mapping[str, str]) -> dict[str, str]:
    """A row's labels in the order they came, up to the first moment its reviewers split (two or
    more, no majority): a label after that was asked for because they split (the desk shows a
    disputed row to another person), so it is a tie-break, not an independent opinion."""
    kept: dict[str, str] = {}
    for who, label in labels.items():
        kept[who] = label
        if len(kept) >= 2 and consensus(kept) is None:
            break
    return kept


def agreement(opinions: Opinions, *, tie_breaks: bool = True) -> dict[str, Any]:
    """Agreement between people on the rows two or more of them labelled: ``rows``, the observed
    agreement (the chance that two reviewers of a row gave the same label, averaged over rows;
    with two reviewers a row, the share of rows they agree on), Fleiss' kappa (that agreement
    beyond what the labels' overall frequencies give by chance; 1 perfect, 0 chance), the rows
    with no majority (``disputed``, on every label), and each pair of reviewers' own agreement.
    ``tie_breaks``: labels given after a row's reviewers split (``before_the_split``, in the order
    the mapping holds them: the order they came) are left out of the measure — a person asked
    because two split would make split rows look agreed; they still settle ``disputed``
    (``tie_breaks_left_out`` counts them). False: every rater rated every row independently, as in
    Fleiss' design."""
    kept = {rid: before_the_split(labels) if tie_breaks else dict(labels) for rid, labels in opinions.items()}
    left_out = sum(len(labels) - len(kept[rid]) for rid, labels in opinions.items())
    disputed = sum(consensus(labels) is None for labels in opinions.values() if len(labels) >= 2)
    rows = [labels for labels in kept.values() if len(labels) >= 2]
    pairs: dict[tuple[str, str], list[int]] = {}
    observed, totals = [], Counter[str]()
    for labels in rows:
        n, counts = len(labels), Counter(labels.values())
        observed.append(sum(c * (c - 1) for c in counts.values()) / (n * (n - 1)))
        totals.update(labels.values())
        for a, b in itertools.combinations(sorted(labels), 2):
            tally = pairs.setdefault((a, b), [0, 0])
            tally[0] += labels[a] == labels[b]
            tally[1] += 1
    if not rows:
        return {
            "rows": 0,
            "agreement": None,
            "agreed": 0,
            "kappa": None,
            "disputed": disputed,
            "pairs": [],
            "tie_breaks_left_out": left_out,
        }
    p_obs = sum(observed) / len(rows)
    ratings = sum(totals.values())
    p_chance = sum((c / ratings) ** 2 for c in totals.values())
    kappa = (p_obs - p_chance) / (1 - p_chance) if p_chance < 1 else None
    return {
        "rows": len(rows),
        "agreement": p_obs,
        "agreed": sum(len(set(labels.values())) == 1 for labels in rows),  # rows where every reviewer agreed
        "kappa": kappa,
        "disputed": disputed,
        "tie_breaks_left_out": left_out,
        "pairs": [
            {"reviewers": [a, b], "n": n, "agreed": agreed}
            for (a, b), (agreed, n) in sorted(pairs.items(), key=lambda kv: -kv[1][1])
        ],
    }
