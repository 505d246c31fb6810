"""The progress tracker behind the terminal view: counts, running items, throughput, ETA."""

from __future__ import annotations

import heapq
import random

import pytest

from storyloom.events import Event
from storyloom.plugins.support.tracker import ProgressTracker

T0 = 1_700_000_000.0


def started(total: int, parallel: int, at: float = T0, counts: dict | None = None, budget=None) -> Event:
    base = {"pending": total, "running": 0, "completed": 0, "failed": 0, "skipped": 0}
    return Event("batch_started", "job", data={"job_type": "chapter_writing", "total": total,
                                               "counts": {**base, **(counts or {})}, "max_parallel": parallel,
                                               "models": ["m"], "budget_usd": budget}, time=at)


def item_started(item: str, at: float, attempt: int = 1, model: str = "m", **extra) -> Event:
    return Event("item_started", "job", item, {"attempt": attempt, "model": model, "project_id": extra.get("project"),
                                               "chapter_num": extra.get("chapter")}, time=at)


def item_finished(item: str, at: float, state: str = "completed", elapsed: float = 1.0, tokens=(100, 50),
                  cost: float = 0.01, attempt: int = 1) -> Event:
    data = {"state": state, "attempt": attempt, "model": "m", "elapsed": elapsed, "input_tokens": tokens[0],
            "output_tokens": tokens[1], "cost_usd": cost}
    if state != "completed":
        data.update(error_kind="TIMEOUT", error="slow", retry_delay=1.0 if state == "retrying" else None)
    return Event("item_finished", "job", item, data, time=at)


def simulate(n: int, parallel: int, duration, seed: int = 1) -> tuple[list[Event], float]:
    """A batch as the kernel would report it: ``parallel`` slots, each item
    taking ``duration(rng)`` seconds. Returns the events and the true end time."""
    rng = random.Random(seed)
    events = [started(n, parallel)]
    slots = [(T0, i) for i in range(parallel)]  # (free at, slot)
    heapq.heapify(slots)
    end = T0
    for i in range(n):
        free_at, slot = heapq.heappop(slots)
        took = duration(rng)
        events.append(item_started(f"it-{i}", free_at))
        events.append(item_finished(f"it-{i}", free_at + took, elapsed=took))
        heapq.heappush(slots, (free_at + took, slot))
        end = max(end, free_at + took)
    events.sort(key=lambda e: (e.time, e.kind != "item_finished"))
    return events, end


def feed_until(tracker: ProgressTracker, events: list[Event], now: float) -> None:
    for event in events:
        if event.time <= now:
            tracker.apply(event)


@pytest.mark.parametrize("point", [0.25, 0.5, 0.75, 0.9])
def test_eta_from_a_known_throughput_is_within_15_percent(point):
    # 4 slots, 2 s per item: 2 items/s; 200 items take 100 s.
    events, end = simulate(200, 4, lambda rng: 2.0)
    now = T0 + point * (end - T0) + 0.3  # between finishes, with items part done
    tracker = ProgressTracker()
    feed_until(tracker, events, now)
    assert tracker.throughput(now) == pytest.approx(2.0, rel=0.1)
    truth = end - now
    assert tracker.eta(now) == pytest.approx(truth, rel=0.15)


@pytest.mark.parametrize("point", [0.25, 0.5, 0.75])
def test_eta_with_jittered_durations_is_within_15_percent(point):
    # Durations from 1 to 3 s (the simulated provider's 0.5x-1.5x jitter), 6 slots.
    events, end = simulate(300, 6, lambda rng: rng.uniform(1.0, 3.0), seed=7)
    now = T0 + point * (end - T0)
    tracker = ProgressTracker()
    feed_until(tracker, events, now)
    assert tracker.eta(now) == pytest.approx(end - now, rel=0.15)


def test_eta_near_the_end_waits_for_the_slowest_running_item():
    tracker = ProgressTracker()
    tracker.apply(started(3, 3))
    for i, took in enumerate((1.0, 1.0)):
        tracker.apply(item_started(f"it-{i}", T0))
        tracker.apply(item_finished(f"it-{i}", T0 + took, elapsed=took))
    tracker.apply(item_started("it-2", T0 + 0.5))
    # Average attempt 1 s, it-2 has run 0.7 s: about 0.3 s left, not "0".
    assert tracker.eta(T0 + 1.2) == pytest.approx(0.3, abs=0.05)


def test_no_eta_before_anything_finished_and_zero_once_finished():
    tracker = ProgressTracker()
    tracker.apply(started(5, 2))
    tracker.apply(item_started("a", T0))
    assert tracker.eta(T0 + 1) is None and tracker.throughput(T0 + 1) is None
    tracker.apply(Event("batch_finished", "job", data={"status": "completed", "counts": {
        "pending": 0, "running": 0, "completed": 5, "failed": 0, "skipped": 0}, "cost_usd": 0, "duration": 2,
        "reason": None}, time=T0 + 2))
    assert tracker.eta(T0 + 3) == 0.0
    assert tracker.completed == 5 and not tracker.running


def test_a_stall_lowers_the_throughput():
    events, end = simulate(100, 4, lambda rng: 1.0)
    tracker = ProgressTracker()
    midway = T0 + 10
    feed_until(tracker, [e for e in events if e.kind != "item_started"], midway)
    steady = tracker.throughput(midway)
    assert tracker.throughput(midway + 30) < steady / 3


def test_counts_running_retrying_and_tokens_so_far():
    tracker = ProgressTracker()
    tracker.apply(started(6, 3, counts={"completed": 1, "skipped": 1, "pending": 4}, budget=2.0))
    tracker.apply(item_started("a", T0 + 1, project="rain", chapter=7))
    tracker.apply(item_started("b", T0 + 1))
    tracker.apply(item_finished("a", T0 + 2, state="retrying", tokens=(300, 20), cost=0.5))
    assert (tracker.completed, tracker.skipped, len(tracker.running), len(tracker.retrying)) == (1, 1, 1, 1)
    assert tracker.pending == 2  # 6 - 2 done - 1 running - 1 retrying
    tracker.apply(item_started("a", T0 + 3, attempt=2, project="rain", chapter=7))
    running = tracker.running["a"]
    assert (running.label, running.attempt, running.tokens) == ("rain/ch7", 2, 320)
    assert not tracker.retrying and tracker.retries == 1
    tracker.apply(item_finished("a", T0 + 4, state="failed", cost=0.25))
    tracker.apply(item_finished("b", T0 + 4))
    assert (tracker.completed, tracker.failed, tracker.pending, tracker.done) == (2, 1, 2, 4)
    assert tracker.cost_usd == pytest.approx(0.76) and tracker.budget_usd == 2.0
    assert tracker.fraction == pytest.approx(4 / 6)


def test_notify_and_escalate_are_kept_for_display():
    tracker = ProgressTracker()
    tracker.apply(started(1, 1))
    for i in range(5):
        tracker.apply(Event("notify", "job", data={"message": f"note {i}"}))
    tracker.apply(Event("escalate", "job", data={"message": "help"}))
    assert list(tracker.messages)[-1] == ("escalate", "help")
    assert len(tracker.messages) == 3


def test_eta_at_ten_percent_done_counts_what_is_in_flight():
    # 8 slots, items 0.5-1.5 s. At 10% done the first finishes were the short
    # ones and the batch has barely filled its slots: measured from the start,
    # the rate looks low and the ETA long (about +15% on average). Counting the
    # items in flight at their expected length removes that bias.
    errors = []
    for seed in range(6):
        events, end = simulate(200, 8, lambda rng: rng.uniform(0.5, 1.5), seed=seed)
        tracker = ProgressTracker()
        for event in events:
            tracker.apply(event)
            if event.kind == "item_finished" and tracker.done == 20:
                errors.append((tracker.eta(event.time) - (end - event.time)) / (end - event.time))
                break
    assert len(errors) == 6
    assert max(abs(e) for e in errors) <= 0.15, errors
    assert abs(sum(errors) / len(errors)) < 0.05, errors


def test_eta_is_the_same_for_the_same_events():
    events, end = simulate(100, 4, lambda rng: rng.uniform(0.5, 1.5), seed=3)
    now = T0 + (end - T0) / 2
    first, second = ProgressTracker(), ProgressTracker()
    feed_until(first, events, now)
    feed_until(second, events, now)
    assert first.eta(now) == second.eta(now) == first.eta(now)  # drawn with a fixed seed: no flicker



def simulate_retries(n: int, parallel: int, share: float, seed: int) -> tuple[list[Event], float]:
    """As ``simulate``, with each attempt (0.1-0.3 s) retried at ``share``
    after a 0.1 s delay, the slot free meanwhile, as the kernel does it."""
    rng = random.Random(seed)
    events = [started(n, parallel)]
    slots = [T0] * parallel
    ready = [(T0, i, 1) for i in range(n)]  # (ready at, item, attempt)
    heapq.heapify(ready)
    end = T0
    while ready:
        at, i, attempt = heapq.heappop(ready)
        slot = min(range(parallel), key=lambda k: slots[k])
        start = max(slots[slot], at)
        took = rng.uniform(0.1, 0.3)
        slots[slot] = start + took
        events.append(item_started(f"it-{i}", start, attempt=attempt))
        if rng.random() < share and attempt < 4:
            data = {"state": "retrying", "attempt": attempt, "model": "m", "elapsed": took, "input_tokens": 1,
                    "output_tokens": 1, "cost_usd": 0.0, "error_kind": "TIMEOUT", "error": "slow",
                    "retry_delay": 0.1}
            events.append(Event("item_finished", "job", f"it-{i}", data, time=start + took))
            heapq.heappush(ready, (start + took + 0.1, i, attempt + 1))
        else:
            events.append(item_finished(f"it-{i}", start + took, elapsed=took, attempt=attempt))
            end = max(end, start + took)
    events.sort(key=lambda e: (e.time, e.kind != "item_finished"))
    return events, end


def test_eta_in_batches_with_retries_is_not_biased_from_a_quarter_done():
    """Over 40 batches in which 15% of attempts are retried, the ETA's mean
    error stays within 15% of the truth at 25%, 50%, 75% and 90% done. One
    batch may end on an item retried twice that no estimate foresees; on
    average the estimate must not run short. The finished items are the short
    ones (a retried item finishes last), so once attempts have been retried
    the tail is drawn as attempts retried at the observed share (the
    estimator before that ran 19% short at 25% done here)."""
    errors: dict[float, list[float]] = {point: [] for point in (0.25, 0.5, 0.75, 0.9)}
    for seed in range(40):
        events, end = simulate_retries(200, 8, 0.15, seed)
        finishes = [e.time for e in events if e.kind == "item_finished" and e.data["state"] == "completed"]
        for point, found in errors.items():
            now = finishes[int(point * len(finishes)) - 1]
            tracker = ProgressTracker()
            feed_until(tracker, events, now)
            found.append((tracker.eta(now) - (end - now)) / (end - now))
    for point, found in errors.items():
        assert abs(sum(found) / len(found)) <= 0.15, (point, sum(found) / len(found))
