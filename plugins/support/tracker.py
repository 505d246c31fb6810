"""What a progress view shows, computed from the kernel's events alone.

:class:`ProgressTracker` is pure: feed it events with :meth:`~ProgressTracker.apply`
and ask it questions with a time (``now``, wall clock like ``Event.time``).
It draws nothing, so the terminal view, the plain lines and tests share it.
"""

from __future__ import annotations

import heapq
import random
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass
from typing import Callable

from storyloom.events import Event

#: Terminal outcomes the throughput is measured over: the last this many, or
#: three times ``max_parallel`` if larger, so a sample spans a few rounds of work.
THROUGHPUT_SAMPLE = 60
#: Draws of the last rounds' item lengths an ETA averages over.
ETA_TRIALS = 24
#: At most about this many draws an ETA (it is asked four times a second).
ETA_DRAWS = 6_000
#: A drawn item is retried at most this often (the share is a guess at first).
MAX_DRAWN_RETRIES = 5
#: Recent notify / escalate messages kept for display.
MESSAGES_KEPT = 3


@dataclass
class RunningItem:
    item_id: str
    label: str  # project/chapter when the item has them, else the item id
    model: str
    attempt: int
    started: float  # wall clock of the item_started event
    tokens: int  # used by this item's earlier attempts (the kernel reports tokens per attempt)


class ProgressTracker:
    """Counts, running items, throughput, cost and ETA of one batch."""

    def __init__(self, sample: int = THROUGHPUT_SAMPLE) -> None:
        self.job_id = ""
        self.job_type = ""
        self.total = 0
        self.max_parallel = 1
        self.budget_usd: float | None = None
        self.started_at: float | None = None  # this run's batch_started
        self.finished_at: float | None = None
        self.status: str | None = None  # set by batch_finished
        self.reason: str | None = None
        self.completed = self.failed = self.skipped = 0
        self.retries = 0  # outcomes that sent an item back for another attempt
        self.attempts = 0  # outcomes of any kind
        self._delays = 0.0  # the retry delays of those retries, summed
        self.cost_usd = 0.0
        self.input_tokens = self.output_tokens = 0
        self.running: dict[str, RunningItem] = {}
        self.retrying: set[str] = set()  # waiting for their retry delay
        self.messages: deque[tuple[str, str]] = deque(maxlen=MESSAGES_KEPT)
        self._sample = sample
        self._finishes: deque[float] = deque(maxlen=sample + 1)
        self._durations: deque[float] = deque(maxlen=sample)  # recent attempts
        self._item_times: deque[float] = deque(maxlen=sample)  # recent items: attempts and retry delays
        self._tokens: dict[str, int] = {}  # item -> tokens of its finished attempts, until it is done
        self._spent: dict[str, float] = {}  # item -> time its earlier attempts and retry delays took
        self._in_flight: deque[int] = deque(maxlen=sample)  # items running as each recent one started

    # -- feeding ---------------------------------------------------------

    def apply(self, event: Event) -> None:
        handler = getattr(self, f"_on_{event.kind}", None)
        if handler is not None:
            handler(event)

    def _on_batch_started(self, event: Event) -> None:
        data = event.data
        counts = data.get("counts", {})
        self.job_id, self.job_type = event.job_id, data.get("job_type", "")
        self.total = data.get("total", 0)
        self.max_parallel = max(1, data.get("max_parallel", 1))
        self.budget_usd = data.get("budget_usd")
        self.started_at = event.time
        # A resumed job starts part done.
        self.completed, self.failed, self.skipped = (counts.get(s, 0) for s in ("completed", "failed", "skipped"))
        self._finishes = deque(maxlen=max(self._sample, 3 * self.max_parallel) + 1)

    def _on_item_started(self, event: Event) -> None:
        data, item_id = event.data, event.item_id or ""
        project, chapter = data.get("project_id"), data.get("chapter_num")
        if project and chapter is not None:
            label = f"{project}/ch{chapter}"
        else:
            label = item_id
        self.retrying.discard(item_id)
        self.running[item_id] = RunningItem(item_id, label, data.get("model") or "?", data.get("attempt", 1),
                                            event.time, self._tokens.get(item_id, 0))
        self._in_flight.append(len(self.running))

    def _on_item_finished(self, event: Event) -> None:
        data, item_id = event.data, event.item_id or ""
        self.running.pop(item_id, None)
        tokens = data.get("input_tokens", 0) + data.get("output_tokens", 0)
        self.input_tokens += data.get("input_tokens", 0)
        self.output_tokens += data.get("output_tokens", 0)
        self.cost_usd += data.get("cost_usd", 0.0)
        self._durations.append(data.get("elapsed", 0.0))
        self.attempts += 1
        state = data.get("state")
        spent = self._spent.pop(item_id, 0.0) + data.get("elapsed", 0.0)
        if state == "retrying":
            self.retries += 1
            self._delays += data.get("retry_delay") or 0.0
            self.retrying.add(item_id)
            self._tokens[item_id] = self._tokens.get(item_id, 0) + tokens
            self._spent[item_id] = spent + (data.get("retry_delay") or 0.0)
            return
        self._tokens.pop(item_id, None)
        self._item_times.append(spent)
        if state == "completed":
            self.completed += 1
            self.total += data.get("follow_ups", 0)  # a pipeline grows as it goes
        elif state == "failed":
            self.failed += 1
        self._finishes.append(event.time)

    def _on_notify(self, event: Event) -> None:
        self.messages.append(("notify", str(event.data.get("message", ""))))

    def _on_escalate(self, event: Event) -> None:
        self.messages.append(("escalate", str(event.data.get("message", ""))))

    def _on_batch_finished(self, event: Event) -> None:
        self.finished_at = event.time
        self.status = event.data.get("status")
        self.reason = event.data.get("reason")
        counts = event.data.get("counts") or {}
        if counts:  # the store's word is final (the sink may have missed events)
            self.completed, self.failed, self.skipped = (counts.get(s, 0) for s in ("completed", "failed", "skipped"))
            self.total = sum(counts.values())
        self.running.clear()
        self.retrying.clear()

    # -- asking ----------------------------------------------------------

    @property
    def done(self) -> int:
        """Items in a terminal state: completed, failed or skipped."""
        return self.completed + self.failed + self.skipped

    @property
    def pending(self) -> int:
        """Items waiting to start (not counting those waiting for a retry)."""
        return max(0, self.total - self.done - len(self.running) - len(self.retrying))

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    def elapsed(self, now: float) -> float:
        if self.started_at is None:
            return 0.0
        return (self.finished_at or now) - self.started_at

    def throughput(self, now: float) -> float | None:
        """Items finished per second over the recent sample; None before the first.

        Measured from the finish before the sample (or the batch start) to the
        latest finish, so that items finishing in bursts (every slot at once)
        do not make it saw up and down between bursts. When nothing has
        finished for twice the usual time, it is measured up to ``now``
        instead, so a stall shows as falling throughput."""
        if self.started_at is None or not self._finishes:
            return None
        finishes = self._finishes
        if len(finishes) == finishes.maxlen:
            since, count = finishes[0], len(finishes) - 1
        else:
            since, count = self.started_at, len(finishes)
        last = finishes[-1]
        usual = max(self._average(), (last - since) / count)
        end = now if now - last > 2 * usual else last
        span = end - since
        return count / span if span > 0 else None

    def _average(self) -> float:
        """The recent attempts' average duration."""
        return sum(self._durations) / len(self._durations) if self._durations else 0.0

    def _item_draw(self, pool: list[float]) -> "Callable[[random.Random], float]":
        """How a waiting item's length is drawn: from ``pool`` (recent items),
        or, once attempts have been retried, as attempts of recent lengths,
        each retried (after the mean retry delay) at the observed share. The
        recent items seldom hold the rare item retried twice or more, which
        is the one a batch ends waiting for."""
        if not self.retries or self.attempts <= self.retries:
            return lambda rng: rng.choice(pool)
        share = self.retries / self.attempts
        delay = self._delays / self.retries
        attempts = list(self._durations)

        def draw(rng: random.Random) -> float:
            length = rng.choice(attempts)
            for _ in range(MAX_DRAWN_RETRIES):
                if rng.random() >= share:
                    break
                length += delay + rng.choice(attempts)
            return length

        return draw

    def eta(self, now: float) -> float | None:
        """Seconds until every item is done, or None if it cannot be told yet.

        The expected end of a schedule of what is left. Slots: as many as
        have recently run at once. Each running item goes on as long as a
        recent item that took longer than it has so far; the waiting (and
        retrying) items go one after another into whichever slot frees first,
        each as long as a recent item (retries and their delays included; the
        items in flight count too, at their expected length, so that the
        first, short, finishes do not make the batch look quick). Whole rounds
        are counted at the average; the last two are drawn from those lengths
        ETA_TRIALS times, fewer for a very wide batch (with a fixed seed: the
        same events give the same answer), because the batch ends with its
        slowest item, not an average one. Once the throughput sample is full,
        a slot takes no less than the measured throughput says (rate limits,
        gaps between items)."""
        if self.status is not None:
            return 0.0
        if not self._durations:
            return None
        lengths = sorted(self._item_times or self._durations)
        n = len(lengths)
        after = [0.0] * (n + 1)  # after[i]: the sum of lengths[i:]
        for i in range(n - 1, -1, -1):
            after[i] = after[i + 1] + lengths[i]
        running = [(self._spent.get(r.item_id, 0.0) + max(0.0, now - r.started)) for r in self.running.values()]
        longer = [bisect_right(lengths, so_far) for so_far in running]  # lengths[i:] outlasted it so far
        expected = [after[i] / (n - i) if i < n else so_far for so_far, i in zip(running, longer)]
        pool = lengths + expected
        per_item = sum(pool) / len(pool)
        slots = max(max(self._in_flight, default=1), len(running), 1)
        scale = 1.0
        if len(self._finishes) == self._finishes.maxlen:
            rate = self.throughput(now)
            if rate:
                scale = max(1.0, slots / rate / per_item)
        waiting = self.pending + len(self.retrying)
        rounds = max(0, waiting // slots - 2)  # whole rounds keep the slots' order: skip them at the average
        drawn = waiting - rounds * slots
        ahead = rounds * per_item * scale
        rng = random.Random(0)
        draw = self._item_draw(pool)
        trials = max(2, min(ETA_TRIALS, ETA_DRAWS // (drawn + slots)))  # a wide batch: fewer, bigger trials
        total = 0.0
        for _ in range(trials):
            free = [ahead + (lengths[rng.randrange(i, n)] - so_far if i < n else 0.0)
                    for so_far, i in zip(running, longer)]
            free += [ahead] * (slots - len(free))
            heapq.heapify(free)
            for _ in range(drawn):
                heapq.heappush(free, heapq.heappop(free) + draw(rng) * scale)
            total += max(free)
        return total / trials
