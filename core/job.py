"""A loaded, validated job: what the kernel runs."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .settings import RetryConfig

#: Time left before a deadline under which an item is critical, or high (the loader and the store share this rule).
CRITICAL_WITHIN_S = 24 * 3600
HIGH_WITHIN_S = 3 * 24 * 3600


class Priority(enum.IntEnum):
    """The seed's four levels; lower value is served first."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3

    @classmethod
    def from_deadline(cls, deadline: datetime, now: datetime, default: "Priority") -> "Priority":
        """Under 24 h is critical, under 3 days high; otherwise ``default``.

        A deadline never lowers a level that was asked for explicitly."""
        left = deadline - now
        if left < timedelta(seconds=CRITICAL_WITHIN_S):
            level = cls.CRITICAL
        elif left < timedelta(seconds=HIGH_WITHIN_S):
            level = cls.HIGH
        else:
            level = default
        return min(level, default)


@dataclass(frozen=True)
class Item:
    """One unit of work. The attributes are the kernel's generic keys; what
    the item says for its job type (``chapter_num``, ``genre``, ``prompt``...)
    is in ``fields``, as the job type's item schema declares it."""

    item_id: str
    #: A grouping key (the novel, the campaign) for routing and progress.
    project_id: str | None = None
    #: ``pending`` to run; ``skipped`` (or ``completed``) in the file means "do not run".
    status: str = "pending"
    priority: Priority | None = None
    deadline: datetime | None = None
    model: str | None = None  # pins the item to one model
    #: Every other field of the item, as its job type's template sees it
    #: (``vars`` stays one nested mapping).
    fields: dict[str, Any] = field(default_factory=dict)

    def as_template_vars(self) -> dict[str, Any]:
        data = dict(self.fields)
        data.update(item_id=self.item_id, project_id=self.project_id)
        return data


@dataclass(frozen=True)
class JobConfig:
    """The job's ``config:`` section merged over settings (None = not set here)."""

    max_parallel: int | None = None
    timeout_per_item: float | None = None
    retry_on_failure: bool = True
    max_retries: int | None = None
    model_rotation: bool = False
    max_tokens: int | None = None
    #: Ask providers to stream (server-sent events): tokens show as they
    #: arrive, and an idle stream times out rather than a long one.
    stream: bool = False


@dataclass(frozen=True)
class Job:
    job_id: str
    job_type: str
    items: tuple[Item, ...]
    priority: Priority = Priority.NORMAL
    created_at: datetime | None = None
    deadline: datetime | None = None
    config: JobConfig = JobConfig()
    models: tuple[str, ...] = ()
    routing: dict[str, Any] = field(default_factory=dict)
    budget_usd: float | None = None
    language: str | None = None
    source: str | None = None  # the file it was loaded from
    #: Free-form ``vars:`` every item's template sees.
    vars: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """A job with everything the kernel needs resolved: limits, models, retry config."""

    job: Job
    max_parallel: int
    timeout_per_item: float
    max_retries: int
    retry: RetryConfig
    models: tuple[str, ...]
    routing: dict[str, Any]


# -- serialisation: the store keeps jobs and items as JSON so that a job can
# be resumed without its file.


def _dt(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def item_to_dict(item: Item) -> dict[str, Any]:
    return {
        "item_id": item.item_id,
        "project_id": item.project_id,
        "status": item.status,
        "priority": item.priority.name.lower() if item.priority is not None else None,
        "deadline": _dt(item.deadline),
        "model": item.model,
        "fields": item.fields,
    }


#: The keys :func:`item_to_dict` writes.
_ITEM_KEYS = frozenset({"item_id", "project_id", "status", "priority", "deadline", "model", "fields"})


def item_from_dict(data: dict[str, Any]) -> Item:
    fields = dict(data.get("fields") or {})
    # Items stored before job types owned their fields kept some of them at
    # the top level of the definition: they are the job type's fields too.
    for key, value in data.items():
        if key not in _ITEM_KEYS and value is not None:
            fields.setdefault(key, value)
    return Item(
        item_id=data["item_id"],
        project_id=data.get("project_id"),
        status=data.get("status", "pending"),
        priority=Priority[data["priority"].upper()] if data.get("priority") else None,
        deadline=_parse_dt(data.get("deadline")),
        model=data.get("model"),
        fields=fields,
    )


def job_to_dict(job: Job, *, with_items: bool = False) -> dict[str, Any]:
    """The job without its items by default: items live in their own rows."""
    out: dict[str, Any] = {
        "job_id": job.job_id,
        "job_type": job.job_type,
        "priority": job.priority.name.lower(),
        "created_at": _dt(job.created_at),
        "deadline": _dt(job.deadline),
        "config": {
            "max_parallel": job.config.max_parallel,
            "timeout_per_item": job.config.timeout_per_item,
            "retry_on_failure": job.config.retry_on_failure,
            "max_retries": job.config.max_retries,
            "model_rotation": job.config.model_rotation,
            "max_tokens": job.config.max_tokens,
            "stream": job.config.stream,
        },
        "models": list(job.models),
        "routing": job.routing,
        "budget_usd": job.budget_usd,
        "language": job.language,
        "source": job.source,
        "vars": job.vars,
    }
    if with_items:
        out["items"] = [item_to_dict(i) for i in job.items]
    return out


def job_from_dict(data: dict[str, Any], items: tuple[Item, ...] = ()) -> Job:
    return Job(
        job_id=data["job_id"],
        job_type=data["job_type"],
        items=items or tuple(item_from_dict(i) for i in data.get("items", ())),
        priority=Priority[data.get("priority", "normal").upper()],
        created_at=_parse_dt(data.get("created_at")),
        deadline=_parse_dt(data.get("deadline")),
        config=JobConfig(**data.get("config", {})),
        models=tuple(data.get("models", ())),
        routing=dict(data.get("routing") or {}),
        budget_usd=data.get("budget_usd"),
        language=data.get("language"),
        source=data.get("source"),
        vars=dict(data.get("vars") or {}),
    )
