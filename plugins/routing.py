"""Routing strategies. ``round_robin`` is the seed's: item i goes to models[i mod n]."""

from __future__ import annotations

from typing import Any

from storyloom import hookimpl
from storyloom.job import Item, Plan
from storyloom.routing import Choice, RouteContext


class RoundRobin:
    """Counts every choice, retries included, so shares stay within one."""

    def __init__(self, options: dict[str, Any], plan: Plan) -> None:
        self.counts = {name: 0 for name in plan.models}

    def choose(self, item: Item, ctx: RouteContext) -> Choice:
        # The least-used usable model, ties broken by the job's order: the
        # same as i mod n while every model is usable, and still even when
        # some are not (a pinned item, a rotated retry).
        model = min(ctx.usable, key=lambda name: self.counts.get(name, 0))
        self.counts[model] = self.counts.get(model, 0) + 1
        return Choice(model, {"strategy": "round_robin", "count": self.counts[model]})


@hookimpl
def loom_register_strategies(register):
    register("round_robin", RoundRobin)
