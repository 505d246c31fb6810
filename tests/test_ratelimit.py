"""The per-model rate limiter, on trio's MockClock (no real sleeping)."""

from __future__ import annotations

import functools

import pytest
import trio
import trio.testing

from storyloom.ratelimit import RateLimiter


def mock_trio(fn):
    """Run an async test under trio with a clock that jumps whenever all tasks wait."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return trio.run(functools.partial(fn, *args, **kwargs), clock=trio.testing.MockClock(autojump_threshold=0))

    return wrapper


async def admissions(limiter: RateLimiter, tokens: int, seconds: float, workers: int = 20) -> list[float]:
    """Times at which requests of ``tokens`` got through during ``seconds``, with
    ``workers`` tasks acquiring as fast as they are let."""
    times: list[float] = []
    start = trio.current_time()

    async def worker():
        while True:
            await limiter.acquire(tokens)
            times.append(trio.current_time() - start)

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(worker)
    return sorted(t for t in times if t < seconds)


@mock_trio
async def test_requests_per_minute_hold_within_one_burst():
    limiter = RateLimiter(rpm=600, tpm=None)
    times = await admissions(limiter, 0, 60)
    burst = 600 / 60
    assert 600 <= len(times) <= 600 + burst


@mock_trio
async def test_tokens_per_minute_hold_within_one_burst():
    limiter = RateLimiter(rpm=None, tpm=60_000)
    times = await admissions(limiter, 100, 60)
    tokens = 100 * len(times)
    assert 60_000 - 100 <= tokens <= 60_000 + 60_000 / 60


@mock_trio
async def test_the_tighter_budget_wins():
    # 6000 rpm would allow 100 a second; 60_000 tpm at 1000 tokens allows 1.
    limiter = RateLimiter(rpm=6000, tpm=60_000)
    times = await admissions(limiter, 1000, 60)
    assert 59 <= len(times) <= 61


@pytest.mark.parametrize("burst_seconds,burst", [(1.0, 10), (0.5, 5), (2.0, 20)])
def test_the_burst_is_capped(burst_seconds, burst):
    @mock_trio
    async def check():
        limiter = RateLimiter(rpm=600, tpm=None, burst_seconds=burst_seconds, headroom=0)
        times = await admissions(limiter, 0, 10, workers=3 * burst)
        assert sum(1 for t in times if t == 0) == burst  # at once, then one per 0.1 s
        # Any window of one second sees at most the burst plus a second's refill.
        for i, t in enumerate(times):
            in_window = sum(1 for u in times[i:] if u < t + 1.0)
            assert in_window <= burst + 10 + 1
        gaps = [b - a for a, b in zip(times[burst:], times[burst + 1:])]
        assert min(gaps) == pytest.approx(0.1)

    check()


@mock_trio
async def test_a_low_rate_still_allows_one_request():
    limiter = RateLimiter(rpm=6, tpm=None)  # one every 10 s; the burst cannot be below one request
    times = await admissions(limiter, 0, 60, workers=3)
    assert times == pytest.approx([0, 10, 20, 30, 40, 50])


@mock_trio
async def test_cool_down_delays_only_that_limiter():
    slow, other = RateLimiter(rpm=600, tpm=None), RateLimiter(rpm=600, tpm=None)
    slow.cool_down(30)
    done = {}

    async def send(name, limiter):
        await limiter.acquire(1)
        done[name] = trio.current_time()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, "slow", slow)
        nursery.start_soon(send, "other", other)
    assert done["other"] == 0
    assert done["slow"] == pytest.approx(30)


@mock_trio
async def test_cool_down_while_waiting_moves_the_waiter():
    limiter = RateLimiter(rpm=60, tpm=None)
    await limiter.acquire(0)  # the next one may go at t=1
    done = []

    async def waiter():
        await limiter.acquire(0)
        done.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(0.5)
        limiter.cool_down(5)  # a 429 arrives while it waits
        limiter.cool_down(1)  # a shorter one does not cut it short
    assert done == [pytest.approx(5.5)]


@mock_trio
async def test_a_request_bigger_than_the_burst_goes_through():
    limiter = RateLimiter(rpm=None, tpm=6000, headroom=0)  # 100 tokens a second, bucket of 100
    with trio.fail_after(1):
        await limiter.acquire(10_000)  # a full bucket lets it through at once
    assert trio.current_time() == 0
    with trio.fail_after(200):
        await limiter.acquire(10)  # ... and the overdraft is paid back first
    assert trio.current_time() == pytest.approx((10_000 - 100 + 10) / 100)


@mock_trio
async def test_a_huge_request_waits_for_a_full_bucket_not_for_ever():
    limiter = RateLimiter(rpm=None, tpm=6000)
    await limiter.acquire(100)  # empties the bucket
    with trio.fail_after(10):
        await limiter.acquire(50_000)
    assert trio.current_time() == pytest.approx(1.0)  # refilled after one second


@mock_trio
async def test_waiters_are_served_first_come_first_served():
    limiter = RateLimiter(rpm=60, tpm=6000)
    await limiter.acquire(0)
    order = []

    async def send(name, tokens):
        await limiter.acquire(tokens)
        order.append(name)

    async with trio.open_nursery() as nursery:
        # A big request first: the small ones behind it must not overtake it.
        for name, tokens in (("big", 5000), ("a", 1), ("b", 1), ("c", 1)):
            nursery.start_soon(send, name, tokens)
            await trio.sleep(0.001)
    assert order == ["big", "a", "b", "c"]


@mock_trio
async def test_a_cancelled_waiter_takes_nothing():
    limiter = RateLimiter(rpm=60, tpm=None)
    await limiter.acquire(0)
    with trio.move_on_after(0.5):
        await limiter.acquire(0)  # gives up before its turn at t=1
    await limiter.acquire(0)
    assert trio.current_time() == pytest.approx(1.0)


@mock_trio
async def test_reconcile_refunds_and_charges():
    async def second_request_at(actual):
        limiter = RateLimiter(rpm=None, tpm=6000, headroom=0, refund_unused=True)  # 100 tokens a second
        start = trio.current_time()
        await limiter.acquire(1000)
        limiter.reconcile(1000, actual)
        await limiter.acquire(100)
        return trio.current_time() - start

    as_reserved = await second_request_at(1000)
    refunded = await second_request_at(200)
    charged = await second_request_at(3000)
    assert as_reserved == pytest.approx(10.0)  # (1000 - 100 + 100) / 100
    assert refunded == pytest.approx(2.0)
    assert charged == pytest.approx(30.0)


@mock_trio
async def test_a_refund_never_overfills_the_bucket():
    limiter = RateLimiter(rpm=None, tpm=6000, refund_unused=True)
    await limiter.acquire(100)
    await trio.sleep(60)
    limiter.reconcile(100, 0)  # long paid for already
    times = await admissions(limiter, 100, 2.5, workers=5)
    assert times == pytest.approx([0, 1, 2])


@mock_trio
async def test_a_refund_wakes_the_waiting_head():
    limiter = RateLimiter(rpm=None, tpm=6000, headroom=0, refund_unused=True)
    await limiter.acquire(1000)  # the next 100 would wait 10 s
    done = []

    async def waiter():
        await limiter.acquire(100)
        done.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(1)
        limiter.reconcile(1000, 100)  # the reply was short
    assert done == [pytest.approx(1.0)]


@mock_trio
async def test_by_default_reconcile_charges_but_never_refunds():
    # A provider that counts max_tokens when the request arrives and gives nothing back.
    async def second_request_at(actual):
        limiter = RateLimiter(rpm=None, tpm=6000, headroom=0)
        start = trio.current_time()
        await limiter.acquire(1000)
        limiter.reconcile(1000, actual)
        await limiter.acquire(100)
        return trio.current_time() - start

    assert await second_request_at(200) == pytest.approx(10.0)  # as reserved: no refund
    assert await second_request_at(3000) == pytest.approx(30.0)  # the extra is still charged


@mock_trio
async def test_headroom_trims_the_first_burst():
    limiter = RateLimiter(rpm=600, tpm=None)  # 10 a second; 0.1 s of headroom is one request
    times = await admissions(limiter, 0, 2, workers=30)
    assert sum(1 for t in times if t == 0) == 9
    assert times[9] == pytest.approx(0.1)


@mock_trio
async def test_headroom_keeps_the_long_run_rate():
    with_headroom = await admissions(RateLimiter(rpm=600, tpm=None), 0, 60)
    without = await admissions(RateLimiter(rpm=600, tpm=None, headroom=0), 0, 60)
    # The headroom is one request of the first burst; the last may fall either side of t=60.
    assert len(without) - 2 <= len(with_headroom) < len(without)
    gaps = [b - a for a, b in zip(with_headroom[10:], with_headroom[11:])]
    assert max(gaps) == pytest.approx(0.1)  # after the burst, one every 0.1 s as before


@mock_trio
async def test_headroom_never_holds_back_a_request_the_size_of_the_bucket():
    limiter = RateLimiter(rpm=6, tpm=None)  # a bucket of one request: nothing to keep in hand
    times = await admissions(limiter, 0, 35, workers=3)
    assert times == pytest.approx([0, 10, 20, 30])
    tokens = RateLimiter(rpm=None, tpm=6000)  # a bucket of 100 tokens
    await tokens.acquire(100)
    start = trio.current_time()
    await tokens.acquire(100)
    assert trio.current_time() - start == pytest.approx(1.0)


# The vendors' rate-limit headers are read by the providers (tests/test_providers.py);
# the limiter hears only "this budget is exhausted until N seconds from now".


@mock_trio
async def test_an_exhausted_budget_cools_down_until_its_reset():
    limiter = RateLimiter(rpm=6000, tpm=None)
    limiter.exhausted(90)
    assert limiter.next_free_at() == pytest.approx(90)
    limiter.exhausted(5)  # a shorter reset never cuts a longer one short
    assert limiter.next_free_at() == pytest.approx(90)
    await limiter.acquire(1)
    assert trio.current_time() == pytest.approx(90)


@mock_trio
async def test_exhausted_without_a_reset_waits_one_slice():
    assert RateLimiter(rpm=None, tpm=None).burst_seconds == 1.0
    limiter = RateLimiter(rpm=None, tpm=None)
    limiter.exhausted(None)
    assert limiter.next_free_at() == pytest.approx(1.0)
    half = RateLimiter(rpm=None, tpm=None, burst_seconds=0.5)
    half.exhausted(None)
    assert half.next_free_at() == pytest.approx(0.5)


def test_the_limiter_is_the_providers_rate_limit_feedback():
    from storyloom.provider import RateLimitFeedback

    assert isinstance(RateLimiter(rpm=None, tpm=None), RateLimitFeedback)


@mock_trio
async def test_next_free_at_for_routing():
    limiter = RateLimiter(rpm=60, tpm=None)
    assert limiter.next_free_at() == 0
    await limiter.acquire(0)
    assert limiter.next_free_at() == pytest.approx(1.0)
    limiter.cool_down(7)
    assert limiter.next_free_at() == pytest.approx(7.0)


async def _idle_waits() -> list[float]:
    limiter = RateLimiter(rpm=None, tpm=None)
    busy = RateLimiter(rpm=60, tpm=None)
    await busy.acquire(0)
    return [limiter.wait_time(500), RateLimiter(rpm=600, tpm=100_000).wait_time(500), busy.wait_time()]


def test_wait_time_is_exactly_zero_when_a_request_could_go_now():
    # On the real clock: next_free_at() - current_time() would show a sliver of wait.
    idle, roomy, busy = trio.run(_idle_waits)
    assert idle == 0.0 and roomy == 0.0
    assert 0.9 < busy <= 1.0


@mock_trio
async def test_next_free_at_counts_the_queue():
    limiter = RateLimiter(rpm=60, tpm=None)
    await limiter.acquire(0)
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(limiter.acquire, 0)
        await trio.sleep(0.1)
        assert limiter.waiting == 3
        assert limiter.next_free_at() == pytest.approx(4.0)  # after the three waiting
    assert limiter.waiting == 0


@mock_trio
async def test_no_limits_never_wait():
    limiter = RateLimiter(rpm=None, tpm=None)
    for _ in range(1000):
        await limiter.acquire(1_000_000)
    assert trio.current_time() == 0


def test_bad_arguments():
    with pytest.raises(ValueError):
        RateLimiter(rpm=0, tpm=None)
    with pytest.raises(ValueError):
        RateLimiter(rpm=10, tpm=None, burst_seconds=0)
    with pytest.raises(ValueError):
        RateLimiter(rpm=10, tpm=None, headroom=-1)


@pytest.mark.parametrize("seconds", [1e300, float("inf")])
def test_a_cool_down_is_capped(seconds):
    from storyloom.ratelimit import MAX_COOL_DOWN_S

    limiter = RateLimiter(rpm=60, tpm=None, clock=lambda: 0.0)
    limiter.cool_down(seconds)
    assert limiter.cooling_until == MAX_COOL_DOWN_S



# -- what routing by drain time reads ------------------------------------------


@pytest.mark.parametrize("rpm, tpm, tokens, rate", [
    (600, None, 500, 10.0),          # RPM binds: 10 a second
    (None, 60_000, 500, 2.0),        # TPM binds: 1,000 tokens a second over 500 a request
    (6000, 60_000, 1000, 1.0),       # both set: the tighter one
    (6000, 60_000, 0, 100.0),        # a request of no tokens: only RPM
    (None, None, 500, float("inf")),  # no limits
])
def test_requests_per_second_is_the_binding_budget(rpm, tpm, tokens, rate):
    assert RateLimiter(rpm=rpm, tpm=tpm).requests_per_second(tokens) == rate


def test_wait_after_adds_the_requests_ahead_over_the_rate():
    now = [100.0]
    limiter = RateLimiter(rpm=600, tpm=None, clock=lambda: now[0], headroom=0.0)
    # A full bucket of 10: ten may go now, the eleventh 0.1 s later.
    assert limiter.wait_after(0, 9) == 0.0
    assert limiter.wait_after(0, 10) == pytest.approx(0.1)
    assert limiter.wait_after(0, 24) == pytest.approx(1.5)
    for _ in range(10):
        limiter._take(0)
    assert limiter.wait_after(0) == pytest.approx(0.1)  # the bucket is empty now
    assert limiter.wait_after(0, 5) == pytest.approx(0.6)


def test_wait_after_counts_tokens_ahead_when_tpm_binds():
    now = [0.0]
    limiter = RateLimiter(rpm=None, tpm=6_000, clock=lambda: now[0], headroom=0.0)  # 100 tokens a second
    assert limiter.wait_after(100, 0, 0) == 0.0
    assert limiter.wait_after(100, 1, 100) == pytest.approx(1.0)  # a bucket of 100 is taken by the one ahead
    assert limiter.wait_after(100, 3, 300) == pytest.approx(3.0)


def test_wait_after_includes_a_cool_down():
    now = [0.0]
    limiter = RateLimiter(rpm=600, tpm=None, clock=lambda: now[0])
    limiter.cool_down(2.0)
    assert limiter.wait_after(0, 0) == pytest.approx(2.0)


@mock_trio
async def test_wait_after_is_when_a_request_queued_behind_that_many_goes():
    """The k-th of a crowd queued at once goes when wait_after(k) said: the
    drain time routing reads is the limiter's own schedule."""
    limiter = RateLimiter(rpm=1200, tpm=None, headroom=0.1)
    for _ in range(15):  # a half-drained bucket
        await limiter.acquire(0)
    start = trio.current_time()
    predicted = [limiter.wait_after(0, k) for k in range(40)]
    went: list[float] = []

    async def one(k: int, started: trio.Event) -> None:
        started.set()
        await limiter.acquire(0)
        went.append(trio.current_time() - start)

    async with trio.open_nursery() as nursery:
        for k in range(40):
            started = trio.Event()
            nursery.start_soon(one, k, started)
            await started.wait()  # join the queue in order
    assert went == pytest.approx(predicted, abs=1e-6)
