"""Plain progress lines: one at each 10% step, or every 30 s, readable in CI logs and pipes.

Shared by the ``plain`` sink (``storyloom.plugins.progress``) and the
``terminal`` sink, which falls back to these lines when its output is not a
terminal.
"""

from __future__ import annotations

import sys
import time

import trio

from storyloom.events import Event
from storyloom.plugins.support.tracker import ProgressTracker
from storyloom.sinks import buffered

INTERVAL = 30.0


def clock(seconds: float) -> str:
    """``H:MM:SS``."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class PlainProgress:
    """Prints ``[job] 40% 4/10 done: ...`` lines to ``stream`` (stderr)."""

    def __init__(self, stream=None, interval: float = INTERVAL) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval
        self.tracker = ProgressTracker()
        self._step = -1
        self._last_line = time.monotonic()

    async def run(self, events: trio.MemoryReceiveChannel[Event]) -> None:
        try:
            while True:
                wait = self.interval - (time.monotonic() - self._last_line)
                with trio.move_on_after(max(0.0, wait)):
                    try:
                        event = await events.receive()
                    except trio.EndOfChannel:
                        return
                    self.handle(event)
                    continue
                if self.tracker.started_at is not None and self.tracker.status is None:
                    self._line()  # nothing stepped for a while: say where things stand
        finally:
            for event in buffered(events):
                self.handle(event)

    def handle(self, event: Event) -> None:
        tracker = self.tracker
        tracker.apply(event)
        if event.kind == "batch_started":
            self._step = tracker.done * 10 // tracker.total if tracker.total else 10
            self._line("started")
        elif event.kind == "item_finished" and event.data.get("state") != "retrying":
            step = tracker.done * 10 // tracker.total if tracker.total else 10
            if step > self._step:
                self._step = step
                self._line()
        elif event.kind in ("notify", "escalate"):
            print(f"[{event.job_id}] {event.kind}: {event.data.get('message')}", file=self.stream, flush=True)

    def _line(self, note: str = "") -> None:
        t = self.tracker
        self._last_line = time.monotonic()
        pct = 100 * t.done // t.total if t.total else 100
        line = (f"[{t.job_id}] {note or f'{pct:3d}%'} {t.done}/{t.total} done: {t.completed} completed, "
                f"{t.failed} failed, {t.skipped} skipped, {t.retries} retries, ${t.cost_usd:.4f}")
        if t.done < t.total and t.status is None:
            eta = t.eta(time.time())
            line += f"; {len(t.running)} running, ETA {clock(eta) if eta is not None else '?'}"
        print(line, file=self.stream, flush=True)
