"""Durable state: the Store protocol and its backends."""

from .protocol import (
    HELD_JOB_STATES,
    ITEM_STATES,
    JOB_STATES,
    TERMINAL_STATES,
    AttemptRecord,
    ClaimedItem,
    CostTotals,
    ItemRow,
    JobExists,
    JobRow,
    NewItem,
    QueuedRow,
    RunningRow,
    StartRecord,
    Store,
    StoreVersionError,
)

__all__ = [
    "HELD_JOB_STATES",
    "ITEM_STATES",
    "JOB_STATES",
    "TERMINAL_STATES",
    "AttemptRecord",
    "ClaimedItem",
    "CostTotals",
    "ItemRow",
    "JobExists",
    "JobRow",
    "NewItem",
    "QueuedRow",
    "RunningRow",
    "StartRecord",
    "Store",
    "StoreVersionError",
]
