"""What a routing strategy is: given an item and the usable models, pick one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Sequence

if TYPE_CHECKING:
    from .job import Item


@dataclass(frozen=True)
class Choice:
    model: str
    #: Why: the strategy's name and the inputs it used; stored with the attempt.
    reason: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RouteContext:
    """What a strategy may look at besides the item."""

    #: Models usable now, in the job's order. Never empty when ``choose`` is called.
    usable: Sequence[str]
    #: Attempts this item has made so far and the model of the last one.
    attempt: int = 0
    previous_model: str | None = None
    #: Models in flight per name (for load-based strategies).
    in_flight: dict[str, int] = field(default_factory=dict)
    capacity: dict[str, int] = field(default_factory=dict)


class Strategy(Protocol):
    def choose(self, item: "Item", ctx: RouteContext) -> Choice:
        """Return a model from ``ctx.usable``. Called on the kernel's thread: keep it fast."""
