"""The ``plain`` progress sink: one line at each 10% step, or every 30 s.

Readable in CI logs and pipes. ``--quiet`` silences it.
"""

from __future__ import annotations

import sys
import time

import trio

from storyloom import hookimpl

INTERVAL = 30.0


class PlainProgress:
    def __init__(self, stream=None, interval: float = INTERVAL) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval
        self.total = 0
        self.done = {"completed": 0, "failed": 0, "skipped": 0}
        self.retrying = 0
        self.cost = 0.0

    async def run(self, events: trio.MemoryReceiveChannel) -> None:
        last_step, last_time = -1, time.monotonic()
        async for event in events:
            if event.kind == "batch_started":
                self.total = event.data["total"]
                counts = event.data["counts"]  # a resumed job starts part done
                self.done = {state: counts[state] for state in ("completed", "failed", "skipped")}
                self._line(event.job_id, "started")
            elif event.kind == "item_finished":
                state = event.data["state"]
                self.cost += event.data.get("cost_usd", 0.0)
                if state == "retrying":
                    self.retrying += 1
                else:
                    self.done[state] += 1
                finished = sum(self.done.values())
                step = finished * 10 // self.total if self.total else 10
                now = time.monotonic()
                if step > last_step or now - last_time >= self.interval:
                    last_step, last_time = step, now
                    self._line(event.job_id)
            elif event.kind in ("notify", "escalate"):
                print(f"[{event.job_id}] {event.kind}: {event.data.get('message')}", file=self.stream, flush=True)

    def _line(self, job_id: str, note: str = "") -> None:
        finished = sum(self.done.values())
        pct = 100 * finished // self.total if self.total else 100
        print(f"[{job_id}] {note or f'{pct:3d}%'} {finished}/{self.total} done: "
              f"{self.done['completed']} completed, {self.done['failed']} failed, {self.done['skipped']} skipped, "
              f"{self.retrying} retries, ${self.cost:.4f}", file=self.stream, flush=True)


@hookimpl
def loom_register_sinks(register):
    register("plain", lambda config, plan: None if config.options.quiet else PlainProgress())
