"""What a routing strategy is: given an item and the usable models, pick one.

The kernel builds a :class:`RouteContext` for every attempt and calls the
job's strategy with it; the strategy returns a :class:`Choice`. The bundled
strategies live in ``storyloom.plugins.routing``; ``docs/routing.md`` says how
to write another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

from .settings import Price

if TYPE_CHECKING:
    from .job import Item


@dataclass(frozen=True)
class Choice:
    model: str
    #: Why: the strategy's name and the inputs it used; stored with the attempt.
    #: Keep it small and JSON-serialisable.
    reason: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RouteContext:
    """What a strategy may look at besides the item.

    The mappings are keyed by model name. A strategy must cope with a model
    missing from any of them (treat it as 0, or as "unknown").
    """

    #: Models usable now, in the job's order. Never empty when ``choose`` is called.
    usable: Sequence[str]
    #: Attempts this item has made so far and the model of the last one.
    attempt: int = 0
    previous_model: str | None = None
    #: Attempts waiting on each model's reply now.
    in_flight: Mapping[str, int] = field(default_factory=dict)
    #: Each model's ``max_parallel``; 0 when it has none of its own.
    capacity: Mapping[str, int] = field(default_factory=dict)
    #: Attempts already routed to each model that have not sent their request
    #: yet (waiting for budget or the model's rate limiter).
    reserved: Mapping[str, int] = field(default_factory=dict)
    #: Seconds until each model's rate limiter could send this request
    #: (0 or missing: it could send now).
    rate_wait: Mapping[str, float] = field(default_factory=dict)
    #: Each model's price (missing: free, as a model without ``price:``).
    prices: Mapping[str, Price] = field(default_factory=dict)
    #: This attempt's estimated prompt tokens on each model (calibrated per model).
    prompt_tokens: Mapping[str, int] = field(default_factory=dict)
    #: The reply tokens to expect from each model for this attempt.
    output_tokens: Mapping[str, int] = field(default_factory=dict)


class Strategy(Protocol):
    """Built once per run of a job as ``factory(options, plan)``.

    A strategy may also define ``resume(attempts_by_model)``: when a job that
    already made attempts runs again (``storyloom resume``, or a worker taking
    it up), it is called once before the first ``choose`` with the job's
    stored attempts per model, so that counting strategies carry on.
    """

    def choose(self, item: "Item", ctx: RouteContext) -> Choice:
        """Return a model from ``ctx.usable``. Called on the kernel's thread: keep it fast."""
