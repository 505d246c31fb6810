"""A loaded, validated job: what the kernel runs."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .settings import RetryConfig


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
        if left < timedelta(hours=24):
            level = cls.CRITICAL
        elif left < timedelta(days=3):
            level = cls.HIGH
        else:
            level = default
        return min(level, default)


@dataclass(frozen=True)
class Item:
    item_id: str
    project_id: str | None = None
    chapter_num: int | None = None
    #: ``pending`` to run; ``skipped`` (or ``completed``) in the file means "do not run".
    status: str = "pending"
    priority: Priority | None = None
    deadline: datetime | None = None
    model: str | None = None  # pins the item to one model
    #: Every other field of the item (genre, language, title, vars...), as the
    #: job type's prompt template sees it.
    fields: dict[str, Any] = field(default_factory=dict)

    def as_template_vars(self) -> dict[str, Any]:
        data = dict(self.fields)
        data.update(item_id=self.item_id, project_id=self.project_id, chapter_num=self.chapter_num)
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
