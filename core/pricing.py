"""Bundled list prices, so cost shows up without a ``price:`` on every model.

USD per million tokens (input, output), standard tier, no batch or cache
discounts, as of 2025 from the providers' public price pages. Prices change:
``models.<name>.price`` in the settings always wins over these.
"""

from __future__ import annotations

from .settings import Price

#: As of 2025. Keys are the providers' model ids (or families: see default_price).
DEFAULT_PRICES: dict[str, Price] = {
    # OpenAI
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-2024-05-13": Price(5.00, 15.00),  # the first snapshot kept its launch price
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "o1": Price(15.00, 60.00),
    "o1-mini": Price(1.10, 4.40),
    "o3-mini": Price(1.10, 4.40),
    "o4-mini": Price(1.10, 4.40),
    "o3": Price(2.00, 8.00),
    "gpt-5": Price(1.25, 10.00),
    "gpt-5-mini": Price(0.25, 2.00),
    "gpt-5-nano": Price(0.05, 0.40),
    # Anthropic
    "claude-3-5-haiku": Price(0.80, 4.00),
    "claude-haiku-4-5": Price(1.00, 5.00),
    "claude-3-5-sonnet": Price(3.00, 15.00),
    "claude-3-7-sonnet": Price(3.00, 15.00),
    "claude-sonnet-4": Price(3.00, 15.00),
    "claude-sonnet-4-5": Price(3.00, 15.00),
    "claude-opus-4": Price(15.00, 75.00),
    "claude-opus-4-1": Price(15.00, 75.00),
    "claude-opus-4-5": Price(5.00, 25.00),
    # Google (gemini-2.5-pro: prompts up to 200k tokens; longer ones cost more)
    "gemini-2.0-flash": Price(0.10, 0.40),
    "gemini-2.0-flash-lite": Price(0.075, 0.30),
    "gemini-2.5-flash": Price(0.30, 2.50),
    "gemini-2.5-flash-lite": Price(0.10, 0.40),
    "gemini-2.5-pro": Price(1.25, 10.00),
}

# After a family name, a dated or tagged id continues with one of these
# (gpt-4o-2024-08-06, claude-3-5-haiku-20241022, claude-3-5-haiku@20241022).
_SEPARATORS = ("-", "@", ":")


def default_price(model_id: str) -> Price | None:
    """The bundled price for a provider's model id, or None if unknown.

    Matches the exact id first, then the longest family name the id starts
    with followed by ``-``, ``@`` or ``:`` (so ``gpt-4o-mini-2024-07-18`` is
    priced as ``gpt-4o-mini``, not ``gpt-4o``). Case is ignored, and a path
    prefix such as ``models/`` or ``openai/`` is dropped.
    """
    key = model_id.strip().lower().rsplit("/", 1)[-1]
    if key in DEFAULT_PRICES:
        return DEFAULT_PRICES[key]
    best = None
    for family in DEFAULT_PRICES:
        if len(key) > len(family) and key.startswith(family) and key[len(family)] in _SEPARATORS:
            if best is None or len(family) > len(best):
                best = family
    return DEFAULT_PRICES[best] if best else None
