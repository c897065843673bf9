from __future__ import annotations

import json
from pathlib import Path

import pytest

from protege.costs import Price, cost_usd, price_for, price_table
from protege.events import Usage
from protege.settings import Settings


def test_cost_counts_every_token_kind() -> None:
    price = Price(3.0, 15.0)
    u = Usage(
        input_tokens=1_000_000,
        output_tokens=1_000_000,
        cache_creation_input_tokens=1_000_000,
        cache_read_input_tokens=1_000_000,
    )
    assert cost_usd(u, price) == pytest.approx(3.0 + 15.0 + 3.0 * 1.25 + 3.0 * 0.10)


def test_cached_prompt_is_cheaper() -> None:
    price = price_for("claude-sonnet-4-6")
    cold = cost_usd(Usage(input_tokens=20, output_tokens=30, cache_creation_input_tokens=400), price)
    warm = cost_usd(Usage(input_tokens=20, output_tokens=30, cache_read_input_tokens=400), price)
    assert warm < cold


def test_dated_snapshot_prices_as_family_and_unknown_fails() -> None:
    assert price_for("claude-haiku-4-5-20251001") == price_for("claude-haiku-4-5")
    with pytest.raises(KeyError):
        price_for("gpt-nothing")


def test_prices_override_from_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "prices.json"
    f.write_text(json.dumps({"my-model": {"input_per_mtok": 2, "output_per_mtok": 4}}))
    monkeypatch.setenv("PROTEGE_PRICES", str(f))
    table = price_table(Settings().prices)  # the setting names the file; the table is loaded once
    assert table["my-model"] == Price(2, 4) and table["claude-haiku-4-5"] == Price(1.0, 5.0)
    assert price_for("my-model", table) == Price(2, 4)
