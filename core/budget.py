"""Spending limits at run time: a job's ``budget_usd``, a model's ``max_spend_usd``.

Every attempt reserves its worst case (:func:`worst_case`) before it is sent
and settles with its real cost after. An attempt that waits for budget while
others are in flight waits for them to settle rather than pause the job: the
job pauses only when nothing is in flight and spent plus one more attempt's
worst case would pass the limit. A budget too small for any one item's worst
case is refused before anything is stored (:func:`check_budget`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import trio

from .errors import UsageError
from .planning import planned_requests
from .tokens import estimate_request_tokens

if TYPE_CHECKING:
    from .job import Plan

#: The budget reserves the prompt estimate times this, plus max_tokens: the
#: estimate is calibrated per model, but a reservation must not fall short.
BUDGET_PROMPT_MARGIN = 1.25


def worst_case(price: Any, prompt_tokens: int, max_tokens: int) -> float:
    """What one attempt may cost at most: its (calibrated) prompt estimate
    with :data:`BUDGET_PROMPT_MARGIN`, and every one of ``max_tokens``."""
    return price.cost(math.ceil(prompt_tokens * BUDGET_PROMPT_MARGIN), max_tokens)


class Budget:
    """A job's ``budget_usd``: reserve each attempt's worst case before it is
    sent, settle with the real cost after. Spent plus reserved never passes
    the limit.

    ``unknown`` is the worst case of earlier attempts whose outcome never
    arrived (a killed worker, a timeout): the provider may have billed them,
    so it counts as spent."""

    def __init__(self, limit: float | None, spent: float, unknown: float = 0.0) -> None:
        self.limit = math.inf if limit is None else limit
        self.spent = spent + unknown
        self.unknown = unknown
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
        """End one reservation made by :meth:`reserve` or :meth:`try_reserve`, charging ``actual``."""
        self._holders -= 1
        # Float sums leave residue (0.1 * 3 - 0.1 * 3 != 0): the count decides emptiness.
        self.reserved = max(0.0, self.reserved - reserved) if self._holders else 0.0
        self.spent += actual
        self._changed.set()
        self._changed = trio.Event()

    async def asettle(self, reserved: float, actual: float) -> None:
        """:meth:`settle`, awaitable as :class:`storyloom.sharedlimits.SharedBudget`'s is."""
        self.settle(reserved, actual)

    def reached(self, needed: float) -> str:
        """Why an attempt needing ``needed`` cannot start: the pause reason."""
        return reached_reason(self.spent, self.limit, self.unknown, self.reserved, self._holders, needed)


def reached_reason(spent: float, limit: float, unknown: float, reserved: float, holders: int,
                   needed: float) -> str:
    """The pause reason of a budget that cannot take ``needed`` more."""
    said = f"spent ${spent:.4f} of ${limit:.4f}"
    if unknown:
        said += f" (${unknown:.4f} of it the worst case of attempts sent, outcome unknown)"
    held = f"${reserved:.4f} reserved by {holders} attempt(s) in flight" if holders else "nothing in flight"
    return f"budget reached: {said}, {held}; one more item needs up to ${needed:.4f}"


def check_budget(plan: "Plan", config: Any) -> None:
    """UsageError if the job's budget cannot cover some attempt's worst case
    on the most expensive of its models, at any stage of the pipeline (the
    job file's items and what the later stages plan for them,
    :func:`storyloom.planning.planned_requests`): that item could never be
    sent, and the job would pause there on every resume. The estimate is the
    kernel's own (:func:`worst_case` of the uncalibrated prompt estimate)."""
    job = plan.job
    if job.budget_usd is None:
        return
    settings = config.settings
    worst_item, worst_stage, worst = None, None, 0.0
    for row in planned_requests(config, plan, strict=False):
        if row.request is None:  # done in code: costs nothing
            continue
        prompt = estimate_request_tokens(row.request)
        for name in row.models:
            spec = settings.models.get(name)
            cost = worst_case(spec.price, prompt, row.request.max_tokens) if spec is not None else 0.0
            if cost > worst:
                worst_item, worst_stage, worst = row.item_id, row.stage.stage_type, cost
    if worst_item is not None and worst > job.budget_usd:
        stage = "" if worst_stage == job.job_type else f" (stage {worst_stage}, planned)"
        raise UsageError(
            f"budget_usd ${job.budget_usd:.4f} cannot cover one attempt at item {worst_item!r}{stage}, whose worst "
            f"case is ${worst:.4f} (its prompt estimate x{BUDGET_PROMPT_MARGIN:g} plus max_tokens, at the "
            "price of its dearest model): raise budget_usd, or lower config.max_tokens")
