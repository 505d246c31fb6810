"""What a shared rate limit costs per request: ``RateLimiter.acquire`` linked
to the store (one ``rate_take`` each, docs/scale-out.md) against the
in-process limiter, with limits so high that no request ever waits, so the
figure is the limiter's own time.

    .venv/bin/python bench/sharedlimits.py                      # SQLite in a temporary folder
    .venv/bin/python bench/sharedlimits.py --store postgresql://postgres@127.0.0.1/postgres

A ``postgresql`` URL gets a fresh schema (``schema=`` added), dropped after.
Prints, for 1 and 16 concurrent tasks, the mean and p99 wall time of one
acquire in microseconds, acquires per second and, shared, the store takes
made (concurrent acquires share takes: ``SharedRate`` coalesces them). The machine is shared: give
the load average (``uptime``) with any figure.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

from storyloom.pluginmanager import make_plugin_manager
from storyloom.ratelimit import RateLimiter
from storyloom.registry import collect
from storyloom.settings import Settings
from storyloom.sharedlimits import SharedRate
from storyloom.store import open_store_url

#: 60 billion a minute: a bucket of a billion; nothing ever waits.
HUGE = 60_000_000_000


async def measure(limiter: RateLimiter, n: int, tasks: int) -> list[float]:
    times: list[float] = []

    async def one(count: int) -> None:
        for _ in range(count):
            t0 = time.perf_counter()
            await limiter.acquire(100)
            times.append(time.perf_counter() - t0)

    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(one, n // tasks)
    return times


def line(label: str, tasks: int, times: list[float], wall: float, trips: int | None = None) -> str:
    times = sorted(times)
    p99 = times[int(len(times) * 0.99) - 1]
    takes = "" if trips is None else f"  {trips} takes ({trips / wall:.0f}/s)"
    return (f"{label:<10} tasks={tasks:<3} n={len(times):<6} mean={statistics.mean(times) * 1e6:8.1f} us  "
            f"p99={p99 * 1e6:8.1f} us  {len(times) / wall:9.0f} acquires/s{takes}")


async def main(url: str | None, n: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="sharedlimits-"))
    schema = None
    if url is None:
        url = f"sqlite://{folder / 'state'}"
    elif url.startswith("postgres"):
        schema = f"bench_{secrets.token_hex(4)}"
        url += ("&" if "?" in url else "?") + f"schema={schema}"
    store = await open_store_url(url, stores=collect(make_plugin_manager()).stores, state_dir=folder,
                                 settings=Settings(), create=True)
    try:
        async with trio.open_nursery() as nursery:
            for tasks in (1, 16):
                local = RateLimiter(HUGE, HUGE)
                t0 = time.perf_counter()
                times = await measure(local, n, tasks)
                print(line("local", tasks, times, time.perf_counter() - t0))
                shared = RateLimiter(HUGE, HUGE)
                link = SharedRate(store, f"m-{tasks}", shared, nursery.start_soon)
                shared.share(link)
                t0 = time.perf_counter()
                times = await measure(shared, n, tasks)
                print(line("shared", tasks, times, time.perf_counter() - t0, link.trips))
    finally:
        await store.aclose()
        if schema is not None:
            import psycopg

            from storyloom.plugins.stores.postgresql import parse_url

            with psycopg.connect(parse_url(url).conninfo, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="a store URL (default: SQLite in a temporary folder)")
    parser.add_argument("-n", type=int, default=2000, help="acquires per run (default 2,000)")
    args = parser.parse_args()
    trio.run(main, args.store, args.n)
    sys.exit(0)
