"""What a run would do, before anything is sent or stored (``--dry-run``):
each item's route, and the tokens, cost and time to expect.

Every stage counts: the job file's items, then what each later stage
(``then:``) plans for them (:mod:`storyloom.planning`: a book's outline,
chapters, their QC, the export), each row with how many to expect (nothing
failing) and at most (every rewrite taken), which the expected and worst
totals multiply in. A stage whose job type plans nothing is named in
``unplanned_stages`` and left out.

Routes come from each stage's own strategy, asked once per row in job order
as for a first attempt with nothing failing; load-based strategies see the
last ``max_parallel`` routed items as in flight, as in a steady run.
Tokens are the kernel's estimates (:mod:`storyloom.tokens`): the prompt
estimate, plus for the reply what the model's provider factory expects
(an optional ``expected_output_tokens(spec, request)``), else half of
``max_tokens``. The worst case is :func:`storyloom.budget.worst_case`, what
the budget reserves. Time is the floor the models' ``rpm`` and ``tpm`` set;
a model with neither sets none (its speed is the provider's).
"""

from __future__ import annotations

import collections
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .budget import worst_case
from .chosen import lookup
from .planning import planned_requests, unplanned_stages
from .routing import RouteContext
from .tokens import estimate_request_tokens

if TYPE_CHECKING:
    from .config import Config
    from .job import Plan

#: Items ``storyloom run --dry-run`` lists one by one; the totals cover all.
SHOWN_ITEMS = 20


@dataclass
class ItemEstimate:
    item_id: str
    project_id: str | None
    model: str | None
    #: Why the strategy chose the model (its Choice.reason); {} for a row done in code.
    route: dict[str, Any]
    prompt_tokens: int
    expected_output_tokens: int
    max_tokens: int
    #: Of one attempt.
    expected_usd: float
    worst_usd: float
    #: The stage (job type) that sends it, and how many such items to expect and at most.
    job_type: str = ""
    count: int = 1
    worst_count: int = 1


@dataclass
class StageEstimate:
    """Totals of a stage: items expected and at most, and their cost."""

    items: int = 0
    worst_items: int = 0
    expected_usd: float = 0.0
    worst_usd: float = 0.0


@dataclass
class ModelEstimate(StageEstimate):
    """A model's totals, its tokens too, and the time its rate limits need."""

    expected_tokens: int = 0
    worst_tokens: int = 0
    rpm: int | None = None
    tpm: int | None = None
    #: Seconds the model's rate limits need for its items at least (None: no limit set).
    min_seconds: float | None = None


@dataclass
class Estimate:
    job_id: str
    job_type: str
    items: list[ItemEstimate] = field(default_factory=list)
    skipped: int = 0
    models: dict[str, ModelEstimate] = field(default_factory=dict)
    max_parallel: int = 1
    budget_usd: float | None = None
    #: Totals per stage (job type), stage 0 first.
    stages: dict[str, StageEstimate] = field(default_factory=dict)
    #: Later stages whose job type plans nothing: not in the totals.
    unplanned_stages: list[str] = field(default_factory=list)

    @property
    def expected_usd(self) -> float:
        return sum(m.expected_usd for m in self.models.values())

    @property
    def worst_usd(self) -> float:
        return sum(m.worst_usd for m in self.models.values())

    @property
    def min_seconds(self) -> float | None:
        """The slowest model's rate-limit floor: models run side by side."""
        floors = [m.min_seconds for m in self.models.values() if m.min_seconds is not None]
        return max(floors) if floors else None

    def as_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "job_type": self.job_type, "dry_run": True,
                "items": [asdict(i) for i in self.items], "skipped": self.skipped,
                "total_items": sum(i.count for i in self.items),
                "worst_items": sum(i.worst_count for i in self.items), "max_parallel": self.max_parallel,
                "budget_usd": self.budget_usd,
                "expected_usd": self.expected_usd, "worst_usd": self.worst_usd,
                "min_seconds": self.min_seconds,
                "models": {name: asdict(m) for name, m in self.models.items()},
                "stages": {name: asdict(t) for name, t in self.stages.items()},
                "unplanned_stages": list(self.unplanned_stages)}


def estimate(config: "Config", plan: "Plan") -> Estimate:
    """The route, tokens and cost of every item of ``plan`` still to run, and
    of what its later stages plan for them; each model's and stage's totals
    and the models' rate-limit floors. Sends nothing, stores nothing, builds
    no provider."""
    job = plan.job
    registries, settings = config.registries, config.settings
    lookup(registries.job_types, job.job_type, "job type")
    result = Estimate(job_id=job.job_id, job_type=job.job_type, max_parallel=plan.max_parallel,
                      budget_usd=job.budget_usd, unplanned_stages=unplanned_stages(config, plan))
    result.stages = {stage.job_type: StageEstimate() for stage in job.stages
                     if stage.job_type not in result.unplanned_stages}
    result.skipped = sum(1 for item in job.items if item.status != "pending")  # never sent
    routers: dict[str, tuple[Any, collections.deque[str]]] = {}
    for planned in planned_requests(config, plan):
        stage_plan, request = planned.stage, planned.request
        stage_totals = result.stages[stage_plan.stage_type]
        stage_totals.items += planned.expected
        stage_totals.worst_items += planned.worst
        if request is None:  # done in code: no model, no cost
            result.items.append(ItemEstimate(
                item_id=planned.item_id, project_id=planned.project_id, model=None, route={}, prompt_tokens=0,
                expected_output_tokens=0, max_tokens=0, expected_usd=0.0, worst_usd=0.0,
                job_type=stage_plan.stage_type, count=planned.expected, worst_count=planned.worst))
            continue
        if stage_plan.stage_type not in routers:
            options = {k: v for k, v in stage_plan.routing.items() if k != "strategy"}
            strategy = lookup(registries.strategies, stage_plan.routing.get("strategy", "round_robin"),
                              "routing strategy")(options, stage_plan)
            routers[stage_plan.stage_type] = strategy, collections.deque(maxlen=max(1, stage_plan.max_parallel))
        strategy, window = routers[stage_plan.stage_type]
        prompt = estimate_request_tokens(request)
        usable = list(planned.models)
        in_flight = collections.Counter(window)
        specs = {m: settings.models[m] for m in usable}
        outputs = {m: _expected_output(config, specs[m], request) for m in usable}
        ctx = RouteContext(
            usable=usable, in_flight={m: in_flight[m] for m in usable},
            capacity={m: specs[m].max_parallel or 0 for m in usable},
            prices={m: specs[m].price for m in usable}, prompt_tokens={m: prompt for m in usable},
            output_tokens={m: request.max_tokens for m in usable})
        choice = strategy.choose(planned.source, ctx)
        model = choice.model if choice.model in usable else usable[0]
        window.append(model)
        spec = specs[model]
        expected_out = outputs[model]
        row = ItemEstimate(item_id=planned.item_id, project_id=planned.project_id, model=model,
                           route=dict(choice.reason), prompt_tokens=prompt, expected_output_tokens=expected_out,
                           max_tokens=request.max_tokens, expected_usd=spec.price.cost(prompt, expected_out),
                           worst_usd=worst_case(spec.price, prompt, request.max_tokens),
                           job_type=stage_plan.stage_type, count=planned.expected, worst_count=planned.worst)
        result.items.append(row)
        totals = result.models.setdefault(model, ModelEstimate(rpm=spec.rpm, tpm=spec.tpm))
        totals.items += row.count
        totals.worst_items += row.worst_count
        totals.expected_tokens += row.count * (prompt + expected_out)
        totals.worst_tokens += row.worst_count * (prompt + request.max_tokens)
        totals.expected_usd += row.count * row.expected_usd
        totals.worst_usd += row.worst_count * row.worst_usd
        stage_totals.expected_usd += row.count * row.expected_usd
        stage_totals.worst_usd += row.worst_count * row.worst_usd
    for totals in result.models.values():
        floors = []
        if totals.rpm:
            floors.append(totals.items / totals.rpm * 60)
        if totals.tpm:
            floors.append(totals.expected_tokens / totals.tpm * 60)
        totals.min_seconds = max(floors) if floors else None
    return result


def _expected_output(config: "Config", spec: Any, request: Any) -> int:
    """The reply tokens to expect: the provider factory's guess, else half of max_tokens."""
    factory = config.registries.providers.get(spec.provider)
    guess = getattr(factory, "expected_output_tokens", None)
    if guess is not None:
        try:
            value = guess(spec, request)
        except Exception:  # an estimate must not stop a dry run
            value = None
        if isinstance(value, int) and value >= 0:
            return min(value, request.max_tokens)
    return math.ceil(request.max_tokens / 2)


def shown_time(seconds: float | None) -> str:
    """``1h 5m``, ``3m 20s``, ``12s``; ``-`` for None."""
    if seconds is None:
        return "-"
    seconds = math.ceil(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"
