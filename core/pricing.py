"""Matching a model id against a provider's table of list prices.

No prices live here: each provider plugin declares its own vendor's table
(see :meth:`storyloom.provider.BaseProvider.default_price`), and
``models.<name>.price`` in the settings always wins over it. This module only
holds the matching rule the bundled providers share.
"""

from __future__ import annotations

from typing import Mapping

from .settings import Price

__all__ = ["lookup_price"]

# After a family name, a dated or tagged id continues with one of these
# (family-2024-08-06, family-20241022, family@20241022, family:latest).
_SEPARATORS = ("-", "@", ":")


def lookup_price(prices: Mapping[str, Price], model_id: str) -> Price | None:
    """The price in ``prices`` for a model id, or None if none matches.

    ``prices`` is keyed by lower-case model ids or family names. Matches the
    exact id first, then the longest family name the id starts with followed
    by ``-``, ``@`` or ``:`` (so ``big-mini-2024-07-18`` is priced as
    ``big-mini``, not ``big``). Case is ignored, and a path prefix such as
    ``models/`` or ``vendor/`` is dropped.
    """
    key = model_id.strip().lower().rsplit("/", 1)[-1]
    if key in prices:
        return prices[key]
    best = None
    for family in prices:
        if len(key) > len(family) and key.startswith(family) and key[len(family)] in _SEPARATORS:
            if best is None or len(family) > len(best):
                best = family
    return prices[best] if best else None
