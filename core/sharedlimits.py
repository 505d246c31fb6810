"""Rate limits and budgets shared by every worker of a store.

A store that offers :class:`storyloom.store.SharedLimits` keeps each
limited model's GCRA state and each budgeted job's reservations in its
tables, so N workers on M machines stay under one provider limit and one
``budget_usd`` together (docs/scale-out.md, "Shared rate limits and budgets").

:class:`SharedRate` links one model's :class:`~storyloom.ratelimit.RateLimiter`
to the store: a ``rate_take`` (one store round trip) hands out send times on
the store's clock; the limiter sleeps until then. Takes are coalesced: while
one is in flight the requests that arrive queue, and the next take asks for
all of them at once, so a process makes at most one take per round trip,
however many requests a second it sends.
The limiter's own state becomes a local mirror, refreshed by each take, that
routing reads (``next_free_at``, ``wait_after``, ``requests_per_second``).
Usage reconciled after a reply rides on the next take; a 429's cool-down is
written at once, in the background, and holds every worker's next takes.

:class:`SharedBudget` is a job's ``budget_usd`` as a row of the store: the
same interface as :class:`~storyloom.budget.Budget`, each reservation one
conditional update, each settle one more.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

import trio

from .budget import reached_reason
from .store import BudgetState, RateTake, RateTaken, StoreUnavailable

if TYPE_CHECKING:
    from .ratelimit import RateLimiter, _Budget

__all__ = ["SharedBudget", "SharedRate", "BUDGET_POLL_S"]

#: A reservation that does not fit while other workers hold some asks again this often.
BUDGET_POLL_S = 0.25
_EPSILON = 1e-9


def _terms(budget: "_Budget | None", units: float) -> tuple[float, float]:
    """(cost, slack) in seconds of one GCRA for ``units``, as the local limiter computes them."""
    if budget is None:
        return 0.0, math.inf
    need = min(units, budget.capacity)
    slack = max(0.0, (budget.capacity - need) * budget.interval - budget.headroom)
    return units * budget.interval, slack


def _room(budget: "_Budget | None") -> float:
    """Units one take may ask for and send at once: a full bucket less its headroom."""
    return math.inf if budget is None else budget.capacity - budget.headroom / budget.interval


class _Turn:
    """One request waiting in :meth:`SharedRate.acquire`: its tokens, then
    what its batch's take gave it (its send time) or the take's error."""

    __slots__ = ("tokens", "send_at", "taken", "error")

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.send_at = 0.0  # on the store's clock
        self.taken: RateTaken | None = None
        self.error: BaseException | None = None


class SharedRate:
    """The store's side of one model's limiter. ``spawn`` starts a background
    task (the worker's nursery): a cool-down is written without waiting.

    Takes are coalesced: one request at a time takes from the store (the
    *taker*); the requests that queue meanwhile go in the next take, all at
    once (:meth:`_take`), so the store sees at most one take per round trip
    however fast requests come."""

    def __init__(self, store: Any, model: str, limiter: "RateLimiter",
                 spawn: Callable[..., Any]) -> None:
        self.store = store
        self.model = model
        self.limiter = limiter
        self._spawn = spawn
        #: Seconds to charge (+) or refund (-) on the tokens GCRA with the next take.
        self.adjust = 0.0
        self._seen = -math.inf  # store time of the newest take mirrored
        #: Store round trips made (takes and cool-downs), for benches and tests.
        self.trips = 0
        #: Requests taken (each request of a batch counts), for benches and tests.
        self.requests_taken = 0
        self._queue: deque[_Turn] = deque()  # FIFO: waiting for a take
        self._taking = False
        self._served = trio.Event()  # set when a take ends (served, failed or given up)

    @property
    def untaken(self) -> tuple[int, int]:
        """(requests, tokens) queued for the next take: not in the mirrored TATs yet."""
        return len(self._queue), sum(turn.tokens for turn in self._queue)

    async def acquire(self, tokens: int) -> None:
        """Take one request of ``tokens`` from the shared state and wait for its turn.

        A cool-down learnt while waiting (this worker's 429, or another's seen
        by a take) holds the request; it then takes again, after the cool-down.
        Cancelled before its take, a request takes nothing; cancelled after,
        its tokens are refunded with the next take (its request stays taken:
        a take cannot give one back)."""
        limiter = self.limiter
        while True:
            turn = _Turn(tokens)
            self._queue.append(turn)
            try:
                while turn.taken is None and turn.error is None:
                    if self._taking:
                        await self._served.wait()
                    else:
                        await self._take()
            except BaseException:
                if turn.taken is None:
                    try:
                        self._queue.remove(turn)
                    except ValueError:
                        pass  # in a take that failed: nothing was taken
                else:
                    self._refund(turn)
                raise
            if turn.error is not None:
                raise turn.error
            taken = turn.taken
            # Store time + offset = this process's trio time, as if the store
            # read its clock as the answer arrived: late, never early, so a
            # request never leaves before its turn on the store's clock.
            offset = limiter._clock() - taken.now
            self._mirror(taken, offset)
            try:
                await trio.sleep_until(turn.send_at + offset)
            except BaseException:
                self._refund(turn)
                raise
            if limiter.cooling_until <= limiter._clock() + _EPSILON:
                return
            await trio.sleep_until(limiter.cooling_until)

    def _refund(self, turn: _Turn) -> None:
        self.charge(-turn.tokens)

    async def _take(self) -> None:
        """Be the taker: one take for the head of the queue (at most a bucket
        less its headroom), then wake every waiter."""
        limiter = self.limiter
        self._taking = True
        batch: list[_Turn] = []
        adjust = 0.0
        try:
            await trio.lowlevel.checkpoint()  # requests ready now join this take
            batch = self._batch()
            count = len(batch)
            total = sum(turn.tokens for turn in batch)
            request_cost, request_slack = _terms(limiter._requests, count)
            token_cost, token_slack = _terms(limiter._tokens, total)
            adjust, self.adjust = self.adjust, 0.0
            take = RateTake(self.model, request_cost, request_slack, token_cost, token_slack, adjust)
            try:
                taken = await self.store.rate_take(take)
            except BaseException as exc:
                self.adjust += adjust  # not applied: the next take carries it
                if isinstance(exc, Exception):
                    for turn in batch:
                        turn.error = exc
                else:  # cancelled before the store was asked: the others take again
                    self._queue.extendleft(reversed(batch))
                raise
            self.trips += 1
            self.requests_taken += count
            self._spread(batch, taken)
        finally:
            self._taking = False
            self._served.set()
            self._served = trio.Event()

    def _batch(self) -> list[_Turn]:
        """The head of the queue that one take may ask for: never more than
        a bucket holds less its headroom (so the batch may go at once at its
        send time), and always at least one request."""
        room_requests, room_tokens = _room(self.limiter._requests), _room(self.limiter._tokens)
        batch = [self._queue.popleft()]
        count, total = 1, batch[0].tokens
        while self._queue and count + 1 <= room_requests and total + self._queue[0].tokens <= room_tokens:
            turn = self._queue.popleft()
            batch.append(turn)
            count += 1
            total += turn.tokens
        return batch

    def _spread(self, batch: list[_Turn], taken: RateTaken) -> None:
        """Each request's send time: the last goes at the batch's, each earlier
        one earlier by the cost of the requests after it (the binding one of
        the two GCRAs), never before the store's now or cool-down end: the
        times one take each would have given, in a bucket that held the batch."""
        requests, tokens = self.limiter._requests, self.limiter._tokens
        floor = max(taken.now, taken.cool_until)
        after_requests = 0.0  # seconds of requests GCRA after this turn's
        after_tokens = 0.0
        for turn in reversed(batch):
            ahead = math.inf
            if requests is not None:
                ahead = after_requests
                after_requests += requests.interval
            if tokens is not None:
                ahead = min(ahead, after_tokens)
                after_tokens += turn.tokens * tokens.interval
            turn.send_at = taken.send_at if ahead == math.inf else max(floor, taken.send_at - ahead)
            turn.taken = taken

    def _mirror(self, taken: RateTaken, offset: float) -> None:
        limiter = self.limiter
        limiter._cool_until = max(limiter._cool_until, taken.cool_until + offset)
        if taken.now < self._seen:  # an older take answered after a newer one
            return
        self._seen = taken.now
        if limiter._requests is not None:
            limiter._requests.tat = taken.requests_tat + offset
        if limiter._tokens is not None:
            limiter._tokens.tat = taken.tokens_tat + offset

    def charge(self, units: float) -> None:
        """Tokens to charge (positive) or refund (negative) with the next take."""
        if self.limiter._tokens is not None:
            self.adjust += units * self.limiter._tokens.interval

    def cool_down(self, seconds: float) -> None:
        """Write a cool-down to the store, in the background: every worker's next take waits for it."""
        self._spawn(self._write_cool_down, seconds)

    async def _write_cool_down(self, seconds: float) -> None:
        try:
            await self.store.rate_cool_down(self.model, seconds)
            self.trips += 1
        except StoreUnavailable:
            pass  # the next take or write meets it too, and stops the worker there

    def __repr__(self) -> str:
        return f"SharedRate({self.model!r}, {self.store.location!r})"


class SharedBudget:
    """A job's ``budget_usd`` kept in the store, for every worker of the job.

    The interface of :class:`storyloom.budget.Budget` (``reserve``,
    ``asettle``, ``reached``); ``spent``, ``reserved`` and ``holders`` are a
    mirror of the store's row as last read (every worker's), for messages.
    Make it with :meth:`open`."""

    def __init__(self, store: Any, job_id: str, limit: float, owner: str, unknown: float = 0.0) -> None:
        self.store = store
        self.job_id = job_id
        self.limit = limit
        self.owner = owner
        self.unknown = unknown
        self.spent = 0.0
        self.reserved = 0.0
        self.holders = 0
        #: This worker's holds by amount: holds of one amount are alike.
        self._holds: dict[float, list[int]] = {}
        self._changed = trio.Event()

    @classmethod
    async def open(cls, store: Any, job_id: str, limit: float, owner: str, spent: float,
                   unknown: float = 0.0) -> "SharedBudget":
        """The job's shared budget, its row made (starting at ``spent``, the
        stored attempts' cost with ``unknown`` in it) if no worker made it yet."""
        budget = cls(store, job_id, limit, owner, unknown)
        budget._mirror(await store.budget_open(job_id, limit, spent))
        return budget

    def _mirror(self, state: BudgetState) -> None:
        self.spent, self.reserved, self.holders = state.spent, state.reserved, state.holds

    async def reserve(self, amount: float) -> bool:
        """Reserve ``amount`` in the store; while it does not fit and some
        worker holds a reservation, wait for settles (this worker's, or
        polled). False once nothing is held anywhere and it still does not fit."""
        while True:
            hold = await self.store.budget_reserve(self.job_id, self.owner, amount)
            if hold is not None:
                self._holds.setdefault(amount, []).append(hold)
                return True
            state = await self.store.budget_state(self.job_id)
            if state is None:  # deleted under us: nothing can be reserved
                return False
            self._mirror(state)
            if not state.holds:
                return False
            changed = self._changed
            with trio.move_on_after(BUDGET_POLL_S):
                await changed.wait()

    async def asettle(self, reserved: float, actual: float) -> None:
        """End one reservation of ``reserved``, charging ``actual``."""
        holds = self._holds.get(reserved)
        if not holds:
            raise ValueError(f"no reservation of {reserved!r} to settle")
        hold = holds.pop()
        if not holds:
            del self._holds[reserved]
        try:
            await self.store.budget_settle(hold, actual)
        finally:
            self._changed.set()
            self._changed = trio.Event()

    def reached(self, needed: float) -> str:
        """Why an attempt needing ``needed`` cannot start: the pause reason (every worker's spend)."""
        return reached_reason(self.spent, self.limit, self.unknown, self.reserved, self.holders, needed)
