"""Conformance, part three: rate limits and budgets shared by every worker of
a store (:class:`storyloom.store.SharedLimits`). Collected by
``tests/test_store.py`` once per backend, like the rest of the suite."""

from __future__ import annotations

import math
from typing import Any

import trio

from storyloom.store import RateTake, WorkerInfo, shares_limits
from store_conformance import conformance_test, JOB, NOW, OTHER, OWNER, add

__all__: list[str] = []

#: Float sums of seconds since 1970.
EPS = 1e-6
#: Readings of the store's clock in one take differ by microseconds
#: (PostgreSQL reads it per expression, after the row lock), each later than
#: the one before: a TAT may be that much later than its send time plus cost.
NOW_EPS = 0.01


_test = conformance_test(__all__)  # as store_conformance.trio_test, listed in this module's __all__


async def shares_after_migration(store: Any, job_id: str) -> None:
    """A migrated store's stored job gets a budget, its models rate rows (the migration tests use it)."""
    await store.heartbeat(WorkerInfo(OWNER, "h", 1, NOW, 30.0))
    assert (await store.budget_open(job_id, 1.0, 0.5)).spent == 0.5
    assert await store.budget_reserve(job_id, OWNER, 0.5) is not None
    assert await store.budget_reserve(job_id, OWNER, 0.01) is None
    taken = await store.rate_take(RateTake("m1", request_cost=1.0))
    assert abs(taken.send_at - taken.now) < NOW_EPS


# -- rate limits


@_test
async def test_the_bundled_backends_share_limits(store):
    assert shares_limits(store)


@_test
async def test_a_take_waits_for_the_requests_gcra(store):
    # 6 RPM with a bucket of one: each request adds 10 s, none may go early.
    first = await store.rate_take(RateTake("m1", request_cost=10.0, request_slack=0.0))
    assert abs(first.send_at - first.now) < NOW_EPS  # a new model's bucket is full
    assert 0 <= first.requests_tat - (first.send_at + 10.0) < NOW_EPS
    then = await store.rate_take(RateTake("m1", request_cost=10.0, request_slack=0.0))
    assert abs(then.send_at - first.requests_tat) < EPS  # right behind the first
    assert 9.0 < then.send_at - then.now <= 10.0 + NOW_EPS
    assert abs(then.requests_tat - (first.requests_tat + 10.0)) < EPS
    # Slack lets a request go that far ahead of the TAT: a bucket of several.
    burst = await store.rate_take(RateTake("m1", request_cost=10.0, request_slack=25.0))
    assert abs(burst.send_at - max(burst.now, then.requests_tat - 25.0)) < NOW_EPS, (burst, then)
    # Models are apart.
    other = await store.rate_take(RateTake("m2", request_cost=10.0, request_slack=0.0))
    assert abs(other.send_at - other.now) < NOW_EPS


@_test
async def test_a_take_sends_when_both_gcras_allow_it(store):
    await store.rate_take(RateTake("m1", request_cost=1.0, request_slack=0.0, token_cost=30.0, token_slack=0.0))
    taken = await store.rate_take(RateTake("m1", request_cost=1.0, request_slack=0.0, token_cost=30.0,
                                           token_slack=5.0))
    # The tokens bind (TAT now + 30, less 5 of slack), not the requests (now + 1).
    assert 24.0 < taken.send_at - taken.now <= 25.0
    assert abs(taken.requests_tat - (taken.send_at + 1.0)) < EPS
    assert abs(taken.tokens_tat - (taken.send_at + 5.0 + 30.0)) < NOW_EPS  # max(TAT, send_at) + cost


@_test
async def test_a_take_applies_charges_and_refunds_first(store):
    first = await store.rate_take(RateTake("m1", token_cost=20.0, token_slack=0.0))
    charged = await store.rate_take(RateTake("m1", token_slack=0.0, token_adjust=5.0))  # usage came out bigger
    assert abs(charged.tokens_tat - (first.tokens_tat + 5.0)) < EPS
    assert abs(charged.send_at - charged.tokens_tat) < EPS  # no slack: it waits for the whole bucket
    refunded = await store.rate_take(RateTake("m1", token_slack=0.0, token_adjust=-100.0))  # more than is owed
    # A refund never makes the bucket fuller than full: the TAT stops at now.
    assert abs(refunded.tokens_tat - refunded.now) < NOW_EPS
    assert abs(refunded.send_at - refunded.now) < NOW_EPS


@_test
async def test_a_cool_down_holds_every_take_and_only_ever_extends(store):
    before = await store.rate_take(RateTake("m1", request_cost=0.05, request_slack=0.0))
    until = await store.rate_cool_down("m1", 30.0)
    assert 29.0 < until - before.now < 31.0
    assert await store.rate_cool_down("m1", 1.0) == until  # a shorter one cuts nothing short
    taken = await store.rate_take(RateTake("m1", request_cost=0.05, request_slack=1.0))
    assert abs(taken.send_at - until) < EPS and taken.cool_until == until
    later = await store.rate_cool_down("fresh", 2.0)  # a model's first word may be a 429
    taken = await store.rate_take(RateTake("fresh"))
    assert abs(taken.send_at - later) < EPS


@_test
async def test_two_workers_taking_at_once_share_one_schedule(store, backend):
    other = await backend.open()
    sends: list[float] = []

    async def taker(s) -> None:
        for _ in range(15):
            sends.append((await s.rate_take(RateTake("m1", request_cost=1.0, request_slack=0.0))).send_at)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(taker, store)
            nursery.start_soon(taker, other)
    finally:
        await other.aclose()
    sends.sort()
    # One second apart, whoever took them: no two workers got the same slot.
    gaps = [b - a for a, b in zip(sends, sends[1:])]
    assert len(sends) == 30 and min(gaps) > 1.0 - EPS, gaps  # a gap is never short


# -- budgets


async def live(store, owner: str = OWNER) -> None:
    await store.heartbeat(WorkerInfo(owner, "host", 1, NOW, 30.0))


@_test
async def test_a_budget_reserves_only_what_fits_and_settles_to_spent(store):
    await add(store, "a")
    await live(store)
    state = await store.budget_open(JOB, 1.0, 0.25)
    assert (state.cap, state.spent, state.reserved, state.holds) == (1.0, 0.25, 0.0, 0)
    one = await store.budget_reserve(JOB, OWNER, 0.5)
    assert one is not None
    assert await store.budget_reserve(JOB, OWNER, 0.5) is None  # 0.25 + 0.5 + 0.5 > 1
    two = await store.budget_reserve(JOB, OWNER, 0.25)  # exactly at the cap fits
    assert two is not None and two != one
    state = await store.budget_state(JOB)
    assert (state.spent, state.reserved, state.holds) == (0.25, 0.75, 2)
    assert await store.budget_settle(one, 0.125) is True
    assert await store.budget_settle(one, 0.125) is False  # settled once only
    state = await store.budget_state(JOB)
    assert (state.spent, state.reserved, state.holds) == (0.375, 0.25, 1)
    # Reopened (a resume, another worker): spent and holds stay, the cap is the new one.
    state = await store.budget_open(JOB, 2.0, 0.0)
    assert (state.cap, state.spent, state.reserved, state.holds) == (2.0, 0.375, 0.25, 1)
    # Float residue does not outlive the holds: 0.1 + 0.2 - 0.1 - 0.2 is not 0 in floats.
    small = [await store.budget_reserve(JOB, OWNER, x) for x in (0.1, 0.2)]
    for hold in [*small, two]:
        await store.budget_settle(hold, 0.0)
    assert (await store.budget_state(JOB)).reserved == 0.0
    assert await store.budget_state("nope") is None
    try:
        await store.budget_reserve("nope", OWNER, 0.1)
    except KeyError:
        pass
    else:
        raise AssertionError("a job with no budget row reserved")


@_test
async def test_a_dead_workers_holds_become_spent_and_its_late_settle_changes_nothing(store):
    await add(store, "a")
    await live(store, OWNER)
    await live(store, OTHER)
    await store.budget_open(JOB, 10.0, 0.0)
    mine = await store.budget_reserve(JOB, OWNER, 1.0)
    theirs = [await store.budget_reserve(JOB, OTHER, 2.0) for _ in range(2)]
    await store.reap()  # both alive: nothing moves
    assert (await store.budget_state(JOB)).reserved == 5.0
    await store.heartbeat(WorkerInfo(OTHER, "host", 2, NOW, -1.0))  # its heartbeat is now out of date
    await store.reap()
    state = await store.budget_state(JOB)
    assert (state.spent, state.reserved, state.holds) == (4.0, 1.0, 1)  # worst case, whole
    assert await store.budget_settle(theirs[0], 0.5) is False
    assert (await store.budget_state(JOB)).spent == 4.0  # not counted twice
    # A worker that leaves cleanly leaves no hold behind either.
    await store.forget_worker(OWNER)
    state = await store.budget_state(JOB)
    assert (state.spent, state.reserved, state.holds) == (5.0, 0.0, 0)
    assert mine is not None and await store.budget_settle(mine, 0.1) is False


@_test
async def test_two_workers_reserving_at_once_never_pass_the_cap(store, backend):
    await add(store, "a")
    await live(store, OWNER)
    await live(store, OTHER)
    await store.budget_open(JOB, 25.0, 0.0)
    other = await backend.open()
    got: list[int | None] = []

    async def reserver(s, owner: str) -> None:
        for _ in range(20):
            got.append(await s.budget_reserve(JOB, owner, 1.0))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reserver, store, OWNER)
            nursery.start_soon(reserver, other, OTHER)
    finally:
        await other.aclose()
    assert sum(h is not None for h in got) == 25
    state = await store.budget_state(JOB)
    assert (state.reserved, state.holds) == (25.0, 25)


@_test
async def test_deleting_a_job_deletes_its_budget(store):
    await add(store, "a")
    await live(store)
    await store.budget_open(JOB, 1.0, 0.0)
    await store.budget_reserve(JOB, OWNER, 0.5)
    assert await store.delete_job(JOB)
    assert await store.budget_state(JOB) is None
    await add(store, "a")
    state = await store.budget_open(JOB, 1.0, 0.0)
    assert (state.spent, state.reserved, state.holds) == (0.0, 0.0, 0)
    assert not math.isnan(state.cap)
