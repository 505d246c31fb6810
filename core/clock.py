"""Wall-clock time as the kernel schedules by it: real time, unless trio runs
on another clock.

Retry delays (``not_before``), claims and attempt times are wall-clock
seconds, because the store shares them between processes. Under trio's
default clock :func:`wall` is :func:`time.time`. Under any other clock (a test's
``trio.testing.MockClock(autojump_threshold=0)``) it is the wall time when
that clock was first read plus the clock's own progress since, so a retry
delay or a simulated latency of minutes passes the moment nothing else can
run, and the store's schedule moves with it.
"""

from __future__ import annotations

import time
import weakref

import trio

__all__ = ["wall"]

#: clock -> wall time minus its reading when first seen.
_anchors: "weakref.WeakKeyDictionary[trio.abc.Clock, float]" = weakref.WeakKeyDictionary()


def wall() -> float:
    """Seconds since the epoch, following the current trio run's clock (see the module)."""
    try:
        clock = trio.lowlevel.current_clock()
    except RuntimeError:  # not inside trio
        return time.time()
    if type(clock).__module__.startswith("trio._core"):  # trio's SystemClock: real time already
        return time.time()
    now = clock.current_time()
    anchor = _anchors.get(clock)
    if anchor is None:
        anchor = _anchors[clock] = time.time() - now
    return anchor + now
