"""Helpers for writing progress sinks (see :class:`storyloom.events.Sink`)."""

from __future__ import annotations

import trio

from .events import Event


def buffered(events: trio.MemoryReceiveChannel[Event]) -> list[Event]:
    """The events already waiting in ``events``, taken without blocking.

    After the batch ends the kernel closes the sinks' channels and gives them
    ``storyloom.kernel.SINK_GRACE`` seconds to drain before cancelling them; a
    sink cancelled then may still have events (``batch_finished`` among them)
    waiting. Call this in a sink's ``finally`` so that nothing sent is lost.
    """
    out: list[Event] = []
    while True:
        try:
            out.append(events.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return out
