"""The ``eventlog`` progress sink: every event as one JSON line.

Writes ``storyloom-out/<job_id>/events.jsonl``, appending, so a resumed job
keeps one log of all its runs. Each line is ``Event.as_dict()``; the shape is
``schemas/events.schema.json``. Turn it on with ``progress: [terminal, eventlog]``
in ``storyloom.yaml`` or ``--progress eventlog``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO

import trio

from storyloom import hookimpl
from storyloom.events import Event
from storyloom.sinks import buffered

FILE_NAME = "events.jsonl"


def line(event: Event) -> str:
    """One event as a JSON line (anything not JSON, from a plugin's notify data, as text)."""
    return json.dumps(event.as_dict(), ensure_ascii=False, separators=(",", ":"), default=str) + "\n"


class EventLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    async def run(self, events: trio.MemoryReceiveChannel[Event]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as out:
            try:
                async for event in events:
                    # Write whatever else is waiting too, then flush once: a
                    # burst of outcomes costs one write, not one per event.
                    self._write(out, [event, *buffered(events)])
            finally:
                self._write(out, buffered(events))

    @staticmethod
    def _write(out: IO[str], batch: list[Event]) -> None:
        if batch:
            out.write("".join(line(event) for event in batch))
            out.flush()


@hookimpl
def loom_register_sinks(register):
    register("eventlog", lambda config, plan: EventLog(config.out_dir / plan.job.job_id / FILE_NAME))
