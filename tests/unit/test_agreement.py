"""Agreement between people who label the same rows: consensus and Fleiss' kappa."""

from __future__ import annotations

import pytest

from protege.agreement import agreement, consensus

# Fleiss (1971) as worked on Wikipedia's "Fleiss' kappa": 10 subjects, 14 raters, 5 categories.
FLEISS_TABLE = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def test_fleiss_kappa_matches_the_worked_example() -> None:
    opinions = {}
    for i, counts in enumerate(FLEISS_TABLE):
        labels = [f"c{j}" for j, c in enumerate(counts) for _ in range(c)]
        opinions[f"s{i}"] = {f"rater{k}": label for k, label in enumerate(labels)}
    a = agreement(opinions, tie_breaks=False)  # every rater rated every subject
    assert a["rows"] == 10
    assert a["agreement"] == pytest.approx(0.378, abs=5e-4)
    assert a["kappa"] == pytest.approx(0.210, abs=5e-4)


def test_two_reviewers_agreement_is_the_share_of_rows_they_agree_on() -> None:
    opinions = {
        "r1": {"ana": "refund", "bo": "refund"},
        "r2": {"ana": "card_lost", "bo": "card_lost"},
        "r3": {"ana": "refund", "bo": "card_lost"},
        "r4": {"ana": "oos", "bo": "oos"},
        "r5": {"ana": "refund"},  # one reviewer: no second opinion, left out
    }
    a = agreement(opinions)
    assert (a["rows"], a["agreed"], a["disputed"]) == (4, 3, 1)
    assert a["agreement"] == pytest.approx(0.75)
    # labels over the 8 ratings: refund 3, card_lost 3, oos 2 -> chance 0.34375
    assert a["kappa"] == pytest.approx((0.75 - 0.34375) / (1 - 0.34375))
    assert a["pairs"] == [{"reviewers": ["ana", "bo"], "n": 4, "agreed": 3}]


def test_no_second_opinion_no_measure() -> None:
    assert agreement({"r1": {"ana": "refund"}}) == {
        "rows": 0,
        "agreement": None,
        "agreed": 0,
        "kappa": None,
        "disputed": 0,
        "pairs": [],
        "tie_breaks_left_out": 0,
    }


def test_everyone_always_giving_one_label_has_no_kappa() -> None:
    a = agreement({"r1": {"a": "x", "b": "x"}, "r2": {"a": "x", "b": "x"}})
    assert a["agreement"] == 1.0 and a["kappa"] is None  # no chance agreement to beat: undefined


def test_consensus_is_a_strict_majority() -> None:
    assert consensus({"ana": "refund"}) == "refund"
    assert consensus({"ana": "refund", "bo": "refund"}) == "refund"
    assert consensus({"ana": "refund", "bo": "card_lost"}) is None
    assert consensus({"ana": "refund", "bo": "card_lost", "cy": "refund"}) == "refund"
    assert consensus({}) is None


def test_a_label_asked_for_because_two_split_breaks_the_tie_but_is_no_opinion() -> None:
    """A third person is asked where two split: counted, the split rows would look a third agreed."""
    opinions = {
        "r1": {"ana": "refund", "bo": "card_lost", "cy": "refund"},  # split, then a tie-break
        "r2": {"ana": "refund", "bo": "refund", "cy": "card_lost"},  # three asked anyway: all opinions
        "r3": {"ana": "oos", "bo": "oos"},
    }
    a = agreement(opinions)
    assert a["tie_breaks_left_out"] == 1 and a["disputed"] == 0  # r1's tie is broken
    assert a["agreement"] == pytest.approx((0 + 1 / 3 + 1) / 3)
    assert a["agreed"] == 1 and {p["n"] for p in a["pairs"] if p["reviewers"] == ["ana", "cy"]} == {1}
    assert agreement(opinions, tie_breaks=False)["agreement"] == pytest.approx((1 / 3 + 1 / 3 + 1) / 3)
    assert agreement({"r1": {"ana": "refund", "bo": "card_lost"}})["disputed"] == 1
