"""What a routing strategy is: given an item and the usable models, pick one.

The kernel builds a :class:`RouteContext` for every attempt and calls the
job's strategy with it; the strategy returns a :class:`Choice`. The bundled
strategies live in ``storyloom.plugins.routing``; ``docs/routing.md`` says how
to write another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Protocol, Sequence

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
    #: Seconds until each model's rate limiter could send this request if it
    #: queued behind every attempt already routed there and not sent yet (its
    #: ``reserved``): drain-time routing reads this (missing: ``rate_wait``).
    queue_wait: Mapping[str, float] = field(default_factory=dict)
    #: Requests a second each model's rate limits let through for requests
    #: like this one: the binding one of RPM and TPM (missing or ``inf``: no limit).
    rate: Mapping[str, float] = field(default_factory=dict)
    #: Each model's resolved price (missing: free).
    prices: Mapping[str, Price] = field(default_factory=dict)
    #: This attempt's estimated prompt tokens on each model (calibrated per model).
    prompt_tokens: Mapping[str, int] = field(default_factory=dict)
    #: The reply tokens to expect from each model for this attempt.
    output_tokens: Mapping[str, int] = field(default_factory=dict)


class LazyMap(Mapping[str, Any]):
    """A read-only mapping over ``keys`` whose values are computed on first
    use: the kernel fills a :class:`RouteContext` with these, so a strategy
    pays only for what it reads (round_robin reads none of them)."""

    __slots__ = ("_keys", "_value", "_cache")

    def __init__(self, keys: Sequence[str], value: Callable[[str], Any]) -> None:
        self._keys = keys
        self._value = value
        self._cache: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        cache = self._cache
        if key in cache:
            return cache[key]
        if key not in self._keys:
            raise KeyError(key)
        value = cache[key] = self._value(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        cache = self._cache
        if key in cache:
            return cache[key]
        if key not in self._keys:
            return default
        value = cache[key] = self._value(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class AttrMap(Mapping[str, Any]):
    """A read-only, live view of one attribute of each value of ``objects``
    (each model's ``in_flight``, say): nothing is copied."""

    __slots__ = ("_objects", "_attr")

    def __init__(self, objects: Mapping[str, Any], attr: str) -> None:
        self._objects = objects
        self._attr = attr

    def __getitem__(self, key: str) -> Any:
        return getattr(self._objects[key], self._attr)

    def get(self, key: str, default: Any = None) -> Any:
        obj = self._objects.get(key)
        return default if obj is None else getattr(obj, self._attr)

    def __iter__(self) -> Iterator[str]:
        return iter(self._objects)

    def __len__(self) -> int:
        return len(self._objects)


class Strategy(Protocol):
    """Built once per run of a job as ``factory(options, plan)``.

    A strategy may also define ``resume(attempts_by_model)``: when a job that
    already made attempts runs again (``storyloom resume``, or a worker taking
    it up), it is called once before the first ``choose`` with the job's
    stored attempts per model, so that counting strategies carry on.
    """

    def choose(self, item: "Item", ctx: RouteContext) -> Choice:
        """Return a model from ``ctx.usable``. Called on the kernel's thread: keep it fast."""
