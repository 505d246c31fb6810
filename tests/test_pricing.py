"""Bundled default prices."""

from __future__ import annotations

import pytest

from storyloom.pricing import DEFAULT_PRICES, default_price
from storyloom.settings import Price


@pytest.mark.parametrize("model_id,expected", [
    ("gpt-4o", Price(2.50, 10.00)),
    ("gpt-4o-2024-08-06", Price(2.50, 10.00)),
    ("gpt-4o-mini-2024-07-18", Price(0.15, 0.60)),  # the longer family wins
    ("gpt-4.1-mini", Price(0.40, 1.60)),
    ("o3-mini-2025-01-31", Price(1.10, 4.40)),
    ("claude-3-5-haiku-20241022", Price(0.80, 4.00)),
    ("claude-3-5-haiku@20241022", Price(0.80, 4.00)),
    ("claude-haiku-4-5-20251001", Price(1.00, 5.00)),
    ("claude-sonnet-4-20250514", Price(3.00, 15.00)),
    ("claude-opus-4-5-20251101", Price(5.00, 25.00)),
    ("models/gemini-2.5-flash", Price(0.30, 2.50)),
    ("gemini-2.5-flash-lite", Price(0.10, 0.40)),
    ("GEMINI-2.0-FLASH", Price(0.10, 0.40)),
    ("openai/gpt-4.1", Price(2.00, 8.00)),
])
def test_known_models(model_id, expected):
    assert default_price(model_id) == expected


@pytest.mark.parametrize("model_id", ["llama-3.1-8b", "gpt-4", "gpt-4oops", "o3x", "", "simulated"])
def test_unknown_models(model_id):
    assert default_price(model_id) is None


def test_prices_are_sane():
    for model, price in DEFAULT_PRICES.items():
        assert 0 < price.input <= price.output <= 100, model
