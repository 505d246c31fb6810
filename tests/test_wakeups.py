"""Wake-ups: on PostgreSQL a submit, pause or cancel reaches waiting workers
and running jobs at once (LISTEN/NOTIFY), not at their next poll; with
``listen=off`` (PgBouncer in transaction mode) polling still does it; SQLite
polls. Every worker here polls once an hour, so only a wake-up can explain
a prompt reaction."""

from __future__ import annotations

import time

import psycopg
import pytest
import trio

from storyloom import UsageError
from storyloom.api import cancel_job, pause_job, run_job, submit_job, work
from storyloom.plugins.stores.pg_listen import channel
from storyloom.plugins.stores.postgresql import open_postgres, parse_url
from storyloom.store import JobRow, NewItem

SETTINGS = """
models:
  sim: {{provider: simulated, latency_ms: {latency}, output_tokens: 5, seed: 3, price: {{input: 1.0, output: 1.0}}}}
default_models: [sim]
progress: []
reports: []
queue: {{poll: {poll}}}
"""
JOB = """
job_id: {job_id}
job_type: qc_processing
config: {{max_parallel: 1, max_retries: 0, timeout_per_item: 10m}}
items:
{items}
"""
def OFF(url: str) -> str:
    """``url`` with LISTEN turned off."""
    return url + "&listen=off"


#: Far sooner than the poll (1h); room for a loaded machine.
PROMPTLY_S = 10.0


def job(job_id: str, n: int) -> str:
    return JOB.format(job_id=job_id, items="".join(f"  - {{item_id: i{k}}}\n" for k in range(n)))


def listeners(url: str, since: float) -> int:
    """LISTEN connections on the store's channel opened since ``since`` (epoch seconds)."""
    target = parse_url(url)
    with psycopg.connect(target.conninfo, autocommit=True) as conn:
        (n,) = conn.execute(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE query = %s AND backend_start >= to_timestamp(%s)",
            (f'LISTEN "{channel(target.schema)}"', since)).fetchone()
    return n


async def wait_until(check, what: str, timeout: float = PROMPTLY_S) -> float:
    """Seconds until ``check()`` is true; fails after ``timeout``."""
    start = time.monotonic()
    with trio.move_on_after(timeout):
        while not await check():
            await trio.sleep(0.02)
        return time.monotonic() - start
    raise AssertionError(f"no {what} within {timeout}s")


def test_listen_is_on_or_off_in_the_store_url():
    assert parse_url("postgresql://loom@db/storyloom").listen is True
    target = parse_url("postgresql://loom@db/storyloom?listen=off&sslmode=require")
    assert target.listen is False and "listen" not in target.conninfo  # ours, not libpq's
    with pytest.raises(UsageError, match="listen must be on or off, not 'maybe'"):
        parse_url("postgresql://loom@db/storyloom?listen=maybe")


def test_wait_for_change_wakes_on_submit_pause_and_cancel_not_otherwise(pg_url):
    async def main():
        def opened(url):
            return open_postgres(url, state_dir=None, settings=None, create=True)

        since = time.time() - 0.5  # not a listener of an earlier test, closing
        waiter, other, off = await opened(pg_url), await opened(pg_url), await opened(OFF(pg_url))
        try:
            assert await waiter.wait_for_change(0.05) is False  # nothing happened: the timeout
            assert await off.wait_for_change(0.05) is False
            with trio.fail_after(30):  # a thread and a connection: slow on a loaded machine
                while not listeners(pg_url, since):  # the first wait started the listener
                    await trio.sleep(0.02)
            now = time.time()
            await other.add_job(JobRow("w", "qc_processing", "pending", {}, now, now), [NewItem("a", 2, "pending", {})])
            assert await waiter.wait_for_change(PROMPTLY_S) is True
            await other.set_job_state("w", "paused", "by hand")
            assert await waiter.wait_for_change(PROMPTLY_S) is True
            await other.set_job_state("w", "paused", "again")  # no change of hold: no notice
            assert await waiter.wait_for_change(0.3) is False
            await other.cancel("w", "by hand")
            assert await waiter.wait_for_change(PROMPTLY_S) is True
            # listen=off: it only sleeps, notices or not.
            started = time.monotonic()
            assert await off.wait_for_change(0.3) is False and time.monotonic() - started >= 0.29
        finally:
            for store in (waiter, other, off):
                await store.aclose()

    trio.run(main)


def test_an_idle_worker_takes_a_submitted_job_at_once(loom, pg_url):
    loom.store_url = pg_url
    loom.write("storyloom.yaml", SETTINGS.format(latency=1, poll="1h"))
    options = loom.options(settings_file=str(loom.path / "storyloom.yaml"))
    path = loom.write("job.yaml", job("now", 3))
    since = time.time() - 1  # the database clock may be a little behind ours

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: work(burst=False, options=options))
            await wait_until(lambda: _async(listeners, pg_url, since), "LISTEN connection", timeout=30)
            await trio.sleep(0.2)  # the worker's first look found nothing: it waits
            await submit_job(path, options=options)

            async def done() -> bool:
                async with loom.store() as store:
                    return (await store.counts("now"))["completed"] == 3

            await wait_until(done, "completion of the submitted job")
            nursery.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.parametrize("stop", [pytest.param("pause", marks=pytest.mark.slow), "cancel"])
def test_a_pause_or_cancel_from_elsewhere_reaches_a_running_job_at_once(loom, pg_url, stop):
    """Two items, one at a time, each about a second (a cancel: minutes). A pause while
    the first runs ends the run once it is in, the second untouched; a cancel
    cancels the first at once. Polling hourly, the run would not notice."""
    loom.store_url = pg_url
    loom.write("storyloom.yaml", SETTINGS.format(latency=1200 if stop == "pause" else 600_000, poll="1h"))
    options = loom.options(settings_file=str(loom.path / "storyloom.yaml"))
    path = loom.write("job.yaml", job("s", 2))
    ended: dict = {}

    async def main():
        async with trio.open_nursery() as nursery:
            async def run():
                ended["summary"] = await run_job(path, options=options)
                ended["at"] = time.monotonic()

            nursery.start_soon(run)

            async def sent() -> bool:
                try:
                    async with loom.store() as store:
                        return any(row.model for row in await store.running("s"))
                except Exception:  # not stored yet
                    return False

            await wait_until(sent, "first request", timeout=30)
            asked = time.monotonic()
            await (pause_job if stop == "pause" else cancel_job)("s", options=options)
            with trio.fail_after(PROMPTLY_S + 5):
                while "summary" not in ended:
                    await trio.sleep(0.02)
            assert ended["at"] - asked < PROMPTLY_S

    trio.run(main)
    summary = ended["summary"]
    counts = loom.read(lambda store: store.counts("s"))
    if stop == "pause":
        assert summary.status == "paused" and counts["completed"] == 1 and counts["pending"] == 1
    else:
        assert summary.status == "cancelled" and counts["skipped"] == 2


@pytest.mark.parametrize("backend", ["sqlite", "postgresql listen=off"])
def test_without_wake_ups_a_worker_still_finds_work_by_polling(loom, pg_url, backend):
    if backend != "sqlite":
        loom.store_url = OFF(pg_url)
    loom.write("storyloom.yaml", SETTINGS.format(latency=1, poll="300ms"))
    options = loom.options(settings_file=str(loom.path / "storyloom.yaml"))
    path = loom.write("job.yaml", job("p", 2))
    since = time.time() - 1

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: work(burst=False, options=options))
            await trio.sleep(0.5)  # the worker waits, polling
            await submit_job(path, options=options)

            async def done() -> bool:
                async with loom.store() as store:
                    return (await store.counts("p"))["completed"] == 2

            await wait_until(done, "completion by polling")
            if backend != "sqlite":
                assert listeners(pg_url, since) == 0  # it was polling: no LISTEN at all
            nursery.cancel_scope.cancel()

    trio.run(main)


async def _async(function, *args):
    return await trio.to_thread.run_sync(function, *args)
