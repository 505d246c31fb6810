"""What a job type is: how an item becomes a request, and a reply a result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .job import Item, Job
    from .provider import Request, Response


class JobType(Protocol):
    name: str
    #: Defaults used when neither settings (``batch_limits``) nor the job set them.
    max_parallel: int
    timeout_per_item: float

    def build_request(self, item: "Item", job: "Job") -> "Request":
        """Turn an item into a request. Raise ProviderError(INVALID_INPUT) if it cannot."""

    def handle_result(self, item: "Item", job: "Job", response: "Response") -> "Result":
        """Turn a reply into the item's result. Raise ProviderError to fail the attempt."""


@dataclass(frozen=True)
class Result:
    """What an item produced: text for ``storyloom-out/<job_id>/<file_name>``."""

    text: str
    file_name: str
    data: dict[str, Any] | None = None
