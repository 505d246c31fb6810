"""Spending limits at run time: a job's ``budget_usd``, a model's ``max_spend_usd``."""

from __future__ import annotations

import math

import trio


class Budget:
    """A job's ``budget_usd``: reserve each attempt's worst case before it is
    sent, settle with the real cost after. Spent plus reserved never passes
    the limit."""

    def __init__(self, limit: float | None, spent: float) -> None:
        self.limit = math.inf if limit is None else limit
        self.spent = spent
        self.reserved = 0.0
        self._holders = 0  # reservations not yet settled
        self._changed = trio.Event()

    async def reserve(self, amount: float) -> bool:
        """Wait until ``amount`` fits; False if it cannot fit even once every
        attempt in flight has settled (the budget is reached)."""
        while self.spent + self.reserved + amount > self.limit:
            if not self._holders:
                return False
            changed = self._changed
            await changed.wait()
        self.reserved += amount
        self._holders += 1
        return True

    def try_reserve(self, amount: float) -> bool:
        """Reserve ``amount`` if it fits now; never waits."""
        if self.spent + self.reserved + amount > self.limit:
            return False
        self.reserved += amount
        self._holders += 1
        return True

    def settle(self, reserved: float, actual: float) -> None:
        """End one reservation made by :meth:`reserve`, charging ``actual``."""
        self._holders -= 1
        # Float sums leave residue (0.1 * 3 - 0.1 * 3 != 0): the count decides emptiness.
        self.reserved = max(0.0, self.reserved - reserved) if self._holders else 0.0
        self.spent += actual
        self._changed.set()
        self._changed = trio.Event()
