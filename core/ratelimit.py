"""A per-model limiter that keeps requests under RPM and TPM before they are sent.

Each budget (requests, tokens) is a GCRA -- a token bucket kept as one
number, the "theoretical arrival time" (TAT). The bucket holds
``burst_seconds`` worth of the per-minute rate (one second's worth by
default, because providers enforce per-minute limits in about one-second
slices) and refills continuously at ``rate / 60`` per second.

A request that needs more than the bucket can ever hold is let through when
the bucket is full, and the overdraft is paid back before anyone else goes:
big requests never deadlock and the long-run rate still holds.

Two things keep a limiter set to the provider's own numbers from drawing
429s (``bench/ratelimit.py`` measures both):

* Requests reach the server later than they leave the limiter, and not all
  by the same amount: the first burst opens new connections (a handshake,
  a server thread), later requests reuse them. The server's bucket is then
  drained later than ours and is short when a fast request arrives. The
  limiter keeps ``headroom`` seconds of the bucket in hand (0.1 s: two
  requests of a 1,200 RPM burst), which absorbs that much jitter and never
  lowers the long-run rate.
* A provider may count ``max_tokens`` against TPM when a request arrives
  and give back nothing when the reply is shorter; so ``reconcile`` only
  charges (a prompt that turned out bigger than estimated) unless the
  limiter is built with ``refund_unused=True``, for a provider that does
  give the unused tokens back (its ``refunds_unused_tokens``).

Waiters are served first come, first served: one waiter at a time (the head)
watches the clock; the others queue behind it on a fair lock. Use one
limiter per model; the kernel holds them. ``clock`` must be trio's clock (or
read it): waiting uses :func:`trio.sleep_until`.

This is the limiter of one process. When the store can share limits, the
kernel links each limited model's limiter to it (:meth:`RateLimiter.share`,
:mod:`storyloom.sharedlimits`): then every request's turn comes from the
store, the same rules computed on the store's clock for every worker, and
this limiter's state is a mirror of the store's for routing.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import trio

__all__ = ["MAX_COOL_DOWN_S", "RateLimiter"]

#: Float sums of intervals drift; a nanosecond early is on time.
_EPSILON = 1e-9
#: Seconds of each bucket kept in hand for network jitter (see above).
DEFAULT_HEADROOM = 0.1
#: The longest a server's hint (``retry-after``, a reset header) may cool a
#: model down: a bad or hostile header cannot stop a model for good.
MAX_COOL_DOWN_S = 3600.0


class _Budget:
    """One GCRA: ``rate`` units a minute, holding at most ``capacity`` units."""

    def __init__(self, per_minute: float, burst_seconds: float, minimum: float, headroom: float = 0.0) -> None:
        self.interval = 60.0 / per_minute  # seconds per unit
        self.capacity = max(minimum, per_minute * burst_seconds / 60.0)
        self.headroom = headroom
        self.tat = -math.inf

    def ready_at(self, units: float, tat: float | None = None) -> float:
        """Earliest time ``units`` may go (capped at the capacity so that huge
        requests wait only for a full bucket), keeping ``headroom`` seconds of
        the bucket unused but never asking for more than a full bucket."""
        need = min(units, self.capacity)
        slack = max(0.0, (self.capacity - need) * self.interval - self.headroom)
        return (self.tat if tat is None else tat) - slack

    def take(self, units: float, now: float) -> None:
        self.tat = max(self.tat, now) + units * self.interval

    def adjust(self, units: float, now: float) -> None:
        """Charge (positive) or refund (negative) units already sent."""
        if units > 0:
            self.tat = max(self.tat, now) + units * self.interval
        elif self.tat > now:
            # A refund cannot make the bucket fuller than full.
            self.tat = max(now, self.tat + units * self.interval)


class RateLimiter:
    """Enforces one model's ``rpm`` and ``tpm`` (either may be None: no limit).

    ``await acquire(tokens)`` before each request with its estimated TPM
    cost; ``reconcile(reserved, actual)`` once usage is known; ``cool_down``
    after a 429; ``exhausted`` when the server says a budget has nothing left
    (it is the :class:`storyloom.provider.RateLimitFeedback` providers get).
    ``headroom`` (seconds of the bucket kept in hand) and ``refund_unused``
    are explained in the module's docstring.
    """

    def __init__(
        self,
        rpm: int | None,
        tpm: int | None,
        burst_seconds: float = 1.0,
        clock: Callable[[], float] = trio.current_time,
        *,
        headroom: float = DEFAULT_HEADROOM,
        refund_unused: bool = False,
    ) -> None:
        if burst_seconds <= 0:
            raise ValueError("burst_seconds must be positive")
        if headroom < 0:
            raise ValueError("headroom must not be negative")
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None")
        self.rpm, self.tpm, self.burst_seconds = rpm, tpm, burst_seconds
        self.refund_unused = refund_unused
        self._clock = clock
        self._requests = _Budget(rpm, burst_seconds, 1.0, headroom) if rpm else None
        self._tokens = _Budget(tpm, burst_seconds, 1.0, headroom) if tpm else None
        self._cool_until = -math.inf
        self._lock = trio.Lock()  # trio's Lock is fair: FIFO among waiters
        self._changed = trio.Event()
        self._queued_requests = 0
        self._queued_tokens = 0
        #: The store's side when limits are shared (:meth:`share`); None: this process alone.
        self.shared: Any = None

    def share(self, shared: Any) -> None:
        """Take turns from ``shared`` (a :class:`storyloom.sharedlimits.SharedRate`)
        from now on: the store's state decides, this limiter mirrors it."""
        self.shared = shared

    # -- sending ---------------------------------------------------------

    async def acquire(self, tokens: int) -> None:
        """Wait until one request of ``tokens`` fits both budgets, then take it.

        FIFO-fair; cancellation while waiting takes nothing.
        """
        tokens = max(0, int(tokens))
        if self.shared is not None:
            self._queued_requests += 1
            self._queued_tokens += tokens
            try:
                await self.shared.acquire(tokens)  # a (coalesced) store take, then the wait it gives
            finally:
                self._queued_requests -= 1
                self._queued_tokens -= tokens
            return
        if not self._queued_requests and self._ready_at(tokens) <= self._clock() + _EPSILON:
            self._take(tokens)  # nobody waiting and it fits: no need to queue
            return
        self._queued_requests += 1
        self._queued_tokens += tokens
        try:
            async with self._lock:
                while True:
                    now = self._clock()
                    ready = self._ready_at(tokens)
                    if ready <= now + _EPSILON:
                        break
                    changed = self._changed
                    with trio.move_on_at(ready):
                        await changed.wait()  # a refund or cool-down moves the goalposts
                self._take(tokens)
        finally:
            self._queued_requests -= 1
            self._queued_tokens -= tokens

    def _take(self, tokens: int) -> None:
        now = self._clock()
        if self._requests is not None:
            self._requests.take(1, now)
        if self._tokens is not None:
            self._tokens.take(tokens, now)

    def reconcile(self, reserved: int, actual: int) -> None:
        """Usage is known: charge ``actual - reserved`` tokens when positive; a
        negative difference is refunded only with ``refund_unused``."""
        if self._tokens is None or actual == reserved or (actual < reserved and not self.refund_unused):
            return
        self._tokens.adjust(actual - reserved, self._clock())
        if self.shared is not None:
            self.shared.charge(actual - reserved)  # rides on the next take
        self._wake()

    def cool_down(self, seconds: float) -> None:
        """Send nothing more through this limiter for ``seconds`` (from now).

        Only extends: a shorter cool-down never cuts a longer one short. At
        most :data:`MAX_COOL_DOWN_S`."""
        if seconds is None or seconds <= 0:
            return
        self._cool_until = max(self._cool_until, self._clock() + min(seconds, MAX_COOL_DOWN_S))
        if self.shared is not None:
            self.shared.cool_down(min(seconds, MAX_COOL_DOWN_S))  # every worker backs off
        self._wake()

    def exhausted(self, reset_in: float | None) -> None:
        """The server says a budget has nothing left until ``reset_in`` seconds
        from now: cool down until then. Told "none left" without a reset time
        (None), wait one burst slice."""
        self.cool_down(reset_in if reset_in is not None else self.burst_seconds)

    # -- routing ---------------------------------------------------------

    def next_free_at(self, tokens: int = 0) -> float:
        """When a request of ``tokens`` could go, on this limiter's clock, if it
        joined the queue now (counting the waiters ahead of it)."""
        return self._free_at(tokens, self._clock())

    def wait_after(self, tokens: int = 0, requests_ahead: int = 0, tokens_ahead: int = 0) -> float:
        """Seconds until a request of ``tokens`` could go if ``requests_ahead``
        more requests (``tokens_ahead`` tokens in all) went before it, besides
        the waiters queued in :meth:`acquire`; 0 when it could go now. Routing
        by drain time asks this with the attempts routed here and not queued yet."""
        now = self._clock()
        return self._free_at(tokens, now, max(0, requests_ahead), max(0, tokens_ahead)) - now

    def requests_per_second(self, tokens: int = 0) -> float:
        """The long-run rate of requests of ``tokens`` each that this limiter
        lets through: the binding one of RPM and TPM; ``inf`` without limits."""
        rate = math.inf
        if self.rpm:
            rate = self.rpm / 60.0
        if self.tpm and tokens > 0:
            rate = min(rate, self.tpm / 60.0 / tokens)
        return rate

    def wait_time(self, tokens: int = 0) -> float:
        """Seconds until a request of ``tokens`` could go; exactly 0 when it
        could go now (one clock reading, so an idle limiter never shows a
        sliver of wait to a router)."""
        now = self._clock()
        return self._free_at(tokens, now) - now

    def _free_at(self, tokens: int, now: float, more_requests: int = 0, more_tokens: int = 0) -> float:
        ready = self._cool_until
        # Shared: the taken waiters' turns are in the mirrored TATs; add the untaken.
        local_requests, local_tokens = self.shared.untaken if self.shared is not None else (
            self._queued_requests, self._queued_tokens)
        if self._requests is not None:
            ahead = self._requests.tat
            queued = local_requests + more_requests
            if queued:
                ahead = max(ahead, now) + queued * self._requests.interval
            ready = max(ready, self._requests.ready_at(1, ahead))
        if self._tokens is not None:
            ahead = self._tokens.tat
            queued = local_tokens + more_tokens
            if queued:
                ahead = max(ahead, now) + queued * self._tokens.interval
            ready = max(ready, self._tokens.ready_at(max(0, tokens), ahead))
        return max(ready, now)

    @property
    def cooling_until(self) -> float:
        """Until when (this limiter's clock) a cool-down holds; -inf if none."""
        return self._cool_until

    @property
    def waiting(self) -> int:
        """Requests queued in :meth:`acquire`."""
        return self._queued_requests

    @property
    def waiting_tokens(self) -> int:
        """The tokens of the requests queued in :meth:`acquire`."""
        return self._queued_tokens

    # -- internals -------------------------------------------------------

    def _ready_at(self, tokens: int) -> float:
        ready = self._cool_until
        if self._requests is not None:
            ready = max(ready, self._requests.ready_at(1))
        if self._tokens is not None:
            ready = max(ready, self._tokens.ready_at(tokens))
        return ready

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def __repr__(self) -> str:
        return (f"RateLimiter(rpm={self.rpm}, tpm={self.tpm}, burst_seconds={self.burst_seconds}, "
                f"refund_unused={self.refund_unused}{', shared' if self.shared is not None else ''})")
