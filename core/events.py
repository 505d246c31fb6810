"""Events the kernel sends to progress sinks, and what a sink is."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

#: Every event kind, in the order they can happen in a batch.
EVENT_KINDS = (
    "batch_started",
    "item_started",
    "item_finished",  # data.state: completed | failed | retrying
    "notify",
    "escalate",
    "batch_finished",
)


@dataclass(frozen=True)
class Event:
    kind: str
    job_id: str
    item_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)  # wall clock, for humans and logs

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "job_id": self.job_id, "time": self.time}
        if self.item_id is not None:
            out["item_id"] = self.item_id
        out["data"] = self.data
        return out


class Sink(Protocol):
    async def run(self, events: trio.MemoryReceiveChannel[Event]) -> None:
        """Consume events until the channel closes (the batch has ended).

        Runs as a task in the kernel's nursery. It must not raise: a sink that
        fails is reported and dropped, and never fails the batch."""
