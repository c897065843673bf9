"""Teacher cost accounting from a response's ``usage``, priced per model.

Prices are USD per million tokens and are configuration, not measurements: the table
below holds list prices as defaults and the ``prices`` setting (``PROTEGE_PRICES``, a JSON
file) overrides them. A process loads its table once (``price_table``) and passes it in.
Cache writes and reads are priced as multiples of the input price. The student's side:
``gpu_request_usd``, one request on a GPU at a stated price and throughput.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from protege.events import Usage


@dataclass(frozen=True)
class Price:
    input_per_mtok: float
    output_per_mtok: float
    cache_write_multiplier: float = 1.25
    cache_read_multiplier: float = 0.10


DEFAULT_PRICES: dict[str, Price] = {
    "claude-opus-4-5": Price(5.0, 25.0),
    "claude-sonnet-4-6": Price(3.0, 15.0),
    "claude-sonnet-4-5": Price(3.0, 15.0),
    "claude-haiku-4-5": Price(1.0, 5.0),
}


def price_table(override: Path | None = None) -> dict[str, Price]:
    """The default prices, with those in ``override`` (JSON: model -> Price fields) over them."""
    table = dict(DEFAULT_PRICES)
    if override is not None:
        for model, p in json.loads(override.read_text()).items():
            table[model] = Price(**p)
    return table


def price_for(model: str, table: dict[str, Price] | None = None) -> Price:
    table = table or DEFAULT_PRICES
    if model in table:
        return table[model]
    # Dated snapshots ("claude-sonnet-4-5-20250929") price as their family.
    for name in sorted(table, key=len, reverse=True):
        if model.startswith(name):
            return table[name]
    raise KeyError(f"no price for teacher model {model!r}; add it to PROTEGE_PRICES")


def cost_usd(usage: Usage, price: Price) -> float:
    per = price.input_per_mtok / 1e6
    return (
        usage.input_tokens * per
        + usage.cache_creation_input_tokens * per * price.cache_write_multiplier
        + usage.cache_read_input_tokens * per * price.cache_read_multiplier
        + usage.output_tokens * price.output_per_mtok / 1e6
    )


def gpu_request_usd(gpu_hour_usd: float, requests_per_s: float) -> tuple[float, str]:
    """The student's compute for one request served on a GPU at ``requests_per_s`` (measured on
    that GPU: benchmarks/scorer.py --provider cuda), both inputs; and where the figure comes
    from, as the report and the assessment print it."""
    return (
        gpu_hour_usd / 3600 / requests_per_s,
        f"GPU-hour price (input) / {requests_per_s:g} requests/s on the serving GPU (input)",
    )
