"""Helpers for writing progress sinks (see :class:`storyloom.events.Sink`)."""

from __future__ import annotations

import trio

from .events import Event


def buffered(events: trio.MemoryReceiveChannel[Event]) -> list[Event]:
    """The events already waiting in ``events``, taken without blocking.

    The kernel cancels its sinks as soon as the batch has ended, and the last
    events (``batch_finished`` among them) may still sit in the channel then.
    Call this in a sink's ``finally`` so that nothing the kernel sent is lost.
    """
    out: list[Event] = []
    while True:
        try:
            out.append(events.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return out
