"""The postgresql backend behind PgBouncer in transaction mode
(``?pool_mode=transaction``): the whole store conformance suite, and three
``storyloom work`` processes draining a queue, through a PgBouncer that
shares fewer server connections than one store's pool (``tests/pgbouncer.py``).

Without ``pool_mode=transaction`` a transaction on another server connection
finds no tables (the search path was one server session's), and two clients'
prepared statements clash on a shared one (``prepared statement "_pg3_0"
already exists``).
"""

from __future__ import annotations

import json

import pytest
import trio

from store_conformance import *  # noqa: F403 - the tests, collected here once more
from store_conformance_pipelines import *  # noqa: F403
from store_conformance_shared import *  # noqa: F403

# Their point is size, not the pooler (11 s here); they run in test_store.py.
del test_hundred_thousand_items, test_queue_of_a_hundred_thousand_items  # noqa: F821
from store_conformance import JOB, NOW, STORES, Backend, job_row, new_items, rec
from storyloom.settings import Settings
from storyloom.store import open_store_url
from test_cli import cli, completed_attempts, popen, read_store
from test_leases import settings, submit


@pytest.fixture
def store_backend(pgbouncer_url, tmp_path) -> Backend:
    """The conformance suite's one backend here: postgresql through PgBouncer."""
    return Backend("postgresql", pgbouncer_url, tmp_path)


def test_several_stores_at_once_share_the_server_connections(pgbouncer_url):
    """Three stores of four connections each, through two server connections:
    every transaction sets its own search path, and nothing is prepared."""
    ids = [f"i{n:03d}" for n in range(90)]
    done: list[str] = []

    async def scenario():
        stores = [await open_store_url(pgbouncer_url, stores=STORES, state_dir=".", settings=Settings())
                  for _ in range(3)]
        try:
            await stores[0].add_job(job_row(), new_items(*ids))

            async def drain(store, owner):
                while batch := await store.claim(JOB, 2, NOW, owner):
                    applied = await store.record([rec(c.item_id, fence=c.fence) for c in batch], owner)
                    assert applied == [True] * len(batch)
                    done.extend(c.item_id for c in batch)

            async with trio.open_nursery() as nursery:
                for n, store in enumerate(stores):
                    for k in range(3):
                        nursery.start_soon(drain, store, f"host:{n}:{k}")
            assert (await stores[1].counts(JOB))["completed"] == len(ids)
        finally:
            for store in stores:
                await store.aclose()

    trio.run(scenario)
    assert sorted(done) == ids  # each exactly once


@pytest.mark.slow
def test_three_workers_drain_a_queue_through_pgbouncer(tmp_path, pgbouncer_url):
    (tmp_path / "storyloom.yaml").write_text(settings(lease="3s", latency=5) + f"store: '{pgbouncer_url}'\n")
    submit(tmp_path, "pb", 150, 8)
    procs = [popen("work", "--burst", "-q", cwd=tmp_path) for _ in range(3)]
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    per_item = read_store(tmp_path, completed_attempts)
    assert len(per_item) == 150 and set(per_item.values()) == {1}
    status = json.loads(cli("status", "pb", "--json", cwd=tmp_path).stdout)
    assert status["state"] == "completed"
