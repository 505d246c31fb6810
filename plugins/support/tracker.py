"""What a progress view shows, computed from the kernel's events alone.

:class:`ProgressTracker` is pure: feed it events with :meth:`~ProgressTracker.apply`
and ask it questions with a time (``now``, wall clock like ``Event.time``).
It draws nothing, so the terminal view, the plain lines and tests share it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from storyloom.events import Event

#: Terminal outcomes the throughput is measured over: the last this many, or
#: three times ``max_parallel`` if larger, so a sample spans a few rounds of work.
THROUGHPUT_SAMPLE = 60
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

    def _on_item_finished(self, event: Event) -> None:
        data, item_id = event.data, event.item_id or ""
        self.running.pop(item_id, None)
        tokens = data.get("input_tokens", 0) + data.get("output_tokens", 0)
        self.input_tokens += data.get("input_tokens", 0)
        self.output_tokens += data.get("output_tokens", 0)
        self.cost_usd += data.get("cost_usd", 0.0)
        self._durations.append(data.get("elapsed", 0.0))
        state = data.get("state")
        spent = self._spent.pop(item_id, 0.0) + data.get("elapsed", 0.0)
        if state == "retrying":
            self.retries += 1
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

    def eta(self, now: float) -> float | None:
        """Seconds until every item is done, or None if it cannot be told yet.

        While items wait, the last of them starts once the ones before it
        have gone through at the recent throughput, and then takes as long as
        recent items took (retries and their delays included); once none
        waits, it is the running item with the most left (its elapsed time
        against the recent average attempt)."""
        if self.status is not None:
            return 0.0
        rate = self.throughput(now)
        if not rate:
            return None
        average = self._average()
        left_running = max((max(0.0, average - (now - r.started)) for r in self.running.values()), default=0.0)
        waiting = self.pending + len(self.retrying)
        if waiting:
            per_item = sum(self._item_times) / len(self._item_times) if self._item_times else average
            return max(waiting / rate + per_item, left_running)
        return left_running
