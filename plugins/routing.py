"""Routing strategies, chosen by ``routing: {strategy: NAME, ...}``; the other
keys of ``routing:`` are the strategy's options.

* ``round_robin`` (the seed's): item i goes to models[i mod n].
* ``genre``: a table from the item's (or its project's) genre to a model.
* ``least_loaded``: the model whose queue would empty soonest (drain time).
* ``cheapest``: the lowest expected cost for this attempt.

Each sees only ``ctx.usable`` and says why it chose in ``Choice.reason``.
Options a strategy does not know are ignored: the settings' ``routing:`` and
the job's are merged, so they may hold another strategy's options.
docs/routing.md has the formulas and examples.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from storyloom import UsageError, hookimpl
from storyloom.job import Item, Plan
from storyloom.routing import Choice, RouteContext
from storyloom.settings import Price

#: The seed's genre table: the example in docs/routing.md (a test keeps them equal).
SEED_GENRE_TABLE: dict[str, str] = {
    "romantic-comedy": "gemini",
    "fantasy": "gpt-4o",
    "horror": "claude-haiku",
    "mystery": "gpt-4o",
    "bl-gl": "claude-haiku",
}


class RoundRobin:
    """Counts every choice, retries included, so shares stay within one."""

    def __init__(self, options: dict[str, Any], plan: Plan) -> None:
        self.counts = {name: 0 for name in plan.models}

    def resume(self, attempts_by_model: Mapping[str, int]) -> None:
        """Carry on the job's count, so shares stay within one across resumes."""
        for name in self.counts:
            self.counts[name] = attempts_by_model.get(name, 0)

    def choose(self, item: Item, ctx: RouteContext) -> Choice:
        # The least-used usable model, ties broken by the job's order: the
        # same as i mod n while every model is usable, and still even when
        # some are not (a pinned item, a rotated retry).
        model = min(ctx.usable, key=lambda name: self.counts.get(name, 0))
        self.counts[model] = self.counts.get(model, 0) + 1
        return Choice(model, {"strategy": "round_robin", "count": self.counts[model]})


class Genre:
    """Sends each item to the model its genre maps to.

    Options: ``table: {genre: model}`` (required), ``default: model`` and
    ``projects: {project_id: genre}`` for items without a genre of their own.
    Genres match ignoring case and surrounding spaces. Raises UsageError for
    a model that is not one of the job's.
    """

    def __init__(self, options: dict[str, Any], plan: Plan) -> None:
        table = _str_mapping(options.get("table"), "table")
        if not table:
            raise UsageError("genre routing needs a table, e.g. routing: "
                             "{strategy: genre, table: {fantasy: gpt-4o}, default: gemini}")
        self.table: dict[str, str] = {}
        for genre, model in table.items():
            _check_model(model, f"table: {genre}", plan)
            key = _genre_key(genre)
            if self.table.get(key, model) != model:
                raise UsageError(f"genre routing: table maps {genre!r} to both {self.table[key]!r} and {model!r} "
                                 "(genres match ignoring case)")
            self.table[key] = model
        self.default: str | None = options.get("default")
        if self.default is not None:
            _check_model(self.default, "default", plan)
        self.projects = _str_mapping(options.get("projects"), "projects")

    def choose(self, item: Item, ctx: RouteContext) -> Choice:
        genre, source = self._genre(item)
        wanted = self.table.get(_genre_key(genre)) if genre is not None else None
        reason: dict[str, Any] = {"strategy": "genre", "genre": genre}
        if source:
            reason["from"] = source
        if wanted is not None:
            reason["table"] = wanted
            if wanted in ctx.usable:
                return Choice(wanted, reason)
            why = f"{wanted} not usable"
        else:
            why = "genre not in table" if genre is not None else "no genre"
        if self.default in ctx.usable:
            model, reason["fallback"] = self.default, "default"
        else:
            if self.default is not None:
                why += f"; default {self.default} not usable"
            model, reason["fallback"] = ctx.usable[0], "first usable"
        reason["why"] = why
        return Choice(model, reason)

    def _genre(self, item: Item) -> tuple[str | None, str | None]:
        """The genre and where it came from: the item, else its project."""
        genre = item.fields.get("genre")
        if genre not in (None, ""):
            return str(genre), "item"
        if item.project_id is not None and item.project_id in self.projects:
            return self.projects[item.project_id], "project"
        return None, None


class LeastLoaded:
    """The model whose queue would empty soonest.

    For each usable model: ``busy = in_flight + reserved``; ``capacity`` is its
    ``max_parallel``, else the job's; ``wait`` is ``queue_wait`` (when its rate
    limiter could send this request behind everything routed there and not
    sent yet; ``rate_wait`` when the kernel gave none); ``rate`` its requests a
    second (the binding one of RPM and TPM); and
    ``drain = wait + (in_flight + 1) / rate`` (0 without limits): by Little's
    law ``in_flight / rate`` is about the model's reply time, so ``drain`` is
    about when this request's reply would be in. ``load = (busy + held) /
    capacity``, ``held`` being 1 while its limiter could not send now.

    The choice is the first by (no free slot, drain, load, wait): a model with
    a free slot always beats one without, so rate limits never push work past
    another model's capacity; then the soonest drained; among models without
    rate limits (drain 0) the least loaded. Remaining ties rotate in the job's
    order.
    """

    def __init__(self, options: dict[str, Any], plan: Plan) -> None:
        self.default_capacity = max(1, plan.max_parallel)
        self.rotation = _Rotation(plan.models)

    def choose(self, item: Item, ctx: RouteContext) -> Choice:
        keys: dict[str, tuple[bool, float, float, float]] = {}
        busy: dict[str, int] = {}
        capacity: dict[str, int] = {}
        waits: dict[str, float] = {}
        drains: dict[str, float] = {}
        for m in ctx.usable:
            busy[m], capacity[m], wait, held, drain = self._measure(m, ctx)
            if wait > 0:
                waits[m] = round(wait, 3)
            if 0 < drain < math.inf:
                drains[m] = round(drain, 3)
            keys[m] = (busy[m] >= capacity[m], drain, (busy[m] + (held > 0)) / capacity[m], wait)
        best = min(keys.values())
        tied = [m for m in ctx.usable if keys[m] == best]
        model = self.rotation.pick(tied)
        reason: dict[str, Any] = {
            "strategy": "least_loaded",
            "loads": {m: round(keys[m][2], 3) for m in ctx.usable},
            "busy": busy,
            "capacity": capacity,
        }
        if drains:
            reason["drain"] = drains
        if waits:
            reason["rate_wait"] = waits
        if len(tied) > 1:
            reason["tied"] = tied
        return Choice(model, reason)

    def reconsider(self, item: Item, ctx: RouteContext, current: str, wait: float) -> Choice | None:
        """An attempt routed to ``current`` still waits ``wait`` s for its turn
        there: move it to the usable model with a free slot that would drain
        soonest, if that beats ``current``'s drain by :data:`MOVE_MARGIN`."""
        in_flight = max(0, ctx.in_flight.get(current, 0))
        mine = drain_time(wait, in_flight, ctx.rate.get(current, math.inf))
        best: tuple[float, str] | None = None
        for m in ctx.usable:
            if m == current:
                continue
            busy, capacity, _wait, _held, drain = self._measure(m, ctx)
            if busy < capacity and drain + MOVE_MARGIN < mine and (best is None or drain < best[0]):
                best = (drain, m)
        if best is None:
            return None
        drain, model = best
        return Choice(model, {"strategy": "least_loaded", "moved": current,
                              "drain": {current: round(mine, 3), model: round(drain, 3)}})

    def _measure(self, m: str, ctx: RouteContext) -> tuple[int, int, float, float, float]:
        """busy, capacity, wait, held (the limiter's wait now) and drain of ``m``."""
        # Negative counts would be a kernel bug; never let one attract work.
        in_flight = max(0, ctx.in_flight.get(m, 0))
        busy = in_flight + max(0, ctx.reserved.get(m, 0))
        own = ctx.capacity.get(m, 0)
        capacity = own if own > 0 else self.default_capacity
        held = max(0.0, ctx.rate_wait.get(m, 0.0))
        wait = ctx.queue_wait.get(m)
        wait = held if wait is None else max(0.0, wait)
        return busy, capacity, wait, held, drain_time(wait, in_flight, ctx.rate.get(m, math.inf))


#: least_loaded moves a waiting attempt only to a model that would drain at
#: least this much sooner (seconds): no moving back and forth over a sliver.
MOVE_MARGIN = 0.05


def drain_time(wait: float, in_flight: int, rate: float) -> float:
    """Seconds until a model would have sent this request and, about, had its
    reply: its rate limiter's wait plus its replies due and this request, over
    its rate (requests a second; ``inf`` or not positive: no limit, 0)."""
    if not rate > 0 or math.isinf(rate):
        return max(0.0, wait)
    return max(0.0, wait) + (max(0, in_flight) + 1) / rate


class Cheapest:
    """The lowest expected cost for this attempt among the usable models.

    Expected cost = ``price.cost(prompt tokens, output tokens)`` with the
    attempt's prompt estimate for that model and the reply length to expect
    (``ctx.output_tokens``, or the ``output_tokens`` option when set). Equal
    costs rotate in the job's order.
    """

    def __init__(self, options: dict[str, Any], plan: Plan) -> None:
        output = options.get("output_tokens")
        if output is not None and (isinstance(output, bool) or not isinstance(output, int) or output <= 0):
            raise UsageError(f"cheapest routing: output_tokens must be a positive whole number, got {output!r}")
        self.output_tokens: int | None = output
        self.rotation = _Rotation(plan.models)

    def expected_cost(self, model: str, ctx: RouteContext) -> float:
        """USD this attempt is expected to cost on ``model`` (0 without a price)."""
        price = ctx.prices.get(model) or Price()
        output = self.output_tokens if self.output_tokens is not None else ctx.output_tokens.get(model, 0)
        return price.cost(ctx.prompt_tokens.get(model, 0), output)

    def choose(self, item: Item, ctx: RouteContext) -> Choice:
        costs = {m: self.expected_cost(m, ctx) for m in ctx.usable}
        lowest = min(costs.values())
        model = self.rotation.pick([m for m in ctx.usable if costs[m] == lowest])
        return Choice(model, {"strategy": "cheapest", "costs": {m: round(c, 8) for m, c in costs.items()}})


class _Rotation:
    """Breaks ties in turn: picks the first tied model at or after the one
    after the last pick, in the job's order, so no tied model starves."""

    def __init__(self, order: Sequence[str]) -> None:
        self.index = {name: i for i, name in enumerate(dict.fromkeys(order))}
        self.cursor = 0

    def pick(self, tied: Sequence[str]) -> str:
        for name in tied:
            self.index.setdefault(name, len(self.index))
        n = len(self.index)
        model = min(tied, key=lambda name: (self.index[name] - self.cursor) % n)
        self.cursor = (self.index[model] + 1) % n
        return model


def _genre_key(genre: str) -> str:
    return genre.strip().casefold()


def _str_mapping(value: Any, option: str) -> dict[str, str]:
    """``value`` as {str: str} (YAML may give number keys); {} for None."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UsageError(f"routing option {option!r} must be a mapping, got {value!r}")
    out = {}
    for key, item in value.items():
        if not isinstance(item, str) or not item:
            raise UsageError(f"routing option {option!r}: the value for {key!r} must be a name, got {item!r}")
        out[str(key)] = item
    return out


def _check_model(model: Any, where: str, plan: Plan) -> None:
    if model not in plan.models:
        raise UsageError(f"genre routing: {where}: {model!r} is not one of the job's models "
                         f"({', '.join(plan.models)}); add it to the job's models or change the table")


@hookimpl
def loom_register_strategies(register):
    register("round_robin", RoundRobin)
    register("genre", Genre)
    register("least_loaded", LeastLoaded)
    register("cheapest", Cheapest)
