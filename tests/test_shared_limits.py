"""Rate limits and budgets shared by every worker of a PostgreSQL store
(issue 11): ``storyloom work`` processes together stay under one provider's
per-minute limit, enforced by the fake provider in one-second buckets, and
under one job's ``budget_usd``."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from storyloom.ratelimit import RateLimiter
from storyloom.sharedlimits import SharedRate
from storyloom.store import RateTake, StoreUnavailable
from storyloom.plugins.stores.sqlite import DB_NAME, SQLiteStore
from test_cli import cli, read_store

WORKERS = 4


# -- two limiters on one store, as two workers' would be (SQLite: fast, and the same code path)


@asynccontextmanager
async def two_workers(folder: Path, rpm: int = 600):
    """Two limiters of one model, each linked through its own connection to
    one SQLite store, and a nursery for their background writes."""
    stores = [SQLiteStore.open(folder), SQLiteStore.open(folder)]
    try:
        async with trio.open_nursery() as nursery:
            limiters = []
            for store in stores:
                limiter = RateLimiter(rpm, None)
                limiter.share(SharedRate(store, "m1", limiter, nursery.start_soon))
                limiters.append(limiter)
            yield nursery, limiters
    finally:
        for store in stores:
            store.close()


def test_two_workers_limiters_keep_one_rpm_between_them(tmp_path):
    # 600 RPM: a bucket of 10, 9 of them at once (0.1 s of headroom), then one
    # every 0.1 s. Eight requests each go at once alone; sixteen together
    # need (16 - 9) x 0.1 = 0.7 s.
    async def main():
        sent: list[float] = []
        async with two_workers(tmp_path) as (nursery, (a, b)):
            start = trio.current_time()

            async def send(limiter):
                await limiter.acquire(0)
                sent.append(trio.current_time() - start)

            for _ in range(8):
                nursery.start_soon(send, a)
                nursery.start_soon(send, b)
        sent.sort()
        assert sent[8] < 0.3  # the bucket's nine go at once, whichever worker sends them
        assert sent[-1] >= 0.65, sent  # then one per 0.1 s for both together
        gaps = [y - x for x, y in zip(sent[9:], sent[10:])]
        assert min(gaps) > 0.05, gaps

    trio.run(main)


def test_a_429_in_one_worker_cools_the_model_down_in_the_other(tmp_path):
    async def main():
        async with two_workers(tmp_path) as (_nursery, (a, b)):
            await b.acquire(0)
            a.exhausted(0.5)  # the server said: nothing left for 0.5 s
            assert a.cooling_until > trio.current_time()  # at once here
            await trio.sleep(0.05)  # the write, in the background
            t0 = trio.current_time()
            await b.acquire(0)
            assert trio.current_time() - t0 >= 0.4
            # b's mirror knows it now too: routing sees the cool-down there.
            assert b.cooling_until > t0

    trio.run(main)


def test_routing_reads_the_mirror_each_take_refreshes(tmp_path):
    async def main():
        async with two_workers(tmp_path, rpm=60) as (_nursery, (a, b)):  # a bucket of one
            await a.acquire(0)
            assert b.wait_time() == 0.0  # b has not heard yet
            with trio.move_on_after(0.2):
                await b.acquire(0)  # its take waits for a's request's second
            assert b.wait_time() > 0.5  # and now its mirror shows the queue
            assert b.requests_per_second() == 1.0

    trio.run(main)


def test_usage_reconciled_after_a_reply_rides_on_the_next_take(tmp_path):
    async def main():
        store = SQLiteStore.open(tmp_path)
        try:
            async with trio.open_nursery() as nursery:
                limiter = RateLimiter(None, 6000, refund_unused=True)  # 100 tokens a second
                limiter.share(SharedRate(store, "m1", limiter, nursery.start_soon))
                await limiter.acquire(50)
                before = (await store.rate_take(RateTake("m1"))).tokens_tat
                limiter.reconcile(50, 150)  # the reply used 100 tokens more than reserved
                assert limiter.shared.adjust == pytest.approx(1.0)  # 100 tokens: 1 s, not written yet
                assert (await store.rate_take(RateTake("m1"))).tokens_tat == before
                await limiter.acquire(0)  # the next take carries it
                assert limiter.shared.adjust == 0.0
                after = (await store.rate_take(RateTake("m1"))).tokens_tat
                assert after == pytest.approx(before + 1.0, abs=0.05)
                limiter.reconcile(150, 50)  # and a refund, for a provider that gives unused tokens back
                await limiter.acquire(0)  # (it waited for the overdrawn bucket: now is past `before`)
                refunded = await store.rate_take(RateTake("m1"))
                assert refunded.tokens_tat <= after - 0.5
                assert refunded.tokens_tat == pytest.approx(max(before, refunded.now), abs=0.05)
        finally:
            store.close()

    trio.run(main)


def test_a_take_the_store_refuses_stops_the_request(tmp_path):
    """No fallback to a limit of this process's own: the store's fault stops the worker (exit 5)."""
    async def main():
        store = SQLiteStore.open(tmp_path, busy_timeout=0)
        other = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
        try:
            async with trio.open_nursery() as nursery:
                limiter = RateLimiter(600, None)
                limiter.share(SharedRate(store, "m1", limiter, nursery.start_soon))
                other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
                with pytest.raises(StoreUnavailable, match="locked"):
                    await limiter.acquire(0)
                assert limiter.waiting == 0
                other.execute("ROLLBACK")
                await limiter.acquire(0)  # the store is back: so are the turns
        finally:
            other.close()
            store.close()

    trio.run(main)

# -- coalesced takes: one taker per model, the queue goes in the next take


def test_requests_that_wait_together_share_takes_and_keep_the_bucket(tmp_path):
    # 1,200 RPM: a bucket of 20 less 0.1 s of headroom, so a take asks for at
    # most 18. Thirty at once: 18 go at once, then one per 0.05 s, as thirty
    # takes of one each would send them, in a few takes.
    async def main():
        store = SQLiteStore.open(tmp_path)
        try:
            async with trio.open_nursery() as nursery:
                limiter = RateLimiter(1200, None)
                shared = SharedRate(store, "m1", limiter, nursery.start_soon)
                limiter.share(shared)
                start = trio.current_time()
                sent: list[float] = []

                async def send():
                    await limiter.acquire(0)
                    sent.append(trio.current_time() - start)

                for _ in range(30):
                    nursery.start_soon(send)
            assert shared.requests_taken == 30
            assert shared.trips <= 4, shared.trips  # 18 + 12
            sent.sort()
            assert sent[17] < 0.1, sent
            assert sent[-1] >= 0.59, sent  # (30 - 18) x 0.05 s: never early
            gaps = [y - x for x, y in zip(sent[18:], sent[19:])]
            assert min(gaps) > 0.035, gaps  # spread at the interval, not in bursts
            row = await store.rate_take(RateTake("m1"))  # the store counted all thirty: 1.5 s from the start
            assert row.requests_tat - row.now + (trio.current_time() - start) == pytest.approx(1.5, abs=0.05)
        finally:
            store.close()

    trio.run(main)


def test_a_batch_taken_during_a_cool_down_waits_for_its_end(tmp_path):
    # Spread back from the batch's send time, the earlier requests would fall
    # inside the cool-down: they are held to its end, not taken twice.
    async def main():
        async with two_workers(tmp_path, rpm=1200) as (nursery, (a, b)):
            a.exhausted(0.3)
            await trio.sleep(0.05)  # the cool-down's write, in the background
            start = trio.current_time()
            sent: list[float] = []

            async def send():
                await b.acquire(0)
                sent.append(trio.current_time() - start)

            async with trio.open_nursery() as inner:
                for _ in range(10):
                    inner.start_soon(send)
            assert min(sent) >= 0.2, sent
            assert b.shared.requests_taken == 10  # each taken once
            assert b.shared.trips <= 2, b.shared.trips

    trio.run(main)


def test_cancelled_requests_take_nothing_or_give_their_tokens_back(tmp_path):
    """A taker cancelled before its take, a request cancelled in the queue and
    one cancelled while waiting for its send time leave the taker usable.

    The two cancelled first are done before the one that is sent starts: a
    cancel reaches a waiting task only at the scheduler's next pass, so a
    request queued behind a live taker may yet be in its batch (then taken,
    its tokens refunded), which trio's random scheduling order would make
    this test's counts depend on."""
    async def main():
        store = SQLiteStore.open(tmp_path)
        try:
            async with trio.open_nursery() as nursery:
                limiter = RateLimiter(None, 6000)  # 100 tokens a second, 90 at once
                shared = SharedRate(store, "m1", limiter, nursery.start_soon)
                limiter.share(shared)
                done: list[str] = []

                async def send(name, tokens, cancelled):
                    with trio.CancelScope() as scope:
                        if cancelled:
                            scope.cancel()
                        await limiter.acquire(tokens)
                        done.append(name)

                async with trio.open_nursery() as inner:
                    inner.start_soon(send, "taker", 50, True)  # the first: the taker, cancelled at once
                    inner.start_soon(send, "queued", 50, True)
                    await trio.testing.wait_all_tasks_blocked()
                    inner.start_soon(send, "sent", 40, False)
                assert done == ["sent"] and shared.requests_taken == 1
                assert limiter.waiting == 0 and shared.untaken == (0, 0)
                tat = (await store.rate_take(RateTake("m1"))).tokens_tat
                with trio.move_on_after(0.1):
                    await limiter.acquire(90)  # taken: its turn is about 0.4 s away
                assert (await store.rate_take(RateTake("m1"))).tokens_tat == pytest.approx(tat + 0.9, abs=0.01)
                assert shared.adjust == pytest.approx(-0.9)  # never sent: refunded with the next take
                await limiter.acquire(0)
                after = await store.rate_take(RateTake("m1"))
                assert after.tokens_tat == pytest.approx(max(tat, after.now), abs=0.01)
                assert shared.requests_taken == 3
        finally:
            store.close()

    trio.run(main)


@pytest.mark.slow
def test_two_limiters_on_postgresql_coalesce_and_keep_one_rate(pg_url):
    # 1,200 RPM: a bucket of 20 (18 at once), then one per 50 ms for both
    # limiters together; 60 requests need at least (60 - 18) x 0.05 = 2.1 s.
    from storyloom.registry import collect
    from storyloom.pluginmanager import make_plugin_manager
    from storyloom.settings import Settings
    from storyloom.store import open_store_url

    async def main():
        stores = [await open_store_url(pg_url, stores=collect(make_plugin_manager()).stores, state_dir=".",
                                       settings=Settings(), create=True) for _ in range(2)]
        sent: list[float] = []
        try:
            async with trio.open_nursery() as nursery:
                limiters = []
                for store in stores:
                    limiter = RateLimiter(1200, None)
                    limiter.share(SharedRate(store, "m1", limiter, nursery.start_soon))
                    limiters.append(limiter)
                start = trio.current_time()

                async def send(limiter):
                    await limiter.acquire(0)
                    sent.append(trio.current_time() - start)

                for _ in range(30):
                    for limiter in limiters:
                        nursery.start_soon(send, limiter)
        finally:
            for store in stores:
                await store.aclose()
        trips = sum(limiter.shared.trips for limiter in limiters)
        assert sum(limiter.shared.requests_taken for limiter in limiters) == 60
        assert trips < 30, trips  # fewer round trips than requests
        sent.sort()
        assert sent[-1] >= 2.0, sent
        for i, t in enumerate(sent):  # any 0.5 s holds at most the bucket's 18 and 10 of refill
            assert sum(1 for u in sent[i:] if u < t + 0.5) <= 28, sent

    trio.run(main)


def run_workers(folder: Path, env: dict[str, str], n: int = WORKERS, timeout: float = 120) -> None:
    """``storyloom work --burst`` in ``n`` processes at once, until each is done."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STORYLOOM_")}
    environ.update(STORYLOOM_DISABLE_PLUGIN_AUTOLOAD="1", **env)
    procs = [subprocess.Popen([sys.executable, "-m", "storyloom.cli", "work", "--burst", "-q"], cwd=folder,
                              env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    try:
        for proc in procs:
            _out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err
            assert "Traceback" not in err, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@pytest.mark.slow
def test_four_workers_share_one_rpm_with_no_rate_limit_errors(tmp_path, pg_url, fake_provider):
    # 1,200 RPM is 20 a second in a bucket of 20: 200 requests need at least
    # (200 - 20) / 20 = 9 s. Four workers each keeping it alone drew 71% 429s.
    n, rpm = 200, 1200
    fake_provider.configure("m1", rpm=rpm, latency=0.05)
    (tmp_path / "storyloom.yaml").write_text(
        f"models:\n  m1: {{provider: openai, model: m1, base_url: '{fake_provider.base_url('openai')}', "
        f"api_key_env: {fake_provider.key_env('openai')}, rpm: {rpm}}}\n"
        "default_models: [m1]\nprogress: []\nreports: []\n"
        "retry_config: {max_retries: 3, retry_delay: {initial: 0.05s, max: 0.2s}}\n"
        f"store: '{pg_url}'\n")
    (tmp_path / "requests.jsonl").write_text("".join(json.dumps({
        "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"max_tokens": 32, "messages": [{"role": "user", "content": f"Line {i}: fix the grammar."}]}})
        + "\n" for i in range(n)))
    (tmp_path / "job.yaml").write_text("job_id: rpm\njob_type: prompts\ninput: requests.jsonl\n"
                                       "config: {max_parallel: 16}\n")
    out = cli("submit", "job.yaml", cwd=tmp_path, env=fake_provider.env())
    assert out.returncode == 0, out.stderr
    run_workers(tmp_path, fake_provider.env())
    stats = fake_provider.stats("m1")
    assert stats.ok == n
    counts = read_store(tmp_path, lambda store: store.counts("rpm"))
    assert counts["completed"] == n
    # At most 0.1% of the requests, rounded up: one in 200.
    assert stats.rate_limited <= 1, stats.rate_limited
    admitted = stats.admitted_at
    span = admitted[-1] - admitted[0]
    assert span >= (n - rpm / 60) / (rpm / 60) * 0.95  # kept by storyloom, not by luck
    for i, t in enumerate(admitted):  # any second holds at most a bucket and a second's refill
        assert sum(1 for u in admitted[i:] if u < t + 1.0) <= 2 * rpm / 60


@pytest.mark.slow
def test_three_workers_on_one_job_never_spend_past_its_budget(tmp_path, pg_url):
    # Each item reserves about $0.09 (its prompt and 200 output tokens) and
    # costs about $0.03. Each worker keeping the $0.50 alone would let the
    # three together spend up to three times it. Slow replies (1 s, two at a
    # time per worker) keep the job going until every worker has started.
    budget = 0.5
    (tmp_path / "storyloom.yaml").write_text(
        "models:\n  sim: {provider: simulated, latency_ms: 1000, output_tokens: 50, seed: 5,\n"
        "         price: {input: 100.0, output: 400.0}}\n"
        f"default_models: [sim]\nprogress: []\nreports: []\nstore: '{pg_url}'\n")
    (tmp_path / "job.yaml").write_text(
        f"job_id: b1\njob_type: qc_processing\nbudget_usd: {budget}\nconfig: {{max_parallel: 2, max_tokens: 200}}\n"
        "items:\n" + "".join(f"  - {{item_id: i{i}, title: Story {i}, genre: fantasy}}\n" for i in range(60)))
    out = cli("submit", "job.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    run_workers(tmp_path, {}, n=3)
    costs = read_store(tmp_path, lambda store: store.costs("b1"))
    counts = read_store(tmp_path, lambda store: store.counts("b1"))
    job = read_store(tmp_path, lambda store: store.get_job("b1"))
    assert job.state == "paused" and job.reason.startswith("budget reached"), (job.state, job.reason)
    assert 10 <= counts["completed"] < 60  # it ran, and the budget stopped it
    assert costs.unknown_usd == 0
    assert costs.cost_usd <= budget, (costs, counts)
    state = read_store(tmp_path, lambda store: store.budget_state("b1"))
    assert state.holds == 0 and state.reserved == 0  # nothing left held once the workers are gone
    assert state.spent == pytest.approx(costs.cost_usd)  # the store's count and the attempts agree
