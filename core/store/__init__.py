"""Durable state: the Store protocol and its backends."""

from .protocol import (
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
    RunningRow,
    StartRecord,
    Store,
    StoreVersionError,
)

__all__ = [
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
    "RunningRow",
    "StartRecord",
    "Store",
    "StoreVersionError",
]
