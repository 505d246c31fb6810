"""The ``terminal`` progress sink: the seed's live view of a batch.

On a terminal, rich redraws the view in place four times a second: job and
type, start and elapsed time, a progress bar, the breakdown by state, the
items running now, throughput, cost against the budget and an ETA. When
stderr is not a terminal (CI logs, pipes) it prints the ``plain`` sink's lines
instead. ``--quiet`` silences it.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime

import trio
from rich.console import Console
from rich.live import Live
from rich.text import Text

from storyloom import hookimpl
from storyloom.events import Event
from storyloom.plugins.support.plain import PlainProgress, clock
from storyloom.plugins.support.tracker import ProgressTracker
from storyloom.sinks import buffered

#: Seconds between redraws: at least twice a second, as the issue asks.
REFRESH = 0.25
BAR_WIDTH = 20
#: Running items listed by name; the rest are counted.
RUNNING_SHOWN = 8


def view(tracker: ProgressTracker, now: float) -> list[tuple[str, str]]:
    """The view as ``(text, rich style)`` lines: what the terminal shows, without drawing it."""
    t = tracker
    lines: list[tuple[str, str]] = []

    def add(text: str = "", style: str = "") -> None:
        lines.append((text, style))

    add(f"Batch Job: {t.job_id}", "bold")
    add(f"Type: {t.job_type.replace('_', ' ').title()}")
    started = datetime.fromtimestamp(t.started_at).strftime("%H:%M:%S") if t.started_at else "-"
    add(f"Started: {started}")
    add(f"Elapsed: {clock(t.elapsed(now))}")
    add()
    filled = round(BAR_WIDTH * t.fraction)
    add(f"Progress: [{'█' * filled}{'░' * (BAR_WIDTH - filled)}] {int(100 * t.fraction)}%", "green")
    add(f"           {t.completed}/{t.total} completed")
    add()
    add("Status Breakdown:", "bold")
    add(f"✅ Completed: {t.completed}")
    add(f"🔄 Running: {len(t.running)}")
    add(f"⏳ Pending: {t.pending}")
    add(f"🔁 Retrying: {len(t.retrying)}")
    add(f"❌ Failed: {t.failed}", "red" if t.failed else "")
    if t.skipped:
        add(f"➖ Skipped: {t.skipped}")
    if t.running:
        add()
        add("Current Processing:", "bold")
        running = sorted(t.running.values(), key=lambda r: r.started)
        for r in running[:RUNNING_SHOWN]:
            extra = f", attempt {r.attempt}" if r.attempt > 1 else ""
            if r.tokens:
                extra += f", {r.tokens:,} tokens so far"
            add(f"• {r.label} → {r.model} ({max(0, now - r.started):.0f}s{extra})")
        if len(running) > RUNNING_SHOWN:
            add(f"  … and {len(running) - RUNNING_SHOWN} more")
    add()
    rate = t.throughput(now)
    add(f"Throughput: {rate * 60:.1f} items/min" if rate else "Throughput: -")
    cost = f"Cost: ${t.cost_usd:.4f}"
    if t.budget_usd:
        cost += f" of ${t.budget_usd:.2f} budget ({t.cost_usd / t.budget_usd:.0%})"
    add(cost + f"  ·  tokens {t.input_tokens:,} in / {t.output_tokens:,} out")
    if t.status is not None:
        add(f"Finished: {t.status}" + (f" ({t.reason})" if t.reason else ""), "bold")
    else:
        eta = t.eta(now)
        if eta is None:
            add("Estimated Completion: estimating…")
        else:
            at = datetime.fromtimestamp(now + eta).strftime("%H:%M:%S")
            add(f"Estimated Completion: {clock(eta)} (about {at})")
    for kind, message in t.messages:
        add(f"{'⚠' if kind == 'notify' else '‼'} {kind}: {message}", "yellow" if kind == "notify" else "bold red")
    return lines


def render(tracker: ProgressTracker, now: float) -> Text:
    text = Text()
    for i, (line, style) in enumerate(view(tracker, now)):
        if i:
            text.append("\n")
        text.append(line, style=style or None)  # appended, never parsed: names may hold [brackets]
    return text


class LiveProgress:
    """Draws :func:`view` with rich, in place, every :data:`REFRESH` seconds."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.tracker = ProgressTracker()

    async def run(self, events: trio.MemoryReceiveChannel[Event]) -> None:
        live = Live(console=self.console, auto_refresh=False, transient=False)
        live.start()
        try:
            next_draw = trio.current_time()
            while True:
                with trio.move_on_at(next_draw):
                    try:
                        self.tracker.apply(await events.receive())
                    except trio.EndOfChannel:
                        return
                    continue
                if self.tracker.started_at is not None:  # nothing to show before batch_started
                    live.update(render(self.tracker, time.time()), refresh=True)
                next_draw = trio.current_time() + REFRESH
        finally:
            for event in buffered(events):
                self.tracker.apply(event)
            live.update(render(self.tracker, time.time()), refresh=True)
            live.stop()


def make_sink(config, plan, stream=None):
    """The live view on a terminal, plain lines elsewhere, nothing with ``--quiet``."""
    if config.options.quiet:
        return None
    stream = stream or sys.stderr
    console = Console(file=stream)
    if console.is_terminal and not console.is_dumb_terminal:
        return LiveProgress(console)
    return PlainProgress(stream)


@hookimpl
def loom_register_sinks(register):
    register("terminal", make_sink)
